import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import sampling
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

VOCAB = 32


def _model(seed=0, family="llama"):
    cfg = TransformerConfig.for_family(family, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                       num_kv_heads=2 if family != "gpt2" else 4, intermediate_size=48,
                                       max_position_embeddings=64, eos_token_ids=(1,))
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    # Scale weights up so that the distributions are far from uniform (and greedy paths are unambiguous).
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(var.get_value() * 8.0 if var.get_value().ndim > 1 else var.get_value())
    return model


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def _full_forward_log_probs(model, toks, mask, out):
    """log_softmax of a plain (cache-free) forward over prompt + generated tokens, at the generated positions."""
    n = out.tokens.shape[0] // toks.shape[0]
    prompt = np.repeat(toks, n, 0)
    pmask = np.repeat(mask, n, 0)
    seq = np.concatenate([prompt, np.asarray(out.tokens)], 1)
    smask = np.concatenate([pmask, np.asarray(out.mask)], 1)
    logits = model(jnp.asarray(seq), attention_mask=jnp.asarray(smask)).logits
    lp = jax.nn.log_softmax(logits[:, prompt.shape[1] - 1:-1], -1)
    return np.asarray(jnp.take_along_axis(lp, out.tokens[..., None], -1)[..., 0]), np.asarray(logits)


def test_model_log_probs_match_a_full_forward_and_eos_handling():
    model = _model()
    toks, mask = sampling.left_pad(PROMPTS)
    out = sampling.generate(model, toks, mask, jax.random.PRNGKey(0), max_new_tokens=12, temperature=0.7,
                            num_samples=2)
    assert out.tokens.shape == (6, 12)
    full_lp, _ = _full_forward_log_probs(model, toks, mask, out)
    m = np.asarray(out.mask).astype(bool)
    np.testing.assert_allclose(np.asarray(out.model_log_probs)[m], full_lp[m], atol=1e-4)
    # Without filtering, the sampling distribution is softmax(logits / T): log-probs scale accordingly.
    assert np.all(np.asarray(out.log_probs)[~m] == 0) and np.all(np.asarray(out.model_log_probs)[~m] == 0)
    for row, length in zip(np.asarray(out.tokens), np.asarray(out.lengths)):
        if 1 in row:  # stops at the first EOS, pads after it
            first = list(row).index(1)
            assert length == first + 1 and np.all(row[first + 1:] == 0)
        else:
            assert length == 12


def test_same_key_same_output_and_samples_differ():
    model = _model(1)
    toks, mask = sampling.left_pad(PROMPTS)
    a = sampling.generate(model, toks, mask, jax.random.PRNGKey(3), max_new_tokens=8, num_samples=4)
    b = sampling.generate(model, toks, mask, jax.random.PRNGKey(3), max_new_tokens=8, num_samples=4)
    c = sampling.generate(model, toks, mask, jax.random.PRNGKey(4), max_new_tokens=8, num_samples=4)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    g = sampling.generate(model, toks, mask, jax.random.PRNGKey(3), max_new_tokens=8, greedy=True, num_samples=3)
    np.testing.assert_array_equal(g.tokens[0], g.tokens[1])  # greedy samples of one prompt agree
    assert np.all(np.asarray(g.log_probs) == 0)


def test_first_token_frequencies_follow_the_filtered_distribution():
    model = _model(2)
    toks, mask = sampling.left_pad([[4, 5, 6]])
    n = 4000
    logits = np.asarray(model(jnp.asarray(toks), attention_mask=jnp.asarray(mask)).logits[0, -1])
    for kwargs in ({"temperature": 1.5}, {"top_k": 3}, {"top_p": 0.8, "temperature": 0.9}):
        out = sampling.generate(model, toks, mask, jax.random.PRNGKey(7), max_new_tokens=1, num_samples=n, **kwargs)
        expected = np.asarray(jax.nn.softmax(sampling.filter_logits(jnp.asarray(logits)[None], **kwargs)[0]))
        counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=VOCAB) / n
        assert np.all(counts[expected == 0] == 0), kwargs  # filtered tokens are never sampled
        np.testing.assert_allclose(counts, expected, atol=4 * math.sqrt(0.25 / n))
        lp = np.asarray(out.log_probs[:, 0])
        np.testing.assert_allclose(lp, np.log(expected[np.asarray(out.tokens[:, 0])]), rtol=1e-4, atol=1e-5)


def test_filter_logits_hand_computed():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.2, 0.1]]))
    top2 = sampling.filter_logits(logits, top_k=2)
    assert np.isfinite(np.asarray(top2)).sum() >= 2 and np.isinf(np.asarray(top2)[0, 3])
    nucleus = np.asarray(sampling.filter_logits(logits, top_p=0.6))  # 0.5 alone < 0.6, so one 0.2 joins
    assert np.isfinite(nucleus).sum() == 2 and np.isfinite(nucleus[0, 0])
    only_top = np.asarray(sampling.filter_logits(logits, top_p=0.3))
    assert np.isfinite(only_top).sum() == 1


