"""Ahead-of-time compilation of jax_irl's compiled steps for accelerator topologies, on any machine.

With libtpu installed (the ``tpu`` extra), ``jax.experimental.topologies`` describes a TPU slice (``v5p:4x4x4``:
64 chips) on a CPU-only host; a mesh over those devices, abstract inputs that carry shardings
(``jax.ShapeDtypeStruct(..., sharding=...)``, from ``nnx.eval_shape``: no weights, no data) and
``jax.jit(f).lower(...).compile()`` give the real TPU executable. Its ``memory_analysis()`` is per chip
(arguments, outputs, temporaries, aliased donations), and its ``cost_analysis()`` holds the per-chip FLOPs, bytes
accessed and XLA's own ``optimal_seconds``: the compiler's estimate of the step's time, not a measurement.

From those, each ``Report`` gives per-chip bytes against the chip's HBM (fits or not), and estimates: tokens/s =
tokens per call / optimal_seconds, and model-FLOPs utilisation MFU = model FLOPs per call / (chips x peak bf16
FLOP/s x optimal_seconds), with the model FLOPs from ``models.config.training_flops_per_token`` (PaLM's 6 N +
12 L H hd T for a training token; a third of it for a forward-only token), so that recomputation (remat) and
skipped work do not raise the figure. A decoding step is bound by memory, not FLOPs: its report also gives the
bytes it reads per chip over the chip's HBM bandwidth (``hbm_seconds``).

    devices = aot.topology_devices("v5e:2x2")
    mesh = parallel.make_mesh(parallel.MeshConfig(data=1, fsdp=-1), devices)
    model = aot.abstract_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    step = aot.train_step("sft", model, loss_fn, train.OptimizerConfig(), mesh, aot.lm_batch(mesh, 8, 129), cfg)
    report = aot.compile_step(step, "v5e:2x2")
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_irl import parallel, train
from jax_irl.models import lora
from jax_irl.models.config import TransformerConfig, training_flops_per_token

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip's published figures: HBM capacity, dense bf16 peak, HBM bandwidth."""

    name: str
    hbm_bytes: int
    peak_bf16_flops: float
    hbm_bytes_per_s: float
    device_kinds: Tuple[str, ...]  # jax.Device.device_kind strings of this chip (libtpu's words)
    source: str


# Google Cloud TPU documentation, "TPU versions" / system architecture pages (per-chip figures).
CHIPS: Dict[str, Chip] = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1228e9, ("TPU v4",), "Cloud TPU v4 system architecture: 275 TFLOP/s bf16, "
               "32 GiB HBM2 at 1228 GB/s"),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, ("TPU v5 lite", "TPU v5e"), "Cloud TPU v5e: 197 TFLOP/s bf16, "
                "16 GiB HBM2 at 819 GB/s"),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, ("TPU v5p", "TPU v5"), "Cloud TPU v5p: 459 TFLOP/s bf16, "
                "95 GiB HBM2e at 2765 GB/s"),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1640e9, ("TPU v6 lite", "TPU v6e", "TPU v6"), "Cloud TPU v6e (Trillium): "
                "918 TFLOP/s bf16, 32 GiB HBM at 1640 GB/s"),
}


def chip_of(topology: str) -> Chip:
    """The chip of a topology name such as 'v5p:4x4x4' (the part before the colon)."""
    kind = topology.split(":", 1)[0].strip().lower()
    if kind not in CHIPS:
        raise ValueError(f"topology {topology!r}: unknown chip {kind!r}; known: {', '.join(CHIPS)}")
    return CHIPS[kind]


def chip_for_device_kind(device_kind: str) -> Optional[Chip]:
    """The chip whose ``device_kinds`` holds ``device_kind`` exactly (libtpu calls a v5p 'TPU v5' and a v5e
    'TPU v5 lite'), or None."""
    for chip in CHIPS.values():
        if device_kind in chip.device_kinds:
            return chip
    return None


