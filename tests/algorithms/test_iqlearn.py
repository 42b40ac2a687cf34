import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses, rollout, sampling, stages, train
from jax_irl.algorithms import iqlearn
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

METHODS = {"mle": iqlearn.Method("mle", gamma=0.9), "mle_entropy": iqlearn.Method("mle", entropy_bonus=0.3, gamma=0.9),
           "iqlearn": iqlearn.Method("iqlearn", td_weight=0.3, gamma=0.9),
           "online": iqlearn.Method("online", td_weight=0.5, gamma=0.9, alpha=0.2),
           "online_mixture": iqlearn.Method("online", td_weight=0.5, gamma=0.9, alpha=0.2, chi2="mixture")}


def reference_loss(method, model, b):
    """The same loss straight from the logits-based functions of jax_irl.losses."""
    logits = model(b["tokens"][:, :-1]).logits
    targets = b["tokens"][:, 1:]
    if method.kind == "mle":
        return losses.mle_entropy_loss(logits, targets, b["mask"], entropy_bonus=method.entropy_bonus)[0]
    if method.kind == "iqlearn":
        return losses.iqlearn_loss(logits, targets, b["mask"], gamma=0.9, td_weight=method.td_weight)[0]
    policy_logits = model(b["policy_tokens"][:, :-1], attention_mask=b["policy_attention"][:, :-1]).logits
    return losses.iqlearn_online_loss(logits, targets, b["mask"], policy_logits, b["policy_mask"], alpha=0.2,
                                      gamma=0.9, td_weight=method.td_weight, chi2=method.chi2,
                                      policy_targets=b["policy_tokens"][:, 1:])[0]


@pytest.mark.parametrize("name", METHODS)
def test_loss_fn_matches_the_losses_and_the_chunked_path_matches_it(setup, name):
    model, batch = setup
    method = METHODS[name]
    full = iqlearn.make_loss_fn(method)
    chunked = iqlearn.make_loss_fn(method, vocab_chunk=10)  # 37 = 3 full chunks + 7
    want = float(reference_loss(method, model, batch))
    np.testing.assert_allclose(float(full(model, batch, None)[0]), want, rtol=1e-6)
    np.testing.assert_allclose(float(chunked(model, batch, None)[0]), want, rtol=1e-5)

    def grads(fn):
        return nnx.jit(nnx.grad(lambda m: fn(m, batch, None)[0]))(model)

    for g_full, g_chunk in zip(jax.tree.leaves(grads(full)), jax.tree.leaves(grads(chunked))):
        np.testing.assert_allclose(np.asarray(g_chunk), np.asarray(g_full), rtol=1e-4, atol=1e-6)


class _Chars:
    """A stand-in tokenizer: ids -> letters."""

    eos_id, pad_id = 0, 0

    def decode(self, ids):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def test_method_fields_are_validated():
    for bad, match in ((dict(kind="ppo"), "kind must be one of"), (dict(td_weight=-1.0), "td_weight"),
                       (dict(gamma=0.0), "gamma"), (dict(alpha=1.5), "alpha"), (dict(policy_prompts=0), "policy_prompts"),
                       (dict(chi2="both"), "chi2 must be one of"), (dict(entropy_bonus=-0.1), "entropy_bonus"),
                       (dict(kind="iqlearn", entropy_bonus=0.1), "entropy_bonus is the MLE control"),
                       (dict(train_examples=0), "train_examples")):
        with pytest.raises(ValueError, match=match):
            iqlearn.Method(**bad)


