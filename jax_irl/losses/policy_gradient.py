"""Policy-gradient pieces for PPO with token-level rewards (RLSF) or a sequence-level scalar reward.

Scalar and token-level rewards share one path: ``place_sequence_reward`` puts a scalar on the last response
token, ``kl_shaped_rewards`` subtracts beta * KL(pi || pi_ref) per token, ``gae`` turns rewards and values into
advantages over the response tokens, and ``ppo_policy_loss`` / ``ppo_value_loss`` are the clipped objectives.

KL estimators of KL(pi || pi_ref) from samples of pi, with d = logp - ref_logp (Schulman's k1/k2/k3):
    k1 = d,  k2 = d^2 / 2,  k3 = exp(-d) - 1 + d    (k3 is unbiased and never negative)
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jax_irl.losses._common import (
    Array,
    check_float,
    check_mask,
    check_rank,
    check_same_shape,
    check_scalar,
    last_true_index_mask,
    masked_mean,
    upcast,
)

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp: Array, ref_logp: Array, estimator: str = "k1") -> Array:
    r"""Per-token estimate of KL(pi || pi_ref) from the log-probs of tokens sampled from pi.

    With d = logp - ref_logp (Schulman's estimators):

        k1 = d,   k2 = d^2 / 2,   k3 = exp(-d) - 1 + d   (k3 is unbiased and never negative)

    Args:
        logp: log-probs of the sampled tokens under pi, any shape (usually ``[B, T]``).
        ref_logp: the same tokens' log-probs under pi_ref, the same shape.
        estimator: 'k1' | 'k2' | 'k3'.

    Returns:
        The per-token estimate, the inputs' shape, float32; no reduction.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> d = jnp.array([0.5, -0.5])
        >>> losses.kl_penalty(d, jnp.zeros(2), "k2")
        Array([0.125, 0.125], dtype=float32)
        >>> bool(jnp.all(losses.kl_penalty(d, jnp.zeros(2), "k3") >= 0))
        True

    References:
        Schulman 2020, "Approximating KL Divergence" (blog note).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}; got {estimator!r}")
    check_same_shape({"logp": logp, "ref_logp": ref_logp}, "the same shape")
    check_float("logp", logp)
    check_float("ref_logp", ref_logp)
    d = upcast(logp) - upcast(ref_logp)
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d**2
    return jnp.expm1(-d) + d


def place_sequence_reward(scores: Array, mask: Array) -> Array:
    r"""Put one scalar reward per sequence on its last counted token (0 elsewhere).

    Args:
        scores: ``[B]`` one reward per sequence.
        mask: ``[B, T]``, nonzero on the response tokens.

    Returns:
        ``[B, T]`` float32; a row with no counted token gets no reward.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.place_sequence_reward(jnp.array([2.0, 3.0]), jnp.array([[1, 1, 0], [0, 0, 0]]))
        Array([[0., 2., 0.],
               [0., 0., 0.]], dtype=float32)
    """
    check_rank("scores", scores, 1, "[B]")
    check_rank("mask", mask, 2, "[B, T]")
    if scores.shape[0] != mask.shape[0]:
        raise ValueError(f"scores [B] and mask [B, T] disagree on B: {scores.shape} vs {mask.shape}")
    s = upcast(scores)
    return jnp.where(last_true_index_mask(mask), s[:, None], jnp.zeros((), s.dtype))


def kl_shaped_rewards(token_rewards: Array, logp: Array, ref_logp: Array, mask: Array, *, kl_coef: float,
                      estimator: str = "k1") -> Array:
    r"""Rewards shaped by the KL to the reference: r_t - kl_coef * KL_t on counted tokens, 0 elsewhere.

    Args:
        token_rewards: ``[B, T]`` per-token rewards (``place_sequence_reward`` for a scalar).
        logp: ``[B, T]`` the sampled tokens' log-probs under the sampling policy.
        ref_logp: ``[B, T]`` under the reference.
        mask: ``[B, T]``, nonzero on counted tokens.
        kl_coef: beta >= 0.
        estimator: 'k1' | 'k2' | 'k3' (``kl_penalty``).

    Returns:
        ``[B, T]`` float32.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.kl_shaped_rewards(jnp.array([[0.0, 1.0]]), jnp.array([[-1.0, -1.0]]), jnp.array([[-2.0, -1.0]]),
        ...                          jnp.ones((1, 2)), kl_coef=0.1)
        Array([[-0.1,  1. ]], dtype=float32)
    """
    check_same_shape({"token_rewards": token_rewards, "logp": logp, "ref_logp": ref_logp, "mask": mask}, "[B, T]")
    check_rank("mask", mask, 2, "[B, T]")
    check_scalar("kl_coef", kl_coef, low=0.0)
    shaped = upcast(token_rewards) - kl_coef * kl_penalty(logp, ref_logp, estimator)
    return jnp.where(jnp.asarray(mask) != 0, shaped, 0.0)


