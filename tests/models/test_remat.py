"""Activation checkpointing (TransformerConfig.remat): every policy gives the same loss and gradients as none,
through the plain forward, the loss window and the vocabulary-chunked loss, under jit and on 8 devices with
FSDP; bad names are refused with the field named. (What each policy saves in memory is measured by
tools/aot.py, not here.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import parallel, train
from jax_irl.algorithms import iqlearn
from jax_irl.models.config import REMAT, TransformerConfig
from jax_irl.models.transformer import Transformer

CFG = TransformerConfig.for_family("llama", vocab_size=96, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                                   intermediate_size=48, attention_block=4)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 96, (8, 13)), jnp.int32)
MASK = jnp.asarray((np.arange(12)[None] >= np.array([2, 3, 4, 5, 2, 3, 4, 5])[:, None]), jnp.float32)


def _grads(remat, window=None, vocab_chunk=None):
    model = Transformer(dataclasses.replace(CFG, remat=remat), rngs=nnx.Rngs(0))
    loss_fn = iqlearn.make_loss_fn(iqlearn.Method("iqlearn", td_weight=0.5, gamma=0.9), vocab_chunk=vocab_chunk,
                                   window=window)

    def loss(m):
        return loss_fn(m, {"tokens": TOKENS, "mask": MASK}, None)[0]

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    return float(value), jax.tree.leaves(nnx.state(grads, nnx.Param))


@pytest.mark.parametrize("remat", [r for r in REMAT if r not in ("none", "offload")])
@pytest.mark.parametrize("path", ["full", "window", "chunked"])
def test_every_policy_gives_the_same_loss_and_gradients(remat, path):
    kwargs = {"full": {}, "window": {"window": 8}, "chunked": {"vocab_chunk": 32}}[path]
    ref_value, ref_grads = _grads("none", **kwargs)
    value, grads = _grads(remat, **kwargs)
    assert value == pytest.approx(ref_value, rel=1e-6)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in ref_grads)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-5, atol=1e-7)


def test_offload_policy_builds_where_the_backend_has_host_memory():
    # XLA:CPU has no separate host memory space, so the offload policy's program is only checked to trace (its
    # values on TPU/GPU are the 'dots_no_batch' ones, moved to host memory and back)
    model = Transformer(dataclasses.replace(CFG, remat="offload"), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    out = jax.eval_shape(jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(TOKENS).logits)), state)
    assert [x.shape for x in jax.tree.leaves(out)] == [x.shape for x in jax.tree.leaves(state)]


def test_a_sharded_train_step_with_remat_matches_without():
    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=4))
    batch = parallel.global_batch({"tokens": np.asarray(TOKENS), "mask": np.asarray(MASK)}, mesh)
    results = []
    for remat in ("none", "full"):
        trainer = train.Trainer(Transformer(dataclasses.replace(CFG, remat=remat), rngs=nnx.Rngs(0)),
                                iqlearn.make_loss_fn(iqlearn.Method("mle"), vocab_chunk=32),
                                train.OptimizerConfig(learning_rate=1e-2), mesh)
        state = trainer.init_state(0)
        for _ in range(2):
            state, metrics = trainer.step(state, batch)
        results.append((float(metrics["loss"]), jax.tree.leaves(jax.device_get(state.params))))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_bad_policy_is_refused_by_name():
    with pytest.raises(ValueError, match="remat must be one of"):
        dataclasses.replace(CFG, remat="everything")