def topology_devices(topology: str, *, num_slices: int = 1) -> List[Any]:
    """The devices of a TPU topology ('v5e:2x2', 'v5p:4x4x4', 'v6e:8x8', ...), described by libtpu on any host.

    Hosts hold 2 x 2 x 1 chips here, the default of v4/v5p and a valid layout for v5e/v6e slices; compilation
    does not depend on it beyond the device order. Needs libtpu: ``pip install 'jax[tpu]'`` (the ``tpu`` extra)."""
    chip_of(topology)
    try:
        from jax.experimental import topologies
    except ImportError as err:  # pragma: no cover - jax always ships it
        raise RuntimeError(f"jax.experimental.topologies is unavailable: {err}") from None
    dims = topology.split(":", 1)[1] if ":" in topology else ""
    if not dims or not all(part.isdigit() and int(part) > 0 for part in dims.split("x")):
        raise ValueError(f"topology {topology!r} must look like 'v5p:4x4x4' or 'v5e:2x2'")
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology, chip_config_name="default",
                                            chips_per_host_bounds=(2, 2, 1), num_slices=num_slices)
    except Exception as err:  # noqa: BLE001 - libtpu's own error types
        text = str(err)
        if "libtpu" in text.lower() or "not found" in text.lower() or "unknown backend" in text.lower():
            raise RuntimeError(f"cannot describe TPU topology {topology!r}: libtpu is missing or unusable "
                               f"(install the tpu extra: pip install -e '.[tpu]'): {text[:300]}") from None
        raise ValueError(f"cannot describe TPU topology {topology!r}: {text[:300]}") from None
    return list(desc.devices)


def abstract_model(build: Callable[[], nnx.Module]) -> nnx.Module:
    """The module ``build`` would make, with ShapeDtypeStructs for its arrays (``nnx.eval_shape``): no memory."""
    return nnx.eval_shape(build)


def _with_sharding(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def lm_batch(mesh: Mesh, rows: int, length: int, *, attention: bool = False,
             extra: Optional[Dict[str, Tuple[Tuple[int, ...], Any]]] = None) -> Dict[str, jax.ShapeDtypeStruct]:
    """An abstract causal-LM batch: tokens [rows, length] int32, mask [rows, length - 1] float32 (and attention
    [rows, length] int32), each row-sharded as ``parallel.global_batch`` places it; ``extra`` adds
    name -> (shape, dtype) fields, also row-sharded."""
    fields = {"tokens": ((rows, length), jnp.int32), "mask": ((rows, length - 1), jnp.float32)}
    if attention:
        fields["attention"] = ((rows, length), jnp.int32)
    fields.update(extra or {})
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, len(shape)))
            for k, (shape, dtype) in fields.items()}


@dataclasses.dataclass
class Step:
    """A compiled step to check: ``fn(*args)`` with abstract ``args``; ``tokens`` per call and ``flops_per_token``
    (model FLOPs) give the estimates."""

    name: str
    fn: Callable
    args: Tuple[Any, ...]
    mesh: Mesh
    tokens: int
    flops_per_token: float
    batch: int
    length: int
    out_shardings: Any = None
    donate_argnums: Tuple[int, ...] = ()
    static_argnums: Tuple[int, ...] = ()
    kind: str = "train"  # train | forward | decode
    note: str = ""


def abstract_train_state(model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh,
                         rules=parallel.DEFAULT_RULES):
    """(graphdef, rest, abstract TrainState with shardings, its shardings) of a model on a mesh, as
    ``train.Trainer`` lays it out: params by their logical names, the optimizer state like the params."""
    graphdef, (params, rest), shardings = _abstract_state(model, mesh, rules, lora.trainable(model))
    opt_sh = train.optimizer_shardings(tx, params, shardings, mesh)
    opt_state = _with_sharding(jax.eval_shape(tx.init, params), opt_sh)
    replicated = _replicated(mesh)
    state = train.TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), params, opt_state,
                             jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated))
    state_sh = train.TrainState(replicated, shardings, opt_sh, replicated)
    return graphdef, rest, state, state_sh


def _forward_flops(cfg: TransformerConfig, length: int) -> float:
    """Model FLOPs of one forward-only token with ``length`` keys: a third of a training token's."""
    return training_flops_per_token(cfg, length) / 3.0


