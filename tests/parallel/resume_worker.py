"""A small training run with checkpoints (run by test_checkpoint.py). Trains to --steps, resuming from --dir's
latest checkpoint if there is one, then writes the final params to --dir/final.npz."""

import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--dir", required=True)
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--save-every", type=int, default=2)
parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step, to leave time for a kill")
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--mesh", default="2,2,2")
parser.add_argument("--hidden", type=int, default=32)
parser.add_argument("--grain", action="store_true", help="read the batches through batching.Batches (prefetched)")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jax_irl import checkpoint, losses, parallel, train  # noqa: E402
from jax_irl.data import batching  # noqa: E402
from jax_irl.models.config import TransformerConfig  # noqa: E402
from jax_irl.models.transformer import Transformer  # noqa: E402

cfg = TransformerConfig.for_family("llama", vocab_size=64, hidden_size=args.hidden, num_layers=2, num_heads=8,
                                   num_kv_heads=8, intermediate_size=48)


def batch_fn(position):
    rng = np.random.default_rng(position)  # the data at a position is a pure function of it
    return {"tokens": rng.integers(0, 64, (16, 10)).astype(np.int32), "mask": np.ones((16, 9), np.float32)}


def loss_fn(model, batch, rng):
    logits = model(batch["tokens"][:, :-1]).logits
    noise = jax.random.normal(rng, ()) * 1e-3  # the PRNG state must be restored too for a bitwise match
    loss, aux = losses.iqlearn_loss(logits, batch["tokens"][:, 1:], batch["mask"], gamma=1.0, td_weight=0.1)
    return loss + noise, aux


mesh = parallel.make_mesh(parallel.MeshConfig(*(int(x) for x in args.mesh.split(","))))
opt = train.OptimizerConfig(learning_rate=1e-2, schedule="cosine", warmup_steps=2, total_steps=args.steps)
trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), loss_fn, opt, mesh)
ckpt = checkpoint.Checkpointer(os.path.join(args.dir, "checkpoints"), save_every=args.save_every, keep=2,
                               fingerprint={"model": cfg.__dict__, "optimizer": opt.__dict__, "mesh": args.mesh},
                               resumable_keys=("mesh",))
state, position = train.resume_or_init(trainer, ckpt, seed=0)
print(f"start {int(state.step)}", flush=True)


def pause(model, step):  # leaves time for a kill between steps
    time.sleep(args.sleep)


if args.grain:  # 40 fixed rows, 16 a batch, from a Grain pipeline that prefetches 2 batches
    rows = np.random.default_rng(0).integers(0, 64, (40, 10)).astype(np.int32)
    batches = batching.IndexSampler(40, 16, seed=5).batch_fn({"tokens": rows, "mask": np.ones((40, 9), np.float32)})
else:
    batches = batch_fn
state, status = train.fit(trainer, state, batches, steps=args.steps, start_position=position, checkpointer=ckpt,
                          log_dir=args.dir, progress=False, hooks=[train.Every(1, pause)] if args.sleep else ())
ckpt.close()
print(f"status {status} step {int(state.step)}", flush=True)
if status == "done":
    flat = {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
    np.savez(os.path.join(args.dir, "final.npz"), **flat)
