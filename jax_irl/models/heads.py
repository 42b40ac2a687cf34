"""Heads on any backbone: a per-token value head (PPO) and a K-head linear reward head (ensembles).

A backbone is anything with ``backbone.hidden_states(tokens, attention_mask=...) -> [B, T, D]`` and a
``cfg.hidden_size``: the decoder ``Transformer`` (no logits computed) and the ``BertEncoder`` both have it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_irl.models.layers import logical_param


def last_token_hidden(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """hidden [B, T, D] at the last position of each row where mask != 0 -> [B, D] (position 0 for empty rows)."""
    m = jnp.asarray(mask) != 0
    t = hidden.shape[1]
    last = jnp.max(jnp.where(m, jnp.arange(t)[None], 0), axis=-1)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


class ValueHead(nnx.Module):
    """V(s_t) = hidden_t . w + b per token: [B, T, D] -> [B, T] float32. Starts at zero output."""

    def __init__(self, hidden_size: int, *, rngs: nnx.Rngs):
        self.kernel = logical_param(rngs, jax.nn.initializers.zeros, (hidden_size,), ("embed",), jnp.float32)
        self.bias = logical_param(rngs, jax.nn.initializers.zeros, (), (), jnp.float32)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return hidden.astype(jnp.float32) @ self.kernel[...] + self.bias[...]


class RewardHead(nnx.Module):
    """K independent linear heads on one pooled hidden state: [B, D] -> [B, K]. Each head has its own random
    initialisation, the source of diversity in an ensemble trained on the same data."""

    def __init__(self, hidden_size: int, num_heads: int = 1, *, rngs: nnx.Rngs):
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1; got {num_heads}")
        init = jax.nn.initializers.normal(1.0 / hidden_size**0.5)
        self.kernel = logical_param(rngs, init, (hidden_size, num_heads), ("embed", None), jnp.float32)
        self.bias = logical_param(rngs, jax.nn.initializers.zeros, (num_heads,), (None,), jnp.float32)

    def __call__(self, pooled: jax.Array) -> jax.Array:
        return pooled.astype(jnp.float32) @ self.kernel[...] + self.bias[...]


class RewardModel(nnx.Module):
    """A backbone plus a K-head reward head over the last counted token's hidden state (K = 1: an ordinary
    reward model). ``stop_backbone_gradient`` trains the heads only (a frozen, shared encoder)."""

    def __init__(self, backbone, num_heads: int = 1, *, stop_backbone_gradient: bool = False, rngs: nnx.Rngs):
        self.backbone = backbone
        self.head = RewardHead(backbone.cfg.hidden_size, num_heads, rngs=rngs)
        self.stop_backbone_gradient = stop_backbone_gradient

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """tokens, attention_mask: [B, T] (prompt + response). Returns rewards [B, K] float32."""
        hidden = self.backbone.hidden_states(tokens, attention_mask=attention_mask)
        pooled = last_token_hidden(hidden, attention_mask)
        if self.stop_backbone_gradient:
            pooled = jax.lax.stop_gradient(pooled)
        return self.head(pooled)