def train_step(name: str, model: nnx.Module, loss_fn: Callable, opt: train.OptimizerConfig, mesh: Mesh,
               batch: Dict[str, jax.ShapeDtypeStruct], cfg: TransformerConfig, *, flops_scale: float = 1.0,
               tx: Optional[optax.GradientTransformation] = None, rules=parallel.DEFAULT_RULES,
               note: str = "", lm_head: bool = True) -> Step:
    """The Trainer's step ``(state, batch) -> (state, metrics)`` of ``loss_fn`` on an abstract ``model``, with the
    Trainer's shardings and donation. Model FLOPs: ``flops_scale`` training tokens per input token of the
    batch's 'tokens' rows (2 for a policy with a separate critic backbone of the same size); without the
    unembedding's 6 D V where ``lm_head`` is False (a reward model's backbone reads the last hidden states)."""
    steps = opt.total_steps or max(opt.warmup_steps, 1) + 1
    tx = tx or train.make_optimizer(opt, steps)
    graphdef, rest, state, state_sh = abstract_train_state(model, tx, mesh, rules)
    fn = train.make_train_step(graphdef, loss_fn, tx, opt.grad_accum_steps, train.learning_rate_schedule(opt, steps))
    rows, length = batch["tokens"].shape
    return Step(name, fn, (state, batch, rest), mesh, rows * (length - 1),
                flops_scale * (training_flops_per_token(cfg, length - 1)
                               - (0.0 if lm_head else 6.0 * cfg.hidden_size * cfg.vocab_size)), rows, length,
                out_shardings=(state_sh, _replicated(mesh)), donate_argnums=(0,), kind="train", note=note)


def _abstract_state(model: nnx.Module, mesh: Mesh, rules=parallel.DEFAULT_RULES, trainable=nnx.Param):
    """(graphdef, (the ``trainable`` params as ShapeDtypeStructs with their shardings, the other variables, also
    with their shardings), the params' shardings)."""
    shardings = parallel.param_shardings(model, mesh, rules, filter=trainable)
    graphdef, params, rest = nnx.split(model, trainable, ...)
    rest = _with_sharding(rest, parallel.state_shardings(rest, mesh, rules))
    return graphdef, (_with_sharding(params, shardings), rest), shardings


def score_step(name: str, model: nnx.Module, scorer: Callable, mesh: Mesh, batch: Dict[str, jax.ShapeDtypeStruct],
               cfg: TransformerConfig, *, flops_scale: float = 1.0, note: str = "") -> Step:
    """``rollout.score_rows``' compiled batch: ``scorer(model, batch)`` on the abstract model (a scoring or
    reference pass); ``flops_scale`` forward passes of ``cfg`` per token."""
    graphdef, (params, rest), _ = _abstract_state(model, mesh)

    def fn(params, rest, batch):  # as rollout.score_rows' compiled batch, outputs replicated for every process
        return parallel.replicate_under_mesh(scorer(nnx.merge(graphdef, params, rest), batch))

    rows, length = batch["tokens"].shape
    return Step(name, fn, (params, rest, batch), mesh, rows * (length - 1),
                flops_scale * _forward_flops(cfg, length - 1), rows, length, kind="forward", note=note)


def _cache_sharding(mesh: Mesh, cache) -> Any:
    return jax.tree.map(lambda x: parallel.batch_sharding(mesh, x.ndim), cache)


def sampler_steps(model: nnx.Module, mesh: Mesh, rows: int, prompt_width: int, max_new_tokens: int,
                  cfg: TransformerConfig, *, prefix: str = "", note: str = "") -> List[Step]:
    """The sampler's two compiled parts, as ``sampling.generate`` runs them: the prefill of ``rows`` prompts of
    ``prompt_width`` tokens into a KV cache of prompt_width + max_new_tokens slots (logits of the last position
    only), and one decoding step (a token per row into the cache at a traced index, the cache donated)."""
    graphdef, (params, rest), _ = _abstract_state(model, mesh)
    slots = prompt_width + max_new_tokens
    cache = jax.eval_shape(lambda: nnx.merge(graphdef, params, rest).init_cache(rows, slots))
    cache_sh = _cache_sharding(mesh, cache)
    cache = _with_sharding(cache, cache_sh)
    tokens = jax.ShapeDtypeStruct((rows, prompt_width), jnp.int32, sharding=parallel.batch_sharding(mesh, 2))

    def prefill(params, rest, tokens, mask):
        m = nnx.merge(graphdef, params, rest)
        positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
        out = m(tokens, attention_mask=mask, positions=positions, cache=m.init_cache(rows, slots), cache_index=0,
                compute_logits=False)
        return out.cache, m.logits(out.hidden[:, -1])

    row = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=parallel.batch_sharding(mesh, 1))
    index = jax.ShapeDtypeStruct((), jnp.int32, sharding=_replicated(mesh))

    def decode(params, rest, cache, last, positions, index):
        m = nnx.merge(graphdef, params, rest)
        out = m(last[:, None], attention_mask=jnp.ones((rows, 1), jnp.int32), positions=positions[:, None],
                cache=cache, cache_index=index)
        return out.cache, out.logits[:, -1]

    logits_sh = parallel.batch_sharding(mesh, 2)
    return [
        Step(f"{prefix}prefill", prefill, (params, rest, tokens, tokens), mesh, rows * prompt_width,
             _forward_flops(cfg, prompt_width) - 2.0 * cfg.hidden_size * cfg.vocab_size * (1 - 1 / prompt_width),
             rows, prompt_width, out_shardings=(cache_sh, logits_sh),
             kind="forward", note=note),
        Step(f"{prefix}decode", decode, (params, rest, cache, row, row, index), mesh, rows,
             _forward_flops(cfg, slots), rows, slots, out_shardings=(cache_sh, logits_sh), donate_argnums=(2,),
             kind="decode", note=note),
    ]


