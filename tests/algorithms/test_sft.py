"""Supervised fine-tuning: the loss against an independent NLL, its paths agree, the stage trains and resumes."""

import jax
import numpy as np
import pytest
from flax import nnx

from jax_irl import parallel, stages, train
from jax_irl.algorithms import iqlearn, sft


@pytest.fixture(scope="module")
def data(setup):
    """The shared model and its data rows (tokens [3, 9], a response mask with a hole) as numpy."""
    model, batch = setup
    return model, {"tokens": np.asarray(batch["tokens"]), "mask": np.asarray(batch["mask"])}


def _numpy_nll(model, batch):
    logits = np.asarray(model(batch["tokens"][:, :-1]).logits, np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    target = np.take_along_axis(logp, batch["tokens"][:, 1:, None].astype(np.int64), -1)[..., 0]
    return -float((target * batch["mask"]).sum() / batch["mask"].sum())


def test_the_loss_is_the_mean_nll_of_the_masked_tokens(data):
    model, batch = data
    loss, _ = sft.loss_fn()(model, batch, None)
    np.testing.assert_allclose(float(loss), _numpy_nll(model, batch), rtol=1e-5)


def test_chunked_and_windowed_paths_and_iqlearn_mle_give_the_same_loss(data):
    model, batch = data
    full, _ = sft.loss_fn()(model, batch, None)
    for kw in (dict(vocab_chunk=8), dict(window=5), dict(vocab_chunk=16, window=6)):
        np.testing.assert_allclose(float(sft.loss_fn(**kw)(model, batch, None)[0]), float(full), rtol=1e-5,
                                   err_msg=str(kw))
        np.testing.assert_allclose(float(iqlearn.make_loss_fn(iqlearn.Method("mle"), **kw)(model, batch, None)[0]),
                                   float(full), rtol=1e-6, err_msg=str(kw))
    grads = [jax.grad(lambda m, f=f: f(m, batch, None)[0])(model)
             for f in (sft.loss_fn(), sft.loss_fn(vocab_chunk=8, window=5))]
    for a, b in zip(jax.tree.leaves(nnx.state(grads[0])), jax.tree.leaves(nnx.state(grads[1]))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_the_entropy_bonus_lowers_the_loss_by_beta_times_the_entropy(data):
    model, batch = data
    plain, _ = sft.loss_fn()(model, batch, None)
    bonus, aux = sft.loss_fn(entropy_bonus=0.5)(model, batch, None)
    logits = np.asarray(model(batch["tokens"][:, :-1]).logits, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -(p * np.log(p)).sum(-1)
    mean_entropy = float((entropy * batch["mask"]).sum() / batch["mask"].sum())
    np.testing.assert_allclose(float(bonus), float(plain) - 0.5 * mean_entropy, rtol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="entropy_bonus must be >= 0"):
        sft.loss_fn(entropy_bonus=-1.0)
    encoded = {"tokens": np.zeros((4, 5), np.int32), "mask": np.ones((4, 4)), "truncated": np.int32(0)}
    with pytest.raises(ValueError, match="train_examples=5 exceeds the 4 training examples"):
        sft.first_examples(encoded, 5)
    with pytest.raises(ValueError, match="train_examples must be None"):
        sft.first_examples(encoded, 0)
    cut = sft.first_examples(encoded, 2)
    assert cut["tokens"].shape == (2, 5) and cut["mask"].shape == (2, 4) and cut["truncated"] == 0
    assert sft.first_examples(encoded, None) is encoded


def test_finetune_lowers_the_loss_and_a_finished_stage_is_reused(tmp_path, data):
    model, _ = data
    rng = np.random.default_rng(1)
    encoded = {"tokens": rng.integers(3, 9, (16, 9)).astype(np.int32), "mask": np.ones((16, 8), np.float32)}
    stage = stages.StageConfig(steps=12, batch_size=8, optimizer=train.OptimizerConfig(learning_rate=3e-2))
    run = stages.Run.start(str(tmp_path), stages.RunSettings(), fingerprint={"data": "random"}, progress=False)
    before = float(sft.loss_fn()(model, encoded, None)[0])
    tuned = sft.finetune(run, model, stage, encoded)
    after = float(sft.loss_fn()(tuned, encoded, None)[0])
    assert after < before - 0.3, (before, after)  # the tokens come from 6 of 37 ids: a quick gain
    again = sft.finetune(run, model, stage, encoded)  # resumes at the last step: no training
    for a, b in zip(jax.tree.leaves(nnx.state(tuned, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

