import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_irl import losses as L
from tests.losses import reference as ref
from tests.losses.harness import (
    check_gradients,
    check_jit_matches_eager,
    check_shard_map_psum,
    check_sharded_jit,
    make_tokens,
)


def _rollout(seed=40, b=8, t=7):
    rng = np.random.default_rng(seed)
    _, _, mask = make_tokens(rng, b=b, t=t, v=2)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return dict(rewards=f(b, t), values=f(b, t), mask=mask, logp=f(b, t) * 0.3 - 2, old_logp=f(b, t) * 0.3 - 2,
                ref_logp=f(b, t) * 0.3 - 2, final=f(b))


def test_hand_computed_gae_and_reward_placement():
    rewards = jnp.array([[0.0, 0.0, 1.0, 0.0]])
    values = jnp.array([[9.0, 0.5, 0.25, 9.0]])
    mask = jnp.array([[0, 1, 1, 0]])  # prompt, two response tokens, padding
    adv, ret = L.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    a2 = 1.0 - 0.25
    a1 = (0.0 + 0.9 * 0.25 - 0.5) + 0.9 * 0.8 * a2
    np.testing.assert_allclose(adv, [[0.0, a1, a2, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[0.0, a1 + 0.5, a2 + 0.25, 0.0]], rtol=1e-6)
    placed = L.place_sequence_reward(jnp.array([2.0, 3.0]), jnp.array([[1, 1, 0], [0, 0, 0]]))
    np.testing.assert_array_equal(placed, [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(L.kl_penalty(jnp.array([-1.0]), jnp.array([-2.0]), "k3"), [math.exp(-1) - 1 + 1])


@pytest.mark.parametrize("with_final", [False, True])
def test_gae_reference_jit_vmap_sharding(with_final):
    r = _rollout()
    final = r["final"] if with_final else None
    fn = lambda rw, v, m, fv: L.gae(rw, v, m, gamma=0.99, lam=0.95, final_values=fv)
    adv, ret = check_jit_matches_eager(fn, r["rewards"], r["values"], r["mask"], final)
    e_adv, e_ret = ref.gae(r["rewards"], r["values"], r["mask"], 0.99, 0.95, final)
    np.testing.assert_allclose(adv, e_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, e_ret, rtol=1e-5, atol=1e-5)
    in_axes = (0, 0, 0, 0 if with_final else None)
    one = lambda rw, v, m, fv: fn(rw[None], v[None], m[None], None if fv is None else fv[None])[0][0]
    np.testing.assert_allclose(jax.vmap(one, in_axes=in_axes)(r["rewards"], r["values"], r["mask"], final), adv,
                               rtol=1e-6, atol=1e-6)
    check_sharded_jit(lambda rw, v, m: fn(rw, v, m, None), (r["rewards"], r["values"], r["mask"]), (0, 1, 2))
    check_gradients(lambda rw, v: jnp.sum(fn(rw, v, r["mask"][:2], None)[0] ** 2), r["rewards"][:2], r["values"][:2])


def test_gae_skips_uncounted_gaps_between_turns():
    # Tokens 1 and 3 are the policy's; token 2 is tool output (uncounted): A_1 bootstraps from V(3).
    rewards = jnp.array([[0.0, 0.5, 7.0, 1.0]])
    values = jnp.array([[0.0, 0.2, 7.0, 0.4]])
    mask = jnp.array([[0, 1, 0, 1]])
    adv, _ = L.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, [[0.0, 0.5 + 0.4 - 0.2 + (1.0 - 0.4), 0.0, 1.0 - 0.4]], rtol=1e-6)


@pytest.mark.parametrize("eps_high", [None, 0.28])
def test_ppo_policy_loss_reference_grads_sharding(eps_high):
    r = _rollout(41)
    adv = r["rewards"]
    fn = lambda lp, old, a, m, n=None: L.ppo_policy_loss(lp, old, a, m, clip_eps=0.2, clip_eps_high=eps_high,
                                                         normalizer=n)
    loss, aux = check_jit_matches_eager(fn, r["logp"], r["old_logp"], adv, r["mask"])
    np.testing.assert_allclose(loss, ref.ppo_policy_loss(r["logp"], r["old_logp"], adv, r["mask"], 0.2, eps_high),
                               rtol=1e-5)
    assert 0.0 < float(aux["clip_fraction"]) < 1.0
    args = (r["logp"], r["old_logp"], adv, r["mask"])
    check_sharded_jit(fn, args, (0, 1, 2, 3))
    check_shard_map_psum(lambda *a: fn(*a, n=jax.lax.psum(jnp.sum(a[3]), "data"))[0], args, (0, 1, 2, 3), loss)
    check_gradients(lambda lp: fn(lp, r["old_logp"][:2], adv[:2], r["mask"][:2])[0], r["logp"][:2], order=1)
    # On-policy (logp == old_logp) the gradient is -A * grad logp, the vanilla policy gradient.
    g = jax.grad(lambda lp: fn(lp, r["logp"], adv, r["mask"])[0])(r["logp"])
    np.testing.assert_allclose(g, -adv * r["mask"] / r["mask"].sum(), rtol=1e-5, atol=1e-7)


def test_ppo_value_loss_reference_and_sharding():
    r = _rollout(42)
    returns = r["rewards"]
    old = r["values"] + 0.1
    fn = lambda v, o, ret, m: L.ppo_value_loss(v, o, ret, m, clip_eps=0.2)
    loss, aux = check_jit_matches_eager(fn, r["values"], old, returns, r["mask"])
    np.testing.assert_allclose(loss, ref.ppo_value_loss(r["values"], old, returns, r["mask"], 0.2), rtol=1e-5)
    check_sharded_jit(fn, (r["values"], old, returns, r["mask"]), (0, 1, 2, 3))
    check_gradients(lambda v: fn(v, old[:2], returns[:2], r["mask"][:2])[0], r["values"][:2], order=1)
    perfect = L.ppo_value_loss(returns, returns, returns, r["mask"])[1]["explained_variance"]
    np.testing.assert_allclose(perfect, 1.0, rtol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_and_shaped_rewards(estimator):
    r = _rollout(43)
    got = check_jit_matches_eager(lambda a, b: L.kl_penalty(a, b, estimator), r["logp"], r["ref_logp"])
    expected = np.vectorize(lambda a, b: ref.kl(a, b, estimator))(r["logp"].astype(np.float64), r["ref_logp"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if estimator != "k1":
        assert np.all(np.asarray(got) >= 0)
    shaped = L.kl_shaped_rewards(r["rewards"], r["logp"], r["ref_logp"], r["mask"], kl_coef=0.05, estimator=estimator)
    np.testing.assert_allclose(shaped, np.where(r["mask"] != 0, r["rewards"] - 0.05 * expected, 0.0), rtol=1e-5,
                               atol=1e-6)
    check_gradients(lambda a: jnp.sum(L.kl_penalty(a, r["ref_logp"][:2], estimator)), r["logp"][:2])
    # Monte-Carlo sanity: k1 and k3 are unbiased for KL(p || q) on samples from p.
    key = jax.random.PRNGKey(1)
    p, q = jnp.log(jnp.array([0.7, 0.2, 0.1])), jnp.log(jnp.array([0.3, 0.3, 0.4]))
    x = jax.random.categorical(key, p, shape=(200_000,))
    exact = float(jnp.sum(jnp.exp(p) * (p - q)))
    if estimator in ("k1", "k3"):
        np.testing.assert_allclose(float(jnp.mean(L.kl_penalty(p[x], q[x], estimator))), exact, rtol=0.02)


def test_policy_gradient_bad_inputs():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="estimator"):
        L.kl_penalty(z, z, "k4")
    with pytest.raises(ValueError, match="rewards, values, mask"):
        L.gae(z, z[:, :2], z, 1.0, 1.0)
    with pytest.raises(ValueError, match="final_values"):
        L.gae(z, z, z, 1.0, 1.0, final_values=jnp.zeros(3))
    with pytest.raises(ValueError, match="disagree on B"):
        L.place_sequence_reward(jnp.zeros(3), z)
    with pytest.raises(ValueError, match="logp, old_logp, advantages, mask"):
        L.ppo_policy_loss(z, z, z[:1], z)


def test_hand_computed_ppo_losses():
    logp = jnp.log(jnp.array([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1 against old_logp = 0
    old = jnp.zeros((1, 3))
    adv = jnp.array([[1.0, 1.0, -2.0]])
    mask = jnp.ones((1, 3))
    # max(-A r, -A clip(r)): token 0 -> max(-1.5, -1.2) = -1.2; token 1 -> max(-0.5, -0.8) = -0.5;
    # token 2 -> max(2.2, 2.2) = 2.2.
    loss, aux = L.ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    np.testing.assert_allclose(loss, (-1.2 - 0.5 + 2.2) / 3, rtol=1e-6)
    np.testing.assert_allclose(aux["clip_fraction"], 1 / 3, rtol=1e-6)
    # value 1.0, old 0.5, return 0.0, eps 0.2: max(1.0, 0.7^2) / 2 = 0.5; value 0.0, old 0.5, return 1.0:
    # max(1.0, 0.3^2 = 0.09) / 2 = 0.5; value 0.4, old 0.5, return 1.0: max(0.36, 0.25) / 2 = 0.18.
    vl, _ = L.ppo_value_loss(jnp.array([[1.0, 0.0, 0.4]]), jnp.full((1, 3), 0.5), jnp.array([[0.0, 1.0, 1.0]]),
                             mask, clip_eps=0.2)
    np.testing.assert_allclose(vl, (0.5 + 0.5 + 0.18) / 3, rtol=1e-6)


def test_rowwise_transforms_under_shard_map_and_pmap_and_vmap():
    from tests.losses.harness import check_shard_map_rowwise

    r = _rollout(44, b=16)
    check_shard_map_rowwise(lambda rw, v, m: L.gae(rw, v, m, 0.99, 0.95), (r["rewards"], r["values"], r["mask"]))
    check_shard_map_rowwise(lambda s, m: L.place_sequence_reward(s, m), (r["final"], r["mask"]))
    check_shard_map_rowwise(lambda a, b, m: L.kl_shaped_rewards(a, a, b, m, kl_coef=0.1, estimator="k3"),
                            (r["logp"], r["ref_logp"], r["mask"]))
    fn = lambda lp, old, a, m: L.ppo_policy_loss(lp, old, a, m)[0]
    args = (r["logp"], r["old_logp"], r["rewards"], r["mask"])
    per_ex = jax.vmap(lambda *x: fn(*(xi[None] for xi in x)))(*args)
    counts = r["mask"].sum(-1)
    np.testing.assert_allclose(fn(*args), np.sum(per_ex * counts) / counts.sum(), rtol=1e-5)
