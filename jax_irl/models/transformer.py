"""Decoder-only transformer (Llama, Qwen2, Gemma and GPT-2 families from one config) in Flax NNX.

Parameters carry logical axis names (vocab, embed, heads, kv, mlp) in their ``out_sharding`` metadata, with
eager sharding off: a model builds anywhere, and ``jax_irl.parallel`` maps the names to mesh axes.

Call: ``model(tokens, attention_mask=..., positions=..., cache=..., cache_index=...)`` returns a
``DecoderOutput`` with logits [B, T, V], the final hidden states [B, T, D] (for value heads and for
``losses.chunked_soft_q_stats`` with ``model.unembedding()``), and the updated KV cache.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_irl.losses._common import constrain_rows
from jax_irl.models import lora
from jax_irl.models.config import TransformerConfig, cudnn_attention_unsupported
from jax_irl.models.layers import (DTYPES, activation, dense, dense_many, logical_param, normal_init, ones_init,
                                   zeros_init)

Array = jax.Array


class Norm(nnx.Module):
    """RMSNorm (weight w, or 1 + w for Gemma) or LayerNorm, statistics in float32."""

    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.kind, self.eps, self.one_plus = cfg.norm, cfg.norm_eps, cfg.rms_one_plus
        pdt = DTYPES[cfg.param_dtype]
        d = cfg.hidden_size
        self.weight = logical_param(rngs, zeros_init if cfg.rms_one_plus else ones_init, (d,), ("embed",), pdt)
        self.bias = logical_param(rngs, zeros_init, (d,), ("embed",), pdt) if cfg.norm == "layer" else None

    def __call__(self, x: Array) -> Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        w = self.weight[...].astype(jnp.float32)
        if self.kind == "layer":
            mean = jnp.mean(x32, -1, keepdims=True)
            var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
            out = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * w + self.bias[...].astype(jnp.float32)
            return out.astype(dtype)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        if self.one_plus:
            return (normed * (1.0 + w)).astype(dtype)
        return normed.astype(dtype) * w.astype(dtype)


def rope_inverse_frequencies(cfg: TransformerConfig) -> Array:
    """inv_freq [head_dim / 2] with the config's RoPE scaling ('default', 'linear', 'llama3')."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
    if cfg.rope_type == "linear":
        return inv / cfg.rope_factor
    if cfg.rope_type == "llama3":
        low_wavelen = cfg.rope_original_max_positions / cfg.rope_low_freq_factor
        high_wavelen = cfg.rope_original_max_positions / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > low_wavelen, inv / cfg.rope_factor, inv)
        smooth = (cfg.rope_original_max_positions / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(medium, smoothed, scaled)
    return inv


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotary embedding in the rotate-half layout. x: [B, T, H, hd]; positions: [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
    emb = jnp.concatenate([angles, angles], -1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = DTYPES[cfg.param_dtype]
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q = logical_param(rngs, normal_init, (d, h, hd), ("embed", "heads", "kv"), pdt)
        self.k = logical_param(rngs, normal_init, (d, kv, hd), ("embed", "heads", "kv"), pdt)
        self.v = logical_param(rngs, normal_init, (d, kv, hd), ("embed", "heads", "kv"), pdt)
        self.o = logical_param(rngs, normal_init, (h, hd, d), ("heads", "kv", "embed"), pdt)
        if cfg.qkv_bias:
            self.q_bias = logical_param(rngs, zeros_init, (h, hd), ("heads", "kv"), pdt)
            self.k_bias = logical_param(rngs, zeros_init, (kv, hd), ("heads", "kv"), pdt)
            self.v_bias = logical_param(rngs, zeros_init, (kv, hd), ("heads", "kv"), pdt)
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        self.o_bias = logical_param(rngs, zeros_init, (d,), ("embed",), pdt) if cfg.out_bias else None

    def _project(self, x, *names):
        """The projections ``names`` ('q', 'k', 'v') of x [..., D] -> each [..., heads, head_dim], through one
        ``dense_many`` (the weight gradients share x's transpose)."""
        ws = [getattr(self, n) for n in names]
        ys = dense_many(x, tuple(lora.weight(self, n, x.dtype).reshape(w.shape[0], -1) for n, w in zip(names, ws)))
        adapters = getattr(self, "lora", None)
        out = []
        for n, w, y in zip(names, ws, ys):
            adapter = lora.active(adapters, n)
            if adapter is not None:
                y = y + adapter.delta(x)
            y = y.reshape(x.shape[:-1] + w.shape[1:])
            b = getattr(self, n + "_bias")
            out.append(y if b is None else y + b[...].astype(x.dtype))
        return out

    def __call__(self, x, positions, key_valid, query_slots, inv_freq, layer_cache=None, cache_index=None):
        cfg = self.cfg
        q, k, v = self._project(x, "q", "k", "v")
        if cfg.positions == "rope":
            q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        b, t, h, hd = q.shape
        impl = _attention_impl(cfg, t) if layer_cache is None else "einsum"
        if impl != "einsum":
            return self._output(self._fused_attention(q, k, v, key_valid, impl), x.dtype), None
        kvh = cfg.num_kv_heads
        g = h // kvh
        qg = q.reshape(b, t, kvh, g, hd).transpose(0, 2, 3, 1, 4)  # [B, KV, G, T, hd]
        if layer_cache is None:
            # Keys and values as [B, KV, S, hd]: batch dims lead, the layout the attention dots want.
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
            out = _causal_attention(qg, k, v, key_valid, 0, cfg.attention_block, x.dtype)
            return self._output(out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd), x.dtype), None
        # The cache holds keys as [B * KV, hd, S] and values as [B * KV, S, hd], and the attention dots run on
        # exactly those arrays, with (G, T) as the rows of each of the B * KV products. Every layout here was
        # measured on XLA:CPU's decoding step: keys stored [S, hd] made the score product pack the transposed
        # cache at every step (0.1 ms a layer at W1's sampler shape); a dot operand that is a reshape of the
        # updated cache rather than the cache itself (as [B, KV, ...] against [B * KV, ...], or any size-1 axis
        # that XLA drops, such as one KV head) made XLA fuse the cache update twice and copy the whole cache
        # several times per step.
        k_new = k.transpose(0, 2, 3, 1).reshape(b * kvh, hd, t).astype(layer_cache["k"].dtype)
        v_new = v.transpose(0, 2, 1, 3).reshape(b * kvh, t, hd).astype(layer_cache["v"].dtype)
        k = jax.lax.dynamic_update_slice_in_dim(layer_cache["k"], k_new, cache_index, axis=2)
        v = jax.lax.dynamic_update_slice_in_dim(layer_cache["v"], v_new, cache_index, axis=1)
        new_cache = {"k": k, "v": v}
        k, v = k.astype(x.dtype), v.astype(x.dtype)
        if isinstance(cache_index, (int, np.integer)):
            # A cache index known when tracing (a prefill): the slots past cache_index + T are empty for this call,
            # so the keys stop there, and the queries go in causal blocks as without a cache.
            end = int(cache_index) + t
            k_used = k[:, :, :end].reshape(b, kvh, hd, end).transpose(0, 1, 3, 2)
            v_used = v[:, :end].reshape(b, kvh, end, hd)
            out = _causal_attention(qg, k_used, v_used, key_valid, int(cache_index), cfg.attention_block, x.dtype)
            return self._output(out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd), x.dtype), new_cache
        scores = jnp.einsum("nqh,nhs->nqs", qg.reshape(b * kvh, g * t, hd), k, preferred_element_type=jnp.float32)
        scores = scores.reshape(b, kvh, g, t, -1) / math.sqrt(hd)
        key_slots = jnp.arange(scores.shape[-1])
        allowed = key_valid[:, None, None, None, :] & (key_slots[None, :] <= query_slots[:, None])[None, None, None]
        probs = _masked_softmax(scores, allowed).astype(x.dtype)
        out = jnp.einsum("nqs,nsh->nqh", probs.reshape(b * kvh, g * t, -1), v).reshape(b, kvh, g, t, hd)
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)
        return self._output(out, x.dtype), new_cache

    def windowed(self, x, positions, key_valid, inv_freq, rows):
        """The attention output [B, W, D] at query positions ``rows`` [B, W] only, with keys and values from every
        position of x [B, T, D]: query i of row b sees the valid keys at positions <= rows[b, i]. The same as
        gathering those rows of the full output (to float rounding, for every query with a key to attend to); it
        always takes jax_irl's own path."""
        cfg = self.cfg
        (q,) = self._project(take_rows(x, rows), "q")
        k, v = self._project(x, "k", "v")
        if cfg.positions == "rope":
            q, k = apply_rope(q, take_rows(positions, rows), inv_freq), apply_rope(k, positions, inv_freq)
        b, w, h, hd = q.shape
        kvh = cfg.num_kv_heads
        qg = q.reshape(b, w, kvh, h // kvh, hd).transpose(0, 2, 3, 1, 4)  # [B, KV, G, W, hd]
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        allowed = key_valid[:, None, None, None, :] & (
            jnp.arange(x.shape[1])[None, None, :] <= rows[:, :, None])[:, None, None]
        out = _attend(qg, k, v, allowed, x.dtype).transpose(0, 3, 1, 2, 4).reshape(b, w, h, hd)
        return self._output(out, x.dtype)

    def _output(self, out, dtype):
        h, k, d = self.o.shape
        flat = out.reshape(out.shape[:-2] + (h * k,))
        y = dense(flat, lora.weight(self, "o", dtype).reshape(h * k, d))
        adapter = lora.active(getattr(self, "lora", None), "o")
        if adapter is not None:
            y = y + adapter.delta(flat)
        return y if self.o_bias is None else y + self.o_bias[...].astype(dtype)

    @staticmethod
    def _fused_attention(q, k, v, key_valid, impl):
        """``jax.nn.dot_product_attention`` over q [B, T, H, hd], k/v [B, T, KV, hd] (grouped heads handled by the
        function), causal, with padded keys masked. The mask is given as [B, 1, T, S]: cuDNN takes a mask only as a
        full-length bias."""
        b, t = q.shape[:2]
        mask = jnp.broadcast_to(key_valid[:, None, None, :], (b, 1, t, key_valid.shape[-1]))
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True,
                                            implementation=None if impl == "xla" else "cudnn")


