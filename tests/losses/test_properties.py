"""Property-based tests (hypothesis) of the invariants a bug would break, over random shapes and values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from jax_irl import losses as L
from tests.losses import reference as ref
from tests.losses.harness import make_tokens

shapes = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(2, 9))
# One compiled program per random shape instead of one compilation per eager primitive per shape.
iqlearn = jax.jit(L.iqlearn_loss)
mle = jax.jit(L.mle_loss)
seeds = st.integers(0, 2**31 - 1)


def _tokens(shape, seed):
    b, t, v = shape
    return make_tokens(np.random.default_rng(seed), b=b, t=t, v=v, prompt_max=min(2, t - 1))


@given(shapes, seeds, st.floats(0.5, 1.0), st.floats(0.0, 2.0))
def test_padding_beyond_the_mask_changes_nothing(shape, seed, gamma, td_weight):
    logits, targets, mask = _tokens(shape, seed)
    base = iqlearn(logits, targets, mask, gamma=gamma, td_weight=td_weight)[0]
    # Append padding columns holding garbage logits and -100 targets.
    pad = np.random.default_rng(seed + 1).standard_normal((shape[0], 3, shape[2])).astype(np.float32) * 50
    padded = iqlearn(np.concatenate([logits, pad], 1), np.pad(targets, ((0, 0), (0, 3)), constant_values=-100),
                            np.pad(mask, ((0, 0), (0, 3))), gamma=gamma, td_weight=td_weight)[0]
    np.testing.assert_allclose(padded, base, rtol=1e-6)
    np.testing.assert_allclose(base, ref.iqlearn_loss(logits, targets, mask, gamma, td_weight), rtol=1e-4)


@given(shapes, seeds, st.floats(-20.0, 20.0).filter(lambda c: abs(c) > 0.1))
def test_state_offset_leaves_mle_unchanged_but_moves_td(shape, seed, c):
    logits, targets, mask = _tokens(shape, seed)
    b, t = np.argwhere(mask != 0)[0]
    shifted = logits.copy()
    shifted[b, t] += np.float32(c)
    np.testing.assert_allclose(L.mle_loss(shifted, targets, mask)[0], L.mle_loss(logits, targets, mask)[0],
                               rtol=1e-5, atol=1e-5)
    r0 = L.iqlearn_loss(logits, targets, mask, gamma=1.0, td_weight=1.0)[1]["implied_rewards"]
    r1 = L.iqlearn_loss(shifted, targets, mask, gamma=1.0, td_weight=1.0)[1]["implied_rewards"]
    # Q(s_t, a_t) moves by c, and so does V(s_t), which is the next-state value of t-1 when t-1 is counted.
    np.testing.assert_allclose(r1[b, t] - r0[b, t], c, rtol=1e-3, atol=1e-3)
    if t > 0 and mask[b, t - 1] != 0:
        np.testing.assert_allclose(r1[b, t - 1] - r0[b, t - 1], -c, rtol=1e-3, atol=1e-3)


@given(st.integers(1, 32), seeds, st.floats(0.01, 10.0))
def test_dpo_policy_equal_reference_is_log2(b, seed, beta):
    rng = np.random.default_rng(seed)
    pc, pr = (rng.standard_normal(b).astype(np.float32) * 30 for _ in range(2))
    loss, aux = L.dpo_loss(pc, pr, pc, pr, beta=beta)
    np.testing.assert_allclose(aux["losses"], np.full(b, math.log(2)), rtol=1e-6)


@given(st.integers(1, 6), st.integers(1, 8), seeds)
def test_min_below_mean_and_uwo_zero_is_mean(n, k, seed):
    r = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32) * 10
    mean = L.aggregate_rewards(r, "mean")
    assert np.all(np.asarray(L.aggregate_rewards(r, "min")) <= np.asarray(mean) + 1e-5)
    np.testing.assert_array_equal(L.aggregate_rewards(r, "uwo", coef=0.0), mean)
    np.testing.assert_allclose(L.aggregate_rewards(r, "lcb", coef=0.0), mean, rtol=1e-6)


@given(shapes, seeds)
def test_td_weight_zero_equals_mle_everywhere(shape, seed):
    logits, targets, mask = _tokens(shape, seed)
    np.testing.assert_array_equal(iqlearn(logits, targets, mask, gamma=0.9, td_weight=0.0)[0],
                                  mle(logits, targets, mask)[0])


@given(st.integers(1, 4), st.integers(1, 8), seeds, st.floats(0.5, 1.0), st.floats(0.0, 1.0))
def test_gae_matches_reference_and_ignores_uncounted_rewards(b, t, seed, gamma, lam):
    rng = np.random.default_rng(seed)
    rewards, values = (rng.standard_normal((b, t)).astype(np.float32) for _ in range(2))
    mask = (rng.random((b, t)) > 0.4).astype(np.float32)
    adv, _ = L.gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, ref.gae(rewards, values, mask, gamma, lam)[0], rtol=1e-4, atol=1e-4)
    noisy = np.where(mask == 0, 1e3, rewards).astype(np.float32)
    np.testing.assert_array_equal(L.gae(noisy, values, mask, gamma, lam)[0], adv)


@given(shapes, seeds)
def test_sequence_log_probs_never_positive_and_sum_tokenwise(shape, seed):
    logits, targets, mask = _tokens(shape, seed)
    seq = np.asarray(L.sequence_log_probs(logits, targets, mask))
    assert np.all(seq <= 1e-6)
    tok = np.asarray(L.token_log_probs(logits, np.maximum(targets, 0)))
    np.testing.assert_allclose(seq, (tok * mask).sum(-1), rtol=1e-5, atol=1e-5)
    assert jnp.isfinite(jnp.asarray(seq)).all()
