"""Building blocks shared by the decoder, the encoder and the heads: annotated params, initialisers, dtypes,
activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

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
