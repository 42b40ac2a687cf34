"""Frozen configuration of the decoder-only transformer that covers the Llama, Qwen2, Gemma and GPT-2 families."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

FAMILIES = ("llama", "qwen2", "gemma", "gpt2")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
ROPE_TYPES = ("default", "linear", "llama3")
ATTENTION = ("einsum", "xla", "cudnn", "auto")
# Activation checkpointing of each decoder block in cache-free forwards (training, scoring): what the backward
# pass keeps from the forward. 'none': everything autodiff saves; 'full': only each block's input (the block is
# recomputed); 'dots': every matmul output; 'dots_no_batch': the matmul outputs without batch dimensions (the
# projections and the MLP, not the attention scores); 'offload': those same outputs, moved to host memory
# (pinned_host) until the backward pass needs them (TPU/GPU; XLA:CPU has no host memory space to offload to).
REMAT = ("none", "full", "dots", "dots_no_batch", "offload")


def cudnn_attention_unsupported(dtype: str, head_dim: int) -> Optional[str]:
    """Why cuDNN's fused attention cannot take this compute dtype and head size, or None when it can."""
    if dtype != "bfloat16":
        return f"needs dtype='bfloat16' (cuDNN's fused attention takes bf16/fp16 inputs); got dtype={dtype!r}"
    if not (head_dim % 8 == 0 and head_dim <= 128):
        return f"needs head_dim a multiple of 8 and at most 128; got head_dim={head_dim}"
    return None


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Everything that distinguishes the supported families; ``for_family`` fills in each family's choices.

    norm: 'rms' (Llama, Qwen2, Gemma; Gemma scales by 1 + w) or 'layer' (GPT-2). mlp: 'gated' (SwiGLU / GeGLU:
    down(act(gate(x)) * up(x))) or 'plain' (GPT-2: proj(act(fc(x)))). positions: 'rope' (rotate-half layout, as
    in Hugging Face checkpoints) or 'learned'. dtype is the compute dtype ('float32' or 'bfloat16'); norms,
    softmax and logsumexp run in float32 either way; param_dtype is the storage dtype.

    attention: how the attention of a cache-free forward (training, scoring) is computed. 'einsum': jax_irl's own
    dots and float32 softmax, the fastest on CPU; 'xla': ``jax.nn.dot_product_attention`` with XLA's
    implementation (equal to 'einsum' within float rounding); 'cudnn': the same function's cuDNN fused (flash)
    kernel, GPU only, bfloat16 compute, head_dim a multiple of 8 up to 128; 'auto': 'cudnn' where it applies (a GPU
    backend, bfloat16, such a head_dim, even sequence lengths) and 'einsum' elsewhere. Decoding with a KV cache
    always uses jax_irl's own cached path.

    remat: activation checkpointing of each block (``REMAT``); the values and gradients are the same under every
    policy, only what is kept for the backward pass (and so memory and recomputation) changes.

    attention_block: the 'einsum' path's causal query blocks. Queries go in blocks of about this many tokens and
    each block's scores cover only the keys up to its own last position, so of the [T, T] score matrix (n - 1) / 2n
    at n blocks is never computed, all of it in the masked upper triangle: a quarter at two blocks, 3/8 at four,
    7/16 at eight. Every query with at least one key it may attend to gets the same output as the full matrix, to
    float rounding; 0 (or a block at least T long) computes the full matrix.
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int = 2048
    norm: str = "rms"
    norm_eps: float = 1e-6
    rms_one_plus: bool = False
    mlp: str = "gated"
    activation: str = "silu"
    positions: str = "rope"
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    scale_embeddings: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    bos_token_id: Optional[int] = None
    eos_token_ids: Tuple[int, ...] = ()
    pad_token_id: Optional[int] = None
    attention: str = "einsum"
    attention_block: int = 64
    remat: str = "none"

    def __post_init__(self):
        checks = [
            (self.family in FAMILIES, f"family must be one of {FAMILIES}; got {self.family!r}"),
            (self.norm in ("rms", "layer"), f"norm must be 'rms' or 'layer'; got {self.norm!r}"),
            (self.mlp in ("gated", "plain"), f"mlp must be 'gated' or 'plain'; got {self.mlp!r}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}; got {self.activation!r}"),
            (self.positions in ("rope", "learned"), f"positions must be 'rope' or 'learned'; got {self.positions!r}"),
            (self.rope_type in ROPE_TYPES, f"rope_type must be one of {ROPE_TYPES}; got {self.rope_type!r}"),
            (self.dtype in ("float32", "bfloat16"), f"dtype must be 'float32' or 'bfloat16'; got {self.dtype!r}"),
            (self.param_dtype in ("float32", "bfloat16"),
             f"param_dtype must be 'float32' or 'bfloat16'; got {self.param_dtype!r}"),
            (self.attention in ATTENTION, f"attention must be one of {ATTENTION}; got {self.attention!r}"),
            (self.remat in REMAT, f"remat must be one of {REMAT}; got {self.remat!r}"),
        ]
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            checks.append((isinstance(value, int) and value > 0, f"{name} must be a positive int; got {value!r}"))
        checks.append((isinstance(self.attention_block, int) and not isinstance(self.attention_block, bool)
                       and self.attention_block >= 0,
                       f"attention_block must be an int >= 0 (0: no query blocks); got {self.attention_block!r}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TransformerConfig: {message}")
        why = cudnn_attention_unsupported(self.dtype, self.head_dim) if self.attention == "cudnn" else None
        if why:
            raise ValueError(f"TransformerConfig: attention='cudnn' {why}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"TransformerConfig: num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")

    @classmethod
    def for_family(cls, family: str, **overrides) -> "TransformerConfig":
        """A config with the family's architectural choices; sizes and anything else come from overrides."""
        defaults = {
            "llama": dict(norm="rms", mlp="gated", activation="silu", positions="rope", norm_eps=1e-5),
            "qwen2": dict(norm="rms", mlp="gated", activation="silu", positions="rope", qkv_bias=True, norm_eps=1e-6),
            "gemma": dict(norm="rms", rms_one_plus=True, mlp="gated", activation="gelu_tanh", positions="rope",
                          tie_embeddings=True, scale_embeddings=True, norm_eps=1e-6),
            "gpt2": dict(norm="layer", mlp="plain", activation="gelu_tanh", positions="learned", qkv_bias=True,
                         out_bias=True, mlp_bias=True, tie_embeddings=True, norm_eps=1e-5),
        }
        if family not in defaults:
            raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")
        kwargs = dict(defaults[family])
        kwargs.update(overrides)
        if "head_dim" not in kwargs and "hidden_size" in kwargs and "num_heads" in kwargs:
            kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_heads"]
        kwargs.setdefault("num_kv_heads", kwargs.get("num_heads"))
        return cls(family=family, **kwargs)


def training_flops_per_token(cfg: TransformerConfig, length: int) -> float:
    """Model FLOPs of one training token (forward and backward) at sequence length ``length``, in the convention
    of PaLM's model-FLOPs utilisation (Chowdhery et al. 2022, appendix B): 6 N + 12 L H hd T.

    N counts the weights that enter matmuls: per layer the q, k, v and output projections and the MLP (two
    matrices, three when gated), plus the unembedding (D x V, also when tied to the embedding); the embedding
    lookup, norms and biases are left out. The attention term counts the full T x T score and value products
    (a causal kernel does about half of them): the FLOPs a step must do whatever its implementation, so that
    recomputation and skipped work do not change the figure."""
    if not (isinstance(length, int) and length > 0):
        raise ValueError(f"length must be a positive int; got {length!r}")
    d, hd = cfg.hidden_size, cfg.head_dim
    attention = d * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = (3 if cfg.mlp == "gated" else 2) * d * cfg.intermediate_size
    n = cfg.num_layers * (attention + mlp) + d * cfg.vocab_size
    return 6.0 * n + 12.0 * cfg.num_layers * cfg.num_heads * hd * length
