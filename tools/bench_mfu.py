"""Training-step throughput and model-FLOPs utilisation (MFU) of a 1B-class model, per attention implementation.

MFU of a 1B-class config on an accelerator, and the cuDNN attention path measured there: one command on a GPU
or TPU host:

    .venv/bin/python tools/bench_mfu.py                      # 1B, bf16, the attention sides the backend has
    .venv/bin/python tools/bench_mfu.py --batch 4 --length 2048 --attention einsum,auto
    .venv/bin/python tools/bench_mfu.py --size tiny --steps 3  # a smoke run on CPU

Sizes: '1B' has Llama 3.2 1B's shapes (hidden 2048, 16 layers, 32 heads / 8 KV heads, head_dim 64,
intermediate 8192, vocabulary 128256, tied embeddings); 'tiny' is for checking the script on a CPU. Each side is
an SFT step of jax_irl's own path (``iqlearn.make_loss_fn(Method('mle'))`` in a ``train.Trainer`` step with
AdamW and clipping, float32 master weights, the compute dtype given) on random tokens with every target
counted. Sides run one after another, each with its own model and optimizer state freed before the next (a 1B
model's float32 weights and AdamW state take 16 GiB, too much to hold three times); the median and the range
of --steps steps after a compiling first call.

MFU = training FLOPs per token (``models.config.training_flops_per_token``: PaLM's 6 N + 12 L H hd T) x tokens
per second / the device's peak. Peaks (dense bf16, per device) are known for the device kinds in PEAK_TFLOPS;
elsewhere, and for float32 compute, pass --peak-tflops. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import time

import jax
import numpy as np
from flax import nnx

from jax_irl import aot, parallel, train
from jax_irl.algorithms import sft
from jax_irl.models.config import TransformerConfig, training_flops_per_token
from jax_irl.models.transformer import Transformer

SIZES = {
    "1B": dict(vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               intermediate_size=8192, tie_embeddings=True),
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=176),
}
# Dense bf16 peak TFLOP/s per GPU, from the vendors' data sheets (SXM parts for NVIDIA), matched against
# jax.Device.device_kind in this order; TPU chips come from jax_irl.aot.CHIPS (libtpu calls a v5p 'TPU v5' and a
# v5e 'TPU v5 lite', matched exactly there).
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L4", 121.0))


def peak_tflops(device_kind: str):
    """The dense bf16 peak of a device kind, or None when it is not known."""
    chip = aot.chip_for_device_kind(device_kind)
    if chip is not None:
        return chip.peak_bf16_flops / 1e12
    for name, peak in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def side(cfg: TransformerConfig, batch: int, length: int, steps: int, vocab_chunk):
    """(first call seconds, [step seconds]) of the SFT step on one model built from cfg."""
    mesh = parallel.make_mesh(parallel.MeshConfig())
    rng = np.random.default_rng(0)
    rows = {"tokens": rng.integers(0, cfg.vocab_size, (batch, length + 1)).astype(np.int32),
            "mask": np.ones((batch, length), np.float32)}
    trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)),
                            sft.loss_fn(vocab_chunk=vocab_chunk),
                            train.OptimizerConfig(learning_rate=1e-5, max_grad_norm=1.0), mesh)
    state, data = trainer.init_state(0), parallel.global_batch(rows, mesh)
    start = time.perf_counter()
    state, metrics = trainer.step(state, data)
    jax.block_until_ready((state, metrics))
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = trainer.step(state, data)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    if not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"the loss is {float(metrics['loss'])} (attention={cfg.attention})")
    return first, times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="1B")
    p.add_argument("--batch", type=int, default=2, help="rows per step (over all devices)")
    p.add_argument("--length", type=int, default=2048, help="tokens per row fed to the model")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="compute dtype")
    p.add_argument("--attention", default=None,
                   help="comma-separated TransformerConfig.attention values (default: einsum,xla,auto on GPU; "
                        "einsum,xla elsewhere)")
    p.add_argument("--vocab-chunk", type=int, default=None,
                   help="the loss from hidden states in vocabulary chunks (no [B, T, V] logits)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU (per device)")
    args = p.parse_args(argv)
    for name in ("batch", "length", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    backend = jax.default_backend()
    sides = (args.attention or ("einsum,xla,auto" if backend == "gpu" else "einsum,xla")).split(",")
    devices = jax.devices()
    kind = devices[0].device_kind
    peak = args.peak_tflops or (peak_tflops(kind) if args.dtype == "bfloat16" else None)
    base = TransformerConfig.for_family("llama", dtype=args.dtype, max_position_embeddings=max(args.length, 2048),
                                        **SIZES[args.size])
    per_token = training_flops_per_token(base, args.length)
    tokens = args.batch * args.length
    params = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(lambda: Transformer(base,
                                                                                               rngs=nnx.Rngs(0))))))
    print(f"{args.size}: {params / 1e6:,.1f}M params, {args.dtype} compute, float32 master weights; {args.batch} x "
          f"{args.length} tokens per step; {per_token / 1e9:.3g} GFLOP per training token "
          f"(6 N + 12 L H hd T); {len(devices)} x {kind} ({backend}), peak "
          f"{'%g TFLOP/s each' % peak if peak else 'unknown (pass --peak-tflops)'}; jax {jax.__version__}; "
          f"{args.steps} steps after the first call.\n")
    print("| attention | step (median) | range | tokens/s | TFLOP/s | MFU | first call |")
    print("|---|---|---|---|---|---|---|")
    for attention in sides:
        first, times = side(dataclasses.replace(base, attention=attention), args.batch, args.length, args.steps, args.vocab_chunk)
        step = statistics.median(times)
        achieved = per_token * tokens / step / 1e12
        mfu = f"{100 * achieved / (peak * len(devices)):.1f}%" if peak else "-"
        print(f"| {attention} | {step:.3f} s | {min(times):.3f}-{max(times):.3f} s | {tokens / step:,.0f} | "
              f"{achieved:.3g} | {mfu} | {first:.1f} s |")
        gc.collect()


if __name__ == "__main__":
    main()
