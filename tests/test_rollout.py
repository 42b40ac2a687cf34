"""The rollout layer: the causal-LM forward, sampled rows, the padded chunked scorer and sample-and-evaluate.

The scorer goes through the loss layer's checks (jit == eager, 8-device sharded jit, shard_map and pmap) and
against a float64 numpy loop over tokens (tests/losses/reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses, metrics, rollout, sampling
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer
from tests.losses import harness, reference

V = 37


@pytest.fixture(scope="module")
def model():
    cfg = TransformerConfig.for_family("llama", vocab_size=V, hidden_size=16, num_layers=1, num_heads=2,
                                       num_kv_heads=1, intermediate_size=32, max_position_embeddings=32)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def _rows(n=8, t=9, seed=0):
    """n rows of t tokens: left padding of 0-2 tokens, a prompt, a response of at least one counted token."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, V, (n, t)).astype(np.int32)
    attention = np.ones((n, t), np.int32)
    mask = np.zeros((n, t - 1), np.float32)
    for i in range(n):
        pad = int(rng.integers(0, 3))
        attention[i, :pad] = 0
        tokens[i, :pad] = 0
        start, end = pad + 2, int(rng.integers(pad + 3, t))
        mask[i, start:end] = 1.0
    return {"tokens": tokens, "attention": attention, "mask": mask}


ALL = rollout.LMScores(("log_probs", "target_q", "values", "implied_rewards", "entropy"), gamma=0.9)


def test_scores_equal_a_float64_loop_over_the_models_logits(model):
    rows = _rows()
    got = rollout.score_rows(model, ALL, rows)
    # An independent forward (the model called directly) and numpy float64 loops over tokens.
    logits = np.asarray(model(jnp.asarray(rows["tokens"][:, :-1]), attention_mask=rows["attention"][:, :-1]).logits,
                        np.float64)
    targets, mask = rows["tokens"][:, 1:], rows["mask"]
    terms = reference.iqlearn_terms(logits, targets, mask, gamma=0.9)
    for (b, t), (nll, r) in terms.items():
        np.testing.assert_allclose(got["log_probs"][b, t], -nll, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["implied_rewards"][b, t], r, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["values"][b, t], reference.soft_value(logits[b, t]), rtol=1e-5)
        np.testing.assert_allclose(got["target_q"][b, t], logits[b, t, targets[b, t]], rtol=1e-5, atol=1e-6)
        p = np.exp(logits[b, t] - reference.logsumexp(logits[b, t]))
        np.testing.assert_allclose(got["entropy"][b, t], -(p * np.log(p)).sum(), rtol=1e-5)
    for name, x in got.items():  # masked positions hold 0, never a value that could leak into a sum
        assert (x[mask == 0] == 0).all(), name


def test_vocab_chunked_path_equals_full_logits(model):
    rows = _rows()
    full = rollout.score_rows(model, rollout.LMScores(("log_probs", "values", "implied_rewards")), rows)
    chunked = rollout.score_rows(model, rollout.LMScores(("log_probs", "values", "implied_rewards"), vocab_chunk=10),
                                 rows)  # 37 = 3 chunks of 10 + 7
    for k in full:
        np.testing.assert_allclose(chunked[k], full[k], rtol=1e-5, atol=1e-5, err_msg=k)
    out = rollout.causal_lm(model, jnp.asarray(rows["tokens"]), jnp.asarray(rows["attention"]), vocab_chunk=10)
    assert out.logits is None and out.target_q.shape == (8, 8) and out.hidden.shape == (8, 8, 16)


def test_scorer_passes_the_loss_layer_checks(model):
    """jit == eager, sharded jit over 8 devices, shard_map and pmap over rows == one device."""
    graphdef, state = nnx.split(model)
    scorer = rollout.LMScores(("log_probs", "implied_rewards", "entropy"), gamma=0.9)

    def fn(tokens, attention, mask):
        return scorer(nnx.merge(graphdef, state), {"tokens": tokens, "attention": attention, "mask": mask})

    rows = _rows(n=16)
    args = tuple(jnp.asarray(rows[k]) for k in ("tokens", "attention", "mask"))
    harness.check_jit_matches_eager(fn, *args)
    harness.check_sharded_jit(fn, args, batch_argnums=(0, 1, 2))
    harness.check_shard_map_rowwise(fn, args)
    per_row = rollout.LMScores(("implied_rewards",), gamma=0.9, per_row=True)
    sums = per_row(model, dict(zip(("tokens", "attention", "mask"), args)))
    np.testing.assert_allclose(sums["implied_rewards"], np.asarray(fn(*args)["implied_rewards"]).sum(-1), rtol=1e-6)
    np.testing.assert_array_equal(sums["num_tokens"], rows["mask"].sum(-1))


