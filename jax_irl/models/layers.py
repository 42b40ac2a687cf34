"""Building blocks shared by the decoder, the encoder and the heads: annotated params, initialisers, dtypes,
activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.custom_derivatives import SymbolicZero

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

normal_init = jax.nn.initializers.normal(0.02)
zeros_init = jax.nn.initializers.zeros
ones_init = jax.nn.initializers.ones


def logical_param(rngs: nnx.Rngs, init, shape, names, dtype) -> nnx.Param:
    """An nnx.Param initialised by init(key, shape, dtype), annotated with logical axis names (eager sharding
    off: a model builds anywhere, and ``jax_irl.parallel`` maps the names to mesh axes)."""
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


def activation(name: str):
    """The activation function of a config's name: silu, gelu_tanh or gelu."""
    table = {
        "silu": jax.nn.silu,
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    }
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)}; got {name!r}")
    return table[name]


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """x @ w for x [..., d] and a weight w [d, f]. The value is exactly ``x @ w`` and the derivatives (forward and
    reverse mode) equal autodiff's up to float summation order; what differs is how XLA lays out the weight
    gradient.

    The weight gradient sum_n x[n, :]^T g[n, :] contracts the leading (token) axis of both row-major operands.
    Left to itself, XLA:CPU writes one of them transposed inside a fused elementwise pass (often the larger, such
    as a SwiGLU gradient as [688, 4080]) and then runs a generic dot instead of its library matmul: 23% of the W1
    SFT step went to such transposing copies. The JVP (``dense_many``'s) writes the tangent term x @ w_dot as a
    contraction of xt = x^T ([d, N], transposed once in the forward and kept from being folded back by an
    optimization barrier) over its leading axis; reverse mode transposes that term into the weight gradient
    xt @ g, a plain [d, N] x [N, f] matmul. When d > f the transposed x would be the larger operand, and the plain
    form is as fast (measured), so it is kept. The SwiGLU MLP's forward and backward at W1 went from 98 to 60 ms.
    """
    return dense_many(x, (w,))[0]


@jax.custom_jvp
def dense_many(x: jax.Array, ws) -> tuple:
    """(x @ w for w in ws): several weights [d, f_i] applied to the same input x [..., d], such as the query, key
    and value projections or a gated MLP's gate and up. Values and derivatives as ``dense`` for each weight; the
    transposed input of the weight gradients is made once for all of them. The barriers keep XLA from merging
    the per-weight transposes, so separate ``dense`` calls on one input transpose it once each. Once made, it
    serves every weight of the group, also those with d > f, such as the key and value projections of
    grouped-query attention: their plain form had XLA write the [N, f] gradient transposed, fused with RoPE's
    backward pass, about 7 ms a layer at W1. Sharing took about 1% (query, key and value, before that) and 2%
    (gate and up) off the W1 SFT step, and using it for keys and values a further 4.6% (680 to 649 ms), each
    measured side by side. The weights stay separate parameters, their shardings and checkpoint layout
    unchanged; concatenating them into one product instead was slower for gate and up than separate products."""
    return tuple(x @ w for w in ws)


def _dense_many_jvp(primals, tangents):
    x, ws = primals
    x_dot, w_dots = tangents
    ys = tuple(x @ w for w in ws)
    d = x.shape[-1]
    # x^T [d, N], once, if any differentiated weight wants it (d <= f); then every weight of the group uses it,
    # since the plain form's layout choice for a d > f weight writes its [N, f] gradient transposed instead.
    wants = [not isinstance(w_dot, SymbolicZero) and w.shape[1] >= d for w, w_dot in zip(ws, w_dots)]
    xt = jax.lax.optimization_barrier(x.reshape(-1, d).T) if any(wants) else None
    outs = []
    for y, w, w_dot in zip(ys, ws, w_dots):
        out = None if isinstance(x_dot, SymbolicZero) else x_dot @ w
        if not isinstance(w_dot, SymbolicZero):  # a weight that is differentiated
            if xt is None:
                term = x @ w_dot
            else:
                term = jax.lax.dot_general(xt, w_dot, (((0,), (0,)), ((), ()))).reshape(y.shape)
            out = term if out is None else out + term
        outs.append(jnp.zeros_like(y) if out is None else out)
    return ys, tuple(outs)


dense_many.defjvp(_dense_many_jvp, symbolic_zeros=True)
