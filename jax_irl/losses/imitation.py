"""Imitation losses: MLE and IQLearn (inverse soft-Q learning) on token-level soft-Q values.

Offline IQLearn with the chi^2 regulariser telescopes, over data states, to MLE plus a temporal-difference
penalty on the implied rewards (Wulfmeier et al. 2024):

    L = sum_t mask_t * ( -log pi(a_t|s_t) + td_weight * r_t^2 ) / sum_t mask_t,
    r_t = Q(s_t, a_t) - gamma * V(s_{t+1}),   V(s_{t+1}) = 0 at the end of each response.

td_weight = 0 is exactly MLE. The r^2 term pins the per-state offset of the logits that the softmax ignores,
which is what makes the extracted rewards meaningful.

Every loss comes in two forms: one on logits [B, T, V], and a ``*_from_q`` form on the pair
(Q(s_t, a_t), V(s_t)) of [B, T] arrays that ``soft_q.soft_q_stats`` or ``soft_q.chunked_soft_q_stats`` return.
The loss depends on the logits only through that pair, so both forms give the same value and gradients.

Adversarial imitation (GAIL, Ho & Ermon 2016) trains a discriminator D = sigmoid(logit) between the data's and
the policy's (prompt, response) pairs (``discriminator_loss``) and pays the policy a reward read off its logit
(``discriminator_reward``).

Reduction: a token mean, sum over counted tokens / ``normalizer`` (default: the number of counted tokens).
Pass ``normalizer`` = the global token count to sum losses over gradient-accumulation micro-batches or over
shard_map shards (psum the per-shard losses) and get exactly the full-batch loss.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp

import jax

from jax_irl.losses._common import (Array, check_float, check_mask, check_rank, check_same_shape, check_scalar,
                                    masked_mean, masked_sum, upcast)
from jax_irl.losses.soft_q import (finite_where_masked, implied_rewards_from_q, next_state_values, soft_q_stats,
                                   soft_values, token_entropies)


def _num_tokens(mask: Array) -> Array:
    return jnp.sum(jnp.asarray(mask) != 0).astype(jnp.float32)


def mle_loss_from_q(target_q: Array, values: Array, mask: Array, *, temperature: float = 1.0,
                    normalizer: Optional[Array] = None):
    r"""Token-mean negative log-likelihood from (Q(s_t, a_t), V(s_t)).

        nll_t = (V(s_t) - Q(s_t, a_t)) / tau,   L = sum_t m_t nll_t / sum_t m_t

    Args:
        target_q: ``[B, T]`` Q(s_t, a_t) (``soft_q_stats`` or ``chunked_soft_q_stats``).
        values: ``[B, T]`` V(s_t).
        mask: ``[B, T]``, nonzero on counted tokens (its value weights them; negative weights are refused).
        temperature: tau > 0.
        normalizer: optional scalar token count to divide by instead of ``sum(mask)`` (the global count, so that
            micro-batches or shards add up to the full-batch loss).

    Returns:
        ``(loss, aux)``: loss ``[]``; aux ``nll`` ``[B, T]`` (0 off the mask) and ``num_tokens`` ``[]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> q, v = jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 1.0]])
        >>> loss, aux = losses.mle_loss_from_q(q, v, jnp.array([[1, 1]]))
        >>> float(loss)  # (1 + 0) / 2
        0.5
    """
    check_same_shape({"target_q": target_q, "values": values, "mask": mask}, "[B, T]")
    check_rank("mask", mask, 2, "[B, T]")
    check_mask("mask", mask)
    check_scalar("temperature", temperature, low=0.0, low_open=True)
    check_scalar("normalizer", normalizer, low=0.0, low_open=True)
    nll = (values - target_q) / temperature
    on = jnp.asarray(mask) != 0
    nll = jnp.where(on, nll, jnp.zeros((), nll.dtype))
    loss = masked_mean(nll, mask, normalizer=normalizer)
    return loss, {"nll": nll, "num_tokens": _num_tokens(mask)}


def mle_loss(logits: Array, targets: Array, mask: Array, *, normalizer: Optional[Array] = None):
    r"""Maximum-likelihood (cross-entropy) loss, averaged over counted tokens.

        L = sum_t m_t * -log softmax(logits_t)[targets_t] / sum_t m_t

    Args:
        logits: ``[B, T, V]`` float, any dtype (reduced in float32); ``logits[b, t]`` predicts ``targets[b, t]``.
        targets: ``[B, T]`` integer ids; ids where mask == 0 may be anything (such as -100).
        mask: ``[B, T]``, nonzero on tokens that count (its value weights them).
        normalizer: optional scalar token count to divide by instead of ``sum(mask)`` (the global count, so that
            micro-batches or shards add up to the full-batch loss).

    Returns:
        ``(loss, aux)``: loss ``[]`` (0 for a fully masked batch); aux ``nll`` ``[B, T]`` and ``num_tokens`` ``[]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> loss, aux = losses.mle_loss(jnp.zeros((1, 3, 4)), jnp.array([[2, 1, -100]]), jnp.array([[1, 1, 0]]))
        >>> round(float(loss), 4)  # uniform over 4 tokens: log 4
        1.3863
    """
    check_rank("mask", mask, 2, "[B, T]")
    q, v = soft_q_stats(logits, targets, 1.0, mask)
    return mle_loss_from_q(q, v, mask, normalizer=normalizer)


def mle_entropy_loss_from_q(target_q: Array, values: Array, entropies: Array, mask: Array, *, entropy_bonus: float,
                            temperature: float = 1.0, normalizer: Optional[Array] = None):
    r"""MLE with an entropy bonus from soft-Q statistics and per-token entropies.

    The confidence penalty of Pereyra et al. 2017, used as the control for IQLearn's TD term (does the TD term do
    more than flatten the policy?):

        L = sum_t m_t ( -log pi(a_t | s_t) - entropy_bonus * H(pi(. | s_t)) ) / sum_t m_t

    with H the entropy at the data states (``token_entropies``). entropy_bonus = 0 is exactly
    ``mle_loss_from_q``.

    Args:
        target_q: ``[B, T]`` Q(s_t, a_t).
        values: ``[B, T]`` V(s_t).
        entropies: ``[B, T]`` H(pi(. | s_t)).
        mask: ``[B, T]``, nonzero on counted tokens.
        entropy_bonus: the bonus's weight (0 is MLE).
        temperature: tau > 0.
        normalizer: optional scalar token count to divide by instead of ``sum(mask)`` (the global count, so that
            micro-batches or shards add up to the full-batch loss).

    Returns:
        ``(loss, aux)``: the MLE aux plus ``entropy`` ``[B, T]`` (0 off the mask) and the scalars ``nll_loss`` and
        ``mean_entropy``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> q, v, h, m = jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.full((1, 2), 2.0), jnp.ones((1, 2))
        >>> loss, aux = losses.mle_entropy_loss_from_q(q, v, h, m, entropy_bonus=0.1)
        >>> round(float(loss), 4)  # 1 - 0.1 * 2
        0.8

    References:
        Pereyra et al. 2017, "Regularizing Neural Networks by Penalizing Confident Output Distributions".
    """
    check_same_shape({"target_q": target_q, "entropies": entropies}, "[B, T]")
    check_scalar("entropy_bonus", entropy_bonus, low=0.0)
    mle, aux = mle_loss_from_q(target_q, values, mask, temperature=temperature, normalizer=normalizer)
    on = jnp.asarray(mask) != 0
    entropy = jnp.where(on, upcast(entropies), 0.0)
    mean_entropy = masked_mean(entropy, mask, normalizer=normalizer)
    aux.update(entropy=entropy, nll_loss=mle, mean_entropy=mean_entropy)
    return mle - entropy_bonus * mean_entropy, aux


def mle_entropy_loss(logits: Array, targets: Array, mask: Array, *, entropy_bonus: float, temperature: float = 1.0,
                     normalizer: Optional[Array] = None):
    r"""MLE with an entropy bonus on full logits (see ``mle_entropy_loss_from_q`` for the formula).

    Args:
        logits: ``[B, T, V]`` float; pi = softmax(logits / temperature).
        targets: ``[B, T]`` integer ids.
        mask: ``[B, T]``, nonzero on counted tokens.
        entropy_bonus: the bonus's weight (0 is MLE).
        temperature: tau > 0.
        normalizer: optional scalar token count to divide by instead of ``sum(mask)`` (the global count, so that
            micro-batches or shards add up to the full-batch loss).

    Returns:
        ``(loss, aux)`` as ``mle_entropy_loss_from_q``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> loss, aux = losses.mle_entropy_loss(jnp.zeros((1, 2, 4)), jnp.array([[0, 1]]), jnp.ones((1, 2)),
        ...                                     entropy_bonus=1.0)
        >>> float(loss)  # uniform: nll log 4 minus entropy log 4
        0.0
    """
    check_rank("mask", mask, 2, "[B, T]")
    q, v = soft_q_stats(logits, targets, temperature, mask)
    return mle_entropy_loss_from_q(q, v, token_entropies(logits, temperature), mask, entropy_bonus=entropy_bonus,
                                   temperature=temperature, normalizer=normalizer)


def iqlearn_loss_from_q(
    target_q: Array,
    values: Array,
    mask: Array,
    *,
    gamma: float,
    td_weight: float,
    temperature: float = 1.0,
    terminal: Optional[Array] = None,
    normalizer: Optional[Array] = None,
):
    r"""Offline IQLearn (chi^2) from (Q(s_t, a_t), V(s_t)).

        r_t = Q(s_t, a_t) - gamma V(s_{t+1}),   L = sum_t m_t ( -log pi(a_t | s_t) + td_weight * r_t^2 ) / sum_t m_t

    Args:
        target_q: ``[B, T]`` Q(s_t, a_t).
        values: ``[B, T]`` V(s_t).
        mask: ``[B, T]``, nonzero on counted (response) tokens.
        gamma: discount in [0, 1].
        td_weight: lambda >= 0, the weight of the TD (chi^2) term; 0 is MLE.
        temperature: tau > 0.
        terminal: optional ``[B, T]`` bool, True at t when s_{t+1} is terminal (default: the last counted
            position of each row).
        normalizer: optional scalar token count to divide by instead of ``sum(mask)`` (the global count, so that
            micro-batches or shards add up to the full-batch loss).

    Returns:
        ``(loss, aux)``: aux holds per-token ``nll``, ``implied_rewards`` and ``td_penalty`` (r^2) ``[B, T]`` (0
        off the mask), per-row ``sequence_rewards`` ``[B]`` (the sum of r_t), and the scalars ``nll_loss``,
        ``td_loss`` and ``num_tokens``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> q, v, m = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 4.0]]), jnp.ones((1, 2))
        >>> loss, aux = losses.iqlearn_loss_from_q(q, v, m, gamma=1.0, td_weight=0.5)
        >>> aux["implied_rewards"]  # [1 - 4, 2 - 0]
        Array([[-3.,  2.]], dtype=float32)
        >>> float(loss)  # nll (2 + 2) / 2 plus 0.5 * (9 + 4) / 2
        5.25

    References:
        Garg et al. 2021, "IQ-Learn: Inverse soft-Q Learning for Imitation"; Wulfmeier et al. 2024, "Imitating
        Language via Scalable Inverse Reinforcement Learning".
    """
    check_scalar("td_weight", td_weight, low=0.0)
    mle, aux = mle_loss_from_q(target_q, values, mask, temperature=temperature, normalizer=normalizer)
    rewards = implied_rewards_from_q(target_q, values, mask, gamma, terminal)
    td_penalty = rewards**2
    td_loss = masked_mean(td_penalty, mask, normalizer=normalizer)
    loss = mle + td_weight * td_loss
    aux.update(
        implied_rewards=rewards,
        td_penalty=td_penalty,
        sequence_rewards=masked_sum(rewards, mask, axis=-1),
        nll_loss=mle,
        td_loss=td_loss,
    )
    return loss, aux


def iqlearn_loss(
    logits: Array,
    targets: Array,
    mask: Array,
    *,
    gamma: float,
    td_weight: float,
    temperature: float = 1.0,
    terminal: Optional[Array] = None,
    normalizer: Optional[Array] = None,
):
    r"""Offline IQLearn with chi^2 regularisation on expert (data) responses: MLE plus a TD regulariser.

        Q = logits,  V = tau logsumexp(Q / tau),  log pi = (Q - V) / tau,
        r_t = Q(s_t, a_t) - gamma V(s_{t+1}),  V(s_{t+1}) = 0 at the end of each response,
        L = sum_t m_t ( -log pi(a_t | s_t) + td_weight * r_t^2 ) / sum_t m_t

    td_weight = 0 is exactly ``mle_loss`` (at temperature 1). The squared term pins the per-state offset of the
    logits that the softmax ignores, which makes the extracted rewards meaningful.

    Args:
        logits: ``[B, T, V]`` float; ``logits[b, t]`` predicts ``targets[b, t]``.
        targets: ``[B, T]`` integer ids.
        mask: ``[B, T]``, nonzero on the response tokens that count.
        gamma: discount in [0, 1]; at 1 a response's summed reward telescopes to log pi(y | x) + V(s_0).
        td_weight: lambda >= 0.
        temperature: tau > 0.
        terminal: optional ``[B, T]`` bool terminal flags (packed rows).
        normalizer: optional scalar token count to divide by instead of ``sum(mask)`` (the global count, so that
            micro-batches or shards add up to the full-batch loss).

    Returns:
        ``(loss, aux)`` as ``iqlearn_loss_from_q``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))
        >>> targets, mask = jnp.array([[0, 0]]), jnp.ones((1, 2))
        >>> mle, _ = losses.mle_loss(logits, targets, mask)
        >>> iq, aux = losses.iqlearn_loss(logits, targets, mask, gamma=1.0, td_weight=0.0)
        >>> bool(iq == mle)
        True

    References:
        Garg et al. 2021, "IQ-Learn"; Wulfmeier et al. 2024, "Imitating Language via Scalable Inverse
        Reinforcement Learning".
    """
    check_rank("mask", mask, 2, "[B, T]")
    q, v = soft_q_stats(logits, targets, temperature, mask)
    return iqlearn_loss_from_q(q, v, mask, gamma=gamma, td_weight=td_weight, temperature=temperature,
                               terminal=terminal, normalizer=normalizer)


def value_gap(values: Array, mask: Array, gamma: float, terminal: Optional[Array] = None,
              normalizer: Optional[Array] = None) -> Array:
    r"""The IQLearn value term: the token mean of V(s_t) - gamma V(s_{t+1}) over counted states.

    Args:
        values: ``[B, T]`` V(s_t).
        mask: ``[B, T]``, nonzero on counted tokens.
        gamma: discount in [0, 1].
        terminal: optional ``[B, T]`` bool terminal flags.
        normalizer: optional scalar token count to divide by instead of ``sum(mask)`` (the global count, so that
            micro-batches or shards add up to the full-batch loss).

    Returns:
        ``[]`` float.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> float(losses.value_gap(jnp.array([[3.0, 1.0]]), jnp.ones((1, 2)), gamma=1.0))  # ((3 - 1) + 1) / 2
        1.5
    """
    gap = values - gamma * next_state_values(values, mask, terminal)
    return masked_mean(gap, mask, normalizer=normalizer)


CHI2_SUPPORTS = ("data", "mixture")


def iqlearn_online_loss_from_q(
    target_q: Array,
    values: Array,
    mask: Array,
    policy_values: Array,
    policy_mask: Array,
    *,
    alpha: float,
    gamma: float,
    td_weight: float,
    temperature: float = 1.0,
    terminal: Optional[Array] = None,
    policy_terminal: Optional[Array] = None,
    normalizer: Optional[Array] = None,
    policy_normalizer: Optional[Array] = None,
    chi2: str = "data",
    policy_target_q: Optional[Array] = None,
):
    r"""Online IQLearn from soft-Q statistics of data states and of the policy's own samples.

    IQLearn's value term E[V(s) - gamma V(s')] is taken over the mixture (1 - alpha) data states + alpha policy
    states; the reward term stays on data, and the chi^2 term on data (``chi2='data'``) or, as in the original
    IQ-Learn, on the same mixture (``chi2='mixture'``, which needs ``policy_target_q``):

        L = ( -E_data[r] + (1-alpha) E_data[V(s) - gamma V(s')] + alpha E_policy[V(s) - gamma V(s')] ) / tau
            + td_weight * E_chi2[r^2]
          = L_offline + alpha / tau * ( E_policy[V(s) - gamma V(s')] - E_data[V(s) - gamma V(s')] )
            [ + td_weight * alpha * ( E_policy[r^2] - E_data[r^2] )   with chi2='mixture' ]

    alpha = 0 is exactly the offline loss; the paper mixes in policy samples with alpha = 0.1. Gradients flow
    into ``policy_values`` (and ``policy_target_q``): pushing V down on the policy's own states is the
    contrastive signal. At gamma = 1 a sample's value term telescopes to V(s_0), so with chi2='data' its content
    drops out; gamma < 1 keeps (1 - gamma) V(s_t) of every state.

    Args:
        target_q: ``[B, T]`` Q(s_t, a_t) on data (expert) responses.
        values: ``[B, T]`` V(s_t) on data responses.
        mask: ``[B, T]``, nonzero on counted data tokens.
        policy_values: ``[B', T']`` V on responses sampled from the current policy (any B', T').
        policy_mask: ``[B', T']``, nonzero on counted sampled tokens.
        alpha: the policy states' weight in the mixture, in [0, 1].
        gamma: discount in [0, 1].
        td_weight: lambda >= 0.
        temperature: tau > 0.
        terminal: optional ``[B, T]`` bool terminal flags of the data rows.
        policy_terminal: optional ``[B', T']`` bool terminal flags of the policy rows.
        normalizer: optional global token count of the data rows.
        policy_normalizer: optional global token count of the policy rows.
        chi2: 'data' or 'mixture'.
        policy_target_q: ``[B', T']`` Q of the sampled tokens; required by chi2='mixture'.

    Returns:
        ``(loss, aux)``: the offline aux plus the scalars ``data_value_gap``, ``policy_value_gap``,
        ``offline_loss`` and, with chi2='mixture', ``policy_td_loss``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> q, v, m = jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.ones((1, 2))
        >>> offline, _ = losses.iqlearn_loss_from_q(q, v, m, gamma=1.0, td_weight=0.1)
        >>> online, aux = losses.iqlearn_online_loss_from_q(q, v, m, 3 * v, m, alpha=0.0, gamma=1.0, td_weight=0.1)
        >>> bool(online == offline)  # alpha = 0 is the offline loss
        True

    References:
        Garg et al. 2021, "IQ-Learn: Inverse soft-Q Learning for Imitation"; Wulfmeier et al. 2024, "Imitating
        Language via Scalable Inverse Reinforcement Learning".
    """
    check_rank("policy_values", policy_values, 2, "[B', T']")
    check_same_shape({"policy_values": policy_values, "policy_mask": policy_mask}, "[B', T']")
    check_mask("policy_mask", policy_mask)
    check_scalar("alpha", alpha, low=0.0, high=1.0)
    check_scalar("policy_normalizer", policy_normalizer, low=0.0, low_open=True)
    if chi2 not in CHI2_SUPPORTS:
        raise ValueError(f"chi2 must be one of {CHI2_SUPPORTS}; got {chi2!r}")
    if chi2 == "mixture":
        if policy_target_q is None:
            raise ValueError("chi2='mixture' needs policy_target_q, Q(s, a) of the sampled tokens [B', T']")
        check_same_shape({"policy_target_q": policy_target_q, "policy_values": policy_values}, "[B', T']")
    offline, aux = iqlearn_loss_from_q(target_q, values, mask, gamma=gamma, td_weight=td_weight,
                                       temperature=temperature, terminal=terminal, normalizer=normalizer)
    data_gap = value_gap(values, mask, gamma, terminal, normalizer)
    policy_gap = value_gap(policy_values, policy_mask, gamma, policy_terminal, policy_normalizer)
    loss = offline + (alpha / temperature) * (policy_gap - data_gap)
    aux.update(data_value_gap=data_gap, policy_value_gap=policy_gap, offline_loss=offline)
    if chi2 == "mixture":
        policy_r = implied_rewards_from_q(policy_target_q, policy_values, policy_mask, gamma, policy_terminal)
        policy_td = masked_mean(policy_r**2, policy_mask, normalizer=policy_normalizer)
        loss = loss + td_weight * alpha * (policy_td - aux["td_loss"])
        aux.update(policy_td_loss=policy_td)
    return loss, aux


def iqlearn_online_loss(
    logits: Array,
    targets: Array,
    mask: Array,
    policy_logits: Array,
    policy_mask: Array,
    *,
    alpha: float = 0.1,
    gamma: float,
    td_weight: float,
    temperature: float = 1.0,
    terminal: Optional[Array] = None,
    policy_terminal: Optional[Array] = None,
    normalizer: Optional[Array] = None,
    policy_normalizer: Optional[Array] = None,
    chi2: str = "data",
    policy_targets: Optional[Array] = None,
):
    r"""Online IQLearn on full logits: offline IQLearn on data plus the value term on the policy's own samples.

    See ``iqlearn_online_loss_from_q`` for the formula.

    Args:
        logits: ``[B, T, V]`` on data responses.
        targets: ``[B, T]`` integer ids of the data.
        mask: ``[B, T]``, nonzero on counted data tokens.
        policy_logits: ``[B', T', V]``, the model's logits on its own sampled responses (only their soft values
            are used unless chi2='mixture').
        policy_mask: ``[B', T']``, nonzero on the sampled response tokens.
        alpha: the policy states' weight in [0, 1] (the paper: 0.1).
        gamma: discount in [0, 1].
        td_weight: lambda >= 0.
        temperature: tau > 0.
        terminal: optional ``[B, T]`` bool terminal flags of the data rows.
        policy_terminal: optional ``[B', T']`` bool terminal flags of the policy rows.
        normalizer: optional global token count of the data rows.
        policy_normalizer: optional global token count of the policy rows.
        chi2: 'data' or 'mixture' (the chi^2 term on the data/policy mixture).
        policy_targets: ``[B', T']`` the sampled ids; required by chi2='mixture'.

    Returns:
        ``(loss, aux)`` as ``iqlearn_online_loss_from_q``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jax_irl import losses
        >>> logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
        >>> targets, mask = jnp.array([[1, 2, 3], [0, 4, 4]]), jnp.ones((2, 3))
        >>> policy_logits = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 5))
        >>> loss, aux = losses.iqlearn_online_loss(logits, targets, mask, policy_logits, jnp.ones((4, 2)),
        ...                                        alpha=0.1, gamma=0.9, td_weight=0.1)
        >>> bool(jnp.isclose(loss, aux["offline_loss"] + 0.1 * (aux["policy_value_gap"] - aux["data_value_gap"])))
        True

    References:
        Garg et al. 2021, "IQ-Learn"; Wulfmeier et al. 2024, "Imitating Language via Scalable Inverse
        Reinforcement Learning".
    """
    check_rank("mask", mask, 2, "[B, T]")
    check_rank("policy_logits", policy_logits, 3, "[B', T', V]")
    if policy_logits.shape[-1] != logits.shape[-1]:
        raise ValueError(f"policy_logits and logits must share the vocabulary axis; got {policy_logits.shape[-1]} "
                         f"and {logits.shape[-1]}")
    if tuple(jnp.shape(policy_mask)) != tuple(policy_logits.shape[:2]):
        raise ValueError(f"policy_values, policy_mask must share the shape [B', T'] of policy_logits[..., 0] = "
                         f"{tuple(policy_logits.shape[:2])}; got policy_mask {tuple(jnp.shape(policy_mask))}")
    q, v = soft_q_stats(logits, targets, temperature, mask)
    if chi2 == "mixture":
        if policy_targets is None:
            raise ValueError("chi2='mixture' needs policy_targets, the sampled ids [B', T']")
        pq, pv = soft_q_stats(policy_logits, policy_targets, temperature, policy_mask)
    else:
        pq, pv = None, soft_values(finite_where_masked(upcast(policy_logits), policy_mask), temperature)
    return iqlearn_online_loss_from_q(
        q, v, mask, pv, policy_mask, alpha=alpha, gamma=gamma, td_weight=td_weight, temperature=temperature,
        terminal=terminal, policy_terminal=policy_terminal, normalizer=normalizer,
        policy_normalizer=policy_normalizer, chi2=chi2, policy_target_q=pq)


DISCRIMINATOR_REWARDS = ("logit", "gail", "log_d")


def discriminator_loss(data_logits: Array, policy_logits: Array):
    r"""GAIL's discriminator loss: binary cross-entropy with the data's pairs labelled 1 and the policy's 0.

    With D(x, y) = sigmoid(logit(x, y)) the probability that a (prompt, response) pair is the data's,

        L = -mean_b log D(data_b) - mean_b log(1 - D(policy_b))
          = mean_b softplus(-logit_data_b) + mean_b softplus(logit_policy_b).

    At the optimum D = p_data / (p_data + p_policy), so logit = log p_data - log p_policy (Goodfellow et al.
    2014): the reward ``discriminator_reward(..., "logit")`` is then the log density ratio.

    Args:
        data_logits: ``[B]`` the discriminator's logits on the data's pairs.
        policy_logits: ``[B']`` its logits on the policy's pairs (B' may differ from B).

    Returns:
        ``(loss, aux)``: loss ``[]``; aux ``data_loss`` and ``policy_loss`` (the two means), ``data_accuracy``
        (share of data logits > 0), ``policy_accuracy`` (share of policy logits < 0) and ``data_d`` /
        ``policy_d`` (mean D on each).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> loss, aux = losses.discriminator_loss(jnp.array([0.0]), jnp.array([0.0]))
        >>> round(float(loss), 4)  # 2 log 2: a discriminator that cannot tell them apart
        1.3863

    References:
        Ho and Ermon 2016, "Generative Adversarial Imitation Learning".
    """
    check_rank("data_logits", data_logits, 1, "[B]")
    check_rank("policy_logits", policy_logits, 1, "[B']")
    check_float("data_logits", data_logits)
    check_float("policy_logits", policy_logits)
    if data_logits.shape[0] == 0 or policy_logits.shape[0] == 0:
        raise ValueError(f"data_logits and policy_logits must each hold at least one pair; got shapes "
                         f"{tuple(data_logits.shape)} and {tuple(policy_logits.shape)}")
    data, policy = upcast(data_logits), upcast(policy_logits)
    data_loss = jnp.mean(jax.nn.softplus(-data))
    policy_loss = jnp.mean(jax.nn.softplus(policy))
    aux = {"data_loss": data_loss, "policy_loss": policy_loss,
           "data_accuracy": jnp.mean((data > 0).astype(data.dtype)),
           "policy_accuracy": jnp.mean((policy < 0).astype(policy.dtype)),
           "data_d": jnp.mean(jax.nn.sigmoid(data)), "policy_d": jnp.mean(jax.nn.sigmoid(policy))}
    return data_loss + policy_loss, aux


def discriminator_reward(logits: Array, kind: str = "logit") -> Array:
    r"""The policy's reward from the discriminator's logits (D = sigmoid(logit)), elementwise.

        logit: log D - log(1 - D) = logit   (the log density ratio log p_data / p_policy at the optimum)
        gail:  -log(1 - D) = softplus(logit)   (Ho and Ermon's reward; always > 0, so it pays length)
        log_d: log D = -softplus(-logit)   (always < 0)

    With a KL penalty beta KL(pi || pi_ref), the 'logit' reward's maximiser is pi proportional to
    pi_ref (p_data / p_policy)^(1 / beta), the form of AIRL and of f-divergence imitation.

    Args:
        logits: any shape, floating point.
        kind: one of ``DISCRIMINATOR_REWARDS`` ('logit', 'gail', 'log_d').

    Returns:
        The rewards, the logits' shape, in their accumulation dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> [round(float(r), 4) for r in losses.discriminator_reward(jnp.array([0.0, 2.0]), "gail")]
        [0.6931, 2.1269]

    References:
        Ho and Ermon 2016; Fu et al. 2018, "Learning Robust Rewards with Adversarial Inverse Reinforcement
        Learning".
    """
    check_float("logits", logits)
    x = upcast(logits)
    if kind == "logit":
        return x
    if kind == "gail":
        return jax.nn.softplus(x)
    if kind == "log_d":
        return -jax.nn.softplus(-x)
    raise ValueError(f"kind must be one of {DISCRIMINATOR_REWARDS}; got {kind!r}")
