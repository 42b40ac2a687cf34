"""Reward-model ensembles: pessimistic aggregation over K heads and bootstrap weights for training them.

A K-head reward model (one encoder, K linear heads) gives rewards [..., K]. Aggregates over the last axis:

    mean: (1/K) sum_k r_k
    min:  min_k r_k                                 (worst-case optimisation, WCO)
    uwo:  mean - coef * (1/K) sum_k (r_k - mean)^2  (uncertainty-weighted optimisation; population variance;
                                                     Coste et al. use coef 0.5 for best-of-n, 0.1 for PPO)
    lcb:  mean - coef * std                         (lower confidence bound; population std)

Each head is trained with its own Bradley-Terry loss: ``preference.bradley_terry_loss`` on [B, K] rewards,
optionally with per-head bootstrap weights from ``bootstrap_weights``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jax_irl.losses._common import Array, check_float, check_scalar, upcast

AGGREGATIONS = ("mean", "min", "uwo", "lcb")


def _population_std(x: Array, axis: int = -1) -> Array:
    """Std over an axis with a finite gradient where every entry is equal (sqrt'(0) is infinite)."""
    var = jnp.var(x, axis=axis)
    positive = var > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)


def aggregate_rewards(rewards: Array, method: str = "mean", coef: Optional[float] = None) -> Array:
    r"""Aggregate K heads' rewards over the last axis, optimistically or pessimistically.

        mean: (1/K) sum_k r_k
        min:  min_k r_k                              (worst-case optimisation, WCO)
        uwo:  mean - coef (1/K) sum_k (r_k - mean)^2 (uncertainty-weighted optimisation)
        lcb:  mean - coef std                        (lower confidence bound; population std)

    Args:
        rewards: ``[..., K]`` float, K >= 1 heads.
        method: 'mean' | 'min' | 'uwo' | 'lcb'.
        coef: lambda >= 0, required by 'uwo' and 'lcb' (Coste et al. use 0.5 for best-of-n and 0.1 for PPO with
            'uwo'), refused by the others.

    Returns:
        ``[...]`` float32 (float64 stays float64).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> r = jnp.array([[1.0, 1.2, 0.8, 3.0]])
        >>> losses.aggregate_rewards(r, "mean"), losses.aggregate_rewards(r, "min")
        (Array([1.5], dtype=float32), Array([0.8], dtype=float32))
        >>> losses.aggregate_rewards(r, "uwo", coef=0.5)  # 1.5 - 0.5 * 0.77
        Array([1.115], dtype=float32)

    References:
        Coste et al. 2024, "Reward Model Ensembles Help Mitigate Overoptimization"; Ahmed et al. 2024, "Scalable
        Ensembling For Mitigating Reward Overoptimisation".
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"method must be one of {AGGREGATIONS}; got {method!r}")
    check_float("rewards", rewards)
    if jnp.ndim(rewards) < 1 or jnp.shape(rewards)[-1] == 0:
        raise ValueError(f"rewards must have shape [..., K] with K >= 1 heads; got {tuple(jnp.shape(rewards))}")
    if method in ("uwo", "lcb"):
        if coef is None:
            raise ValueError(f"method {method!r} needs coef (the weight of the heads' disagreement)")
        check_scalar("coef", coef, low=0.0)
    elif coef is not None:
        raise ValueError(f"coef applies to 'uwo' and 'lcb', not {method!r}")
    r = upcast(rewards)
    mean = jnp.mean(r, axis=-1)
    if method == "mean":
        return mean
    if method == "min":
        return jnp.min(r, axis=-1)
    if method == "uwo":
        return mean - coef * jnp.var(r, axis=-1)
    return mean - coef * _population_std(r, axis=-1)


def head_disagreement(rewards: Array) -> Array:
    r"""The heads' disagreement: the population standard deviation of their rewards.

    Args:
        rewards: ``[..., K]`` float.

    Returns:
        ``[...]`` float32, with a finite gradient where all heads agree.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.head_disagreement(jnp.array([[1.0, 3.0], [2.0, 2.0]]))
        Array([1., 0.], dtype=float32)
    """
    check_float("rewards", rewards)
    return _population_std(upcast(rewards), axis=-1)


def bootstrap_weights(key: Array, batch_size: int, num_heads: int, kind: str = "poisson") -> Array:
    r"""Per-head bootstrap weights for training ensemble heads on resampled data.

    Args:
        key: a PRNG key.
        batch_size: B, the pairs in the batch.
        num_heads: K.
        kind: 'poisson' (counts ~ Poisson(1), the online bootstrap: each head sees a resample with replacement)
            or 'bernoulli' (0/1 with probability 1/2: each head sees about half the pairs).

    Returns:
        ``[B, K]`` float32, to pass as ``weights`` to ``bradley_terry_loss``.

    Examples:
        >>> import jax
        >>> from jax_irl import losses
        >>> w = losses.bootstrap_weights(jax.random.PRNGKey(0), 1000, 2)
        >>> w.shape, bool(abs(float(w.mean()) - 1.0) < 0.1)
        ((1000, 2), True)

    References:
        Osband et al. 2016, "Deep Exploration via Bootstrapped DQN".
    """
    if kind == "poisson":
        return jax.random.poisson(key, 1.0, (batch_size, num_heads)).astype(jnp.float32)
    if kind == "bernoulli":
        return jax.random.bernoulli(key, 0.5, (batch_size, num_heads)).astype(jnp.float32)
    raise ValueError(f"kind must be 'poisson' or 'bernoulli'; got {kind!r}")
