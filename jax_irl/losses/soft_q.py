"""Token-level soft-Q quantities of a language model read as a soft Q-function.

Token MDP: the state s_t is the prompt plus the response tokens before t, the action a_t is the token at t.
``logits[b, t]`` is the model output that predicts ``targets[b, t]`` (the caller shifts), and is read as
Q(s_t, .). With temperature tau:

    V(s_t)          = tau * logsumexp(Q(s_t, .) / tau)
    log pi(a_t|s_t) = (Q(s_t, a_t) - V(s_t)) / tau
    r_t             = Q(s_t, a_t) - gamma * V(s_{t+1})        (inverse soft Bellman operator)

with V(s_{t+1}) := 0 where s_{t+1} is terminal: by default at the last counted (mask != 0) position of each row
and at the last column. All reductions run in float32 (float64 stays float64) whatever the input dtype.

The IQLearn loss needs the logits only through Q(s_t, a_t) and V(s_t). ``soft_q_stats`` returns exactly that
pair from full logits; ``chunked_soft_q_stats`` returns the same pair from hidden states and the unembedding
matrix without ever holding the [B, T, V] logits, for large vocabularies.
"""

from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from jax_irl.losses._common import (
    Array,
    constrain_rows,
    check_float,
    check_mask,
    check_rank,
    check_same_shape,
    check_scalar,
    check_targets,
    compute_dtype,
    gather_target,
    last_true_index_mask,
    upcast,
)


def _check_temperature(temperature) -> None:
    check_scalar("temperature", temperature, low=0.0, low_open=True)


def soft_values(logits: Array, temperature: float = 1.0) -> Array:
    r"""Soft state values V(s) = tau * logsumexp(logits / tau) over the vocabulary.

    Reading the logits as a soft Q-function, the soft value is

        V(s_t) = tau * log sum_a exp(Q(s_t, a) / tau).

    Args:
        logits: ``[..., V]`` float (usually ``[B, T, V]``); entries of -inf are banned tokens.
        temperature: tau > 0.

    Returns:
        ``[...]`` float32 (float64 for float64 input). A row that is all -inf gives -inf.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> float(losses.soft_values(jnp.zeros((4,))))  # log 4
        1.3862943649291992

    References:
        Haarnoja et al. 2017, "Reinforcement Learning with Deep Energy-Based Policies" (soft Q-learning).
    """
    check_float("logits", logits)
    _check_temperature(temperature)
    x = upcast(logits)
    return temperature * jax.nn.logsumexp(x / temperature, axis=-1)


def finite_where_masked(logits: Array, mask: Array) -> Array:
    """logits [B, T, V] with NaN and +-inf entries at positions where mask == 0 replaced by 0.

    Masked positions never count, but a NaN (or a row of -inf) there would still reach the gradient: the masked
    value is dropped by a where, and its zero cotangent times the NaN derivative of logsumexp is NaN. Finite
    masked logits are kept as they are (their V(s) may still be read as V(s_{t+1}) across a hole in the mask)."""
    bad = (jnp.asarray(mask) == 0)[..., None] & ~jnp.isfinite(logits)
    return jnp.where(bad, jnp.zeros((), logits.dtype), logits)


def soft_q_stats(logits: Array, targets: Array, temperature: float = 1.0, mask: Optional[Array] = None) -> Tuple[Array, Array]:
    r"""The pair (Q(s_t, a_t), V(s_t)) from full logits: all the imitation losses need of the logits.

        Q(s_t, a_t) = logits[b, t, targets[b, t]],   V(s_t) = tau * logsumexp(logits[b, t] / tau)

    Args:
        logits: ``[B, T, V]`` float; ``logits[b, t]`` predicts ``targets[b, t]`` (the caller shifts).
        targets: ``[B, T]`` integer ids.
        temperature: tau > 0.
        mask: optional ``[B, T]``; where it is 0, ids outside ``[0, V)`` (such as -100) and non-finite logits
            are allowed and cannot leak NaN into values or gradients.

    Returns:
        ``(target_q, values)``, two ``[B, T]`` float32 arrays. An id outside ``[0, V)`` on a counted position
        raises ValueError when the inputs are concrete and gives NaN in ``target_q`` under jit.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> q, v = losses.soft_q_stats(jnp.log(jnp.array([[[0.5, 0.25, 0.25]]])), jnp.array([[0]]))
        >>> print(round(float(q[0, 0] - v[0, 0]), 4))  # log pi(a|s) = log 0.5
        -0.6931
    """
    check_rank("logits", logits, 3, "[B, T, V]")
    check_rank("targets", targets, 2, "[B, T]")
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits [B, T, V] and targets [B, T] disagree: {logits.shape} vs {targets.shape}")
    check_float("logits", logits)
    if mask is not None:
        check_same_shape({"targets": targets, "mask": mask}, "[B, T]")
        check_mask("mask", mask)
    check_targets(targets, logits.shape[-1], mask)
    x = upcast(logits)
    if mask is not None:
        x = finite_where_masked(x, mask)
    return gather_target(x, targets), soft_values(x, temperature)


