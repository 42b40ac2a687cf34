"""Critic-free, group-relative policy gradients: GRPO, Dr. GRPO, DAPO, GSPO, RLOO and REINFORCE++.

G responses are sampled for each of P prompts; their rewards form a ``[P, G]`` array. Each method replaces PPO's
learned value baseline by a statistic of the group (or of the batch), and differs from the others in how it
normalises the advantage, how it aggregates the per-token losses and which importance ratio it clips:

==============  ==========================================  ==========================  ===================
method          advantage of response i of a group          aggregation                 ratio, clip
==============  ==========================================  ==========================  ===================
GRPO            (r_i - mean) / (std + eps)                  seq-mean-token-mean         token, [1-e, 1+e]
Dr. GRPO        r_i - mean                                  seq-mean-token-sum-norm     token, [1-e, 1+e]
DAPO            (r_i - mean) / (std + eps)                  token-mean                  token, [1-el, 1+eh]
GSPO            (r_i - mean) / (std + eps)                  seq-mean-token-mean         sequence
RLOO            r_i - mean_{j != i} r_j                     seq-mean-token-mean         token
REINFORCE++     whitened over the batch: return-to-go of    token-mean                  token
                r_t - beta KL_t (no group statistic)
==============  ==========================================  ==========================  ===================

std is the group's sample standard deviation (Bessel-corrected, as TRL and verl compute it); a group of equal
rewards has advantage 0 for every response (no signal; DAPO's dynamic sampling drops such groups).

References:
    Shao et al. 2024, "DeepSeekMath" (GRPO). Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
    Perspective" (Dr. GRPO). Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale".
    Zheng et al. 2025, "Group Sequence Policy Optimization" (GSPO). Ahmadian et al. 2024, "Back to Basics:
    Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs" (RLOO). Hu 2025,
    "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models".
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
    masked_mean,
    masked_sum,
    masked_whiten,
    upcast,
)
from jax_irl.losses.policy_gradient import gae, kl_penalty, kl_shaped_rewards

GROUP_ADVANTAGES = ("grpo", "dr_grpo", "rloo")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
RATIOS = ("token", "sequence")
CREDITS = ("sequence", "add", "blame")


def group_advantages(rewards: Array, method: str = "grpo", *, eps: float = 1e-6) -> Array:
    r"""One advantage per response from the rewards of its group, ``[P, G] -> [P, G]``.

    With $\bar r$ the group mean and $s$ its sample standard deviation (ddof 1):

    $$
    \text{grpo: } A_i = \frac{r_i - \bar r}{s + \epsilon} \qquad
    \text{dr\_grpo: } A_i = r_i - \bar r \qquad
    \text{rloo: } A_i = r_i - \frac{1}{G - 1}\sum_{j \ne i} r_j = \frac{G}{G - 1}(r_i - \bar r)
    $$

    Args:
        rewards: ``[P, G]`` float, one scalar reward per response, G responses to each of P prompts.
        method: 'grpo' | 'dr_grpo' | 'rloo'.
        eps: added to the standard deviation ('grpo'); > 0.

    Returns:
        ``[P, G]`` advantages in the rewards' accumulation dtype (at least float32). Every group sums to 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.group_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0]]), "dr_grpo")
        Array([[ 0.5, -0.5, -0.5,  0.5]], dtype=float32)
        >>> losses.group_advantages(jnp.array([[1.0, 0.0, 0.0]]), "rloo")
        Array([[ 1. , -0.5, -0.5]], dtype=float32)

    References:
        Shao et al. 2024 (GRPO); Liu et al. 2025 (Dr. GRPO); Ahmadian et al. 2024 (RLOO).
    """
    if method not in GROUP_ADVANTAGES:
        raise ValueError(f"method must be one of {GROUP_ADVANTAGES}; got {method!r}")
    check_rank("rewards", rewards, 2, "[P, G] (prompts, responses per prompt)")
    check_float("rewards", rewards)
    check_scalar("eps", eps, low=0.0, low_open=True)
    g = rewards.shape[1]
    if g < 2:
        raise ValueError(f"rewards must hold a group of >= 2 responses per prompt ([P, G] with G >= 2); got G = {g}: "
                         f"with one response there is no group baseline")
    r = upcast(rewards)
    if method == "rloo":
        return r - (jnp.sum(r, axis=1, keepdims=True) - r) / (g - 1)
    centered = r - jnp.mean(r, axis=1, keepdims=True)
    if method == "dr_grpo":
        return centered
    std = jnp.sqrt(jnp.sum(centered ** 2, axis=1, keepdims=True) / (g - 1))
    return centered / (std + eps)


def degenerate_groups(rewards: Array) -> Array:
    """The degenerate groups: those whose responses all have the same reward.

    Every group method gives them zero advantage; DAPO's dynamic sampling drops them.

    Args:
        rewards: ``[P, G]`` rewards, G responses to each of P prompts.

    Returns:
        ``[P]`` bool, True where every response of the group has the same reward.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.degenerate_groups(jnp.array([[1.0, 1.0], [0.0, 1.0]]))
        Array([ True, False], dtype=bool)

    References:
        Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale".
    """
    check_rank("rewards", rewards, 2, "[P, G]")
    r = jnp.asarray(rewards)
    return jnp.all(r == r[:, :1], axis=1)


def reinforce_pp_advantages(token_rewards: Array, logp: Array, ref_logp: Array, mask: Array, *, kl_coef: float,
                            estimator: str = "k1", gamma: float = 1.0) -> Array:
    r"""REINFORCE++'s critic-free token advantages: the return-to-go of the KL-shaped reward, whitened over the
    batch's counted tokens.

    $$
    \tilde r_t = r_t - \beta\,\mathrm{KL}_t, \qquad G_t = \sum_{s \ge t} \gamma^{s - t} \tilde r_s, \qquad
    A_t = (G_t - \mu) / \sigma
    $$

    with $\mu, \sigma$ the mean and standard deviation of $G$ over every counted token of the batch,
    and the sum over the row's counted tokens only (``gae`` with V = 0 and lambda = 1).

    Args:
        token_rewards: ``[B, T]`` per-token rewards (a scalar reward sits on the last counted token:
            ``place_sequence_reward``).
        logp: ``[B, T]`` log-probs of the sampled tokens under the sampling policy.
        ref_logp: ``[B, T]`` the same tokens' log-probs under the reference.
        mask: ``[B, T]`` 1 on counted (response) tokens.
        kl_coef: beta >= 0.
        estimator: 'k1' | 'k2' | 'k3' (``kl_penalty``).
        gamma: discount in [0, 1].

    Returns:
        ``[B, T]`` advantages, 0 off the mask.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> r = jnp.array([[0.0, 1.0], [0.0, 0.0]])  # returns-to-go [1, 1] and [0, 0]: whitened to +-1
        >>> losses.reinforce_pp_advantages(r, jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.ones((2, 2)), kl_coef=0.1)
        Array([[ 1.,  1.],
               [-1., -1.]], dtype=float32)

    References:
        Hu 2025, "REINFORCE++".
    """
    shaped = kl_shaped_rewards(token_rewards, logp, ref_logp, mask, kl_coef=kl_coef, estimator=estimator)
    returns, _ = gae(shaped, jnp.zeros_like(shaped), mask, gamma, 1.0)
    return masked_whiten(returns, mask)


def token_advantages(advantages: Array, mask: Array, token_terms: Optional[Array] = None, *,
                     credit: str = "sequence") -> Array:
    r"""A response's advantage on its tokens, optionally with token-level credit from a verifier's certificate.

    With $A_i$ the response's (group) advantage, $p_{i,t}$ the certificate's per-token term (<= 0 on
    the tokens of a span the tool blames, 0 elsewhere, in reward units; ``symbolic.group_reward_fn``) and
    $b_{i,t} = [p_{i,t} < 0]$:

    - 'sequence': $A_{i,t} = A_i$ on every counted token (GRPO as published; ``token_terms`` unused).
    - 'add': $A_{i,t} = A_i + p_{i,t}$: blamed tokens are pushed down by the penalty on top of the group
      advantage; a correct response (no blame) is unchanged.
    - 'blame': a response with $A_i < 0$ and at least one blamed token carries its whole negative advantage
      on the blamed tokens, $A_{i,t} = A_i \, n_i / k_i \, b_{i,t}$ ($n_i$ counted tokens,
      $k_i$ blamed ones), so the sum over the response's tokens is the same as under 'sequence' and the
      tokens the tool found no fault with get 0. Other responses are as under 'sequence'.

    The sign convention is the reward's: a larger advantage raises the token's log-prob.

    Args:
        advantages: ``[N]`` one advantage per response (e.g. ``group_advantages(...).reshape(-1)``).
        mask: ``[N, T]`` 1 on the response's counted tokens.
        token_terms: ``[N, T]`` the certificate's per-token terms, required for 'add' and 'blame'.
        credit: 'sequence' | 'add' | 'blame'.

    Returns:
        ``[N, T]`` token advantages, 0 off the mask.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> mask = jnp.ones((1, 4))
        >>> blame = jnp.array([[0.0, -0.2, 0.0, 0.0]])
        >>> losses.token_advantages(jnp.array([-1.0]), mask, blame, credit="blame")
        Array([[ 0., -4.,  0.,  0.]], dtype=float32)
    """
    if credit not in CREDITS:
        raise ValueError(f"credit must be one of {CREDITS}; got {credit!r}")
    check_rank("advantages", advantages, 1, "[N]")
    check_rank("mask", mask, 2, "[N, T]")
    check_mask("mask", mask)
    if advantages.shape[0] != mask.shape[0]:
        raise ValueError(f"advantages [N] and mask [N, T] disagree on N: {advantages.shape} vs {mask.shape}")
    a = upcast(advantages)
    on = jnp.asarray(mask) != 0
    base = jnp.where(on, a[:, None], 0.0)
    if credit == "sequence":
        return base
    if token_terms is None:
        raise ValueError(f"credit={credit!r} needs token_terms [N, T] (the certificate's per-token terms)")
    check_same_shape({"token_terms": token_terms, "mask": mask}, "[N, T]")
    check_float("token_terms", token_terms)
    p = jnp.where(on, upcast(token_terms).astype(a.dtype), 0.0)
    if credit == "add":
        return jnp.where(on, base + p, 0.0)
    blamed = on & (p < 0)
    n = jnp.sum(on, axis=1).astype(a.dtype)
    k = jnp.sum(blamed, axis=1).astype(a.dtype)
    moved = (a < 0) & (k > 0)
    concentrated = jnp.where(blamed, (a * n / jnp.maximum(k, 1.0))[:, None], 0.0)
    return jnp.where(moved[:, None], concentrated, base)


def group_policy_loss(logp: Array, old_logp: Array, advantages: Array, mask: Array, *, clip_low: float = 0.2,
                      clip_high: Optional[float] = None, aggregation: str = "seq_mean_token_mean",
                      ratio: str = "token", max_tokens: Optional[int] = None, ref_logp: Optional[Array] = None,
                      kl_coef: float = 0.0, normalizer: Optional[Array] = None):
    r"""The clipped policy loss of the GRPO family, with the token aggregation and the importance ratio as choices.

    Per counted token, with $\rho$ the importance ratio and $A_{i,t}$ the (constant) advantage:

    $$
    \ell_{i,t} = \max\big(-A_{i,t}\,\rho_{i,t},\; -A_{i,t}\,\mathrm{clip}(\rho_{i,t}, 1 - \epsilon_l,
    1 + \epsilon_h)\big) + \beta\,\mathrm{k3}(\log\pi_\theta, \log\pi_{ref})_{i,t}
    $$

    ratio 'token': $\rho_{i,t} = \pi_\theta(y_t) / \pi_{old}(y_t)$ (GRPO, DAPO). ratio 'sequence' (GSPO):
    $\rho_{i,t} = \mathrm{sg}[s_i]\,\pi_\theta(y_t) / \mathrm{sg}[\pi_\theta(y_t)]$ with
    $s_i = \exp(\frac{1}{|y_i|}\sum_t \log\frac{\pi_\theta(y_t)}{\pi_{old}(y_t)})$, the geometric mean of
    the token ratios: every token of a response is clipped together, by its sequence's ratio (GSPO-token; with
    one advantage per response and 'seq_mean_token_mean' it is GSPO exactly, value and gradient).

    aggregation, with $m$ the mask and B the rows:
    'token_mean' $\sum_{i,t} m\ell / \sum_{i,t} m$ (DAPO); 'seq_mean_token_mean'
    $\frac{1}{B'}\sum_i \sum_t m\ell / \sum_t m$ over the B' rows with a counted token (GRPO, GSPO);
    'seq_mean_token_sum_norm' $\sum_{i,t} m\ell / (B \cdot L)$ with the constant L = ``max_tokens``
    (Dr. GRPO: no length normalisation per response).

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens under the policy being trained.
        old_logp: ``[B, T]`` under the policy that sampled them (constants).
        advantages: ``[B, T]`` token advantages (constants; ``token_advantages`` broadcasts one per response).
        mask: ``[B, T]`` 1 on counted tokens.
        clip_low: $\epsilon_l$ >= 0.
        clip_high: $\epsilon_h$ >= clip_low (default clip_low; DAPO's clip-higher uses 0.28 against 0.2;
            GSPO's published values are 3e-4 / 4e-4).
        aggregation: one of ``AGGREGATIONS``.
        ratio: 'token' | 'sequence'.
        max_tokens: L for 'seq_mean_token_sum_norm' (default T, the generation budget on the grid).
        ref_logp: ``[B, T]`` reference log-probs, needed when kl_coef > 0 (GRPO's KL term in the loss, k3).
        kl_coef: beta >= 0.
        normalizer: the denominator of the aggregation over the whole batch (counted tokens, counted rows, or
            B * L), for a loss computed on shards and summed (``shard_map`` + psum); default: this batch's.

    Returns:
        ``(loss, aux)``: loss ``[]``; aux scalars 'policy_loss' (without the KL term), 'kl' (mean k3 to the
        reference over counted tokens, 0 without ref_logp), 'clip_fraction_low' / 'clip_fraction_high' (share of
        counted tokens whose gradient the lower / upper clip removes: A < 0 and rho < 1 - el, or A > 0 and
        rho > 1 + eh), 'clip_fraction' (their sum), 'approx_kl' (k3 of old vs new), 'ratio_mean'; and 'losses'
        ``[B, T]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> logp = jnp.log(jnp.array([[1.5, 0.5]]))  # token ratios 1.5 and 0.5 against old_logp = 0
        >>> loss, aux = losses.group_policy_loss(logp, jnp.zeros((1, 2)), jnp.array([[1.0, -1.0]]),
        ...                                      jnp.ones((1, 2)), clip_low=0.2, clip_high=0.28)
        >>> round(float(loss), 4)  # (max(-1.5, -1.28) + max(0.5, 0.8)) / 2
        -0.24
        >>> float(aux["clip_fraction_high"]), float(aux["clip_fraction_low"])
        (0.5, 0.5)

    References:
        Shao et al. 2024 (GRPO); Yu et al. 2025 (DAPO); Liu et al. 2025 (Dr. GRPO); Zheng et al. 2025 (GSPO).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got {aggregation!r}")
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}; got {ratio!r}")
    check_same_shape({"logp": logp, "old_logp": old_logp, "advantages": advantages, "mask": mask}, "[B, T]")
    check_rank("logp", logp, 2, "[B, T]")
    check_float("logp", logp)
    check_mask("mask", mask)
    check_scalar("clip_low", clip_low, low=0.0)
    check_scalar("clip_high", clip_high, low=0.0)
    check_scalar("kl_coef", kl_coef, low=0.0)
    check_scalar("normalizer", normalizer, low=0.0, low_open=True)
    high = clip_low if clip_high is None else clip_high
    if not isinstance(high, jax.core.Tracer) and not isinstance(clip_low, jax.core.Tracer) and high < clip_low:
        raise ValueError(f"clip_high must be >= clip_low (DAPO's clip-higher widens the upper side); got clip_high="
                         f"{high:g} < clip_low={clip_low:g}")
    if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ValueError(f"max_tokens must be an int >= 1 (the constant normaliser L); got {max_tokens!r}")
    if kl_coef and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp [B, T] (the reference policy's log-probs of the tokens)")
    on = jnp.asarray(mask) != 0
    lp = upcast(logp)
    old = jax.lax.stop_gradient(upcast(old_logp))
    log_ratio = jnp.where(on, lp - old, 0.0)
    if ratio == "sequence":
        seq_log_ratio = masked_mean(log_ratio, mask, axis=1)
        log_rho = jax.lax.stop_gradient(seq_log_ratio)[:, None] + lp - jax.lax.stop_gradient(lp)
    else:
        log_rho = log_ratio
    rho = jnp.exp(jnp.where(on, log_rho, 0.0))
    adv = jax.lax.stop_gradient(upcast(advantages))
    unclipped = -adv * rho
    clipped = -adv * jnp.clip(rho, 1.0 - clip_low, 1.0 + high)
    per_token = jnp.maximum(unclipped, clipped)
    kl_tok = jnp.zeros_like(per_token)
    if ref_logp is not None:
        check_same_shape({"ref_logp": ref_logp, "mask": mask}, "[B, T]")
        kl_tok = kl_penalty(lp, upcast(ref_logp).astype(lp.dtype), "k3")
    total = per_token + kl_coef * kl_tok if kl_coef else per_token

    def aggregate(x):
        if aggregation == "token_mean":
            return masked_mean(x, mask, normalizer=normalizer)
        if aggregation == "seq_mean_token_mean":
            rows = masked_mean(x, mask, axis=1)
            count = jnp.sum(jnp.any(on, axis=1).astype(rows.dtype)) if normalizer is None else normalizer
            return jnp.sum(rows) / jnp.maximum(jnp.asarray(count, rows.dtype), 1e-30)
        length = x.shape[1] if max_tokens is None else max_tokens
        denom = x.shape[0] * length if normalizer is None else normalizer
        return masked_sum(x, mask) / jnp.asarray(denom, x.dtype)

    loss = aggregate(total)
    f = lp.dtype
    low_clip = on & (adv < 0) & (rho < 1.0 - clip_low)
    high_clip = on & (adv > 0) & (rho > 1.0 + high)
    aux = {
        "losses": jnp.where(on, total, 0.0),
        "policy_loss": aggregate(per_token) if kl_coef else loss,
        "kl": masked_mean(kl_tok, mask),
        "clip_fraction_low": masked_mean(low_clip.astype(f), mask),
        "clip_fraction_high": masked_mean(high_clip.astype(f), mask),
        "clip_fraction": masked_mean((low_clip | high_clip).astype(f), mask),
        "approx_kl": masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
        "ratio_mean": masked_mean(rho, mask),
    }
    return loss, aux