def test_best_of_n_and_rejection_sampling_reach_the_gibbs_policy():
    rewards = jnp.array([[0.1, 0.9, 0.3], [2.0, -1.0, 0.0]])
    np.testing.assert_array_equal(sampling.best_of_n(rewards), [1, 0])
    assert sampling.best_of_n_kl(1) == 0.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        sampling.best_of_n_kl([2, 0])
    np.testing.assert_allclose(sampling.best_of_n_kl(2), math.log(2) - 0.5)
    # pi0 over three actions with rewards r; candidates from pi0, accepted with exp((r - max r) / eta):
    # the accepted actions follow pi0 exp(r / eta) / Z (exact here: every candidate set holds the best action).
    pi0 = np.array([0.6, 0.3, 0.1])
    r = np.array([0.0, 1.0, 2.0])
    eta = 0.8
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    actions = jax.random.choice(key_a, 3, (2000, 64), p=jnp.asarray(pi0))
    actions = actions.at[:, 0].set(2)  # the best action is present in every candidate set
    accept = sampling.rejection_sample(key_b, jnp.asarray(r)[actions], eta)
    accepted = np.asarray(actions)[:, 1:][np.asarray(accept)[:, 1:]]  # exclude the planted column
    gibbs = pi0 * np.exp(r / eta)
    gibbs /= gibbs.sum()
    np.testing.assert_allclose(np.bincount(accepted, minlength=3) / accepted.size, gibbs, atol=0.01)
    assert np.all(np.asarray(accept)[:, 0])  # the best candidate is always accepted


def test_sampler_bad_inputs():
    model = _model()
    toks, mask = sampling.left_pad(PROMPTS)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="left-padded"):
        sampling.generate(model, toks[:, ::-1], mask[:, ::-1], key, max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling.generate(model, toks, mask, key, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        sampling.generate(model, toks, mask, key, max_new_tokens=2, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sampling.generate(model, toks, mask, key, max_new_tokens=2, top_p=1.5)
    with pytest.raises(ValueError, match="at least one token"):
        sampling.left_pad([[1], []])
    with pytest.raises(ValueError, match="eta"):
        sampling.rejection_sample(key, jnp.zeros((2, 3)), 0.0)


def test_best_of_n_samples_with_a_scoring_function():
    model = _model(4)
    toks, mask = sampling.left_pad(PROMPTS)
    out = sampling.generate(model, toks, mask, jax.random.PRNGKey(0), max_new_tokens=6, num_samples=5)
    score = lambda o: jnp.sum(o.tokens == 7, axis=-1).astype(jnp.float32) - 0.01 * o.lengths  # count of token 7
    best, scores = sampling.best_of_n_samples(out, score, 5)
    assert best.tokens.shape == (3, 6) and scores.shape == (3, 5)
    for b in range(3):
        j = int(np.argmax(np.asarray(scores[b])))
        np.testing.assert_array_equal(best.tokens[b], out.tokens[b * 5 + j])
        assert float(score(best)[b]) == float(np.max(np.asarray(scores[b])))


def test_prompt_ids_and_lengths_the_model_cannot_take_are_refused_and_numpy_ints_accepted():
    model = _model()
    toks, mask = sampling.left_pad(PROMPTS)
    key = jax.random.PRNGKey(0)
    bad = np.array(toks)
    bad[0, -1] = VOCAB  # one past the vocabulary, on a real prompt token
    with pytest.raises(ValueError, match=rf"prompt_tokens hold ids outside \[0, {VOCAB}\)"):
        sampling.generate(model, bad, mask, key, max_new_tokens=2)
    bad[0, -1] = -1
    with pytest.raises(ValueError, match="outside"):
        sampling.generate(model, bad, mask, key, max_new_tokens=2)
    padded = np.array(toks)
    padded[mask == 0] = 10_000  # padding may hold anything
    sampling.generate(model, padded, mask, key, max_new_tokens=2)
    out = sampling.generate(model, toks, mask, key, max_new_tokens=np.int64(3), top_k=np.int32(5),
                            num_samples=np.int64(2))
    assert out.tokens.shape == (2 * len(PROMPTS), 3)
    gpt2 = _model(family="gpt2")  # learned positions: a table of max_position_embeddings rows
    limit = gpt2.cfg.max_position_embeddings
    with pytest.raises(ValueError, match=rf"needs positions up to {toks.shape[1] + limit}.*has {limit}"):
        sampling.generate(gpt2, toks, mask, key, max_new_tokens=limit)
    with pytest.raises(ValueError, match=rf"sequence length {limit + 1} exceeds the model's {limit} learned positions"):
        gpt2(jnp.zeros((1, limit + 1), jnp.int32))


def test_first_argmax_equals_argmax_with_ties_and_greedy_log_probs_match_the_forward():
    r = np.random.default_rng(0)
    x = r.integers(-3, 3, (64, 37)).astype(np.float32)  # many ties: the first index of the maximum wins
    x[5] = -np.inf
    x[6, 3] = np.inf
    np.testing.assert_array_equal(np.asarray(sampling.first_argmax(jnp.asarray(x))), np.argmax(x, -1))
    y = jnp.asarray(r.normal(size=(4, 3, 50)).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(sampling.first_argmax(y)), np.asarray(jnp.argmax(y, -1)))
    model = _model()
    toks, mask = sampling.left_pad(PROMPTS)
    out = sampling.generate(model, toks, mask, jax.random.PRNGKey(0), max_new_tokens=8, greedy=True)
    full_lp, _ = _full_forward_log_probs(model, toks, mask, out)
    m = np.asarray(out.mask).astype(bool)
    np.testing.assert_allclose(np.asarray(out.model_log_probs)[m], full_lp[m], atol=1e-4)
    assert np.all(np.asarray(out.log_probs) == 0)
