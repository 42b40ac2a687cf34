import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses, parallel, rollout, train
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer
from tests.processes import ROOT, free_port, wait_all

WORKER = os.path.join(os.path.dirname(__file__), "worker.py")


def _cfg(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=8, num_kv_heads=8, intermediate_size=48)
    base.update(kw)
    return TransformerConfig.for_family("llama", **base)


def _data():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (16, 10)).astype(np.int32)
    mask = np.ones((16, 9), np.float32)
    mask[:, :3] = 0
    return {"tokens": tokens, "mask": mask}


def _loss_fn(model, batch, rng):
    logits = model(batch["tokens"][:, :-1]).logits
    return losses.iqlearn_loss(logits, batch["tokens"][:, 1:], batch["mask"], gamma=1.0, td_weight=0.1)


def _curve(shape, devices=None, steps=5, accum=1, cfg=None):
    mesh = parallel.make_mesh(parallel.MeshConfig(*shape), devices)
    trainer = train.Trainer(Transformer(cfg or _cfg(), rngs=nnx.Rngs(0)), _loss_fn,
                            train.OptimizerConfig(learning_rate=1e-2, grad_accum_steps=accum), mesh)
    state = trainer.init_state(0)
    curve = []
    for _ in range(steps):
        state, metrics = trainer.step(state, parallel.global_batch(_data(), mesh))
        curve.append(float(metrics["loss"]))
    return np.array(curve), state, trainer


def test_same_loss_curve_on_one_device_and_on_every_8_device_mesh():
    base, _, _ = _curve((1, 1, 1), jax.devices()[:1])
    assert base[-1] < base[0] - 0.5  # it trains
    for shape in [(8, 1, 1), (2, 2, 2), (1, 2, 4), (1, 1, 8)]:
        curve, state, _ = _curve(shape)
        np.testing.assert_allclose(curve, base, atol=1e-5, err_msg=str(shape))
    # The params really are sharded as their logical names say, and so is the optimizer state.
    q = state.params["layers"][0]["attn"]["q"].get_value()
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    mu = jax.tree.leaves(state.opt_state)
    assert all(isinstance(x.sharding, jax.sharding.NamedSharding) for x in mu)


def test_gradient_accumulation_equals_the_full_batch():
    full, _, _ = _curve((2, 2, 2), steps=3)
    accum, _, _ = _curve((2, 2, 2), steps=3, accum=2)
    np.testing.assert_allclose(accum, full, atol=1e-5)


def test_state_is_donated():
    mesh = parallel.make_mesh(parallel.MeshConfig(8, 1, 1))
    trainer = train.Trainer(Transformer(_cfg(), rngs=nnx.Rngs(0)), _loss_fn, train.OptimizerConfig(), mesh)
    state = trainer.init_state(0)
    old = state.params["embed"].get_value()
    state, _ = trainer.step(state, parallel.global_batch(_data(), mesh))
    assert old.is_deleted()


def test_what_does_not_divide_the_mesh_gets_a_clear_error():
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 2, 4))
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.k: dimension 1 .* size 2.*tensor of size 4"):
        parallel.param_shardings(Transformer(_cfg(num_kv_heads=2), rngs=nnx.Rngs(0)), mesh)
    with pytest.raises(ValueError, match="global batch size 6 does not divide"):
        parallel.global_batch({"tokens": np.zeros((6, 4), np.int32)}, parallel.make_mesh(parallel.MeshConfig(8)))
    with pytest.raises(ValueError, match="but 8 are available"):
        parallel.make_mesh(parallel.MeshConfig(2, 2, 1))
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        parallel.make_mesh(parallel.MeshConfig(-1, -1, 1))
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps"):
        _curve((8, 1, 1), steps=1, accum=3)
    with pytest.raises(ValueError, match="needs all of coordinator_address"):
        parallel.initialize_distributed(parallel.DistributedConfig(coordinator_address="127.0.0.1:1"))