def test_online_batches_are_a_pure_function_of_the_position(setup):
    """The policy samples of a data position are the same however often it is asked (what makes resume exact),
    and differ between positions."""
    from jax_irl.data import batching

    model, _ = setup
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, 37, (8, 10)).astype(np.int32)
    encoded = {"tokens": tokens, "mask": np.ones((8, 9), np.float32), "prompt_lengths": np.full(8, 4)}
    sampler = batching.IndexSampler(8, 4, seed=0)
    fn = iqlearn.online_batch_fn(iqlearn.Method("online", td_weight=0.1, policy_prompts=2), sampler, encoded, seed=5,
                                 prompt_width=4, max_new_tokens=3, eos_id=0, pad_id=0)
    a, b, c = fn(3, model), fn(3, model), fn(4, model)
    assert a["policy_tokens"].shape == (2, 7) and a["policy_mask"].shape == (2, 6)
    np.testing.assert_array_equal(a["policy_tokens"], b["policy_tokens"])
    np.testing.assert_array_equal(a["tokens"], tokens[sampler.indices(3)])
    assert not np.array_equal(a["policy_tokens"], c["policy_tokens"])


def test_evaluate_rewards_and_entropy_equal_a_direct_forward(setup):
    """evaluate's extracted rewards and entropy, recomputed from the samples with the logits-based losses."""
    model, _ = setup
    prompts = np.array([[5, 6, 7], [1, 8, 9]], np.int32)
    pmask = np.ones_like(prompts)
    kwargs = dict(temperatures=(1.0,), num_samples=2, max_new_tokens=4)
    got = iqlearn.evaluate(model, _Chars(), prompts, pmask, ["x", "y"], jax.random.PRNGKey(0), gamma=0.9,
                           correct_fn=lambda text, ref: float(text[:1] < "n"), **kwargs)["1"]
    key, sub = jax.random.split(jax.random.PRNGKey(0))
    rows = rollout.sample_rows(model, prompts, pmask, jax.random.fold_in(sub, 0), max_new_tokens=4, eos_id=0,
                               pad_id=0, num_samples=2)
    tokens, mask = jnp.asarray(rows["tokens"]), jnp.asarray(rows["mask"])
    logits = model(tokens[:, :-1], attention_mask=jnp.asarray(rows["attention"])[:, :-1]).logits
    rewards = np.asarray(losses.implied_rewards(logits, tokens[:, 1:], mask, gamma=0.9).sum(-1))
    from jax_irl import metrics

    np.testing.assert_allclose(got["mean_reward"], rewards.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["entropy"], float(metrics.token_entropy(logits, mask)), rtol=1e-5)
    texts = [_Chars().decode(r[m > 0]) for r, m in zip(rows["response"], rows["response_mask"])]
    split = metrics.correlation_split(rewards, [float(t[:1] < "n") for t in texts], [0, 0, 1, 1])
    np.testing.assert_allclose([got["reward_within"], got["reward_across"]], [split["within"], split["across"]],
                               rtol=1e-4)


def test_reward_pair_accuracy_scores_pairs_with_the_extracted_reward():
    from jax_irl.data.tokenizer import train_bpe

    texts = [f"Question: {a} plus {b}?\nAnswer: {a} + {b} = {a + b}" for a in range(9) for b in range(9)]
    tok = train_bpe(texts, vocab_size=120)
    cfg = TransformerConfig.for_family("llama", vocab_size=tok.vocab_size, hidden_size=16, num_layers=1,
                                       num_heads=2, num_kv_heads=1, intermediate_size=32, max_position_embeddings=64)
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    prompts = [f"Question: {a} plus 2?\nAnswer:" for a in range(6)]
    good = [f" {a} + 2 = {a + 2}" for a in range(6)]
    bad = [f" {a} + 2 = {a + 3}" for a in range(6)]
    acc = iqlearn.reward_pair_accuracy(model, tok, prompts, good, bad, gamma=0.9, max_length=48)
    # The same scores by hand: summed implied rewards of each prompt + response row.
    from jax_irl.data import batching

    enc = batching.encode_examples(tok, prompts * 2, good + bad, 48)
    r = rollout.score_rows(model, rollout.LMScores(("implied_rewards",), gamma=0.9, per_row=True),
                           {"tokens": enc["tokens"], "mask": enc["mask"]})["implied_rewards"]
    assert acc == pytest.approx(np.mean(r[:6] > r[6:]) + 0.5 * np.mean(r[:6] == r[6:]))
    assert acc + iqlearn.reward_pair_accuracy(model, tok, prompts, bad, good, gamma=0.9, max_length=48) == \
        pytest.approx(1.0)
    assert iqlearn.reward_pair_accuracy(model, tok, prompts, good, good, gamma=0.9, max_length=48) == 0.5
    with pytest.raises(ValueError, match="as many prompts"):
        iqlearn.reward_pair_accuracy(model, tok, prompts, good, bad[:2], gamma=0.9, max_length=48)