def _count_traces(monkeypatch):
    """A list that grows by one each time jit traces an LMScores (a compilation of the scorer)."""
    traces, call = [], rollout.LMScores.__call__

    def counted(self, model, batch):
        traces.append(self)
        return call(self, model, batch)

    monkeypatch.setattr(rollout.LMScores, "__call__", counted)
    return traces


def test_batches_with_padding_equal_one_pass_and_compile_once(model, monkeypatch):
    rows = _rows(n=7)
    one = rollout.score_rows(model, ALL, rows)
    for size in (1, 3, 7, 50):
        got = rollout.score_rows(model, ALL, rows, rows_per_batch=size)
        for k in one:
            np.testing.assert_allclose(got[k], one[k], rtol=1e-6, atol=1e-6, err_msg=f"{k}, batches of {size}")
    # Compilations counted as traces of the scorer (its __call__ runs only while jit traces): a scorer no other
    # test uses (gamma 0.123) traces once for its 3 + 3 + 3 (padded) rows, and an equal scorer reuses that.
    traces = _count_traces(monkeypatch)
    rollout.score_rows(model, rollout.LMScores(("values",), gamma=0.123), rows, rows_per_batch=3)
    assert len(traces) == 1
    rollout.score_rows(model, rollout.LMScores(("values",), gamma=0.123), rows, rows_per_batch=3)
    assert len(traces) == 1


def test_reference_log_probs_use_the_scorer_and_compile_once(model, monkeypatch):
    rows = _rows(n=8)
    traces = _count_traces(monkeypatch)
    a = rollout.reference_log_probs(model, rows["tokens"], rows["attention"], batch_size=3)
    assert len(traces) <= 1  # at most one compilation (another test may have compiled this scorer and shape)
    before = len(traces)
    b = rollout.reference_log_probs(model, rows["tokens"], rows["attention"], batch_size=3)
    assert len(traces) == before  # the second call reuses the compiled scorer
    direct = losses.token_log_probs(model(jnp.asarray(rows["tokens"][:, :-1]),
                                          attention_mask=rows["attention"][:, :-1]).logits, rows["tokens"][:, 1:])
    np.testing.assert_allclose(np.asarray(a), np.asarray(direct), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sampled_rows_line_up_with_the_scorer(model):
    """The sampler's per-token model log-probs sit at the target positions of the tokens they belong to: a
    fresh forward of the whole row gives the same log-probs there."""
    prompts = np.array([[0, 5, 6, 7], [1, 8, 9, 2]], np.int32)
    pmask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.int32)
    rows = rollout.sample_rows(model, prompts, pmask, jax.random.PRNGKey(3), max_new_tokens=5, eos_id=0, pad_id=0,
                               num_samples=3, temperature=0.7)
    assert rows["tokens"].shape == (6, 9) and rows["mask"].shape == (6, 8)
    np.testing.assert_array_equal(rows["prompt_index"], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(rows["tokens"][:, 4:], rows["response"])
    np.testing.assert_array_equal(rows["mask"][:, 3:], rows["response_mask"])
    assert (rows["mask"][:, :3] == 0).all() and rows["mask"].sum() > 0
    scored = rollout.score_rows(model, rollout.LMScores(("log_probs",)), rows)["log_probs"]
    np.testing.assert_allclose(rows["model_log_probs"], scored, rtol=1e-4, atol=1e-5)
    # Sampling at temperature 0.7 sharpens the distribution: the sampled tokens are likelier under it.
    counted = rows["mask"] > 0
    assert (rows["sample_log_probs"][counted] >= rows["model_log_probs"][counted] - 1e-6).mean() > 0.5


def test_greedy_rows_decode_once_per_prompt_and_equal_the_full_sampler(model):
    """Greedy rows are one decoded row per prompt, repeated: the same rows the sampler gives when it decodes every
    copy (sampling.generate with num_samples=3), field by field."""
    prompts = np.array([[0, 5, 6, 7], [1, 8, 9, 2]], np.int32)
    pmask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], np.int32)
    rows = rollout.sample_rows(model, prompts, pmask, jax.random.PRNGKey(3), max_new_tokens=6, eos_id=0, pad_id=0,
                               num_samples=3, greedy=True)
    full = sampling.generate(model, prompts, pmask, jax.random.PRNGKey(3), max_new_tokens=6, greedy=True,
                             eos_ids=(0,), pad_id=0, num_samples=3)
    np.testing.assert_array_equal(rows["response"], np.asarray(full.tokens))
    np.testing.assert_array_equal(rows["response_mask"], np.asarray(full.mask))
    np.testing.assert_allclose(rows["model_log_probs"][:, 3:], np.asarray(full.model_log_probs) * np.asarray(full.mask),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rows["prompt_index"], [0, 0, 0, 1, 1, 1])
    assert rows["tokens"].shape == (6, 10) and (rows["sample_log_probs"] == 0).all()


