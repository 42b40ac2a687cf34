"""Low-rank adapters (LoRA, Hu et al. 2021) on the decoder's projections, in Flax NNX.

An adapted projection computes  y = x W + (alpha / r) * dropout(x) A B  with the base weight W [d_in, d_out]
frozen and the adapter A [d_in, r], B [r, d_out] trained; B starts at zero, so an adapted model equals its base
exactly at initialisation. The adapters are ``nnx.LoRAParam`` variables inside the model (``Attention.lora``,
``MLP.lora``, ``Transformer.embed_lora``), applied unmerged: the base weights get no gradient, and the extra
work of a projection is two thin products, 2 N r (d_in + d_out) flops for N tokens against the base's
2 N d_in d_out.

    policy = lora.apply(pi0, lora.LoraConfig(rank=16, targets=("attn", "mlp")), seed=0)
    # policy shares pi0's base arrays (no copy); train.Trainer trains only the adapters (and any head
    # outside the adapted decoder), so optimizer state and checkpoints hold the adapters alone.
    reference = lora.disabled(policy)  # the same arrays with the adapters switched off: the base model
    merged = lora.merge(policy)        # a plain model with W + (alpha / r) A B, for export

Targets: 'q', 'k', 'v', 'o' (attention; 'attn' names all four), 'gate', 'up', 'down' (the MLP; 'mlp' names
them), and 'embed' (the input embedding, untied models only: with tied embeddings the merged table would also
change the unembedding, which the adapted forward does not). ``trainable`` is the filter ``train.Trainer``
differentiates: the adapters, and every parameter that lies outside an adapted decoder (a reward model's
heads). Dropout acts on the adapter's input in training only: the Trainer gives the model a key per step
(``set_dropout_key``); scoring and sampling run without it.

QLoRA (``LoraConfig(quantize='int8' | 'int4')``): ``apply`` also stores the base's seven projections of every
block as integers with float32 scales (int8: one per output column; int4: one per 64 input rows of a column, as
QLoRA's blocks), dequantized inside the forward (``weight``); the adapters train on the quantized base, and
``merge`` dequantizes before adding them. Embeddings, norms and the unembedding stay as they are.

``hf.save_pretrained(lora.merge(model), path)`` exports merged weights; ``hf.save_peft_adapter`` writes the
adapters as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) that ``peft`` loads onto
the base model's transformers checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterator, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ATTENTION_TARGETS = ("q", "k", "v", "o")
MLP_TARGETS = ("gate", "up", "down")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS + ("embed",)
GROUPS = {"attn": ATTENTION_TARGETS, "mlp": MLP_TARGETS}
QUANTIZE = ("none", "int8", "int4")
INT4_GROUP = 64  # int4: one scale per 64 input rows of each output column (QLoRA's block size)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank: r (0: no adapters, the model trains in full); alpha: the scale's numerator (scale alpha / r, as
    PEFT's lora_alpha); dropout: the probability of dropping an adapter input in training; targets: names of
    ``TARGETS`` or the groups 'attn' and 'mlp' (a comma-separated string is accepted); quantize: the frozen
    base's seven projections of every block stored as 'int8' (one scale per output column) or 'int4' (one scale
    per 64 input rows of each output column) and dequantized in the forward, QLoRA-style ('none': as they are).
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Union[Tuple[str, ...], str] = ("attn", "mlp")
    quantize: str = "none"

    def __post_init__(self):
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(t.strip() for t in self.targets.split(",") if t.strip()))
        else:
            object.__setattr__(self, "targets", tuple(self.targets))
        if not (isinstance(self.rank, (int, np.integer)) and not isinstance(self.rank, bool) and self.rank >= 0):
            raise ValueError(f"lora rank must be an int >= 0 (0: no adapters); got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"lora alpha must be a finite number > 0 (the scale is alpha / rank); got {self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"lora dropout must be in [0, 1); got {self.dropout!r}")
        if not self.targets:
            raise ValueError(f"lora targets must name at least one of {TARGETS} or a group of {sorted(GROUPS)}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"lora quantize must be one of {QUANTIZE}; got {self.quantize!r}")
        if self.quantize != "none" and self.rank == 0:
            raise ValueError(f"lora quantize={self.quantize!r} needs rank > 0: a quantized base is frozen, and only "
                             f"adapters can train on it")
        for t in self.targets:
            if t not in TARGETS and t not in GROUPS:
                raise ValueError(f"unknown lora target {t!r}: use names of {TARGETS} or the groups "
                                 f"{sorted(GROUPS)} ('attn' = q,k,v,o; 'mlp' = gate,up,down)")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def modules(self) -> Tuple[str, ...]:
        """The targets resolved to projection names, in ``TARGETS`` order."""
        names = set()
        for t in self.targets:
            names.update(GROUPS.get(t, (t,)))
        return tuple(t for t in TARGETS if t in names)


class LoRA(nnx.Module):
    """One adapter: a [d_in, r] and b [r, d_out] (``nnx.LoRAParam``), ``delta(x) = scale * dropout(x) @ a @ b``.

    Initialisation as PEFT's: a projection's a is Kaiming-uniform (bound 1 / sqrt(d_in)) and b is zero; the
    embedding's a is zero and b normal, so that its lookup of a starts at zero. ``names`` are the logical axis
    names of (d_in, d_out) for sharding; the rank axis is replicated."""

    def __init__(self, d_in: int, d_out: int, cfg: LoraConfig, names: Tuple[Optional[str], Optional[str]], *,
                 key: jax.Array, dtype=jnp.float32, embedding: bool = False):
        r = cfg.rank
        ka, kb = jax.random.split(key)
        if embedding:
            a = jnp.zeros((d_in, r), dtype)
            b = jax.random.normal(kb, (r, d_out), dtype)
        else:
            bound = 1.0 / math.sqrt(d_in)
            a = jax.random.uniform(ka, (d_in, r), dtype, -bound, bound)
            b = jnp.zeros((r, d_out), dtype)
        self.a = nnx.LoRAParam(a, out_sharding=(names[0], None), eager_sharding=False)
        self.b = nnx.LoRAParam(b, out_sharding=(None, names[1]), eager_sharding=False)
        self.scale = cfg.scale
        self.dropout = float(cfg.dropout)
        self.enabled = True
        self.dropout_key = None  # set (traced) by the Trainer's step when dropout > 0; None: no dropout

    def _dropped(self, x):
        if self.dropout == 0.0 or self.dropout_key is None:
            return x
        keep = jax.random.bernoulli(self.dropout_key, 1.0 - self.dropout, x.shape)
        return jnp.where(keep, x / (1.0 - self.dropout), jnp.zeros((), x.dtype)).astype(x.dtype)

    def delta(self, x: jax.Array) -> jax.Array:
        """scale * dropout(x) @ a @ b for x [..., d_in] -> [..., d_out] in x's dtype.

        Both products go through ``layers.dense``, whose weight gradient contracts a transposed input: with plain
        ``x @ a``, XLA:CPU wrote x transposed inside a fused pass for every adapter, and the W1 SFT step with
        rank-16 adapters on attention and MLP took 1.47x the full fine-tuning step (1.209 against 0.823 s); through
        ``dense`` 0.94x (0.789 against 0.842 s), side by side. Sharing one transposed input among the adapters of
        a group (q, k, v; gate, up), as ``dense_many`` does for the weights, measured the same (0.95x)."""
        from jax_irl.models.layers import dense

        h = dense(self._dropped(x), self.a[...].astype(x.dtype))
        return dense(h, self.b[...].astype(x.dtype)) * jnp.asarray(self.scale, x.dtype)

    def lookup(self, tokens: jax.Array, dtype) -> jax.Array:
        """The embedding adapter's delta for ids tokens [B, T] -> [B, T, D]: scale * a[tokens] @ b."""
        h = self.a[...][tokens].astype(dtype)
        return (h @ self.b[...].astype(dtype)) * jnp.asarray(self.scale, dtype)

    def product(self) -> jax.Array:
        """scale * a @ b [d_in, d_out] in float32 (what ``merge`` adds to the base weight)."""
        return (self.a[...].astype(jnp.float32) @ self.b[...].astype(jnp.float32)) * self.scale