def token_log_probs(logits: Array, targets: Array, temperature: float = 1.0) -> Array:
    r"""Per-token log-probabilities log pi(a_t | s_t) = log_softmax(logits[b, t] / tau)[targets[b, t]].

    Args:
        logits: ``[B, T, V]`` float.
        targets: ``[B, T]`` integer ids.
        temperature: tau > 0.

    Returns:
        ``[B, T]`` float32, no reduction.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.token_log_probs(jnp.zeros((1, 2, 4)), jnp.array([[0, 3]]))  # uniform over 4: log 1/4
        Array([[-1.3862944, -1.3862944]], dtype=float32)
    """
    q, v = soft_q_stats(logits, targets, temperature)
    return (q - v) / temperature


def token_entropies(logits: Array, temperature: float = 1.0) -> Array:
    r"""Entropy of pi = softmax(logits / tau) at each position.

        H(s_t) = -sum_a pi(a | s_t) log pi(a | s_t)

    Args:
        logits: ``[..., V]`` float; entries of -inf (banned tokens) contribute nothing.
        temperature: tau > 0.

    Returns:
        ``[...]`` float32, no reduction.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.token_entropies(jnp.array([[0.0, 0.0, -jnp.inf], [0.0, 0.0, 0.0]]))  # log 2 (one banned), log 3
        Array([0.6931472, 1.0986123], dtype=float32)
    """
    check_float("logits", logits)
    _check_temperature(temperature)
    logp = jax.nn.log_softmax(upcast(logits) / temperature, -1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), -1)


def terminal_mask(mask: Array) -> Array:
    r"""The default terminal flags: True at the last counted position of each row.

    Args:
        mask: ``[B, T]``, nonzero on counted tokens.

    Returns:
        ``[B, T]`` bool; a row with no counted token is all False.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.terminal_mask(jnp.array([[1, 1, 0], [0, 1, 1]]))
        Array([[False,  True, False],
               [False, False,  True]], dtype=bool)
    """
    return last_true_index_mask(mask)


def next_state_values(values: Array, mask: Array, terminal: Optional[Array] = None) -> Array:
    r"""V(s_{t+1}) aligned with position t: the values shifted left by one, 0 where s_{t+1} is terminal.

    Args:
        values: ``[B, T]`` soft values V(s_t).
        mask: ``[B, T]``, nonzero on counted tokens.
        terminal: optional ``[B, T]`` bool, True at t when s_{t+1} is terminal (packed rows holding several
            responses); by default the last counted position of each row. The last column always gets 0.

    Returns:
        ``[B, T]`` in the values' dtype.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.next_state_values(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[1, 1, 0]]))
        Array([[2., 0., 0.]], dtype=float32)
    """
    check_rank("values", values, 2, "[B, T]")
    if terminal is None:
        terminal = terminal_mask(mask)
    check_same_shape({"values": values, "mask": mask, "terminal": terminal}, "[B, T]")
    nxt = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    # where, not multiply: V(s_{t+1}) may be -inf past the end of a row, and 0 * -inf is NaN.
    return jnp.where(jnp.asarray(terminal), jnp.zeros((), nxt.dtype), nxt)