def gae(rewards: Array, values: Array, mask: Array, gamma: float, lam: float,
        final_values: Optional[Array] = None):
    r"""Generalised advantage estimation over the counted (response) tokens, by a reverse ``lax.scan``.

    For each counted position t, with t' the next counted position of the row:

        delta_t = r_t + gamma V(t') - V(t),   A_t = delta_t + gamma lam A(t')

    and after the last counted position V = final_values (default 0: the response ended) and A = 0. Uncounted
    positions (prompt, padding, tool output between turns) are skipped and get A = 0 and return 0. Wrap the
    inputs in ``stop_gradient`` for PPO (advantages are targets).

    Args:
        rewards: ``[B, T]`` per-token rewards.
        values: ``[B, T]`` value estimates.
        mask: ``[B, T]``, nonzero on counted tokens.
        gamma: discount in [0, 1].
        lam: GAE's lambda in [0, 1].
        final_values: optional ``[B]``, the bootstrap value of a truncated response.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, with returns = advantages + values on counted positions.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> adv, ret = losses.gae(jnp.array([[0.0, 1.0]]), jnp.zeros((1, 2)), jnp.ones((1, 2)), gamma=1.0, lam=1.0)
        >>> adv  # the final reward reaches every earlier token
        Array([[1., 1.]], dtype=float32)

    References:
        Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation".
    """
    check_same_shape({"rewards": rewards, "values": values, "mask": mask}, "[B, T]")
    check_rank("rewards", rewards, 2, "[B, T]")
    check_mask("mask", mask)
    check_scalar("gamma", gamma, low=0.0, high=1.0)
    check_scalar("lam", lam, low=0.0, high=1.0)
    r = upcast(rewards)
    v = upcast(values).astype(r.dtype)
    on = jnp.asarray(mask) != 0
    b = r.shape[0]
    zeros = jnp.zeros_like(r[:, 0])  # derived from the inputs so that it is shard_map-varying like them
    if final_values is None:
        nv0 = zeros
    else:
        check_rank("final_values", final_values, 1, "[B]")
        if final_values.shape[0] != b:
            raise ValueError(f"final_values must have shape [B] = ({b},); got {final_values.shape}")
        nv0 = upcast(final_values).astype(r.dtype) + zeros

    def step(carry, xs):
        next_value, next_adv = carry
        r_t, v_t, on_t = xs
        delta = r_t + gamma * next_value - v_t
        adv = delta + gamma * lam * next_adv
        adv = jnp.where(on_t, adv, 0.0)
        carry = (jnp.where(on_t, v_t, next_value), jnp.where(on_t, adv, next_adv))
        return carry, adv

    _, adv_t = jax.lax.scan(step, (nv0, zeros), (r.T, v.T, on.T), reverse=True)
    advantages = adv_t.T
    returns = jnp.where(on, advantages + v, 0.0)
    return advantages, returns