# --- the quantized base (QLoRA) -----------------------------------------------------------------------------


def weight(module, name: str, dtype) -> jax.Array:
    """The projection weight ``module.<name>`` in ``dtype``: as stored, or dequantized when the base is quantized
    (an integer array of the weight's shape and ``<name>_qscale`` [groups, 1, d_out])."""
    w = getattr(module, name)
    scale = getattr(module, name + "_qscale", None)
    if scale is None:
        return w[...].astype(dtype)
    q = w[...]
    groups, _, d_out = scale.shape
    grouped = q.reshape(groups, -1, d_out).astype(dtype)
    return (grouped * scale[...].astype(dtype)).reshape(q.shape)


def quantize_weight(w: jax.Array, d_out: int, bits: str) -> Tuple[jax.Array, jax.Array]:
    """(integers of w's shape, scales [groups, 1, d_out] float32) of a weight whose last axes flatten to d_out:
    symmetric round-to-nearest, int8 per output column, int4 per ``INT4_GROUP`` input rows of each column."""
    flat = w.reshape(-1, d_out).astype(jnp.float32)
    d_in = flat.shape[0]
    group = d_in if bits == "int8" else INT4_GROUP
    if d_in % group:
        raise ValueError(f"int4 quantization groups {group} input rows; this weight has {d_in}")
    qmax, dtype = (127, jnp.int8) if bits == "int8" else (7, jnp.int4)
    grouped = flat.reshape(d_in // group, group, d_out)
    scale = jnp.max(jnp.abs(grouped), axis=1, keepdims=True) / qmax
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(grouped / scale), -qmax, qmax).astype(dtype).reshape(w.shape)
    return q, scale