def take_rows(x: Array, rows: Array) -> Array:
    """x [B, T, ...] at positions rows [B, W] of each row -> [B, W, ...]."""
    return jnp.take_along_axis(x, rows.reshape(rows.shape + (1,) * (x.ndim - 2)), axis=1)


def window_rows(start: Array, width: int, length: int) -> Array:
    """The positions [B, W] (int32) of a window of ``width`` from start [B] in rows of ``length``: start[b] + j,
    with positions past length - 1 repeating the last one."""
    return jnp.minimum(jnp.asarray(start).astype(jnp.int32)[:, None] + jnp.arange(width, dtype=jnp.int32)[None],
                       length - 1)


def query_blocks(length: int, block: int):
    """The (start, end) query blocks of a causal attention over ``length`` tokens: about ``block`` tokens each,
    as equal as they can be (one block when ``block`` is 0 or at least ``length``)."""
    n = 1 if block <= 0 else max(1, round(length / block))
    edges = [round(length * i / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _masked_softmax(scores: Array, allowed: Array) -> Array:
    """softmax over the last axis of float32 scores with disallowed entries at float32's lowest (exactly 0 after
    the exp whenever a row has an allowed entry), in float32."""
    return jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _attend(qg: Array, k: Array, v: Array, allowed: Array, dtype) -> Array:
    """Grouped-query attention without a cache: qg [B, KV, G, T, hd], k/v [B, KV, S, hd], allowed broadcastable
    to [B, KV, G, T, S] -> [B, KV, G, T, hd]. A batched matmul over (B, KV) in its natural [.., G, T, hd] layout
    (the caller transposes once): asking the einsum for [B, T, KV, G, hd] directly sends XLA:CPU to a slow generic
    dot.

    The value is exactly the plain computation's. The JVP below is the plain one rewritten so that reverse mode
    reads less, as in FlashAttention-2's backward pass (Dao 2023). With P = softmax(S) and O = P V, the tangent is

        dO = (P * (dS - rowsum(P * dS))) V + P dV = (P * dS) V - rowsum(P * dS) * O + P dV,

    since rowsum(P * dS) is a per-row scalar and P V = O. Transposed by reverse mode, the middle term gives the
    score cotangent P * (dO V^T - D) with D = rowsum(dO * O), a [.., T, hd] product, where autodiff of the softmax
    forms rowsum(P * dP) over the [.., T, S] scores: one pass over the score-sized arrays fewer (the W1 SFT step:
    730 to 682 ms, side by side). A masked score has no tangent, as under autodiff. Forward mode and higher
    orders stay available (tested equal to autodiff of the plain computation)."""
    return _attend_primal(qg, k, v, allowed, dtype)[1]


def _attend_primal(qg, k, v, allowed, dtype):
    """(softmax probabilities in float32 [B, KV, G, T, S], attention output [B, KV, G, T, hd])."""
    scores = jnp.einsum("bkgth,bksh->bkgts", qg, k, preferred_element_type=jnp.float32) / math.sqrt(qg.shape[-1])
    probs = _masked_softmax(scores, allowed)
    return probs, jnp.einsum("bkgts,bksh->bkgth", probs.astype(dtype), v)


@_attend.defjvp
def _attend_jvp(dtype, primals, tangents):
    qg, k, v, allowed = primals
    q_dot, k_dot, v_dot, _ = tangents  # allowed is boolean: no tangent
    probs, out = _attend_primal(qg, k, v, allowed, dtype)
    scores_dot = (jnp.einsum("bkgth,bksh->bkgts", q_dot, k, preferred_element_type=jnp.float32)
                  + jnp.einsum("bkgth,bksh->bkgts", qg, k_dot, preferred_element_type=jnp.float32)) / math.sqrt(
        qg.shape[-1])
    weighted = jnp.where(allowed, probs * scores_dot, 0.0)  # a masked score has no tangent (a query with no key
    # to attend to has uniform probs over masked keys: its output's tangent is P dV alone, as autodiff gives)
    row = jnp.sum(weighted, axis=-1, keepdims=True)
    out_dot = (jnp.einsum("bkgts,bksh->bkgth", weighted.astype(dtype), v) - (row * out.astype(jnp.float32)).astype(dtype)
               + jnp.einsum("bkgts,bksh->bkgth", probs.astype(dtype), v_dot))
    return out, out_dot


def _causal_attention(qg: Array, k: Array, v: Array, key_valid: Array, offset: int, block: int, dtype) -> Array:
    """Causal grouped-query attention of queries qg [B, KV, G, T, hd] at slots offset .. offset + T - 1 over keys
    and values [B, KV, S, hd] (S >= offset + T) whose slots are valid where key_valid [B, S] says so ->
    [B, KV, G, T, hd]. The queries go in ``query_blocks`` and each block's scores cover only the keys up to its own
    last slot: the keys past it are all masked for the block, so they are left out instead of being computed and
    masked."""
    t = qg.shape[3]
    blocks = []
    for start, end in query_blocks(t, block):
        keys = offset + end
        slots = offset + jnp.arange(start, end)
        allowed = key_valid[:, None, None, None, :keys] & (jnp.arange(keys)[None, :] <= slots[:, None])[None, None, None]
        blocks.append(_attend(qg[:, :, :, start:end], k[:, :, :keys], v[:, :, :keys], allowed, dtype))
    return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=3)


def _attention_impl(cfg: TransformerConfig, length: int) -> str:
    """The attention path of a cache-free forward of ``length`` tokens: the config's choice, with 'auto' resolved
    (to 'cudnn' on a GPU backend with bfloat16 compute, a supported head_dim and an even length, which cuDNN's
    masked kernel needs; to 'einsum' elsewhere). 'cudnn' off a GPU is refused with the config field named."""
    backend = jax.default_backend()
    if cfg.attention == "auto":
        fits = cudnn_attention_unsupported(cfg.dtype, cfg.head_dim) is None and length % 2 == 0
        return "cudnn" if backend == "gpu" and fits else "einsum"
    if cfg.attention == "cudnn" and backend != "gpu":
        raise ValueError(f"TransformerConfig.attention='cudnn' runs on a GPU backend only; this one is {backend!r} "
                         f"(use 'auto' to take cuDNN where it applies and jax_irl's own attention elsewhere)")
    return cfg.attention


class MLP(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        pdt = DTYPES[cfg.param_dtype]
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gated = cfg.mlp == "gated"
        self.act = activation(cfg.activation)
        self.up = logical_param(rngs, normal_init, (d, f), ("embed", "mlp"), pdt)
        self.gate = logical_param(rngs, normal_init, (d, f), ("embed", "mlp"), pdt) if self.gated else None
        self.down = logical_param(rngs, normal_init, (f, d), ("mlp", "embed"), pdt)
        self.up_bias = logical_param(rngs, zeros_init, (f,), ("mlp",), pdt) if cfg.mlp_bias else None
        self.down_bias = logical_param(rngs, zeros_init, (d,), ("embed",), pdt) if cfg.mlp_bias else None
        if cfg.mlp_bias and self.gated:
            self.gate_bias = logical_param(rngs, zeros_init, (f,), ("mlp",), pdt)
        else:
            self.gate_bias = None

    @staticmethod
    def _bias(y, b):
        return y if b is None else y + b[...].astype(y.dtype)

    def _adapted(self, name, x, y):
        adapter = lora.active(getattr(self, "lora", None), name)
        return y if adapter is None else y + adapter.delta(x)

    def __call__(self, x):
        if self.gated:  # gate and up through one dense_many: their weight gradients share x's transpose
            gate, up = dense_many(x, (lora.weight(self, "gate", x.dtype), lora.weight(self, "up", x.dtype)))
            gate, up = self._adapted("gate", x, gate), self._adapted("up", x, up)
            hidden = self.act(self._bias(gate, self.gate_bias)) * self._bias(up, self.up_bias)
        else:
            hidden = self.act(self._bias(self._adapted("up", x, dense(x, lora.weight(self, "up", x.dtype))),
                                         self.up_bias))
        down = self._adapted("down", hidden, dense(hidden, lora.weight(self, "down", hidden.dtype)))
        return self._bias(down, self.down_bias)


class Block(nnx.Module):
    def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
        self.attn_norm = Norm(cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = Norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, key_valid, query_slots, inv_freq, layer_cache=None, cache_index=None):
        a, new_cache = self.attn(self.attn_norm(x), positions, key_valid, query_slots, inv_freq, layer_cache,
                                 cache_index)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), new_cache

    def windowed(self, x, positions, key_valid, inv_freq, rows):
        """The block's output [B, W, D] at positions ``rows`` [B, W] only (keys and values from every position)."""
        a = self.attn.windowed(self.attn_norm(x), positions, key_valid, inv_freq, rows)
        x = take_rows(x, rows) + a
        return x + self.mlp(self.mlp_norm(x))


def remat_policy(name: str):
    """The ``jax.checkpoint`` policy of a ``TransformerConfig.remat`` name (None for 'full': save nothing)."""
    policies = jax.checkpoint_policies
    if name == "full":
        return policies.nothing_saveable
    if name == "dots":
        return policies.dots_saveable
    if name == "dots_no_batch":
        return policies.dots_with_no_batch_dims_saveable
    if name == "offload":
        return policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    raise ValueError(f"remat must be one of 'full', 'dots', 'dots_no_batch', 'offload' here; got {name!r}")


def _block_without_cache(block, x, positions, key_valid, query_slots, inv_freq):
    return block(x, positions, key_valid, query_slots, inv_freq)[0]


@functools.lru_cache(maxsize=None)
def _rematerialised(fn, name: str):
    """``fn(block, ...)`` under ``jax.checkpoint`` with the named policy: the block's activations are recomputed in
    the backward pass instead of being kept (all of them but what the policy saves).

    The block goes in as its split state (``nnx.split``) and is merged inside, a pure function of its arrays; a
    forward without a cache mutates nothing, so nothing is written back. (``nnx.remat`` writes the block's state
    back, and with only part of the params differentiated, as under LoRA, that write raised flax's
    TraceContextError on the frozen ones.) LoRA dropout keys, set on the adapters in a train step, go in as an
    argument."""
    policy = remat_policy(name)

    def call(block, *args):
        adapters = [ad for _, ad in lora.adapters(block)]
        keys = [ad.dropout_key for ad in adapters]
        for ad in adapters:
            ad.dropout_key = None
        graphdef, state = nnx.split(block)
        for ad, key in zip(adapters, keys):
            ad.dropout_key = key

        def pure(state, keys, *args):
            inner = nnx.merge(graphdef, state)
            for (_, ad), key in zip(lora.adapters(inner), keys):
                ad.dropout_key = key
            return fn(inner, *args)

        return jax.checkpoint(pure, policy=policy, prevent_cse=True)(state, keys, *args)

    return call


class DecoderOutput(NamedTuple):
    logits: Optional[Array]  # [B, T, V] in the compute dtype (None when compute_logits=False); [B, W, V] in a window
    hidden: Array  # [B, T, D] after the final norm; [B, W, D] in a window
    cache: Optional[dict]


class Transformer(nnx.Module):
    """Decoder-only language model. See the module docstring for the call signature."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = DTYPES[cfg.param_dtype]
        self.embed = logical_param(rngs, normal_init, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pdt)
        if cfg.positions == "learned":
            self.position_embed = logical_param(rngs, normal_init, (cfg.max_position_embeddings, cfg.hidden_size),
                                                (None, "embed"), pdt)
        else:
            self.position_embed = None
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = Norm(cfg, rngs)
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = logical_param(rngs, normal_init, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pdt)

    def unembedding(self) -> Array:
        """The [D, V] output matrix (the transposed embedding when tied)."""
        return self.embed[...].T if self.lm_head is None else self.lm_head[...]

    def logits(self, hidden: Array) -> Array:
        """Logits [..., V] of final hidden states [..., D] (the forward's own unembedding, in their dtype)."""
        return dense(hidden, self.unembedding().astype(hidden.dtype))

    def hidden_states(self, tokens: Array, *, attention_mask: Optional[Array] = None) -> Array:
        """The final hidden states [B, T, D] without the logits (the backbone interface of ``heads``)."""
        return self(tokens, attention_mask=attention_mask, compute_logits=False).hidden

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> dict:
        """An empty KV cache for ``max_length`` slots: per layer keys 'k' [B * KV, hd, S] and values 'v'
        [B * KV, S, hd] (the layouts the decoding step's dots want, see ``Attention``), and 'valid' [B, S]."""
        cfg = self.cfg
        dtype = dtype or DTYPES[cfg.dtype]
        shape = (batch_size * cfg.num_kv_heads, max_length, cfg.head_dim)
        k_shape = (batch_size * cfg.num_kv_heads, cfg.head_dim, max_length)
        return {
            "layers": [{"k": jnp.zeros(k_shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)],
            "valid": jnp.zeros((batch_size, max_length), bool),
        }

    def __call__(self, tokens: Array, *, attention_mask: Optional[Array] = None, positions: Optional[Array] = None,
                 cache: Optional[dict] = None, cache_index=None, compute_logits: bool = True,
                 window: Optional[Tuple[Array, int]] = None) -> DecoderOutput:
        """tokens: [B, T] ids; attention_mask: [B, T], 1 on real tokens (default all ones); positions: [B, T]
        (default: the count of real tokens before each one, so left padding is handled); cache/cache_index:
        write this call's keys and values at slots cache_index .. cache_index + T of ``cache`` and attend to
        every valid slot up to each query's own.

        window: (start [B] int, width W) returns the hidden states and logits of positions start[b] ..
        start[b] + W - 1 of each row only (positions past T - 1 repeat the last), as [B, W, ...]. Nothing after
        the last block reads other positions, so its queries, output projection and MLP, the final norm and the
        unembedding run on the window alone (its keys and values still come from every position); the values
        equal the same positions of the full forward to float rounding. Cache-free forwards only."""
        cfg = self.cfg
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [B, T]; got {tokens.shape}")
        b, t = tokens.shape
        if cfg.positions == "learned" and cache is None and positions is None and t > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {t} exceeds the model's {cfg.max_position_embeddings} learned "
                             f"positions (past the table the positions would be clamped silently)")
        mask = jnp.ones((b, t), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        if mask.shape != (b, t):
            raise ValueError(f"attention_mask must have shape [B, T] = {(b, t)}; got {mask.shape}")
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
        dtype = DTYPES[cfg.dtype]
        x = self.embed[...][tokens].astype(dtype)
        embed_lora = getattr(self, "embed_lora", None)
        if embed_lora is not None and embed_lora.enabled:
            x = x + embed_lora.lookup(tokens, dtype)
        if cfg.scale_embeddings:
            x = x * jnp.asarray(math.sqrt(cfg.hidden_size), dtype)
        if self.position_embed is not None:
            x = x + self.position_embed[...][positions].astype(dtype)
        # Traced under a mesh (``jax.set_mesh``: the Trainer, the scorer and the sampler do it), the residual
        # stream stays split by rows over the batch axes, so each matmul gathers its FSDP-sharded weight.
        x = constrain_rows(x)
        if cache is None:
            key_valid, query_slots, layer_caches = mask, jnp.arange(t), [None] * cfg.num_layers
        else:
            if cache_index is None:
                raise ValueError("cache_index is required with a cache")
            key_valid = jax.lax.dynamic_update_slice_in_dim(cache["valid"], mask, cache_index, axis=1)
            query_slots = cache_index + jnp.arange(t)
            layer_caches = cache["layers"]
        inv_freq = rope_inverse_frequencies(cfg)
        rows = None
        if window is not None:
            if cache is not None:
                raise ValueError("window is for cache-free forwards; got a cache")
            start, width = window
            if not (isinstance(width, int) and width >= 1):
                raise ValueError(f"window width must be a positive int; got {width!r}")
            start = jnp.asarray(start)
            if start.shape != (b,):
                raise ValueError(f"window start must have shape [B] = ({b},); got {start.shape}")
            rows = window_rows(start, width, t)
        new_layers = []
        remat = cache is None and cfg.remat != "none"
        for i, (block, layer_cache) in enumerate(zip(self.layers, layer_caches)):
            if rows is not None and i == len(self.layers) - 1:
                windowed = _rematerialised(Block.windowed, cfg.remat) if remat else Block.windowed
                x = windowed(block, x, positions, key_valid, inv_freq, rows)
                break
            if remat:
                x = _rematerialised(_block_without_cache, cfg.remat)(block, x, positions, key_valid, query_slots,
                                                                     inv_freq)
                new_cache = None
            else:
                x, new_cache = block(x, positions, key_valid, query_slots, inv_freq, layer_cache, cache_index)
            x = constrain_rows(x)
            new_layers.append(new_cache)
        hidden = constrain_rows(self.final_norm(x))
        logits = self.logits(hidden) if compute_logits else None
        new_cache = None if cache is None else {"layers": new_layers, "valid": key_valid}
        return DecoderOutput(logits, hidden, new_cache)