def test_evaluate_in_prompt_batches(setup):
    model, _ = setup
    prompts = np.array([[5, 6, 7], [1, 8, 9], [4, 4, 4]], np.int32)
    pmask = np.ones_like(prompts)
    refs = ["x", "y", "z"]
    kwargs = dict(temperatures=(1.0,), num_samples=2, max_new_tokens=4, gamma=1.0)
    always = iqlearn.evaluate(model, _Chars(), prompts, pmask, refs, jax.random.PRNGKey(0), prompts_per_batch=2,
                              correct_fn=lambda text, ref: 1.0, **kwargs)["1"]
    assert always["accuracy"] == 1.0 and np.isnan(always["reward_correlation"])  # constant correctness
    # Correctness that varies ('a'..'m' first letters), one batch of 3 against the default, and padded batches.
    first_half = lambda text, ref: float(text[:1] < "n")  # noqa: E731
    one = iqlearn.evaluate(model, _Chars(), prompts, pmask, refs, jax.random.PRNGKey(0), correct_fn=first_half,
                           **kwargs)["1"]
    same = iqlearn.evaluate(model, _Chars(), prompts, pmask, refs, jax.random.PRNGKey(0), prompts_per_batch=3,
                            rows_per_score=4, correct_fn=first_half, **kwargs)["1"]
    for k in one:
        np.testing.assert_allclose(same[k], one[k], rtol=1e-5, err_msg=k)
    padded = iqlearn.evaluate(model, _Chars(), prompts, pmask, refs, jax.random.PRNGKey(0), prompts_per_batch=2,
                              correct_fn=first_half, **kwargs)["1"]
    assert 0.0 <= padded["accuracy"] <= 1.0 and padded["entropy"] > 0
    with pytest.raises(ValueError, match="one reference per prompt"):
        iqlearn.evaluate(model, _Chars(), prompts, pmask, refs[:2], jax.random.PRNGKey(0), **kwargs)


@pytest.mark.parametrize("name", METHODS)
def test_the_loss_window_changes_no_loss_or_gradient(setup, name):
    """The unembedding only on each row's response span (rollout.causal_lm's window) gives the full path's loss
    and gradients: rows with different starts, a hole inside a span (whose successor value IQLearn still uses),
    a window wider than the row's end (clipped positions masked out), and the vocabulary-chunked path."""
    model, batch = setup
    mask = np.zeros((3, 8), np.float32)
    mask[0, 2:] = 1.0  # span 6 from position 2
    mask[1, 4:7] = 1.0  # span 3 from position 4
    mask[2, 3:] = 1.0
    mask[2, 5] = 0.0  # a hole
    assert rollout.loss_window(mask, multiple=1, min_saving=0.0) == 6
    assert rollout.loss_window(mask, multiple=4, min_saving=0.0) == 8
    assert rollout.loss_window(mask, multiple=4) is None  # 8 of 8 positions: no saving
    batch = dict(batch, mask=jnp.asarray(mask))
    method = METHODS[name]
    want = float(reference_loss(method, model, batch))
    full = iqlearn.make_loss_fn(method)
    g_want = nnx.jit(nnx.grad(lambda m: full(m, batch, None)[0]))(model)
    for fn in (iqlearn.make_loss_fn(method, window=6, policy_window=3),
               iqlearn.make_loss_fn(method, window=7, policy_window=6),  # past the rows' end
               iqlearn.make_loss_fn(method, vocab_chunk=10, window=6, policy_window=3)):
        np.testing.assert_allclose(float(fn(model, batch, None)[0]), want, rtol=2e-5)
        g = nnx.jit(nnx.grad(lambda m, fn=fn: fn(m, batch, None)[0]))(model)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # A window too narrow for a row drops its last counted targets: the loss changes (so the test above can fail).
    narrow = iqlearn.make_loss_fn(method, window=4, policy_window=3)
    assert abs(float(narrow(model, batch, None)[0]) - want) > 1e-4


