import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_irl import losses as L
from tests.losses import reference as ref
from tests.losses.harness import check_gradients, check_jit_matches_eager, check_sharded_jit

METHODS = [("mean", None), ("min", None), ("uwo", 0.5), ("lcb", 1.5)]


def test_hand_computed_aggregates():
    r = jnp.array([[1.0, 2.0, 6.0]])  # mean 3, population var 14/3, std sqrt(14/3)
    np.testing.assert_allclose(L.aggregate_rewards(r, "mean"), [3.0])
    np.testing.assert_allclose(L.aggregate_rewards(r, "min"), [1.0])
    np.testing.assert_allclose(L.aggregate_rewards(r, "uwo", coef=0.5), [3.0 - 0.5 * 14 / 3], rtol=1e-6)
    np.testing.assert_allclose(L.aggregate_rewards(r, "lcb", coef=1.0), [3.0 - math.sqrt(14 / 3)], rtol=1e-6)
    np.testing.assert_allclose(L.head_disagreement(r), [math.sqrt(14 / 3)], rtol=1e-6)


@pytest.mark.parametrize("method,coef", METHODS)
def test_aggregate_reference_jit_vmap_grads_sharding(method, coef):
    rng = np.random.default_rng(30)
    rewards = rng.standard_normal((16, 5)).astype(np.float32)
    fn = lambda r: L.aggregate_rewards(r, method, coef)
    got = check_jit_matches_eager(fn, rewards)
    np.testing.assert_allclose(got, [ref.aggregate(row, method, coef or 0.0) for row in rewards], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn)(rewards), got, rtol=1e-6)
    check_sharded_jit(fn, (rewards,), (0,))
    check_gradients(lambda r: jnp.sum(fn(r)), rewards[:3], order=1 if method == "min" else 2)
    # Leading axes are free: [B, N, K] aggregates to [B, N].
    assert fn(rewards.reshape(4, 4, 5)).shape == (4, 4)


def test_invariants_and_agreeing_heads():
    rewards = np.random.default_rng(31).standard_normal((64, 4)).astype(np.float32)
    assert np.all(L.aggregate_rewards(rewards, "min") <= L.aggregate_rewards(rewards, "mean") + 1e-6)
    np.testing.assert_array_equal(L.aggregate_rewards(rewards, "uwo", coef=0.0), L.aggregate_rewards(rewards, "mean"))
    assert np.all(L.aggregate_rewards(rewards, "lcb", coef=1.0) <= L.aggregate_rewards(rewards, "mean"))
    # Heads that agree exactly: std is 0, and its gradient stays finite (sqrt'(0) is infinite).
    same = jnp.ones((3, 4))
    g = jax.grad(lambda r: jnp.sum(L.aggregate_rewards(r, "lcb", coef=1.0)))(same)
    np.testing.assert_allclose(g, np.full((3, 4), 0.25))
    assert L.aggregate_rewards(jnp.ones((2, 4), jnp.bfloat16), "uwo", coef=0.1).dtype == jnp.float32


def test_bootstrap_weights():
    key = jax.random.PRNGKey(0)
    w = L.bootstrap_weights(key, 4000, 3)
    assert w.shape == (4000, 3) and float(w.min()) >= 0
    np.testing.assert_allclose(np.asarray(w).mean(), 1.0, atol=0.05)  # Poisson(1)
    assert not np.array_equal(w[:, 0], w[:, 1])  # heads see different resamples
    np.testing.assert_array_equal(w, L.bootstrap_weights(key, 4000, 3))
    b = L.bootstrap_weights(key, 4000, 2, kind="bernoulli")
    assert set(np.unique(b)) == {0.0, 1.0}


def test_ensemble_bad_inputs():
    with pytest.raises(ValueError, match="method must be one of"):
        L.aggregate_rewards(jnp.zeros((2, 3)), "median")
    with pytest.raises(ValueError, match="needs coef"):
        L.aggregate_rewards(jnp.zeros((2, 3)), "uwo")
    with pytest.raises(ValueError, match="coef must be >= 0"):
        L.aggregate_rewards(jnp.zeros((2, 3)), "lcb", coef=-1.0)
    with pytest.raises(ValueError, match="K >= 1"):
        L.aggregate_rewards(jnp.zeros((2, 0)), "mean")
    with pytest.raises(ValueError, match="kind"):
        L.bootstrap_weights(jax.random.PRNGKey(0), 2, 2, kind="jackknife")


def test_aggregate_under_shard_map_and_pmap():
    from tests.losses.harness import check_shard_map_rowwise

    rewards = np.random.default_rng(32).standard_normal((16, 3)).astype(np.float32)
    for method, coef in METHODS:
        check_shard_map_rowwise(lambda r: L.aggregate_rewards(r, method, coef), (rewards,))
