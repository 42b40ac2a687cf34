"""Ahead-of-time checker: compile an experiment config's steps for a TPU topology on this machine and report,
per step, per-chip memory against HBM (fits or not), XLA's FLOPs and its optimal_seconds estimate, and the
tokens/s and MFU estimated from them. Needs libtpu (the ``tpu`` extra, which tools/setup.sh installs); nothing
runs on a TPU, no weights or data are read.

    .venv/bin/python tools/aot.py irl_gsm8k --topology v5p:4x4x4 --model llama3.1-8b
    .venv/bin/python tools/aot.py rlsf_spoc --topology v5e:4x4 --model llama3.2-1b base.remat=full
    .venv/bin/python tools/aot.py gshf_gsm8k --topology v5p:4x4x4 --model llama3.1-8b --steps dpo --mesh fsdp=16,tensor=4
    .venv/bin/python tools/aot.py --scaling --model llama3.1-8b --rows-per-chip 4 --length 512   # weak scaling

Overrides (``key=value``) are the driver's (``python -m experiments.run``): any config field, e.g.
``base.remat=full``, ``finetune.batch_size=256``, ``base.max_length=1024``. ``--mesh`` replaces the config's mesh
(``data=..,fsdp=..,tensor=..``; -1 takes the rest). Writes ``aot.json`` (every report's fields) and prints one
markdown table; a step that does not compile or does not fit is a row with the reason, not a traceback. All
time figures are XLA's cost-model estimates for the compiled TPU program, not measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU devices come from libtpu's topology description
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # libtpu's per-machine lock file would refuse a second one
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from experiments import aot as experiment_steps  # noqa: E402
from experiments import run as driver  # noqa: E402
from jax_irl import aot, parallel, train  # noqa: E402
from jax_irl.algorithms import sft  # noqa: E402
from jax_irl.models import presets  # noqa: E402
from jax_irl.models.transformer import Transformer  # noqa: E402


def parse_mesh(text: str) -> parallel.MeshConfig:
    fields = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in ("data", "fsdp", "tensor") or not value.lstrip("-").isdigit():
            raise SystemExit(f"--mesh takes data=N,fsdp=N,tensor=N (-1: the rest); got {part!r}")
        fields[key] = int(value)
    return parallel.MeshConfig(**{"data": 1, "fsdp": 1, "tensor": 1, **fields})


def _save(path: str, header: dict, reports) -> None:
    """Write the reports so far (after every step: a run stopped midway keeps what it compiled)."""
    with open(path + ".tmp", "w") as f:
        json.dump({**header, "reports": [r.as_dict() for r in reports]}, f, indent=1)
    os.replace(path + ".tmp", path)


def scaling(args, header: dict) -> list:
    """The SFT step of --model at --rows-per-chip x --length per chip over v5p slices of 8 to 128 chips (weak
    scaling), FSDP over every chip but --tensor, and the decoding step of as many rows over a cache of --length
    slots."""
    reports = []
    for topology in args.topologies.split(","):
        devices = aot.topology_devices(topology)
        mesh = parallel.make_mesh(parallel.MeshConfig(data=1, fsdp=-1, tensor=args.tensor), devices)
        cfg = presets.preset(args.model, dtype="bfloat16", remat=args.remat)
        model = aot.abstract_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
        rows = args.rows_per_chip * len(devices)
        step = aot.train_step("sft", model, sft.loss_fn(vocab_chunk=16384),
                              train.OptimizerConfig(learning_rate=1e-5), mesh,
                              aot.lm_batch(mesh, rows, args.length + 1), cfg, note=f"remat={args.remat}")
        reports.append(aot.compile_step(step, topology))
        print(aot.table(reports[-1:]).splitlines()[-1], flush=True)
        _save(args.out, header, reports)
        decode = aot.sampler_steps(model, mesh, rows, args.length // 2, args.length // 2, cfg)[1]
        reports.append(aot.compile_step(decode, topology))
        print(aot.table(reports[-1:]).splitlines()[-1], flush=True)
        _save(args.out, header, reports)
        del model, step, decode
        jax.clear_caches()  # drop what this slice left cached before the next, larger one compiles
        gc.collect()
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="an experiment config (irl_gsm8k, gshf_gsm8k, rlsf_spoc, ...)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    parser.add_argument("--topology", default="v5p:4x4x4", help="a TPU topology such as v5p:4x4x4 or v5e:4x4")
    parser.add_argument("--model", default="llama3.1-8b", help=f"a model preset: {', '.join(presets.PRESETS)}")
    parser.add_argument("--rm-model", default=None, help="the reward models' backbone preset (default: --model)")
    parser.add_argument("--mesh", default=None, help="data=N,fsdp=N,tensor=N instead of the config's mesh")
    parser.add_argument("--steps", default=None, help="comma-separated step or group names to compile (default all)")
    parser.add_argument("--out", default="aot.json", help="where to write the reports (JSON)")
    parser.add_argument("--scaling", action="store_true", help="the weak-scaling table instead of a config")
    parser.add_argument("--topologies", default="v5p:2x2x2,v5p:2x2x4,v5p:2x4x4,v5p:4x4x4,v5p:4x4x8")
    parser.add_argument("--rows-per-chip", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--remat", default="none")
    parser.add_argument("--tensor", type=int, default=1, help="the tensor axis of the scaling runs' mesh")
    args = parser.parse_intermixed_args(argv)
    start = time.time()
    if args.scaling:
        header = {"kind": "scaling", "model": args.model, "rows_per_chip": args.rows_per_chip, "length": args.length,
                  "remat": args.remat, "tensor": args.tensor, "date": time.strftime("%Y-%m-%d")}
        reports = scaling(args, header)
    else:
        if not args.config:
            parser.error("name a config (or pass --scaling)")
        try:
            module = driver.load_config_module(args.config)
            cfg = driver.apply_overrides(module.config(), args.overrides)
            model_cfg = presets.preset(args.model)
            rm_cfg = presets.preset(args.rm_model) if args.rm_model else None
        except (driver.ConfigError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        mesh_cfg = parse_mesh(args.mesh) if args.mesh else cfg.settings.mesh
        devices = aot.topology_devices(args.topology)
        try:
            mesh = parallel.make_mesh(mesh_cfg, devices)
        except ValueError as err:
            print(f"error: mesh {mesh_cfg} on {args.topology}: {err}", file=sys.stderr)
            return 2
        wanted = None if not args.steps else set(args.steps.split(","))
        steps = experiment_steps.steps_for(cfg, model_cfg, mesh, rm_model_cfg=rm_cfg,
                                           only=None if wanted is None else wanted.__contains__)
        if not steps:
            print(f"error: no step of {args.config} matches --steps {args.steps}", file=sys.stderr)
            return 2
        header = {"kind": "config", "config": args.config, "overrides": args.overrides, "model": args.model,
                  "rm_model": args.rm_model or args.model, "mesh": dataclasses.asdict(mesh_cfg),
                  "remat": cfg.base.remat, "date": time.strftime("%Y-%m-%d")}
        reports = []
        for step in steps:
            reports.append(aot.compile_step(step, args.topology))
            print(aot.table(reports[-1:]).splitlines()[-1], flush=True)
            _save(args.out, header, reports)
    chip = aot.chip_of(reports[0].topology if reports else args.topology)
    header.update(date=time.strftime("%Y-%m-%d"), seconds=round(time.time() - start, 1), chip=dataclasses.asdict(chip))
    _save(args.out, header, reports)
    print()
    print(aot.table(reports))
    print(f"\nper-chip bytes from memory_analysis(); FLOPs and optimal_seconds from cost_analysis() (XLA's estimates);"
          f" peak {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 and {chip.hbm_bytes_per_s / 1e9:.0f} GB/s HBM per "
          f"{chip.name} chip ({chip.source}). Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