@dataclasses.dataclass
class Report:
    """One compiled step's figures (per chip unless said); ``error`` is set instead when it did not compile."""

    step: str
    topology: str
    chips: int
    mesh: str
    batch: int
    length: int
    arguments_bytes: Optional[int] = None
    outputs_bytes: Optional[int] = None
    temporaries_bytes: Optional[int] = None
    aliased_bytes: Optional[int] = None
    code_bytes: Optional[int] = None
    total_bytes: Optional[int] = None
    hbm_bytes: Optional[int] = None
    fits: Optional[bool] = None
    flops: Optional[float] = None  # XLA's count, per chip
    bytes_accessed: Optional[float] = None  # per chip
    optimal_seconds: Optional[float] = None  # XLA's estimate
    model_flops: Optional[float] = None  # per call, all chips
    flops_ratio: Optional[float] = None  # XLA's FLOPs over all chips / model FLOPs: near 1 unless XLA under-counts
    tokens_per_s: Optional[float] = None  # estimate
    mfu: Optional[float] = None  # estimate
    hbm_seconds: Optional[float] = None  # bytes accessed / HBM bandwidth: the memory-bound time
    compile_seconds: Optional[float] = None
    kind: str = "train"
    note: str = ""
    error: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def mesh_name(mesh: Mesh) -> str:
    return "x".join(f"{name}{size}" for name, size in mesh.shape.items() if size > 1) or "1"


def _figure(cost: Any, key: str) -> Optional[float]:
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    value = (cost or {}).get(key)
    return None if value is None else float(value)


_UNCOSTED = "ConcatBitcast"
# Below this share of the model FLOPs, XLA's count (and with it optimal_seconds) has left work out. The model
# FLOPs count the full attention square where a causal kernel does about half, so a ratio a little under 1 is
# normal; the train steps of the paper configs come out at 0.93-0.97.
LOW_FLOPS_RATIO = 0.8


