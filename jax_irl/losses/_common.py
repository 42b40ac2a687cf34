"""Shared validation and masked reductions for the loss layer.

Everything here runs at trace time (shape and dtype checks) or is a pure jnp function. Nothing imports
Flax, Orbax or TFDS: the loss layer can be vendored into any JAX codebase.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# The mesh axes that shard a batch's rows (``parallel.BATCH_AXES``; the loss layer names them without importing it).
BATCH_MESH_AXES = ("data", "fsdp")


def constrain_rows(x: Array) -> Array:
    r"""Pin an array's leading (row) axis to the batch axes of the mesh being traced under.

    Under ``jax.set_mesh``, the activations of a data-parallel / FSDP step stay split by rows, and XLA gathers the
    (smaller) weights for a matmul instead of splitting its contraction over the weights' sharded axis. A layout
    hint only: values and gradients are unchanged.

    Args:
        x: any array whose leading axis is rows.

    Returns:
        x, with a sharding constraint when a mesh is set and its rows divide over the batch axes; otherwise x
        as it is.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.constrain_rows(jnp.ones((2, 3))).shape  # outside a mesh: unchanged
        (2, 3)
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or jnp.ndim(x) == 0:
        return x
    axes = tuple(a for a in BATCH_MESH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if not axes or x.shape[0] % size:
        return x
    spec = jax.sharding.PartitionSpec(axes if len(axes) > 1 else axes[0], *([None] * (jnp.ndim(x) - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


def compute_dtype(x: Array) -> jnp.dtype:
    """The dtype to accumulate in: float32 for bf16/fp16/fp32 inputs, float64 stays float64."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def upcast(x: Array) -> Array:
    """x in its accumulation dtype (at least float32)."""
    x = jnp.asarray(x)
    return x.astype(compute_dtype(x))


def check_rank(name: str, x: Array, rank: int, layout: str) -> None:
    """Raise a ValueError that names the argument and its expected layout when x has the wrong rank."""
    if jnp.ndim(x) != rank:
        raise ValueError(f"{name} must have shape {layout} (rank {rank}); got shape {tuple(jnp.shape(x))}")


def check_same_shape(names_and_arrays: dict, layout: str) -> None:
    """Raise a ValueError listing every shape when the named arrays do not all share one shape."""
    shapes = {k: tuple(jnp.shape(v)) for k, v in names_and_arrays.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{k}: {s}" for k, s in shapes.items())
        raise ValueError(f"{', '.join(shapes)} must all have shape {layout}; got {listing}")


def check_float(name: str, x: Array) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"{name} must be a floating-point array; got dtype {jnp.result_type(x)}")


def check_targets(targets: Array, vocab_size: int, mask: Optional[Array] = None) -> None:
    """Targets must be integer token ids. Out-of-range ids are checked here when the values are concrete.

    Under jit the values are unknown at trace time; there the gather in ``gather_target`` returns NaN for an
    out-of-range id on a counted position, so the loss is NaN rather than silently wrong. Positions with
    mask == 0 may hold any id (e.g. the -100 that Hugging Face uses for padding).
    """
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise TypeError(f"targets must hold integer token ids; got dtype {jnp.result_type(targets)}")
    if isinstance(targets, jax.core.Tracer) or (mask is not None and isinstance(mask, jax.core.Tracer)):
        return
    t = np.asarray(targets)
    bad = (t < 0) | (t >= vocab_size)
    if mask is not None:
        bad &= np.asarray(mask) != 0
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"targets hold token ids outside [0, {vocab_size}) on counted positions: "
            f"targets{list(where)} = {int(t[where])} ({int(bad.sum())} such positions)"
        )


def check_mask(name: str, mask: Array) -> None:
    """Boolean or numeric; when concrete, no negative weight (a negative mask would subtract tokens)."""
    dt = jnp.result_type(mask)
    if not (jnp.issubdtype(dt, jnp.bool_) or jnp.issubdtype(dt, jnp.integer) or jnp.issubdtype(dt, jnp.floating)):
        raise TypeError(f"{name} must be boolean or numeric; got dtype {dt}")
    if not isinstance(mask, jax.core.Tracer) and not jnp.issubdtype(dt, jnp.bool_):
        m = np.asarray(mask)
        if (m < 0).any() or np.isnan(m).any():
            raise ValueError(f"{name} must hold weights >= 0 (1 counts a token, 0 skips it); got "
                             f"{float(m[(m < 0) | np.isnan(m)].flat[0])}")


def check_scalar(name: str, value, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False) -> None:
    """A hyperparameter in [low, high] (or (low, high] with low_open), whatever its numeric type (Python, numpy or
    a concrete jax scalar). Under jit (a traced value) nothing can be checked: the caller's formula then runs
    with the value as given."""
    if value is None or isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value)
    if v.size != 1:
        raise ValueError(f"{name} must be a scalar; got shape {v.shape}")
    v = float(v)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite; got {v}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}" +
                         (f" and <= {high:g}" if high is not None else "") + f"; got {v:g}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high:g}; got {v:g}")


def gather_target(values: Array, targets: Array) -> Array:
    """values[..., targets] over the last axis; NaN where a target id is out of range.

    values: [..., V]; targets: [...] integer. Returns [...].
    """
    vocab = values.shape[-1]
    valid = (targets >= 0) & (targets < vocab)
    idx = jnp.clip(targets, 0, vocab - 1)
    picked = jnp.take_along_axis(values, idx[..., None], axis=-1)[..., 0]
    return jnp.where(valid, picked, jnp.nan)


def masked_sum(x: Array, mask: Array, axis=None) -> Array:
    r"""sum(x * mask), ignoring whatever x holds where mask == 0 (inf or NaN included), in value and gradient.

    Args:
        x: float array.
        mask: broadcastable to x; its values weight the entries.
        axis: the axes to sum over (None: all).

    Returns:
        The sum over ``axis``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> float(losses.masked_sum(jnp.array([1.0, jnp.nan, 2.0]), jnp.array([1, 0, 1])))
        3.0
    """
    m = jnp.asarray(mask)
    x = jnp.where(m != 0, x, jnp.zeros((), x.dtype))
    return jnp.sum(x * m.astype(x.dtype), axis=axis)


def masked_mean(x: Array, mask: Array, axis=None, normalizer: Optional[Array] = None) -> Array:
    r"""sum(x * mask) / sum(mask), or / normalizer when given; 0 (not NaN) when nothing is counted.

    Args:
        x: float array.
        mask: broadcastable to x; its values weight the entries.
        axis: the axes to reduce (None: all).
        normalizer: optional count to divide by instead of ``sum(mask)`` (a global token count).

    Returns:
        The mean over ``axis``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> float(losses.masked_mean(jnp.array([1.0, 5.0, 3.0]), jnp.array([1, 0, 1])))
        2.0
        >>> float(losses.masked_mean(jnp.ones(3), jnp.zeros(3)))
        0.0
    """
    total = masked_sum(x, mask, axis=axis)
    if normalizer is None:
        normalizer = jnp.sum(jnp.asarray(mask).astype(total.dtype), axis=axis)
    normalizer = jnp.asarray(normalizer, total.dtype)
    return total / jnp.maximum(normalizer, jnp.finfo(total.dtype).tiny)


def masked_whiten(x: Array, mask: Array, shift_mean: bool = True, eps: float = 1e-8) -> Array:
    r"""Whiten over the counted entries: (x - mean) / std with population statistics; 0 where mask == 0.

    Args:
        x: ``[B, T]`` float.
        mask: ``[B, T]``, nonzero on counted entries.
        shift_mean: False adds the mean back (scale only), as PPO implementations do for rewards.
        eps: added to the variance.

    Returns:
        ``[B, T]`` float32.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import losses
        >>> losses.masked_whiten(jnp.array([[1.0, 3.0, 100.0]]), jnp.array([[1, 1, 0]]))
        Array([[-1.,  1.,  0.]], dtype=float32)
    """
    x = upcast(x)
    mean = masked_mean(x, mask)
    centered = jnp.where(jnp.asarray(mask) != 0, x - mean, 0.0)
    var = masked_mean(centered**2, mask)
    out = centered * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(jnp.asarray(mask) != 0, out, 0.0)


def last_true_index_mask(mask: Array) -> Array:
    """[B, T] bool: True at the last position of each row where mask != 0 (all False for an empty row)."""
    m = (jnp.asarray(mask) != 0).astype(jnp.int32)
    remaining = jnp.flip(jnp.cumsum(jnp.flip(m, -1), axis=-1), -1)  # counted positions at or after t
    return (m == 1) & (remaining == 1)