def implied_rewards_from_q(
    target_q: Array,
    values: Array,
    mask: Array,
    gamma: float = 1.0,
    terminal: Optional[Array] = None,
) -> Array:
    r"""Implied per-token rewards from (Q(s_t, a_t), V(s_t)): the inverse soft Bellman operator.

        r_t = Q(s_t, a_t) - gamma * V(s_{t+1}),   V(s_{t+1}) = 0 where s_{t+1} is terminal

    Args:
        target_q: ``[B, T]`` Q(s_t, a_t) (from ``soft_q_stats`` or ``chunked_soft_q_stats``).
        values: ``[B, T]`` V(s_t).
        mask: ``[B, T]``, nonzero on counted tokens.
        gamma: discount in [0, 1].
        terminal: optional ``[B, T]`` bool terminal flags (``next_state_values``).

    Returns:
        ``[B, T]``, 0 where mask == 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> q, v, m = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 4.0]]), jnp.ones((1, 2))
        >>> losses.implied_rewards_from_q(q, v, m, gamma=0.5)  # [1 - 0.5 * 4, 2 - 0]
        Array([[-1.,  2.]], dtype=float32)

    References:
        Garg et al. 2021, "IQ-Learn: Inverse soft-Q Learning for Imitation".
    """
    check_same_shape({"target_q": target_q, "values": values, "mask": mask}, "[B, T]")
    check_mask("mask", mask)
    check_scalar("gamma", gamma, low=0.0, high=1.0)
    r = target_q - gamma * next_state_values(values, mask, terminal)
    return jnp.where(jnp.asarray(mask) != 0, r, jnp.zeros((), r.dtype))


def implied_rewards(
    logits: Array,
    targets: Array,
    mask: Array,
    gamma: float = 1.0,
    temperature: float = 1.0,
    terminal: Optional[Array] = None,
) -> Array:
    r"""Per-token rewards implied by the policy read as a soft Q-function (inverse soft Bellman operator).

        r_t = Q(s_t, a_t) - gamma * V(s_{t+1}),   V(s_{t+1}) = 0 at the last counted position of each row

    Summed over a response, r_t is the model's estimate of the response's return; at gamma = 1 the sum telescopes
    to log pi(y | x) + V(s_0).

    Args:
        logits: ``[B, T, V]`` float, read as Q(s_t, .).
        targets: ``[B, T]`` integer ids.
        mask: ``[B, T]``, nonzero on counted (response) tokens.
        gamma: discount in [0, 1].
        temperature: tau > 0.
        terminal: optional ``[B, T]`` bool terminal flags (``next_state_values``).

    Returns:
        ``[B, T]`` float32, 0 where mask == 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> logits = jnp.zeros((1, 2, 4))  # Q = 0 everywhere, V = log 4
        >>> losses.implied_rewards(logits, jnp.array([[1, 2]]), jnp.ones((1, 2)))  # [0 - log 4, 0 - 0]
        Array([[-1.3862944,  0.       ]], dtype=float32)

    References:
        Garg et al. 2021, "IQ-Learn"; Wulfmeier et al. 2024, "Imitating Language via Scalable Inverse
        Reinforcement Learning".
    """
    check_rank("mask", mask, 2, "[B, T]")
    q, v = soft_q_stats(logits, targets, temperature, mask)
    return implied_rewards_from_q(q, v, mask, gamma, terminal)


