"""BERT-family encoder in Flax NNX (a reward-model backbone): post-norm blocks, bidirectional attention."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jax_irl.models.layers import DTYPES, activation, logical_param, normal_init, ones_init, zeros_init


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    activation: str = "gelu"
    with_pooler: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"
    pad_token_id: Optional[int] = 0

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"EncoderConfig: hidden_size ({self.hidden_size}) must be a multiple of num_heads "
                             f"({self.num_heads})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class LayerNorm(nnx.Module):
    def __init__(self, d: int, eps: float, rngs: nnx.Rngs, dtype):
        self.eps = eps
        self.weight = logical_param(rngs, ones_init, (d,), ("embed",), dtype)
        self.bias = logical_param(rngs, zeros_init, (d,), ("embed",), dtype)

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, -1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
        out = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]
        return out.astype(x.dtype)


class EncoderLayer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        pdt = DTYPES[cfg.param_dtype]
        d, h, hd, f = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
        self.cfg = cfg
        self.q = logical_param(rngs, normal_init, (d, h, hd), ("embed", "heads", "kv"), pdt)
        self.k = logical_param(rngs, normal_init, (d, h, hd), ("embed", "heads", "kv"), pdt)
        self.v = logical_param(rngs, normal_init, (d, h, hd), ("embed", "heads", "kv"), pdt)
        self.q_bias = logical_param(rngs, zeros_init, (h, hd), ("heads", "kv"), pdt)
        self.k_bias = logical_param(rngs, zeros_init, (h, hd), ("heads", "kv"), pdt)
        self.v_bias = logical_param(rngs, zeros_init, (h, hd), ("heads", "kv"), pdt)
        self.o = logical_param(rngs, normal_init, (h, hd, d), ("heads", "kv", "embed"), pdt)
        self.o_bias = logical_param(rngs, zeros_init, (d,), ("embed",), pdt)
        self.attn_norm = LayerNorm(d, cfg.norm_eps, rngs, pdt)
        self.up = logical_param(rngs, normal_init, (d, f), ("embed", "mlp"), pdt)
        self.up_bias = logical_param(rngs, zeros_init, (f,), ("mlp",), pdt)
        self.down = logical_param(rngs, normal_init, (f, d), ("mlp", "embed"), pdt)
        self.down_bias = logical_param(rngs, zeros_init, (d,), ("embed",), pdt)
        self.mlp_norm = LayerNorm(d, cfg.norm_eps, rngs, pdt)

    def __call__(self, x, key_mask):
        dt = x.dtype

        def proj(w, b):
            return jnp.einsum("btd,dhk->bthk", x, w[...].astype(dt)) + b[...].astype(dt)

        q, k, v = proj(self.q, self.q_bias), proj(self.k, self.k_bias), proj(self.v, self.v_bias)
        scores = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, -1).astype(dt)
        attn = jnp.einsum("bhts,bshk->bthk", probs, v)
        attn = jnp.einsum("bthk,hkd->btd", attn, self.o[...].astype(dt)) + self.o_bias[...].astype(dt)
        x = self.attn_norm(x + attn)
        hidden = activation(self.cfg.activation)(x @ self.up[...].astype(dt) + self.up_bias[...].astype(dt))
        return self.mlp_norm(x + hidden @ self.down[...].astype(dt) + self.down_bias[...].astype(dt))


class EncoderOutput(NamedTuple):
    hidden: jax.Array  # [B, T, D]
    pooled: Optional[jax.Array]  # [B, D]: tanh(dense(hidden[:, 0])) when the config has a pooler


class BertEncoder(nnx.Module):
    """``encoder(tokens, attention_mask=..., token_types=...)`` -> EncoderOutput; positions are 0..T-1."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = DTYPES[cfg.param_dtype]
        d = cfg.hidden_size
        self.word_embed = logical_param(rngs, normal_init, (cfg.vocab_size, d), ("vocab", "embed"), pdt)
        self.position_embed = logical_param(rngs, normal_init, (cfg.max_position_embeddings, d), (None, "embed"), pdt)
        self.type_embed = logical_param(rngs, normal_init, (cfg.type_vocab_size, d), (None, "embed"), pdt)
        self.embed_norm = LayerNorm(d, cfg.norm_eps, rngs, pdt)
        self.layers = nnx.List([EncoderLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        if cfg.with_pooler:
            self.pooler = logical_param(rngs, normal_init, (d, d), ("embed", None), pdt)
            self.pooler_bias = logical_param(rngs, zeros_init, (d,), (None,), pdt)
        else:
            self.pooler = self.pooler_bias = None

    def hidden_states(self, tokens, *, attention_mask=None) -> jax.Array:
        """The last layer's hidden states [B, T, D] (the backbone interface of ``heads``)."""
        return self(tokens, attention_mask=attention_mask).hidden

    def __call__(self, tokens, *, attention_mask=None, token_types=None) -> EncoderOutput:
        cfg = self.cfg
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [B, T]; got {tokens.shape}")
        b, t = tokens.shape
        if t > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {t} exceeds max_position_embeddings={cfg.max_position_embeddings}")
        mask = jnp.ones((b, t), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        types = jnp.zeros((b, t), jnp.int32) if token_types is None else token_types
        dt = DTYPES[cfg.dtype]
        x = (self.word_embed[...][tokens] + self.position_embed[...][jnp.arange(t)][None]
             + self.type_embed[...][types]).astype(dt)
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x, mask)
        pooled = None
        if self.pooler is not None:
            pooled = jnp.tanh(x[:, 0] @ self.pooler[...].astype(dt) + self.pooler_bias[...].astype(dt))
        return EncoderOutput(x, pooled)
