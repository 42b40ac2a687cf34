"""The inverse-RL paper's profiling table: milliseconds per update for MLE, offline IQLearn and online IQLearn
(its policy sampling included) on the same model and data, the updates interleaved in one process.

Each method is ``iqlearn.finetune``'s own path: the loss of ``iqlearn.make_loss_fn`` (with the dataset's loss
window) in a ``train.Trainer`` step, and for online IQLearn the batch of ``iqlearn.online_batch_fn``, which
samples ``policy_prompts`` responses from the current model each step. Data: built-in arithmetic, encoded with a
BPE of up to 1024 pieces trained on it (491 come out). Sizes: 'cpu' is the IRL experiment's CPU default model
(hidden 96, 2 layers, batch 32) over that vocabulary; 'W1' the benchmark's model (hidden 256, 4 layers,
batch 16) with its vocabulary of 8192, of which the data use the BPE's ids. Prints a markdown table: the median
and range of --steps updates after one warm-up, and the online update split into its sampling and its step.

    .venv/bin/python tools/bench_irl.py [--size cpu|W1] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from jax_irl import parallel, rollout, tasks, train
from jax_irl.algorithms import iqlearn
from jax_irl.data import batching
from jax_irl.data.tokenizer import train_bpe
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

SIZES = {"cpu": dict(hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256, vocab=None,
                     batch=32),
         "W1": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=688, vocab=8192,
                    batch=16)}
METHODS = {"MLE": iqlearn.Method("mle"), "offline IQLearn (td 0.1)": iqlearn.Method("iqlearn", td_weight=0.1),
           "online IQLearn (td 0.1, alpha 0.1)": iqlearn.Method("online", td_weight=0.1, alpha=0.1)}
MAX_NEW = 48


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    size = dict(SIZES[args.size])
    batch, vocab = size.pop("batch"), size.pop("vocab")
    data = tasks.load(tasks.TaskConfig(name="arithmetic", train_examples=1000, eval_examples=8))
    tok = train_bpe([q + r for q, r in zip(data.train_prompts, data.train_responses)], vocab_size=1024)
    enc = batching.encode_examples(tok, data.train_prompts, data.train_responses, 96)
    encoded = dict(batching.trim_padding({"tokens": enc["tokens"], "mask": enc["mask"]}, tok.pad_id),
                   prompt_lengths=enc["prompt_lengths"])
    cfg = TransformerConfig.for_family("llama", vocab_size=vocab or tok.vocab_size, max_position_embeddings=256,
                                       **size)
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    opt = train.OptimizerConfig(learning_rate=1e-4)
    sampler = batching.IndexSampler(len(encoded["tokens"]), batch, seed=0)
    width = int(encoded["prompt_lengths"].max())
    runs = {}
    for name, method in METHODS.items():
        online = method.kind == "online"
        loss_fn = iqlearn.make_loss_fn(method, window=rollout.loss_window(encoded["mask"]),
                                       policy_window=MAX_NEW if online else None)
        trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), loss_fn, opt, mesh)
        if online:
            batch_fn = iqlearn.online_batch_fn(method, sampler, encoded, seed=0, prompt_width=width,
                                               max_new_tokens=MAX_NEW, eos_id=tok.eos_id, pad_id=tok.pad_id)
        else:
            data_fn = sampler.batch_fn({"tokens": encoded["tokens"], "mask": encoded["mask"]})
            batch_fn = lambda position, model, f=data_fn: f(position)  # noqa: E731
        runs[name] = {"trainer": trainer, "state": trainer.init_state(0), "batch_fn": batch_fn,
                      "total": [], "sample": []}

    def update(run, position):
        start = time.perf_counter()
        local = run["batch_fn"](position, run["trainer"].model(run["state"]))
        sampled = time.perf_counter()
        run["state"], metrics = run["trainer"].step(run["state"], parallel.global_batch(local, mesh))
        jax.block_until_ready((run["state"], metrics))
        return time.perf_counter() - start, sampled - start

    first = {name: update(run, 0)[0] for name, run in runs.items()}  # compiles
    for position in range(1, args.steps + 1):
        for run in runs.values():
            total, sample = update(run, position)
            run["total"].append(total)
            run["sample"].append(sample)
    print(f"{args.size}: Llama-style hidden {cfg.hidden_size}, {cfg.num_layers} layers, vocab {cfg.vocab_size}; "
          f"batch {batch} arithmetic rows of {encoded['tokens'].shape[1]} tokens; online: "
          f"{METHODS['online IQLearn (td 0.1, alpha 0.1)'].policy_prompts} prompts x {MAX_NEW} new tokens sampled "
          f"per update; {jax.devices()[0].platform}, {args.steps} interleaved updates each.\n")
    base = statistics.median(runs["MLE"]["total"])
    print("| method | ms per update (median) | range | x MLE | of which sampling | first call |\n"
          "|---|---|---|---|---|---|")
    for name, run in runs.items():
        t = run["total"]
        med = statistics.median(t)
        sample = statistics.median(run["sample"])
        print(f"| {name} | {1000 * med:.0f} | {1000 * min(t):.0f}-{1000 * max(t):.0f} | {med / base:.2f}x | "
              f"{1000 * sample:.0f} ms | {first[name]:.1f} s |")


if __name__ == "__main__":
    main()