def _quantize_block(blk, bits: str) -> None:
    for owner, names in ((blk.attn, ATTENTION_TARGETS), (blk.mlp, MLP_TARGETS)):
        for n in names:
            var = getattr(owner, n)
            if var is None:
                continue
            d_in, d_out, ax = _flat(owner, n)
            if bits == "int4" and d_in % INT4_GROUP:
                raise ValueError(f"lora quantize='int4': the {n!r} projection's {d_in} input rows do not split into "
                                 f"groups of {INT4_GROUP}; use quantize='int8'")
            q, scale = quantize_weight(var[...], d_out, bits)
            names_meta = var.get_metadata().get("out_sharding")
            setattr(owner, n, nnx.Param(q, out_sharding=names_meta, eager_sharding=False))
            setattr(owner, n + "_qscale", nnx.Param(scale, out_sharding=(None, None, ax[1]), eager_sharding=False))


def _flat(owner, name: str):
    """(d_in, d_out, logical names) of a block's projection as a [d_in, d_out] matrix."""
    w = getattr(owner, name)
    if name == "o":
        h, hd, d = w.shape
        return h * hd, d, ("heads", "embed")
    if name in ("q", "k", "v"):
        d, n, hd = w.shape
        return d, n * hd, ("embed", "heads")
    d_in, d_out = w.shape
    return d_in, d_out, (("mlp", "embed") if name == "down" else ("embed", "mlp"))


def is_quantized(model) -> bool:
    return any(isinstance(n, nnx.Module) and any(k.endswith("_qscale") for k in vars(n))
               for _, n in nnx.iter_graph(model))


