"""One process of a multi-process training run on localhost (run by test_multiprocess.py), or the
single-process reference when run with --num-processes 1. Prints the loss curve as JSON on its last line."""

import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--process-id", type=int, default=0)
parser.add_argument("--num-processes", type=int, default=1)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--local-devices", type=int, default=4)
parser.add_argument("--mesh", default="2,2,2")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from jax_irl import parallel  # noqa: E402

    parallel.initialize_distributed(parallel.DistributedConfig(f"127.0.0.1:{args.port}", args.num_processes,
                                                               args.process_id))

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jax_irl import losses, parallel, train  # noqa: E402
from jax_irl.models.config import TransformerConfig  # noqa: E402
from jax_irl.models.transformer import Transformer  # noqa: E402

cfg = TransformerConfig.for_family("llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=8, num_kv_heads=8,
                                   intermediate_size=48)
rng = np.random.default_rng(0)
tokens = rng.integers(0, 64, (16, 10)).astype(np.int32)
mask = np.ones((16, 9), np.float32)
mask[:, :3] = 0


def loss_fn(model, batch, rng):
    logits = model(batch["tokens"][:, :-1]).logits
    return losses.iqlearn_loss(logits, batch["tokens"][:, 1:], batch["mask"], gamma=1.0, td_weight=0.1)


mesh = parallel.make_mesh(parallel.MeshConfig(*(int(x) for x in args.mesh.split(","))))
trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), loss_fn, train.OptimizerConfig(learning_rate=1e-2), mesh)
state = trainer.init_state(0)
rows = np.array_split(np.arange(16), jax.process_count())[jax.process_index()]  # this process's rows
curve = []
for _ in range(5):
    batch = parallel.global_batch({"tokens": tokens[rows], "mask": mask[rows]}, mesh)
    state, metrics = trainer.step(state, batch)
    curve.append(float(metrics["loss"]))
print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "curve": curve}))
sys.stdout.flush()