def test_logical_rules():
    assert parallel.logical_to_spec(("vocab", "embed")) == jax.sharding.PartitionSpec("tensor", "fsdp")
    # A mesh axis is used once: the second 'tensor' user is replicated.
    assert parallel.logical_to_spec(("heads", "mlp")) == jax.sharding.PartitionSpec("tensor", None)
    with pytest.raises(ValueError, match="no rule"):
        parallel.logical_to_spec(("experts",))


@pytest.mark.slow
def test_two_processes_on_localhost_match_one_process():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    port = free_port()
    procs = [subprocess.Popen([sys.executable, WORKER, "--process-id", str(i), "--num-processes", "2", "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outs = [json.loads(out.strip().splitlines()[-1]) for out in wait_all(procs)]
    single = subprocess.run([sys.executable, WORKER, "--local-devices", "1", "--mesh", "1,1,1"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = json.loads(single.stdout.strip().splitlines()[-1])["curve"]
    for out in outs:
        assert out["devices"] == 8
        np.testing.assert_allclose(out["curve"], reference, atol=1e-5)


def test_bf16_compute_keeps_fp32_master_weights():
    import dataclasses

    base, _, _ = _curve((8, 1, 1), steps=3)
    curve, state, _ = _curve((8, 1, 1), steps=3, cfg=dataclasses.replace(_cfg(), dtype="bfloat16"))
    assert state.params["embed"].get_value().dtype == np.float32  # master weights stay fp32
    assert np.isfinite(curve).all()
    np.testing.assert_allclose(curve, base, rtol=2e-2)  # bf16 matmuls track fp32 closely on this scale


def test_dpo_step_with_precomputed_reference_log_probs(tmp_path):
    """The reference model runs once, outside the step; the step sees only arrays."""
    policy = Transformer(_cfg(), rngs=nnx.Rngs(0))
    reference = Transformer(_cfg(), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 64, (16, 10)).astype(np.int32)  # rows 2i chosen, 2i+1 rejected
    mask = np.ones((16, 9), np.float32)
    mask[:, :4] = 0  # the prompt
    ref_tok = np.asarray(rollout.reference_log_probs(reference, tokens, batch_size=8))
    direct = np.asarray(losses.token_log_probs(reference(jnp.asarray(tokens[:, :-1])).logits, tokens[:, 1:]))
    np.testing.assert_allclose(ref_tok, direct, rtol=1e-5, atol=1e-5)
    ref_seq = (ref_tok * mask).sum(-1)

    def dpo(model, batch, rng):
        lp = losses.sequence_log_probs(model(batch["tokens"][:, :-1]).logits, batch["tokens"][:, 1:], batch["mask"])
        return losses.dpo_loss(lp[0::2], lp[1::2], batch["ref"][0::2], batch["ref"][1::2], beta=0.1)

    mesh = parallel.make_mesh(parallel.MeshConfig(4, 2, 1))
    trainer = train.Trainer(policy, dpo, train.OptimizerConfig(learning_rate=1e-2), mesh)
    state = trainer.init_state(0)
    batch = {"tokens": tokens, "mask": mask, "ref": ref_seq.astype(np.float32)}
    state, first = trainer.step(state, parallel.global_batch(batch, mesh))
    np.testing.assert_allclose(float(first["loss"]), np.log(2), rtol=1e-5)  # policy == reference at step 0
    for _ in range(5):
        state, metrics = trainer.step(state, parallel.global_batch(batch, mesh))
    assert float(metrics["loss"]) < np.log(2) - 0.05 and float(metrics["reward_accuracy"]) > 0.5


def test_training_never_deletes_the_callers_model():
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))
    before = np.asarray(model.embed[...]).copy()
    mesh = parallel.make_mesh(parallel.MeshConfig(8, 1, 1))
    for _ in range(2):  # two trainers from the same model, as a sweep does from one base model
        trainer = train.Trainer(model, _loss_fn, train.OptimizerConfig(learning_rate=1e-2), mesh)
        state = trainer.init_state(0)
        state, _ = trainer.step(state, parallel.global_batch(_data(), mesh))
    np.testing.assert_array_equal(np.asarray(model.embed[...]), before)
