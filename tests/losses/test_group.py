"""The GRPO family's advantages and policy loss against float64 loops, jit, gradients and 8-device sharding."""


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
    check_shard_map_rowwise,
    check_sharded_jit,
    make_tokens,
)

# Hand-made groups: ties, an all-equal group, a single winner, a spread.
REWARDS = np.array([[1.0, 0.0, 0.0, 1.0],
                    [0.5, 0.5, 0.5, 0.5],
                    [0.0, 0.0, 0.0, 1.0],
                    [-2.0, 0.3, 1.7, 0.3]], np.float32)


def _batch(seed=50, b=8, t=7):
    rng = np.random.default_rng(seed)
    _, _, mask = make_tokens(rng, b=b, t=t, v=2)
    mask[1, 2] = 0.0  # a hole inside a response (e.g. tool output between turns)
    mask[2] = 0.0
    mask[2, 3] = 1.0  # a response of one token
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    return dict(logp=f(b, t) * 0.3 - 2, old_logp=f(b, t) * 0.3 - 2, ref_logp=f(b, t) * 0.3 - 2, adv=f(b, t),
                rewards=f(b, t), mask=mask, terms=np.where(rng.random((b, t)) < 0.3, -0.2, 0.0).astype(np.float32))


@pytest.mark.parametrize("method", L.GROUP_ADVANTAGES)
def test_group_advantages_against_a_loop(method):
    got = check_jit_matches_eager(lambda r: L.group_advantages(r, method), REWARDS)
    np.testing.assert_allclose(got, ref.group_advantages(REWARDS, method), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got).sum(1), 0.0, atol=1e-5)  # every group's advantages sum to 0
    np.testing.assert_array_equal(np.asarray(got)[1], 0.0)  # all-equal rewards: no signal, not NaN
    check_shard_map_rowwise(lambda r: L.group_advantages(r, method), (np.tile(REWARDS, (2, 1)),))
    check_gradients(lambda r: jnp.sum(L.group_advantages(r, method) * jnp.arange(4.0)), REWARDS[[0, 2, 3]])


def test_group_advantages_hand_computed():
    # [0, 0, 0, 1]: mean 1/4, sample std sqrt(3/16 * 4 / 3) = 1/2 -> GRPO (-1/2, -1/2, -1/2, 3/2).
    np.testing.assert_allclose(L.group_advantages(REWARDS[2:3], "grpo", eps=1e-12), [[-0.5, -0.5, -0.5, 1.5]],
                               rtol=1e-6)
    np.testing.assert_allclose(L.group_advantages(REWARDS[2:3], "rloo"), [[-1 / 3, -1 / 3, -1 / 3, 1.0]], rtol=1e-6)
    np.testing.assert_array_equal(L.degenerate_groups(REWARDS), [False, True, False, False])


@pytest.mark.parametrize("credit", L.CREDITS)
def test_token_advantages_against_a_loop(credit):
    r = _batch(51)
    adv = r["adv"][:, 0]
    adv[0] = -1.0
    r["terms"][0] = 0.0  # a failed response the tool blamed nowhere: unchanged under 'blame'
    fn = lambda a, m, p: L.token_advantages(a, m, p, credit=credit)
    got = check_jit_matches_eager(fn, adv, r["mask"], r["terms"])
    np.testing.assert_allclose(got, ref.token_advantages(adv, r["mask"], r["terms"], credit), rtol=1e-5, atol=1e-6)
    # Under every credit the advantage summed over a response's tokens is a_i * n_i, plus the penalties for 'add'.
    n = r["mask"].sum(1)
    extra = (r["terms"] * r["mask"]).sum(1) if credit == "add" else 0.0
    np.testing.assert_allclose(np.asarray(got).sum(1), adv * n + extra, rtol=1e-5, atol=1e-5)
    check_shard_map_rowwise(fn, (adv, r["mask"], r["terms"]))


def test_reinforce_pp_against_a_loop():
    r = _batch(52)
    fn = lambda tr, lp, rl, m: L.reinforce_pp_advantages(tr, lp, rl, m, kl_coef=0.1, estimator="k3", gamma=0.9)
    got = check_jit_matches_eager(fn, r["rewards"], r["logp"], r["ref_logp"], r["mask"])
    expected = ref.reinforce_pp_advantages(r["rewards"], r["logp"], r["ref_logp"], r["mask"], 0.1, "k3", 0.9)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    on = r["mask"] != 0
    np.testing.assert_allclose(np.asarray(got)[on].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got)[on].std(), 1.0, rtol=1e-4)


CASES = [("seq_mean_token_mean", "token", 0.2, None, 0.0), ("token_mean", "token", 0.2, 0.28, 0.0),
         ("seq_mean_token_sum_norm", "token", 0.2, None, 0.04), ("seq_mean_token_mean", "sequence", 0.02, 0.03, 0.0),
         ("token_mean", "sequence", 0.2, 0.28, 0.1)]


