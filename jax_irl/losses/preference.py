"""Preference losses: Bradley-Terry reward modelling and the DPO family.

DPO (and its variants) are the practical oracles for the Gibbs policy pi0(a|x) exp(r(x,a)/eta) / Z(x) in
KL-regularised preference learning. With h = beta * ((logp_c - ref_c) - (logp_r - ref_r)) - m, where m is an
optional per-pair margin (0 by default), the losses per pair are

    sigmoid: -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)              (eps = label_smoothing; cDPO)
    robust:  (-(1 - eps) log sigmoid(h) + eps log sigmoid(-h)) / (1 - 2 eps)  (unbiased under label noise)
    ipo:     (h / beta - 1 / (2 beta))^2                                      (pass length-averaged log-probs)
    hinge:   max(0, 1 - h)                                                    (SLiC / RSO)

These are TRL's formulas with one qualification: with label_smoothing > 0 'sigmoid' is conservative DPO (cDPO,
Mitchell 2023), which is what TRL's sigmoid loss computed up to its 0.2x releases; TRL 1.16's sigmoid loss
ignores label_smoothing (only its 'robust' and a few other types read it). With eps = 0 all agree.

The margin m shifts the decision boundary per pair. Pessimistic DPO (Xiong et al., offline) passes
m = c * (Gamma(x, a_rejected) - Gamma(x, a_chosen)) with Gamma a reward uncertainty (e.g. the K-head
disagreement ``head_disagreement``): if the implied reward beta log(pi/pi0) is to play r - Gamma (a lower
confidence bound), Bradley-Terry on r gives sigmoid(h_0 + Gamma_c - Gamma_r), so an uncertain chosen response
needs less implied reward to satisfy the loss and the policy is not pushed towards what the reward cannot vouch
for.

Reference log-probs are always plain arrays, so they can be precomputed once and the reference model dropped.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jax_irl.losses._common import (Array, check_float, check_rank, check_same_shape, check_scalar, masked_sum,
                                    upcast)
from jax_irl.losses.soft_q import soft_q_stats

DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")


def sequence_log_probs(logits: Array, targets: Array, mask: Array, *, average: bool = False,
                       temperature: float = 1.0) -> Array:
    r"""Sequence log-probabilities log pi(response | prompt): the sum (or mean) of the counted tokens' log-probs.

        log pi(y | x) = sum_t m_t log pi(a_t | s_t)       (average=True: divided by sum_t m_t)

    Args:
        logits: ``[B, T, V]`` float.
        targets: ``[B, T]`` integer ids.
        mask: ``[B, T]``, nonzero on the response tokens.
        average: divide by the number of counted tokens (IPO's convention); an empty row gives 0.
        temperature: tau > 0.

    Returns:
        ``[B]`` float32.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> logits = jnp.zeros((1, 3, 4))  # uniform over 4 tokens
        >>> losses.sequence_log_probs(logits, jnp.array([[0, 1, 2]]), jnp.array([[0, 1, 1]]))  # 2 log 1/4
        Array([-2.7725887], dtype=float32)
    """
    check_rank("mask", mask, 2, "[B, T]")
    q, v = soft_q_stats(logits, targets, temperature, mask)
    logp = (q - v) / temperature
    total = masked_sum(logp, mask, axis=-1)
    if average:
        count = jnp.sum(jnp.asarray(mask).astype(total.dtype), axis=-1)
        total = total / jnp.maximum(count, 1.0)
    return total


def bradley_terry_loss(chosen: Array, rejected: Array, margin: Optional[Array] = None,
                       weights: Optional[Array] = None):
    r"""Bradley-Terry reward-model loss, per head: -log sigmoid(r_chosen - r_rejected - margin).

        L = mean_k ( sum_b w_bk l_bk / sum_b w_bk ),   l_bk = -log sigmoid(r_c[b, k] - r_r[b, k] - m_b)

    Args:
        chosen: ``[B]`` rewards of the chosen responses, or ``[B, K]`` for a K-head ensemble (each head gets its
            own loss).
        rejected: the rejected responses' rewards, the same shape.
        margin: optional ``[B]`` margin (such as Llama 2's preference-strength margin), broadcast over heads.
        weights: optional ``[B]`` or ``[B, K]`` per-pair (per-head) weights, such as bootstrap counts from
            ``bootstrap_weights``.

    Returns:
        ``(loss, aux)``: loss ``[]``; aux ``losses`` (per pair, the rewards' shape), ``per_head_loss`` ``[K]``
        (or ``[]``), ``accuracy`` (per head, the weighted share with r_c > r_r) and ``reward_margin`` (per head,
        the weighted mean of r_c - r_r).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> loss, aux = losses.bradley_terry_loss(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]))
        >>> round(float(loss), 4)  # (-log sigmoid(1) - log sigmoid(0)) / 2
        0.5032
        >>> float(aux["accuracy"])
        0.5

    References:
        Bradley and Terry 1952; Ouyang et al. 2022 (reward models for RLHF).
    """
    check_same_shape({"chosen": chosen, "rejected": rejected}, "[B] or [B, K]")
    if jnp.ndim(chosen) not in (1, 2):
        raise ValueError(f"chosen and rejected must have shape [B] or [B, K]; got {tuple(jnp.shape(chosen))}")
    check_float("chosen", chosen)
    check_float("rejected", rejected)
    diff = upcast(chosen) - upcast(rejected)
    if margin is not None:
        check_rank("margin", margin, 1, "[B]")
        if margin.shape[0] != diff.shape[0]:
            raise ValueError(f"margin must have shape [B] = ({diff.shape[0]},); got {margin.shape}")
        m = upcast(margin)
        diff_m = diff - (m[:, None] if diff.ndim == 2 else m)
    else:
        diff_m = diff
    losses = -jax.nn.log_sigmoid(diff_m)
    if weights is None:
        w = jnp.ones_like(losses)
    else:
        w = upcast(weights)
        if w.ndim == 1 and losses.ndim == 2:
            w = w[:, None]
        if w.shape[0] != losses.shape[0] or w.ndim != losses.ndim:
            raise ValueError(f"weights must have shape [B] or the rewards' shape {losses.shape}; got {weights.shape}")
        w = jnp.broadcast_to(w, losses.shape)
    denom = jnp.maximum(jnp.sum(w, axis=0), jnp.finfo(losses.dtype).tiny)
    per_head = jnp.sum(w * losses, axis=0) / denom
    aux = {
        "losses": losses,
        "per_head_loss": per_head,
        "accuracy": jnp.sum(w * (diff > 0), axis=0) / denom,
        "reward_margin": jnp.sum(w * diff, axis=0) / denom,
    }
    return jnp.mean(per_head), aux


def dpo_loss(
    policy_chosen_logps: Array,
    policy_rejected_logps: Array,
    ref_chosen_logps: Array,
    ref_rejected_logps: Array,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    margin: Optional[Array] = None,
):
    r"""Direct preference optimisation and its variants, averaged over pairs.

    With h = beta ((pi_c - ref_c) - (pi_r - ref_r)) - m (sequence log-probs, m an optional per-pair margin):

        sigmoid: -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)                  (eps: label smoothing, cDPO)
        robust:  (-(1 - eps) log sigmoid(h) + eps log sigmoid(-h)) / (1 - 2 eps)
        ipo:     (h / beta - 1 / (2 beta))^2                                       (length-averaged log-probs)
        hinge:   max(0, 1 - h)                                                     (SLiC / RSO)

    Pessimistic DPO passes m = c (Gamma(x, a_rejected) - Gamma(x, a_chosen)) with Gamma a reward uncertainty
    (``head_disagreement``): an uncertain chosen response needs less implied reward. Reference log-probs are
    plain arrays, so they can be precomputed once and the reference model dropped.

    Args:
        policy_chosen_logps: ``[B]`` sequence log-probs of the chosen responses under the policy
            (``sequence_log_probs``; length-averaged for 'ipo').
        policy_rejected_logps: ``[B]`` the rejected responses' log-probs under the policy.
        ref_chosen_logps: ``[B]`` the chosen responses' log-probs under the reference.
        ref_rejected_logps: ``[B]`` the rejected responses' log-probs under the reference.
        beta: the KL strength, > 0.
        loss_type: 'sigmoid' | 'robust' | 'ipo' | 'hinge'.
        label_smoothing: eps in [0, 0.5), for 'sigmoid' and 'robust'.
        margin: optional ``[B]`` per-pair margin m, in the units of h.

    Returns:
        ``(loss, aux)``: loss ``[]``; aux per-pair ``losses`` ``[B]``, the implied rewards ``chosen_rewards`` =
        beta (pi_c - ref_c) and ``rejected_rewards`` ``[B]``, and the scalars ``reward_accuracy`` and
        ``reward_margin``. An empty batch raises.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> logp = jnp.array([-3.0, -5.0])
        >>> loss, aux = losses.dpo_loss(logp[:1], logp[1:], logp[:1], logp[1:], beta=0.1)
        >>> round(float(loss), 4)  # policy == reference: log 2
        0.6931
        >>> loss, _ = losses.dpo_loss(logp[:1] + 1, logp[1:], logp[:1], logp[1:], beta=1.0, loss_type="hinge")
        >>> float(loss)  # h = 1: the hinge is satisfied
        0.0

    References:
        Rafailov et al. 2023, "Direct Preference Optimization"; Azar et al. 2023 (IPO); Liu et al. 2023 (RSO);
        Xiong et al. 2024, "Iterative Preference Learning from Human Feedback" (pessimism).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}; got {loss_type!r}")
    check_scalar("beta", beta, low=0.0, low_open=True)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5); got {label_smoothing}")
    if label_smoothing and loss_type in ("ipo", "hinge"):
        raise ValueError(f"label_smoothing applies to the 'sigmoid' and 'robust' losses, not {loss_type!r}")
    inputs = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
    }
    check_same_shape(inputs, "[B]")
    for name, x in inputs.items():
        check_rank(name, x, 1, "[B]")
        check_float(name, x)
    if jnp.shape(policy_chosen_logps)[0] == 0:
        raise ValueError("dpo_loss got an empty batch (B = 0 pairs): its mean would be NaN")
    pc, pr, rc, rr = (upcast(x) for x in inputs.values())
    chosen_ratio = pc - rc
    rejected_ratio = pr - rr
    logits = chosen_ratio - rejected_ratio
    if margin is not None:
        check_same_shape({"policy_chosen_logps": policy_chosen_logps, "margin": margin}, "[B]")
        check_float("margin", margin)
        logits = logits - upcast(margin) / beta
    h = beta * logits
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1.0 - eps) * jax.nn.log_sigmoid(h) - eps * jax.nn.log_sigmoid(-h)
    elif loss_type == "robust":
        losses = (-(1.0 - eps) * jax.nn.log_sigmoid(h) + eps * jax.nn.log_sigmoid(-h)) / (1.0 - 2.0 * eps)
    elif loss_type == "ipo":
        losses = (logits - 1.0 / (2.0 * beta)) ** 2
    else:  # hinge
        losses = jax.nn.relu(1.0 - h)
    chosen_rewards = beta * chosen_ratio
    rejected_rewards = beta * rejected_ratio
    aux = {
        "losses": losses,
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "reward_accuracy": jnp.mean((chosen_rewards > rejected_rewards).astype(losses.dtype)),
        "reward_margin": jnp.mean(chosen_rewards - rejected_rewards),
    }
    return jnp.mean(losses), aux