def test_sampling_prompts_in_chunks_gives_each_chunk_its_own_folded_key(model):
    """prompts_per_batch=2 over 3 prompts: chunk c is exactly the rows sample_rows gives for those prompts alone
    with key fold_in(key, c); the rows come back in prompt order with prompt_index over all prompts."""
    prompts = np.array([[0, 5, 6, 7], [1, 8, 9, 2], [3, 3, 4, 5]], np.int32)
    pmask = np.array([[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], np.int32)
    key = jax.random.PRNGKey(3)
    kw = dict(max_new_tokens=5, eos_id=0, pad_id=0, num_samples=2, temperature=0.9)
    chunked = rollout.sample_rows(model, prompts, pmask, key, prompts_per_batch=2, **kw)
    first = rollout.sample_rows(model, prompts[:2], pmask[:2], jax.random.fold_in(key, 0), **kw)
    last = rollout.sample_rows(model, prompts[2:], pmask[2:], jax.random.fold_in(key, 1), **kw)
    for name in ("tokens", "attention", "mask", "model_log_probs", "response", "response_mask"):
        np.testing.assert_array_equal(chunked[name], np.concatenate([first[name], last[name]]), err_msg=name)
    np.testing.assert_array_equal(chunked["prompt_index"], [0, 0, 1, 1, 2, 2])
    whole = rollout.sample_rows(model, prompts, pmask, key, prompts_per_batch=3, **kw)  # one chunk: as before
    np.testing.assert_array_equal(whole["tokens"], rollout.sample_rows(model, prompts, pmask, key, **kw)["tokens"])
    with pytest.raises(ValueError, match="prompts_per_batch"):
        rollout.sample_rows(model, prompts, pmask, key, prompts_per_batch=0, **kw)


class _Chars:
    eos_id, pad_id = 0, 0

    def decode(self, ids):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def test_sample_and_evaluate_scores_every_sample(model):
    prompts = np.array([[5, 6, 7], [1, 8, 9], [4, 4, 4]], np.int32)
    pmask = np.ones_like(prompts)
    out = rollout.sample_and_evaluate(model, _Chars(), prompts, pmask, ["a", "b", "c"], jax.random.PRNGKey(0),
                                      temperatures=(0.5, 1.0), num_samples=2, max_new_tokens=4,
                                      score_fn=lambda text, ref: float(text.startswith(ref)), prompts_per_batch=2)
    assert set(out) == {"0.5", "1"}
    for ev in out.values():
        assert len(ev.texts) == 6 and ev.scores.shape == (6,)
        np.testing.assert_array_equal(ev.rows["prompt_index"], [0, 0, 1, 1, 2, 2])
        refs = ["a", "a", "b", "b", "c", "c"]
        np.testing.assert_array_equal(ev.scores, [float(t.startswith(r)) for t, r in zip(ev.texts, refs)])
        summed = (ev.rows["model_log_probs"]).sum(-1)
        np.testing.assert_allclose(ev.row_scores["log_probs"], summed, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(ev.row_scores["num_tokens"], ev.rows["response_mask"].sum(-1))


def test_bad_input_is_refused_with_the_argument_named(model):
    rows = _rows(n=4)
    with pytest.raises(ValueError, match="quantities must be a non-empty subset"):
        rollout.LMScores(("logprobs",))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        rollout.LMScores(temperature=0.0)
    with pytest.raises(ValueError, match="need the rows' target 'mask'"):
        rollout.score_rows(model, rollout.LMScores(("implied_rewards",)), {"tokens": rows["tokens"]})
    with pytest.raises(ValueError, match="one common, non-zero number of rows"):
        rollout.score_rows(model, ALL, {"tokens": rows["tokens"], "mask": rows["mask"][:3]})
    with pytest.raises(ValueError, match="rows_per_batch must be None or >= 1"):
        rollout.score_rows(model, ALL, rows, rows_per_batch=0)
    with pytest.raises(ValueError, match="prompt_lengths has 2"):
        rollout.prompt_rows(rows["tokens"], np.array([2, 3]), pad_id=0, width=4)
    with pytest.raises(ValueError, match="one reference per prompt"):
        rollout.sample_and_evaluate(model, _Chars(), rows["tokens"][:, :3], np.ones((4, 3)), ["a"],
                                    jax.random.PRNGKey(0), temperatures=(1.0,), num_samples=2, max_new_tokens=2,
                                    score_fn=lambda t, r: 0.0)
    with pytest.raises(ValueError, match="per_row=True"):
        rollout.sample_and_evaluate(model, _Chars(), rows["tokens"][:, :3], np.ones((4, 3)), list("abcd"),
                                    jax.random.PRNGKey(0), temperatures=(1.0,), num_samples=2, max_new_tokens=2,
                                    score_fn=lambda t, r: 0.0, scorer=rollout.LMScores())


def test_entropy_metric_is_the_mean_of_the_per_token_entropies(model):
    rows = _rows()
    logits = model(jnp.asarray(rows["tokens"][:, :-1])).logits
    per_token = losses.token_entropies(logits)
    m = rows["mask"]
    np.testing.assert_allclose(float(metrics.token_entropy(logits, m)), float((per_token * m).sum() / m.sum()),
                               rtol=1e-6)
    assert float(losses.token_entropies(jnp.zeros((1, 4)))[0]) == pytest.approx(np.log(4), rel=1e-6)


def test_reward_model_scores_in_batches_equal_a_direct_call():
    from jax_irl.models.heads import RewardModel

    cfg = TransformerConfig.for_family("llama", vocab_size=V, hidden_size=16, num_layers=1, num_heads=2,
                                       num_kv_heads=1, intermediate_size=32)
    rm = RewardModel(Transformer(cfg, rngs=nnx.Rngs(1)), num_heads=3, rngs=nnx.Rngs(2))
    rows = _rows(n=5)
    got = rollout.score_rows(rm, rollout.RewardScores("uwo", coef=0.5), rows, rows_per_batch=2)
    direct = np.asarray(rm(jnp.asarray(rows["tokens"]), jnp.asarray(rows["attention"])))
    np.testing.assert_allclose(got["rewards"], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["reward"], direct.mean(-1) - 0.5 * direct.var(-1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs coef"):
        rollout.RewardScores("lcb")
    with pytest.raises(ValueError, match="need the rows' 'attention'"):
        rollout.score_rows(rm, rollout.RewardScores(), {"tokens": rows["tokens"]})


def test_prompts_take_and_check():
    tokens, mask = np.arange(12).reshape(4, 3), np.ones((4, 3), np.int32)
    prompts = rollout.Prompts(tokens, mask, ["a", "b", "c", "d"], ["ra", "rb", "rc", "rd"])
    picked = prompts.take([2, 0])
    np.testing.assert_array_equal(picked.tokens, tokens[[2, 0]])
    assert picked.texts == ["c", "a"] and picked.references == ["rc", "ra"]
    assert rollout.Prompts(tokens, mask, list("abcd")).take(np.array([3])).references is None
    prompts.check()
    with pytest.raises(ValueError, match="4 token rows .* 3 texts"):
        rollout.Prompts(tokens, mask, ["a", "b", "c"]).check()
    with pytest.raises(ValueError, match="2 references"):
        rollout.Prompts(tokens, mask, list("abcd"), ["x", "y"]).check()
    with pytest.raises(ValueError, match=r"a mask of \(4, 2\)"):
        rollout.Prompts(tokens, mask[:, :2], list("abcd")).check()