def active(adapters, name: str) -> Optional[LoRA]:
    """The enabled adapter ``name`` of a module's ``lora`` dict (None when it has none)."""
    if adapters is None or name not in adapters:
        return None
    adapter = adapters[name]
    return adapter if adapter.enabled else None


# --- finding decoders ---------------------------------------------------------------------------------------


def _decoders(model) -> Iterator[Tuple[tuple, nnx.Module]]:
    from jax_irl.models.transformer import Transformer

    for path, node in nnx.iter_graph(model):
        if isinstance(node, Transformer):
            yield tuple(path), node


def adapted_config(model) -> Optional[LoraConfig]:
    """The LoraConfig of the model's adapted decoder(s), or None when it has no adapters."""
    for _, dec in _decoders(model):
        cfg = getattr(dec, "lora_config", None)
        if cfg is not None:
            return cfg
    return None


def has_adapters(model) -> bool:
    return adapted_config(model) is not None


def adapters(model) -> Iterator[Tuple[str, LoRA]]:
    """(dotted path, adapter) for every adapter of the model, in graph order."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, LoRA):
            yield ".".join(str(p) for p in path), node


def _shapes(dec, name: str, blk=None) -> Tuple[int, int, Tuple[Optional[str], Optional[str]]]:
    """(d_in, d_out, logical names) of the projection ``name`` of a block as the adapter sees it (flattened)."""
    if name == "embed":
        v, d = dec.embed.shape
        return v, d, ("vocab", "embed")
    owner = blk.attn if name in ATTENTION_TARGETS else blk.mlp
    if getattr(owner, name) is None:
        raise ValueError(f"lora target {name!r}: the model's MLP has no {name!r} projection (mlp={dec.cfg.mlp!r}); "
                         f"drop it from the targets")
    return _flat(owner, name)


def apply(model, cfg: LoraConfig, *, seed: int = 0):
    """A new model that shares ``model``'s arrays (nothing copied) with fresh adapters on every decoder of it
    (a reward model's backbone too); ``model`` itself is unchanged. Refuses a model that has adapters already,
    rank 0, a rank above a targeted layer's smaller side, and 'embed' on tied embeddings."""
    if not isinstance(cfg, LoraConfig):
        raise TypeError(f"cfg must be a LoraConfig; got {type(cfg).__name__}")
    if not cfg.enabled:
        raise ValueError("lora rank is 0: there is nothing to apply (rank 0 means full fine-tuning)")
    if has_adapters(model):
        raise ValueError("the model has LoRA adapters already: merge them first (lora.merge) or train them on")
    new = _view(model)
    decoders = list(_decoders(new))
    if not decoders:
        raise ValueError(f"lora.apply found no Transformer decoder in a {type(model).__name__}")
    key = jax.random.PRNGKey(seed)
    names = cfg.modules()
    for number, (_, dec) in enumerate(decoders):
        pdt = dec.embed[...].dtype
        checked = [(n, *_shapes(dec, n, dec.layers[0] if len(dec.layers) else None)) for n in names]
        for n, d_in, d_out, _ in checked:
            if cfg.rank > min(d_in, d_out):
                raise ValueError(f"lora rank {cfg.rank} exceeds the {n!r} projection's smaller side "
                                 f"({d_in} x {d_out}); a rank above min(d_in, d_out) adds nothing a full update "
                                 f"does not, use rank <= {min(d_in, d_out)}")
        if "embed" in names:
            if dec.lm_head is None:
                raise ValueError("lora target 'embed' with tied embeddings: merging would change the tied "
                                 "unembedding too, which the adapted forward does not; drop 'embed' from targets")
            v, d, ax = _shapes(dec, "embed")
            dec.embed_lora = LoRA(v, d, cfg, ax, key=jax.random.fold_in(key, number * 1_000_003), dtype=pdt,
                                  embedding=True)
        for i, blk in enumerate(dec.layers):
            for owner, group in ((blk.attn, ATTENTION_TARGETS), (blk.mlp, MLP_TARGETS)):
                chosen = [n for n in names if n in group]
                if not chosen:
                    continue
                made = {}
                for n in chosen:
                    d_in, d_out, ax = _shapes(dec, n, blk)
                    k = jax.random.fold_in(key, number * 1_000_003 + 1 + i * len(TARGETS) + TARGETS.index(n))
                    made[n] = LoRA(d_in, d_out, cfg, ax, key=k, dtype=pdt)
                owner.lora = nnx.Dict(made)
            if cfg.quantize != "none":
                _quantize_block(blk, cfg.quantize)
        dec.lora_config = cfg
    return new


def trainable(model):
    """The filter of the parameters to train: ``nnx.Param`` for a model without adapters; else the adapters
    and every ``nnx.Param`` outside the adapted decoders (heads)."""
    prefixes = [p for p, dec in _decoders(model) if getattr(dec, "lora_config", None) is not None]
    if not prefixes:
        return nnx.Param

    def train_it(path, x) -> bool:
        if isinstance(x, nnx.LoRAParam):
            return True
        if not isinstance(x, nnx.Param):
            return False
        path = tuple(path)
        return not any(path[:len(p)] == p for p in prefixes)

    return train_it


def set_dropout_key(model, key: jax.Array) -> None:
    """Give every adapter with dropout its own key derived from ``key`` (inside a traced train step)."""
    for number, (_, adapter) in enumerate(adapters(model)):
        if adapter.dropout > 0:
            adapter.dropout_key = jax.random.fold_in(key, number)


def _view(model):
    """The same model as new Variable objects over the same arrays (nothing copied): editing the view's
    attributes or values leaves ``model`` as it is."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, state, copy=True)


def disabled(model):
    """A view of ``model`` (the same arrays) with every adapter switched off: the base model, for a reference
    policy without a second copy of the weights."""
    if not has_adapters(model):
        raise ValueError("the model has no LoRA adapters to disable")
    view = _view(model)
    for _, adapter in adapters(view):
        adapter.enabled = False
    return view


def merge(model):
    """A plain model (no adapters) whose adapted weights are W + scale * a @ b, in the base's dtype (a quantized
    base dequantized first, every projection of it); the input's arrays are not changed. Refuses a model without adapters (merged already, or never adapted)."""
    if not has_adapters(model):
        raise ValueError("the model has no LoRA adapters to merge (merged already, or never adapted)")
    view = _view(model)
    for _, dec in _decoders(view):
        if getattr(dec, "lora_config", None) is None:
            continue
        embed_lora = getattr(dec, "embed_lora", None)
        if embed_lora is not None:
            if embed_lora.enabled:
                dec.embed[...] = (dec.embed[...].astype(jnp.float32) + embed_lora.product()).astype(dec.embed.dtype)
            del dec.embed_lora
        for blk in dec.layers:
            for owner in (blk.attn, blk.mlp):
                for n in [k for k in list(vars(owner)) if k.endswith("_qscale")]:  # dequantize the base
                    base = n[:-len("_qscale")]
                    var = getattr(owner, base)
                    value = weight(owner, base, jnp.float32).astype(dec.embed.dtype)
                    setattr(owner, base, nnx.Param(value, out_sharding=var.get_metadata().get("out_sharding"),
                                                   eager_sharding=False))
                    delattr(owner, n)
                found = getattr(owner, "lora", None)
                if found is None:
                    continue
                for n in list(found.keys()):
                    adapter = found[n]
                    w = getattr(owner, n)
                    if adapter.enabled:
                        delta = adapter.product().reshape(w.shape)
                        w[...] = (w[...].astype(jnp.float32) + delta).astype(w.dtype)
                del owner.lora
        del dec.lora_config
    return view


def count(model) -> Dict[str, int]:
    """{'adapter': adapter parameters, 'base': the other parameters, 'total'} of the model."""
    ad = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {"adapter": ad, "base": total - ad, "total": total}