def chunked_soft_q_stats(
    hidden: Array,
    unembedding: Array,
    targets: Array,
    *,
    temperature: float = 1.0,
    chunk_size: int = 8192,
    bias: Optional[Array] = None,
) -> Tuple[Array, Array]:
    r"""(Q(s_t, a_t), V(s_t)) from hidden states, without building the ``[B, T, V]`` logits.

    Q(s_t, .) = hidden[b, t] @ unembedding (+ bias). The vocabulary is processed in chunks of ``chunk_size``
    columns with a running (online) logsumexp inside a rematerialised ``lax.scan``, so the forward and the backward
    pass hold ``[B*T, chunk_size]`` logits at a time instead of ``[B*T, V]``. Matmuls accumulate in float32.

    Args:
        hidden: ``[B, T, D]`` final hidden states.
        unembedding: ``[D, V]`` (pass ``embedding.T`` for tied embeddings).
        targets: ``[B, T]`` integer ids; an id outside ``[0, V)`` gives NaN in ``target_q``.
        temperature: tau > 0.
        chunk_size: vocabulary columns per chunk, a positive int.
        bias: optional ``[V]`` output bias.

    Returns:
        ``(target_q, values)``, two ``[B, T]`` float32 arrays equal (to float rounding) to
        ``soft_q_stats(hidden @ unembedding + bias, targets, temperature)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jax_irl import losses
        >>> h = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 8))
        >>> w = jax.random.normal(jax.random.PRNGKey(1), (8, 10))
        >>> t = jnp.array([[1, 9, 4]])
        >>> q, v = losses.chunked_soft_q_stats(h, w, t, chunk_size=4)
        >>> q_full, v_full = losses.soft_q_stats(h @ w, t)
        >>> bool(jnp.allclose(q, q_full, atol=1e-5) and jnp.allclose(v, v_full, atol=1e-5))
        True
    """
    check_rank("hidden", hidden, 3, "[B, T, D]")
    check_rank("unembedding", unembedding, 2, "[D, V]")
    check_rank("targets", targets, 2, "[B, T]")
    check_float("hidden", hidden)
    check_float("unembedding", unembedding)
    _check_temperature(temperature)
    b, t, d = hidden.shape
    if unembedding.shape[0] != d:
        raise ValueError(f"unembedding must have shape [D, V] with D = {d} (hidden's last axis); got {unembedding.shape}")
    if targets.shape != (b, t):
        raise ValueError(f"targets must have shape [B, T] = {(b, t)}; got {targets.shape}")
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    vocab = unembedding.shape[1]
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias must have shape [V] = ({vocab},); got {bias.shape}")
    check_targets(targets, vocab)

    acc = compute_dtype(jnp.promote_types(hidden.dtype, unembedding.dtype))
    h = constrain_rows(hidden.reshape(b * t, d))
    tgt = targets.reshape(b * t)
    chunk = min(chunk_size, vocab)

    def chunk_update(carry, start, size):
        m, s, q = carry
        w = jax.lax.dynamic_slice_in_dim(unembedding, start, size, axis=1)
        z = constrain_rows(jnp.dot(h, w, preferred_element_type=acc).astype(acc))
        if bias is not None:
            z = z + jax.lax.dynamic_slice_in_dim(bias, start, size).astype(acc)
        z = z / temperature
        # m is the running max (no gradient: logsumexp is invariant to the shift); s = sum exp(z - safe(m)).
        new_m = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(z, axis=-1)))
        old_shift = jnp.where(jnp.isfinite(m), m, 0.0)
        new_shift = jnp.where(jnp.isfinite(new_m), new_m, 0.0)
        rescale = jnp.where(jnp.isfinite(m), jnp.exp(old_shift - new_shift), 0.0)
        s = s * rescale + jnp.sum(jnp.exp(z - new_shift[:, None]), axis=-1)
        local = tgt - start
        inside = (local >= 0) & (local < size)
        picked = jnp.take_along_axis(z, jnp.clip(local, 0, size - 1)[:, None], axis=-1)[:, 0]
        q = q + jnp.where(inside, picked, 0.0)
        return (new_m, s, q)

    @jax.checkpoint
    def body(carry, start):
        return chunk_update(carry, start, chunk), None

    # Initial carries derived from the inputs, so that under shard_map they vary over the same mesh axes.
    zeros = jnp.zeros_like(h[:, 0], dtype=acc) + jnp.zeros_like(unembedding[0, 0], dtype=acc)
    init = (zeros - jnp.inf, zeros, zeros)
    n_full = vocab // chunk
    # Unrolled up to 16 chunks (a Llama-3 vocabulary at the paper configs' chunk of 16384 is 8): the same
    # operations, and a program without a loop, whose every chunk XLA's cost model counts (it counts a loop body
    # once) and whose chunks the scheduler may overlap with the parameter all-gathers.
    carry, _ = jax.lax.scan(body, init, jnp.arange(n_full) * chunk, unroll=max(1, min(n_full, 16)))
    if vocab % chunk:
        carry = jax.checkpoint(lambda c: chunk_update(c, n_full * chunk, vocab % chunk))(carry)
    m, s, q = carry
    values = temperature * (jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(s))
    valid = (tgt >= 0) & (tgt < vocab)
    target_q = jnp.where(valid, temperature * q, jnp.nan)
    return target_q.reshape(b, t), values.reshape(b, t)
