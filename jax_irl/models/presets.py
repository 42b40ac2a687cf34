"""Model shapes by name, from the families' published Hugging Face configs: for ahead-of-time compilation
(``jax_irl.aot``, ``tools/aot.py``) and anything else that needs a model's shapes without its weights.

Each preset is a ``TransformerConfig`` with the published sizes (vocabulary, width, depth, heads, KV heads, head
size, MLP width), RoPE settings, tying and norms. They give the same matmul shapes, parameter counts and FLOPs as
the real models; two are approximations of the architecture, said here and in ``PRESET_NOTES``:
``gemma2-2b`` runs on the Gemma (1) block (no logit soft-capping, no sliding-window layers, no post-norms), which
changes neither the parameter count by more than the extra norms' 2 x 26 x 2304 weights nor the matmul FLOPs.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

from jax_irl.models.config import TransformerConfig

_LLAMA3_ROPE = dict(rope_theta=500000.0, rope_type="llama3", rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                    rope_original_max_positions=8192)

_PRESETS: Dict[str, dict] = {
    # meta-llama/Llama-3.2-1B: config.json
    "llama3.2-1b": dict(family="llama", vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32,
                        num_kv_heads=8, head_dim=64, intermediate_size=8192, tie_embeddings=True,
                        max_position_embeddings=131072, rope_factor=32.0, norm_eps=1e-5, **_LLAMA3_ROPE),
    # meta-llama/Llama-3.1-8B: config.json
    "llama3.1-8b": dict(family="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
                        num_kv_heads=8, head_dim=128, intermediate_size=14336, tie_embeddings=False,
                        max_position_embeddings=131072, rope_factor=8.0, norm_eps=1e-5, **_LLAMA3_ROPE),
    # google/gemma-2-2b: config.json (Gemma block: see the module docstring)
    "gemma2-2b": dict(family="gemma", vocab_size=256000, hidden_size=2304, num_layers=26, num_heads=8,
                      num_kv_heads=4, head_dim=256, intermediate_size=9216, max_position_embeddings=8192,
                      rope_theta=10000.0, norm_eps=1e-6),
    # Qwen/Qwen2.5-7B: config.json
    "qwen2.5-7b": dict(family="qwen2", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                       num_kv_heads=4, head_dim=128, intermediate_size=18944, tie_embeddings=False,
                       max_position_embeddings=131072, rope_theta=1000000.0, norm_eps=1e-6),
    # a tiny model of the Llama family, for tests and smoke runs of the checker
    "tiny": dict(family="llama", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=16, intermediate_size=128, max_position_embeddings=2048, norm_eps=1e-5),
}
ALIASES = {"llama3-8b": "llama3.1-8b", "llama-8b": "llama3.1-8b", "llama3-1b": "llama3.2-1b",
           "llama-1b": "llama3.2-1b", "gemma2b": "gemma2-2b", "qwen7b": "qwen2.5-7b"}
PRESET_NOTES = {"gemma2-2b": "Gemma 2 2B's shapes on the Gemma (1) block: no soft-capping, sliding window or post-norms"}
PRESETS = tuple(_PRESETS)


def preset(name: str, **overrides) -> TransformerConfig:
    """The ``TransformerConfig`` of a named model (``PRESETS``, or an alias such as 'llama3-8b'), with
    ``overrides`` (dtype, param_dtype, remat, attention, ...) applied."""
    key = ALIASES.get(name, name)
    if key not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)} (aliases: "
                         f"{', '.join(sorted(ALIASES))})")
    fields = dict(_PRESETS[key])
    family = fields.pop("family")
    cfg = TransformerConfig.for_family(family, **fields)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def parameter_count(cfg: TransformerConfig) -> int:
    """Every parameter of the model built from ``cfg`` (embedding, norms and biases included), by formula."""
    d, hd, h, kv, f = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    attention = d * hd * (h + 2 * kv) + h * hd * d
    if cfg.qkv_bias:
        attention += hd * (h + 2 * kv)
    if cfg.out_bias:
        attention += d
    mlp = (3 if cfg.mlp == "gated" else 2) * d * f
    if cfg.mlp_bias:
        mlp += (2 if cfg.mlp == "gated" else 1) * f + d
    norms = (2 if cfg.norm == "layer" else 1) * d
    layer = attention + mlp + 2 * norms
    total = cfg.num_layers * layer + cfg.vocab_size * d + norms
    if not cfg.tie_embeddings:
        total += d * cfg.vocab_size
    if cfg.positions == "learned":
        total += cfg.max_position_embeddings * d
    return total