def compile_step(step: Step, topology: str) -> Report:
    """Lower and compile ``step`` for its mesh's devices and report its figures; a step that does not lower or
    compile is a report with ``error`` (the reason's first lines), not an exception."""
    chip = chip_of(topology)
    chips = int(np.prod(list(step.mesh.shape.values())))
    report = Report(step.name, topology, chips, mesh_name(step.mesh), step.batch, step.length,
                    hbm_bytes=chip.hbm_bytes, kind=step.kind, note=step.note)
    start = time.perf_counter()
    try:
        jitted = jax.jit(step.fn, out_shardings=step.out_shardings, donate_argnums=step.donate_argnums)
        with jax.set_mesh(step.mesh):  # as the Trainer, scorer and sampler trace: under their mesh
            compiled = jitted.lower(*step.args).compile()
    except Exception as err:  # noqa: BLE001 - reported, as the checker promises
        report.compile_seconds = time.perf_counter() - start
        text = " ".join(str(err).split())
        report.error = f"{type(err).__name__}: {text[:600]}"
        return report
    report.compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    report.arguments_bytes = int(memory.argument_size_in_bytes)
    report.outputs_bytes = int(memory.output_size_in_bytes)
    report.temporaries_bytes = int(memory.temp_size_in_bytes)
    report.aliased_bytes = int(memory.alias_size_in_bytes)
    report.code_bytes = int(memory.generated_code_size_in_bytes)
    report.total_bytes = (report.arguments_bytes + report.outputs_bytes - report.aliased_bytes
                          + report.temporaries_bytes + report.code_bytes)
    report.fits = report.total_bytes <= chip.hbm_bytes
    cost = compiled.cost_analysis()
    report.flops = _figure(cost, "flops")
    report.bytes_accessed = _figure(cost, "bytes accessed")
    report.optimal_seconds = _figure(cost, "optimal_seconds")
    if report.optimal_seconds is not None:
        # libtpu's cost model counts each instruction it has no cost for as -1 s (seen for the ConcatBitcast
        # custom call of concatenations along a tiled axis: RoPE's rotate-half, the query blocks): those count 0.
        unknown = compiled.as_text().count(f'custom_call_target="{_UNCOSTED}"')
        report.optimal_seconds += unknown
        if unknown:
            report.note = (report.note + "; " if report.note else "") + f"{unknown} uncosted {_UNCOSTED} counted as 0 s"
        if report.optimal_seconds <= 0:
            report.optimal_seconds = None
    report.model_flops = step.tokens * step.flops_per_token
    if report.flops is not None and report.model_flops > 0:
        report.flops_ratio = report.flops * chips / report.model_flops
        if report.flops_ratio < LOW_FLOPS_RATIO:
            report.note = (report.note + "; " if report.note else "") + (
                f"XLA counted {report.flops_ratio:.0%} of the model FLOPs: its cost model counts a loop body once "
                f"(an all-gather and matmul it turned into a loop), so this optimal_seconds and MFU are too optimistic")
    if report.optimal_seconds and report.optimal_seconds > 0:
        report.tokens_per_s = step.tokens / report.optimal_seconds
        report.mfu = report.model_flops / (chips * chip.peak_bf16_flops * report.optimal_seconds)
    if report.bytes_accessed is not None:
        report.hbm_seconds = report.bytes_accessed / chip.hbm_bytes_per_s
    return report


def _gib(x: Optional[int]) -> str:
    return "-" if x is None else f"{x / GiB:.2f}"


def table(reports: Sequence[Report]) -> str:
    """A markdown table of reports (per-chip GiB; estimates marked est.)."""
    head = ("| step | topology | mesh | batch x length | args GiB | out GiB | temp GiB | total GiB / HBM | fits | "
            "XLA TFLOP/chip | XLA / model FLOPs | optimal s (est.) | tokens/s (est.) | MFU (est.) | HBM-bound s | "
            "compile s |")
    lines = [head, "|" + "---|" * 16]
    for r in reports:
        if r.error:
            lines.append(f"| {r.step} | {r.topology} | {r.mesh} | {r.batch} x {r.length} | | | | | no | | | | | | | "
                         f"{r.compile_seconds or 0:.0f} |")
            continue
        lines.append(
            f"| {r.step} | {r.topology} | {r.mesh} | {r.batch} x {r.length} | {_gib(r.arguments_bytes)} | "
            f"{_gib(r.outputs_bytes)} | {_gib(r.temporaries_bytes)} | {_gib(r.total_bytes)} / {_gib(r.hbm_bytes)} | "
            f"{'yes' if r.fits else 'NO'} | {(r.flops or 0) / 1e12:.3g} | "
            f"{'-' if r.flops_ratio is None else f'{r.flops_ratio:.2f}'} | "
            f"{r.optimal_seconds if r.optimal_seconds is not None else float('nan'):.4g} | "
            f"{r.tokens_per_s or 0:,.0f} | {'-' if r.mfu is None or r.kind == 'decode' else f'{r.mfu:.1%}'} | "
            f"{r.hbm_seconds if r.hbm_seconds is not None else float('nan'):.4g} | {r.compile_seconds:.0f} |")
    errors = [f"- {r.step} on {r.topology} ({r.mesh}): {r.error}" for r in reports if r.error]
    low = [f"- {r.step} on {r.topology} ({r.mesh}): {r.note}" for r in reports
           if r.flops_ratio is not None and r.flops_ratio < LOW_FLOPS_RATIO]
    return "\n".join(lines + ([""] + errors if errors else []) + ([""] + low if low else []))


__all__ = ["CHIPS", "Chip", "GiB", "Report", "Step", "abstract_model", "abstract_train_state", "chip_for_device_kind",
           "chip_of", "compile_step", "lm_batch", "mesh_name", "sampler_steps", "score_step",
           "table", "topology_devices", "train_step"]