@pytest.mark.parametrize("aggregation,ratio,low,high,kl_coef", CASES)
def test_group_policy_loss_against_a_loop_with_grads_and_sharding(aggregation, ratio, low, high, kl_coef):
    r = _batch(53)
    kw = dict(clip_low=low, clip_high=high, aggregation=aggregation, ratio=ratio, kl_coef=kl_coef)
    fn = lambda lp, old, a, m, rl, n=None: L.group_policy_loss(lp, old, a, m, ref_logp=rl, normalizer=n, **kw)
    args = (r["logp"], r["old_logp"], r["adv"], r["mask"], r["ref_logp"])
    loss, aux = check_jit_matches_eager(fn, *args)
    expected = ref.group_policy_loss(r["logp"], r["old_logp"], r["adv"], r["mask"], low, high, aggregation, ratio,
                                     ref_logp=r["ref_logp"], kl_coef=kl_coef)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    assert 0.0 < float(aux["clip_fraction"]) < 1.0
    np.testing.assert_allclose(aux["clip_fraction"], aux["clip_fraction_low"] + aux["clip_fraction_high"], rtol=1e-6)
    check_sharded_jit(fn, args, (0, 1, 2, 3, 4))
    on = r["mask"] != 0
    denom = {"token_mean": r["mask"].sum(), "seq_mean_token_mean": float(on.any(1).sum()),
             "seq_mean_token_sum_norm": float(r["mask"].size)}[aggregation]
    check_shard_map_psum(lambda *a: fn(*a, n=denom)[0], args, (0, 1, 2, 3, 4), loss)
    # The sequence ratio's gradient is GSPO-token's, the derivative of the loss's value when each response has one
    # advantage (test_gspo_is_the_sequence_ratio_clipped_per_sequence): finite differences see only that case.
    adv = np.where(r["mask"] != 0, r["adv"][:, :1], 0.0) if ratio == "sequence" else r["adv"]
    check_gradients(lambda lp: fn(lp, r["old_logp"], adv, r["mask"], r["ref_logp"])[0], r["logp"], order=1)


def test_gspo_is_the_sequence_ratio_clipped_per_sequence():
    # One advantage per response: GSPO-token == GSPO, whose gradient on token t is -A s_i / |y_i| (unclipped) and
    # 0 for every token of a response whose sequence ratio is clipped.
    r = _batch(54)
    adv_row = np.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.0, -1.0], np.float32)
    adv = np.where(r["mask"] != 0, adv_row[:, None], 0.0).astype(np.float32)
    old = r["logp"].copy()
    old[0] -= 0.5  # response 0: every token ratio exp(0.5) > 1.2 and A > 0: clipped
    grad = jax.grad(lambda lp: L.group_policy_loss(lp, old, adv, r["mask"], ratio="sequence", clip_low=0.2)[0])(
        r["logp"])
    n = r["mask"].sum(1)
    s = np.exp(((r["logp"] - old) * r["mask"]).sum(1) / np.maximum(n, 1))
    rows = float((n > 0).sum())
    expected = np.where(r["mask"] != 0, -adv_row[:, None] * s[:, None] / np.maximum(n, 1)[:, None] / rows, 0.0)
    expected[0] = 0.0
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_on_policy_gradients_per_aggregation():
    # logp == old_logp: the gradient is -A m / (normaliser), the normaliser being the aggregation's.
    r = _batch(55)
    m, a = r["mask"], r["adv"]
    n = m.sum(1, keepdims=True)
    rows = float((n > 0).sum())
    expected = {"token_mean": -a * m / m.sum(), "seq_mean_token_mean": -a * m / np.maximum(n, 1) / rows,
                "seq_mean_token_sum_norm": -a * m / (m.shape[0] * 16)}
    for aggregation, want in expected.items():
        g = jax.grad(lambda lp: L.group_policy_loss(lp, r["logp"], a, m, aggregation=aggregation,
                                                    max_tokens=16)[0])(r["logp"])
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7, err_msg=aggregation)


def test_group_bad_inputs_name_the_problem():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="G >= 2"):
        L.group_advantages(jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match="method must be one of"):
        L.group_advantages(z, "ppo")
    with pytest.raises(ValueError, match=r"rewards must have shape \[P, G\]"):
        L.group_advantages(jnp.zeros(4))
    with pytest.raises(ValueError, match="clip_high must be >= clip_low"):
        L.group_policy_loss(z, z, z, z, clip_low=0.2, clip_high=0.1)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        L.group_policy_loss(z, z, z, z, aggregation="sum")
    with pytest.raises(ValueError, match="needs ref_logp"):
        L.group_policy_loss(z, z, z, z, kl_coef=0.1)
    with pytest.raises(ValueError, match="logp, old_logp, advantages, mask"):
        L.group_policy_loss(z, z, z[:1], z)
    with pytest.raises(ValueError, match="needs token_terms"):
        L.token_advantages(jnp.zeros(2), z, credit="add")
    with pytest.raises(ValueError, match="disagree on N"):
        L.token_advantages(jnp.zeros(3), z)
    with pytest.raises(ValueError, match="max_tokens"):
        L.group_policy_loss(z, z, z, z, aggregation="seq_mean_token_sum_norm", max_tokens=0)


def test_fully_masked_rows_and_infinite_logps_stay_finite():
    logp = jnp.array([[-jnp.inf, -1.0], [-1.0, -2.0]])
    mask = jnp.array([[0.0, 1.0], [0.0, 0.0]])
    for aggregation in L.GROUP_AGGREGATIONS:
        for ratio in L.RATIOS:
            loss, _ = L.group_policy_loss(logp, logp, jnp.ones((2, 2)), mask, aggregation=aggregation, ratio=ratio)
            g = jax.grad(lambda lp: L.group_policy_loss(lp, logp, jnp.ones((2, 2)), mask, aggregation=aggregation,
                                                        ratio=ratio)[0])(logp)
            assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g))), (aggregation, ratio)
