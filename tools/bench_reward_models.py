"""Reward-model training cost: a single RM, K heads on one encoder (trained, and frozen), and a full ensemble of
K models (vmapped, stacked params), side by side in one process, the steps interleaved (single, multihead,
frozen, ensemble, single, ...), at two backbone sizes.

The claim under test (Ahmed et al.): K heads cost about one model (target <= 1.10x the single RM's step time and
<= 1.05x its memory), a full ensemble about K times. Time: the median of --steps optimizer steps (Bradley-Terry,
AdamW) after one compile step. Memory: XLA's own accounting of the compiled step (arguments: params, optimizer
state and batch; plus temporaries), from ``compiled.memory_analysis()``: a device-independent figure, not an
allocator's peak. Prints a markdown table.

    .venv/bin/python tools/bench_reward_models.py [--heads 4] [--steps 10] [--batch 16] [--length 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from jax_irl import parallel, train
from jax_irl.algorithms import reward_models as rm
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

SIZES = {"small (h256, 4 layers, vocab 8192)": dict(hidden_size=256, num_layers=4, intermediate_size=688),
         "larger (h512, 6 layers, vocab 8192)": dict(hidden_size=512, num_layers=6, intermediate_size=1376)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16, help="pairs per step (2x rows)")
    p.add_argument("--length", type=int, default=128)
    args = p.parse_args(argv)
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    r = np.random.default_rng(0)
    batch = {"tokens": r.integers(1, 8192, (2 * args.batch, args.length)).astype(np.int32),
             "attention": np.ones((2 * args.batch, args.length), np.int32)}
    batch = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    kinds = {"single": rm.RMKind(), f"{args.heads} heads": rm.RMKind("multihead", heads=args.heads),
             f"{args.heads} heads, frozen encoder": rm.RMKind("multihead", heads=args.heads, freeze_encoder=True),
             f"ensemble of {args.heads}": rm.RMKind("ensemble", heads=args.heads)}
    opt = train.OptimizerConfig(learning_rate=1e-4, weight_decay=0.01, max_grad_norm=1.0)
    print(f"{jax.devices()[0].platform}: {len(jax.devices())} device(s); {args.batch} pairs x {args.length} tokens, "
          f"AdamW, fp32\n")
    print("| backbone | reward model | step (median) | x single | step memory (XLA) | x single |\n"
          "|---|---|---|---|---|---|")
    for size, dims in SIZES.items():
        cfg = TransformerConfig.for_family("llama", vocab_size=8192, num_heads=8, num_kv_heads=4, **dims)
        runs = {}
        for name, kind in kinds.items():
            model = rm.build(kind, lambda rngs: Transformer(cfg, rngs=rngs), seed=0)
            trainer = train.Trainer(model, rm.bt_loss_fn(kind), opt, mesh, total_steps=args.steps + 1,
                                    tx=rm.optimizer_for(kind, opt, args.steps + 1))
            state = trainer.init_state(0)
            state, _ = trainer.step(state, batch)  # compiles
            analysis = trainer._compiled.lower(state, batch).compile().memory_analysis()
            memory = analysis.argument_size_in_bytes + analysis.temp_size_in_bytes + \
                analysis.output_size_in_bytes - analysis.alias_size_in_bytes
            runs[name] = {"trainer": trainer, "state": state, "times": [], "memory": memory}
        for _ in range(args.steps):
            for run in runs.values():
                start = time.perf_counter()
                run["state"], metrics = run["trainer"].step(run["state"], batch)
                jax.block_until_ready(metrics["loss"])
                run["times"].append(time.perf_counter() - start)
        base = runs["single"]
        t0, m0 = statistics.median(base["times"]), base["memory"]
        for name, run in runs.items():
            t = statistics.median(run["times"])
            print(f"| {size} | {name} | {t * 1e3:.0f} ms | {t / t0:.2f} | {run['memory'] / 2**20:.0f} MiB | "
                  f"{run['memory'] / m0:.2f} |")


if __name__ == "__main__":
    main()