def ppo_policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *, clip_eps: float = 0.2,
                    clip_eps_high: Optional[float] = None, normalizer: Optional[Array] = None):
    r"""PPO's clipped surrogate, token mean over counted tokens.

        ratio_t = exp(logp_t - old_logp_t),
        l_t = max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps, 1 + eps_high))

    Args:
        logp: ``[B, T]`` the sampled tokens' log-probs under the current policy.
        old_logp: ``[B, T]`` under the policy that sampled them (a constant).
        advantages: ``[B, T]`` (a constant).
        mask: ``[B, T]``, nonzero on counted tokens.
        clip_eps: eps > 0, the lower clip.
        clip_eps_high: the upper clip; defaults to clip_eps (set it higher for DAPO's clip-higher).
        normalizer: optional global token count to divide by.

    Returns:
        ``(loss, aux)``: aux per-token ``losses`` ``[B, T]`` and the scalars ``clip_fraction``, ``approx_kl`` (k3
        of old against new) and ``ratio_mean``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> logp = jnp.log(jnp.array([[1.5, 1.0]]))  # ratios 1.5 and 1
        >>> loss, aux = losses.ppo_policy_loss(logp, jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.ones((1, 2)))
        >>> round(float(loss), 4), float(aux["clip_fraction"])  # (-1.2 - 1) / 2: the first ratio clipped at 1.2
        (-1.1, 0.5)

    References:
        Schulman et al. 2017, "Proximal Policy Optimization Algorithms"; Yu et al. 2025 (DAPO, clip-higher).
    """
    check_same_shape({"logp": logp, "old_logp": old_logp, "advantages": advantages, "mask": mask}, "[B, T]")
    check_rank("logp", logp, 2, "[B, T]")
    check_mask("mask", mask)
    check_scalar("clip_eps", clip_eps, low=0.0)
    check_scalar("clip_eps_high", clip_eps_high, low=0.0)
    check_scalar("normalizer", normalizer, low=0.0, low_open=True)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    lp = upcast(logp)
    log_ratio = lp - jax.lax.stop_gradient(upcast(old_logp))
    ratio = jnp.exp(log_ratio)
    adv = jax.lax.stop_gradient(upcast(advantages))
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
    losses = jnp.maximum(unclipped, clipped)
    loss = masked_mean(losses, mask, normalizer=normalizer)
    aux = {
        "losses": jnp.where(jnp.asarray(mask) != 0, losses, 0.0),
        "clip_fraction": masked_mean((clipped > unclipped).astype(lp.dtype), mask),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
    }
    return loss, aux


def ppo_value_loss(values: Array, old_values: Array, returns: Array, mask: Array, *, clip_eps: float = 0.2,
                   normalizer: Optional[Array] = None):
    r"""PPO's clipped value loss.

        L = mean_t 0.5 max((V_t - R_t)^2, (clip(V_t, V_old_t - eps, V_old_t + eps) - R_t)^2)

    Args:
        values: ``[B, T]`` current value predictions.
        old_values: ``[B, T]`` at sampling time.
        returns: ``[B, T]`` targets (from ``gae``).
        mask: ``[B, T]``, nonzero on counted tokens.
        clip_eps: eps > 0.
        normalizer: optional global token count to divide by.

    Returns:
        ``(loss, aux)``: aux scalars ``clip_fraction`` and ``explained_variance``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> one = jnp.ones((1, 1))
        >>> loss, aux = losses.ppo_value_loss(one, 0 * one, one, one)  # V 1, V_old 0, return 1
        >>> round(float(loss), 4)  # the clipped value 0.2 is 0.8 from the return: 0.5 * 0.64
        0.32

    References:
        Schulman et al. 2017, "Proximal Policy Optimization Algorithms".
    """
    check_same_shape({"values": values, "old_values": old_values, "returns": returns, "mask": mask}, "[B, T]")
    check_rank("values", values, 2, "[B, T]")
    check_mask("mask", mask)
    check_scalar("clip_eps", clip_eps, low=0.0)
    check_scalar("normalizer", normalizer, low=0.0, low_open=True)
    v = upcast(values)
    old = jax.lax.stop_gradient(upcast(old_values))
    ret = jax.lax.stop_gradient(upcast(returns))
    v_clipped = old + jnp.clip(v - old, -clip_eps, clip_eps)
    err = (v - ret) ** 2
    err_clipped = (v_clipped - ret) ** 2
    loss = 0.5 * masked_mean(jnp.maximum(err, err_clipped), mask, normalizer=normalizer)
    resid = ret - v
    var_ret = masked_mean((ret - masked_mean(ret, mask)) ** 2, mask)
    var_res = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
    aux = {
        "clip_fraction": masked_mean((err_clipped > err).astype(v.dtype), mask),
        "explained_variance": 1.0 - var_res / jnp.maximum(var_ret, 1e-8),
    }
    return loss, aux