def test_loss_window_refuses_bad_input():
    with pytest.raises(ValueError, match=r"mask must have shape \[N, T-1\]"):
        rollout.loss_window(np.ones(5))
    with pytest.raises(ValueError, match="multiple must be >= 1"):
        rollout.loss_window(np.ones((2, 5)), multiple=0)
    with pytest.raises(ValueError, match="window needs the target mask"):
        rollout.causal_lm(None, jnp.ones((2, 5), jnp.int32), window=3)
    assert rollout.loss_window(np.zeros((2, 40))) == 8  # nothing counted: the smallest window


def test_the_small_data_ablation_trains_on_the_first_rows_only(tmp_path, setup):
    """Method(train_examples=n) gives bitwise the model trained on the first n rows, and refuses n > rows."""
    from jax_irl import parallel, train

    model, _ = setup
    rng = np.random.default_rng(2)
    encoded = {"tokens": rng.integers(3, 37, (40, 9)).astype(np.int32), "mask": np.ones((40, 8), np.float32),
               "prompt_lengths": np.full(40, 3), "truncated": np.int32(0)}  # as encode_examples returns them
    encoded["mask"][:, :2] = 0.0
    stage = stages.StageConfig(steps=3, batch_size=8, optimizer=train.OptimizerConfig(learning_rate=1e-2))
    root = stages.Run.start(str(tmp_path), stages.RunSettings(save_every=10), progress=False)
    small = iqlearn.finetune(root.sub("a"), iqlearn.Method("mle", train_examples=16), model, stage, encoded)
    first_rows = {k: v[:16] if np.ndim(v) else v for k, v in encoded.items()}
    first = iqlearn.finetune(root.sub("b"), iqlearn.Method("mle"), model, stage, first_rows)
    whole = iqlearn.finetune(root.sub("c"), iqlearn.Method("mle"), model, stage, encoded)
    leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # noqa: E731
    for a, b in zip(leaves(small), leaves(first)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves(small), leaves(whole)))
    with pytest.raises(ValueError, match="train_examples=41 exceeds the 40 training examples"):
        iqlearn.finetune(root.sub("d"), iqlearn.Method("mle", train_examples=41), model, stage, encoded)


def test_online_finetune_without_a_sampling_spec_is_refused(tmp_path, setup):
    model, _ = setup
    encoded = {"tokens": np.zeros((8, 6), np.int32), "mask": np.ones((8, 5), np.float32),
               "prompt_lengths": np.full(8, 2)}
    stage = stages.StageConfig(steps=2, batch_size=4, optimizer=train.OptimizerConfig(learning_rate=1e-2))
    run = stages.Run.start(str(tmp_path), stages.RunSettings(), progress=False)
    for spec in (None, sampling.SamplingSpec(0, 0), sampling.SamplingSpec(0, 0, max_new_tokens=2)):
        with pytest.raises(ValueError, match="online IQLearn samples from the policy: pass a sampling spec"):
            iqlearn.finetune(run, iqlearn.Method("online", td_weight=0.1), model, stage, encoded, spec)
    assert not os.path.exists(tmp_path / "checkpoints")
