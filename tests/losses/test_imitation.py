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


def test_hand_computed_mle_and_iqlearn():
    logits = jnp.array([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    targets = jnp.array([[0, 0]])
    mask = jnp.array([[1, 1]])
    nll = [math.log(2), math.log(4 / 3)]
    rewards = [-math.log(4), math.log(3)]
    mle, aux = L.mle_loss(logits, targets, mask)
    np.testing.assert_allclose(mle, sum(nll) / 2, rtol=1e-6)
    np.testing.assert_allclose(aux["nll"], [nll], rtol=1e-6)
    loss, aux = L.iqlearn_loss(logits, targets, mask, gamma=1.0, td_weight=0.5)
    np.testing.assert_allclose(loss, (sum(nll) + 0.5 * sum(r * r for r in rewards)) / 2, rtol=1e-6)
    np.testing.assert_allclose(aux["sequence_rewards"], [sum(rewards)], rtol=1e-6)
    np.testing.assert_allclose(aux["td_loss"], sum(r * r for r in rewards) / 2, rtol=1e-6)


@pytest.mark.parametrize("gamma,td_weight,tau", [(1.0, 0.1, 1.0), (0.9, 1.0, 0.5), (0.99, 0.0, 2.0)])
def test_iqlearn_matches_token_loop_reference(gamma, td_weight, tau):
    rng = np.random.default_rng(10)
    logits, targets, mask = make_tokens(rng, b=5, t=9, v=12)
    mask = mask * rng.uniform(0.5, 2.0, mask.shape).astype(np.float32)  # weighted tokens
    loss, _ = L.iqlearn_loss(logits, targets, mask, gamma=gamma, td_weight=td_weight, temperature=tau)
    np.testing.assert_allclose(loss, ref.iqlearn_loss(logits, targets, mask, gamma, td_weight, tau), rtol=1e-5)


def test_td_weight_zero_is_exactly_mle():
    rng = np.random.default_rng(11)
    logits, targets, mask = make_tokens(rng)
    mle = L.mle_loss(logits, targets, mask)[0]
    iq = L.iqlearn_loss(logits, targets, mask, gamma=0.9, td_weight=0.0)[0]
    np.testing.assert_array_equal(np.asarray(mle), np.asarray(iq))
    mle_j = jax.jit(L.mle_loss)(logits, targets, mask)[0]
    iq_j = jax.jit(lambda *a: L.iqlearn_loss(*a, gamma=0.9, td_weight=0.0))(logits, targets, mask)[0]
    np.testing.assert_array_equal(np.asarray(mle_j), np.asarray(iq_j))
    g_mle = jax.grad(lambda lg: L.mle_loss(lg, targets, mask)[0])(logits)
    g_iq = jax.grad(lambda lg: L.iqlearn_loss(lg, targets, mask, gamma=0.9, td_weight=0.0)[0])(logits)
    np.testing.assert_array_equal(np.asarray(g_mle), np.asarray(g_iq))


def _online_inputs(seed=12):
    rng = np.random.default_rng(seed)
    logits, targets, mask = make_tokens(rng, b=8, t=6, v=10)
    policy_logits, _, policy_mask = make_tokens(rng, b=8, t=5, v=10)
    return logits, targets, mask, policy_logits, policy_mask


@pytest.mark.parametrize("alpha,gamma,tau", [(0.1, 1.0, 1.0), (0.5, 0.9, 0.7)])
def test_online_iqlearn_matches_mixture_reference(alpha, gamma, tau):
    logits, targets, mask, plogits, pmask = _online_inputs()
    loss, aux = L.iqlearn_online_loss(logits, targets, mask, plogits, pmask, alpha=alpha, gamma=gamma,
                                      td_weight=0.3, temperature=tau)
    expected = ref.iqlearn_online_loss(logits, targets, mask, plogits, pmask, alpha, gamma, 0.3, tau)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(aux["policy_value_gap"], ref.value_gap(plogits, pmask, gamma, tau), rtol=1e-5)


@pytest.mark.parametrize("alpha,gamma,tau", [(0.1, 1.0, 1.0), (0.5, 0.9, 0.7)])
def test_online_iqlearn_with_chi2_on_the_mixture_matches_the_reference(alpha, gamma, tau):
    logits, targets, mask, plogits, pmask = _online_inputs()
    ptargets = np.random.default_rng(3).integers(0, 10, pmask.shape)
    loss, aux = L.iqlearn_online_loss(logits, targets, mask, plogits, pmask, alpha=alpha, gamma=gamma,
                                      td_weight=0.3, temperature=tau, chi2="mixture", policy_targets=ptargets)
    expected = ref.iqlearn_online_loss(logits, targets, mask, plogits, pmask, alpha, gamma, 0.3, tau,
                                       chi2="mixture", policy_targets=ptargets)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    fn = lambda lg, pl: L.iqlearn_online_loss(lg, targets[:2], mask[:2], pl, pmask[:2], alpha=alpha, gamma=gamma,
                                              td_weight=0.3, temperature=tau, chi2="mixture",
                                              policy_targets=ptargets[:2])[0]
    check_gradients(fn, logits[:2], plogits[:2])
    with pytest.raises(ValueError, match="chi2 must be one of"):
        L.iqlearn_online_loss(logits, targets, mask, plogits, pmask, gamma=1.0, td_weight=0.1, chi2="both")
    with pytest.raises(ValueError, match="needs policy_targets"):
        L.iqlearn_online_loss(logits, targets, mask, plogits, pmask, gamma=1.0, td_weight=0.1, chi2="mixture")


@pytest.mark.parametrize("gamma,chi2,content_counts", [(1.0, "data", False), (0.9, "data", True),
                                                        (1.0, "mixture", True)])
def test_which_terms_the_policy_samples_reach(gamma, chi2, content_counts):
    """At gamma = 1 with the chi^2 term on data, a policy sample's value terms telescope to V(s_0): the states
    after the first (what the sample says) reach neither the loss nor its gradient. gamma < 1, or the chi^2 term
    on the mixture, lets them in."""
    logits, targets, mask, plogits, _ = _online_inputs()
    pmask = np.zeros(plogits.shape[:2], np.float32)
    pmask[:, 1:] = 1.0  # responses from position 1 on (0 is the prompt's last token, not counted)
    pmask[2, 4:] = 0.0  # a shorter one
    ptargets = np.random.default_rng(4).integers(0, 10, pmask.shape)

    def loss(pl):
        return L.iqlearn_online_loss(logits, targets, mask, pl, pmask, alpha=0.2, gamma=gamma, td_weight=0.3,
                                     chi2=chi2, policy_targets=ptargets)[0]

    first = np.zeros(pmask.shape, bool)
    first[:, 1] = True  # s_0 of each response
    later = (pmask > 0) & ~first
    g = np.abs(np.asarray(jax.grad(loss)(jnp.asarray(plogits)))).sum(-1)
    assert g[first].min() > 1e-4
    # Other content at every later state: a different loss exactly when the content counts.
    other = np.where(later[..., None], np.random.default_rng(5).normal(size=plogits.shape), plogits)
    moved = abs(float(loss(jnp.asarray(other))) - float(loss(jnp.asarray(plogits))))
    if content_counts:
        assert g[later].max() > 1e-4 and moved > 1e-4
    else:
        assert g[later].max() < 1e-6 and moved < 1e-6


def test_online_alpha_zero_is_offline_and_policy_states_get_gradient():
    logits, targets, mask, plogits, pmask = _online_inputs()
    online = L.iqlearn_online_loss(logits, targets, mask, plogits, pmask, alpha=0.0, gamma=0.9, td_weight=0.2)[0]
    offline = L.iqlearn_loss(logits, targets, mask, gamma=0.9, td_weight=0.2)[0]
    np.testing.assert_array_equal(np.asarray(online), np.asarray(offline))
    g = jax.grad(lambda p: L.iqlearn_online_loss(logits, targets, mask, p, pmask, alpha=0.1, gamma=0.9,
                                                 td_weight=0.2)[0])(plogits)
    assert np.abs(np.asarray(g)).sum() > 0
    assert np.all(np.asarray(g)[np.asarray(pmask) == 0] == 0)  # uncounted policy positions get nothing


def test_jit_vmap_grads_sharding_for_token_losses():
    rng = np.random.default_rng(13)
    logits, targets, mask = make_tokens(rng, b=8, t=6, v=7)
    fns = {
        "mle": lambda lg, tg, m, n=None: L.mle_loss(lg, tg, m, normalizer=n),
        "iqlearn": lambda lg, tg, m, n=None: L.iqlearn_loss(lg, tg, m, gamma=0.9, td_weight=0.5,
                                                            temperature=0.8, normalizer=n),
    }
    counts = mask.sum(-1)
    for fn in fns.values():
        loss, aux = check_jit_matches_eager(fn, logits, targets, mask)
        # Batch == vmap of single examples, combined as the token mean they are.
        per_ex = jax.vmap(lambda lg, tg, m: fn(lg[None], tg[None], m[None])[0])(logits, targets, mask)
        np.testing.assert_allclose(loss, np.sum(per_ex * counts) / counts.sum(), rtol=1e-5)
        check_sharded_jit(fn, (logits, targets, mask), batch_argnums=(0, 1, 2))
        total = mask.sum()
        check_shard_map_psum(
            lambda lg, tg, m: fn(lg, tg, m, jax.lax.psum(jnp.sum(m), "data"))[0],
            (logits, targets, mask), (0, 1, 2), loss)
        # Gradient-accumulation use of the normalizer: micro-batch losses add up to the full loss.
        halves = [fn(logits[s], targets[s], mask[s], total)[0] for s in (slice(0, 3), slice(3, 8))]
        np.testing.assert_allclose(sum(halves), loss, rtol=1e-5)
        check_gradients(lambda lg: fn(lg, targets[:3], mask[:3])[0], logits[:3])


def test_online_jit_grads_and_sharding():
    logits, targets, mask, plogits, pmask = _online_inputs()
    fn = lambda lg, tg, m, pl, pm, n=None, pn=None: L.iqlearn_online_loss(
        lg, tg, m, pl, pm, alpha=0.1, gamma=0.95, td_weight=0.3, normalizer=n, policy_normalizer=pn)
    loss, _ = check_jit_matches_eager(fn, logits, targets, mask, plogits, pmask)
    check_sharded_jit(fn, (logits, targets, mask, plogits, pmask), batch_argnums=(0, 1, 2, 3, 4))
    check_shard_map_psum(
        lambda lg, tg, m, pl, pm: fn(lg, tg, m, pl, pm, jax.lax.psum(jnp.sum(m), "data"),
                                     jax.lax.psum(jnp.sum(pm), "data"))[0],
        (logits, targets, mask, plogits, pmask), (0, 1, 2, 3, 4), loss)
    check_gradients(lambda lg, pl: fn(lg, targets[:2], mask[:2], pl, pmask[:2])[0], logits[:2], plogits[:2])


@pytest.mark.parametrize("loss_name", ["mle", "iqlearn", "online"])
def test_finite_values_and_gradients_in_hard_cases(loss_name):
    rng = np.random.default_rng(14)
    logits, targets, mask = make_tokens(rng, b=4, t=5, v=6)
    logits = logits * 5e3  # logits of about +-1e4
    logits[0, :, 5] = -np.inf  # a banned token (never a target below)
    targets = np.where(targets == 5, 4, targets)
    mask[2] = 0.0  # a fully masked row
    plogits = logits[:, :3].copy()
    pmask = mask[:, :3].copy()

    def f(lg, pl):
        if loss_name == "mle":
            return L.mle_loss(lg, targets, mask)[0]
        if loss_name == "iqlearn":
            return L.iqlearn_loss(lg, targets, mask, gamma=0.9, td_weight=0.5)[0]
        return L.iqlearn_online_loss(lg, targets, mask, pl, pmask, gamma=0.9, td_weight=0.5)[0]

    for dtype in (jnp.float32, jnp.bfloat16):
        lg, pl = jnp.asarray(logits, dtype), jnp.asarray(plogits, dtype)
        value, grads = jax.value_and_grad(f, argnums=(0, 1))(lg, pl)
        assert value.dtype == jnp.float32 and np.isfinite(value)
        for g in grads:
            assert np.isfinite(np.asarray(g, np.float32)).all()
        assert np.all(np.asarray(grads[0], np.float32)[2] == 0)  # the masked row gets no gradient
    # bf16 inputs are reduced in float32: same value as float32 inputs up to bf16 rounding of the logits.
    small = make_tokens(np.random.default_rng(15), b=4, t=5, v=6)
    f32 = L.iqlearn_loss(*small, gamma=0.9, td_weight=0.5)[0]
    bf16 = L.iqlearn_loss(jnp.asarray(small[0], jnp.bfloat16), *small[1:], gamma=0.9, td_weight=0.5)[0]
    np.testing.assert_allclose(bf16, f32, rtol=2e-2)


def test_everything_masked_gives_zero_loss_and_zero_gradients():
    logits, targets, mask = make_tokens(np.random.default_rng(16))
    mask = np.zeros_like(mask)
    value, g = jax.value_and_grad(lambda lg: L.iqlearn_loss(lg, targets, mask, gamma=1.0, td_weight=1.0)[0])(logits)
    assert float(value) == 0.0 and np.all(np.asarray(g) == 0)


def test_padding_and_per_state_offset_invariants():
    rng = np.random.default_rng(17)
    logits, targets, mask = make_tokens(rng, b=4, t=8, v=9)
    base_mle = L.mle_loss(logits, targets, mask)[0]
    base_iq = L.iqlearn_loss(logits, targets, mask, gamma=1.0, td_weight=0.5)[0]
    # Garbage (even NaN) in uncounted positions changes nothing.
    noisy = np.where(mask[..., None] == 0, np.nan, logits).astype(np.float32)
    np.testing.assert_array_equal(L.mle_loss(noisy, targets, mask)[0], base_mle)
    np.testing.assert_array_equal(L.iqlearn_loss(noisy, targets, mask, gamma=1.0, td_weight=0.5)[0], base_iq)
    # A constant added to one state's logits: softmax (and MLE) ignores it, the TD term does not.
    b, t = 1, int(np.argmax(mask[1]))
    shifted = logits.copy()
    shifted[b, t] += 3.0
    np.testing.assert_allclose(L.mle_loss(shifted, targets, mask)[0], base_mle, rtol=1e-6)
    assert abs(float(L.iqlearn_loss(shifted, targets, mask, gamma=1.0, td_weight=0.5)[0]) - float(base_iq)) > 1e-3


def test_bad_inputs_get_clear_errors():
    logits, targets, mask = make_tokens(np.random.default_rng(18))
    with pytest.raises(ValueError, match=r"mask must have shape \[B, T\]"):
        L.mle_loss(logits, targets, mask[0])
    with pytest.raises(ValueError, match="disagree"):
        L.iqlearn_loss(logits, targets[:2], mask[:2], gamma=1.0, td_weight=0.1)
    with pytest.raises(TypeError, match="integer token ids"):
        L.mle_loss(logits, targets.astype(np.float32), mask)
    with pytest.raises(ValueError, match="outside"):
        L.mle_loss(logits, np.full_like(targets, logits.shape[-1]), mask)
    with pytest.raises(ValueError, match="vocabulary axis"):
        L.iqlearn_online_loss(logits, targets, mask, logits[..., :3], mask, gamma=1.0, td_weight=0.1)
    with pytest.raises(ValueError, match="policy_values, policy_mask"):
        L.iqlearn_online_loss(logits, targets, mask, logits, mask[:, :2], gamma=1.0, td_weight=0.1)


def test_hand_computed_online_iqlearn():
    # Data: one token, vocab 2, logits [0, 0], target 0: nll = log 2, r = 0, data gap = V = log 2.
    # Policy sample: two tokens with logits [0, 0] and [log 3, 0]: gaps V(s0) - V(s1) = log 2 - log 4 and
    # V(s1) - 0 = log 4; policy value gap = (log 2 - log 4 + log 4) / 2 = log 2 / 2.
    logits = jnp.array([[[0.0, 0.0]]])
    policy_logits = jnp.array([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    loss, aux = L.iqlearn_online_loss(logits, jnp.array([[0]]), jnp.array([[1]]), policy_logits,
                                      jnp.array([[1, 1]]), alpha=0.1, gamma=1.0, td_weight=0.5)
    np.testing.assert_allclose(aux["policy_value_gap"], math.log(2) / 2, rtol=1e-6)
    np.testing.assert_allclose(loss, math.log(2) + 0.1 * (math.log(2) / 2 - math.log(2)), rtol=1e-6)


def test_online_batch_equals_vmap_of_single_examples():
    logits, targets, mask, plogits, pmask = _online_inputs(19)
    fn = lambda lg, tg, m: L.iqlearn_online_loss(lg, tg, m, plogits, pmask, alpha=0.2, gamma=0.9, td_weight=0.4)[0]
    per_ex = jax.vmap(lambda lg, tg, m: fn(lg[None], tg[None], m[None]))(logits, targets, mask)
    counts = mask.sum(-1)
    np.testing.assert_allclose(fn(logits, targets, mask), np.sum(per_ex * counts) / counts.sum(), rtol=1e-5)


def test_loss_layer_imports_no_flax_orbax_or_tfds():
    import subprocess
    import sys

    code = ("import sys, jax_irl.losses; bad = [m for m in ('flax', 'orbax', 'tensorflow_datasets', 'optax') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    assert done.returncode == 0, done.stdout + done.stderr


def test_mle_with_an_entropy_bonus_hand_computed_and_against_the_reference():
    # One state with logits (0, 0): pi = (1/2, 1/2), nll of either token log 2, entropy log 2.
    logits, targets, mask = jnp.zeros((1, 1, 2)), jnp.array([[1]]), jnp.array([[1]])
    loss, aux = L.mle_entropy_loss(logits, targets, mask, entropy_bonus=0.5)
    np.testing.assert_allclose(loss, math.log(2) - 0.5 * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(aux["mean_entropy"], math.log(2), rtol=1e-6)
    rng = np.random.default_rng(21)
    logits, targets, mask = make_tokens(rng, b=6, t=7, v=9)
    mask = mask * rng.uniform(0.5, 2.0, mask.shape).astype(np.float32)
    for beta, tau in [(0.3, 1.0), (0.05, 0.7)]:
        loss, _ = L.mle_entropy_loss(logits, targets, mask, entropy_bonus=beta, temperature=tau)
        np.testing.assert_allclose(loss, ref.mle_entropy_loss(logits, targets, mask, beta, tau), rtol=1e-5)
    # entropy_bonus 0 is exactly MLE, value and gradient.
    mle = L.mle_loss(logits, targets, mask)[0]
    np.testing.assert_array_equal(np.asarray(L.mle_entropy_loss(logits, targets, mask, entropy_bonus=0.0)[0]),
                                  np.asarray(mle))
    with pytest.raises(ValueError, match="entropy_bonus"):
        L.mle_entropy_loss(logits, targets, mask, entropy_bonus=-0.1)
    with pytest.raises(ValueError, match="entropies"):
        L.mle_entropy_loss_from_q(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones((2, 3)),
                                  entropy_bonus=0.1)


def test_mle_with_an_entropy_bonus_jit_grads_and_sharding():
    rng = np.random.default_rng(22)
    logits, targets, mask = make_tokens(rng, b=8, t=6, v=10)
    fn = lambda lg, tg, m, n=None: L.mle_entropy_loss(lg, tg, m, entropy_bonus=0.2, normalizer=n)  # noqa: E731
    loss, _ = check_jit_matches_eager(fn, logits, targets, mask)
    check_sharded_jit(fn, (logits, targets, mask), batch_argnums=(0, 1, 2))
    check_shard_map_psum(lambda lg, tg, m: fn(lg, tg, m, jax.lax.psum(jnp.sum(m), "data"))[0],
                         (logits, targets, mask), (0, 1, 2), loss)
    check_gradients(lambda lg: fn(lg, targets[:3], mask[:3])[0], logits[:3])
    # The bonus's share of the gradient is exactly the (scaled) entropy's gradient.
    g = jax.grad(lambda lg: fn(lg, targets, mask)[0] - L.mle_loss(lg, targets, mask)[0])(logits)
    g_h = jax.grad(lambda lg: -0.2 * L.masked_mean(L.token_entropies(lg), mask))(logits)
    np.testing.assert_allclose(g, g_h, rtol=1e-4, atol=1e-6)


# --- GAIL's discriminator ---------------------------------------------------------------------------------


def _discriminator_reference(data, policy):
    """float64 loop: -mean log sigmoid(data) - mean log(1 - sigmoid(policy))."""
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    return (-sum(math.log(sig(x)) for x in data) / len(data)
            - sum(math.log(1.0 - sig(x)) for x in policy) / len(policy))


def test_discriminator_loss_against_a_loop_jit_gradients_and_sharding():
    rng = np.random.default_rng(4)
    data = rng.normal(0.5, 2.0, 16).astype(np.float32)
    policy = rng.normal(-0.5, 2.0, 8).astype(np.float32)  # a different count of policy pairs
    loss, aux = check_jit_matches_eager(L.discriminator_loss, data, policy)
    np.testing.assert_allclose(loss, _discriminator_reference(data.tolist(), policy.tolist()), rtol=1e-5)
    np.testing.assert_allclose(aux["data_accuracy"], np.mean(data > 0), rtol=1e-6)
    np.testing.assert_allclose(aux["policy_accuracy"], np.mean(policy < 0), rtol=1e-6)
    np.testing.assert_allclose(aux["data_d"], np.mean(1 / (1 + np.exp(-data))), rtol=1e-5)
    check_gradients(lambda d, p: L.discriminator_loss(d, p)[0], data, policy)
    check_sharded_jit(lambda d, p: L.discriminator_loss(d, p)[0], (data, policy), batch_argnums=(0, 1))
    # hand-computed: logits 0 on both sides give 2 log 2; the gradient pushes data up and policy down
    zero, _ = L.discriminator_loss(jnp.zeros(2), jnp.zeros(3))
    np.testing.assert_allclose(zero, 2 * math.log(2), rtol=1e-6)
    gd, gp = jax.grad(lambda d, p: L.discriminator_loss(d, p)[0], argnums=(0, 1))(jnp.zeros(2), jnp.zeros(3))
    np.testing.assert_allclose(gd, -0.5 / 2, rtol=1e-6)
    np.testing.assert_allclose(gp, 0.5 / 3, rtol=1e-6)


def test_discriminator_rewards_by_hand_and_their_relations():
    x = jnp.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    d = 1 / (1 + np.exp(-np.asarray(x, np.float64)))
    np.testing.assert_allclose(L.discriminator_reward(x, "logit"), np.log(d) - np.log(1 - d), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(L.discriminator_reward(x, "gail"), -np.log(1 - d), rtol=1e-5)
    np.testing.assert_allclose(L.discriminator_reward(x, "log_d"), np.log(d), rtol=1e-5)
    # logit = gail + log_d, gail > 0 > log_d
    np.testing.assert_allclose(L.discriminator_reward(x, "gail") + L.discriminator_reward(x, "log_d"), x, atol=1e-6)
    assert (np.asarray(L.discriminator_reward(x, "gail")) > 0).all()
    check_jit_matches_eager(lambda v: L.discriminator_reward(v, "gail"), x)
    check_gradients(lambda v: jnp.sum(L.discriminator_reward(v, "log_d")), x)


def test_discriminator_losses_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"data_logits must have shape \[B\] \(rank 1\); got shape \(2, 2\)"):
        L.discriminator_loss(jnp.zeros((2, 2)), jnp.zeros(2))
    with pytest.raises(TypeError, match="policy_logits must be a floating-point array"):
        L.discriminator_loss(jnp.zeros(2), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="at least one pair"):
        L.discriminator_loss(jnp.zeros(0), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"kind must be one of \('logit', 'gail', 'log_d'\); got 'airl'"):
        L.discriminator_reward(jnp.zeros(2), "airl")

