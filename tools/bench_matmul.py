"""The float32 matmuls of the W1 training step, XLA:CPU (through jax.jit) against torch, in one process.

The W1 SFT step (tools/bench_train.py) spends most of its time in a handful of matmul shapes; this times each
shape alone on both sides: one warm-up call each, then --repeats rounds in which both sides run once in turn
(interleaved, the order alternating), the median. GFLOP/s counts 2 m k n. It is the measurement behind the
performance page's statement (docs/performance.md) of what keeps the jax_irl step from the benchmark's 0.8x
PyTorch on CPU: the same work, a slower matmul library. Run it on a quiet machine.

    .venv/bin/python tools/bench_matmul.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import torch

from bench_train import allocator  # tools/ is the script's folder

# (what it is in the W1 step, m, k, n): [m, k] x [k, n]. 16 rows x 255 input tokens = 4080; the loss window is
# 16 x 128 = 2048 positions; hidden 256, MLP 688, vocabulary 8192.
SHAPES = (
    ("MLP gate / up, forward", 4080, 256, 688),
    ("MLP down, forward", 4080, 688, 256),
    ("MLP weight gradient (x^T g)", 256, 4080, 688),
    ("attention projection, forward", 4080, 256, 256),
    ("unembedding on the loss window, forward", 2048, 256, 8192),
    ("unembedding weight gradient", 256, 2048, 8192),
    ("unembedding input gradient", 2048, 8192, 256),
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1; got {args.repeats}")
    rng = np.random.default_rng(0)
    matmul = jax.jit(lambda a, b: a @ b)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); allocator: {allocator()}; float32; median of {args.repeats} "
          f"interleaved calls per side.\n")
    print("| matmul | shape | XLA:CPU | torch | XLA / torch |")
    print("|---|---|---|---|---|")
    for name, m, k, n in SHAPES:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        ja, jb, ta, tb = jax.device_put(a), jax.device_put(b), torch.from_numpy(a), torch.from_numpy(b)
        sides = {"jax": lambda: matmul(ja, jb).block_until_ready(), "torch": lambda: ta @ tb}
        for fn in sides.values():
            fn()
        times = {s: [] for s in sides}
        for r in range(args.repeats):
            for s in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                start = time.perf_counter()
                sides[s]()
                times[s].append(time.perf_counter() - start)
        tj, tt = statistics.median(times["jax"]), statistics.median(times["torch"])
        gflop = 2 * m * k * n / 1e9
        print(f"| {name} | [{m}, {k}] x [{k}, {n}] | {tj * 1e3:.2f} ms ({gflop / tj:.0f} GFLOP/s) | "
              f"{tt * 1e3:.2f} ms ({gflop / tt:.0f} GFLOP/s) | {tj / tt:.2f}x |")


if __name__ == "__main__":
    main()
