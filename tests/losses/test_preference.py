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

LOSS_TYPES = [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.2), ("ipo", 0.0), ("hinge", 0.0)]


def _logps(seed=20, b=16):
    rng = np.random.default_rng(seed)
    return tuple((rng.standard_normal(b) * 3 - 20).astype(np.float32) for _ in range(4))


def test_hand_computed_dpo_variants():
    # policy chosen/rejected -1, -3; reference -2, -2: logits = (1) - (-1) = 2.
    args = [jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]), jnp.array([-2.0])]
    beta = 0.5
    loss, aux = L.dpo_loss(*args, beta=beta)
    np.testing.assert_allclose(loss, math.log1p(math.exp(-1.0)), rtol=1e-6)
    np.testing.assert_allclose(aux["chosen_rewards"], [0.5])
    np.testing.assert_allclose(aux["rejected_rewards"], [-0.5])
    assert float(aux["reward_accuracy"]) == 1.0
    np.testing.assert_allclose(L.dpo_loss(*args, beta=beta, loss_type="ipo")[0], (2 - 1) ** 2, rtol=1e-6)
    np.testing.assert_allclose(L.dpo_loss(*args, beta=0.25, loss_type="hinge")[0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(
        L.dpo_loss(*args, beta=beta, label_smoothing=0.1)[0],
        0.9 * math.log1p(math.exp(-1.0)) + 0.1 * math.log1p(math.exp(1.0)), rtol=1e-6)


@pytest.mark.parametrize("loss_type,eps", LOSS_TYPES)
def test_dpo_matches_reference_jit_vmap_grads_sharding(loss_type, eps):
    pc, pr, rc, rr = _logps()
    fn = lambda a, b, c, d: L.dpo_loss(a, b, c, d, beta=0.1, loss_type=loss_type, label_smoothing=eps)
    loss, aux = check_jit_matches_eager(fn, pc, pr, rc, rr)
    np.testing.assert_allclose(loss, ref.dpo_loss(pc, pr, rc, rr, 0.1, loss_type, eps), rtol=1e-5)
    per_pair = jax.vmap(lambda *x: fn(*(xi[None] for xi in x))[0])(pc, pr, rc, rr)
    np.testing.assert_allclose(per_pair, aux["losses"], rtol=1e-6)
    np.testing.assert_allclose(loss, per_pair.mean(), rtol=1e-6)
    check_sharded_jit(fn, (pc, pr, rc, rr), batch_argnums=(0, 1, 2, 3))
    check_shard_map_psum(lambda *x: fn(*x)[0], (pc, pr, rc, rr), (0, 1, 2, 3), loss, reduce="pmean")
    check_gradients(lambda a, b: fn(a, b, rc[:4], rr[:4])[0], pc[:4], pr[:4], order=1 if loss_type == "hinge" else 2)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_margin_matches_reference_jit_grads_sharding(loss_type):
    pc, pr, rc, rr = _logps()
    margin = np.linspace(-0.3, 0.5, len(pc)).astype(np.float32)
    fn = lambda a, b, c, d, m: L.dpo_loss(a, b, c, d, beta=0.2, loss_type=loss_type, margin=m)  # noqa: E731
    loss, _ = check_jit_matches_eager(fn, pc, pr, rc, rr, margin)
    np.testing.assert_allclose(loss, ref.dpo_loss(pc, pr, rc, rr, 0.2, loss_type, margin=margin), rtol=1e-5)
    check_sharded_jit(fn, (pc, pr, rc, rr, margin), batch_argnums=(0, 1, 2, 3, 4))
    check_gradients(lambda a, m: fn(a, pr[:4], rc[:4], rr[:4], m)[0], pc[:4], margin[:4],
                    order=1 if loss_type == "hinge" else 2)
    # Hand-computed: policy == reference, margin m: sigmoid loss -log sigmoid(-m).
    zero = np.zeros(2, np.float32)
    got = L.dpo_loss(zero, zero, zero, zero, beta=0.2, margin=np.array([0.5, -0.5], np.float32))[0]
    np.testing.assert_allclose(got, (np.log1p(np.exp(0.5)) + np.log1p(np.exp(-0.5))) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="margin"):
        L.dpo_loss(pc, pr, rc, rr, beta=0.2, margin=margin[:3])


def test_dpo_policy_equal_reference_is_log2_and_finite_at_extremes():
    pc, pr, _, _ = _logps()
    loss, aux = L.dpo_loss(pc, pr, pc, pr, beta=0.3)
    np.testing.assert_allclose(aux["losses"], np.full(16, math.log(2)), rtol=1e-6)
    big = jnp.array([1e4, -1e4]), jnp.array([-1e4, 1e4]), jnp.zeros(2), jnp.zeros(2)
    for lt, eps in LOSS_TYPES:
        v, g = jax.value_and_grad(lambda a: L.dpo_loss(a, *big[1:], beta=1.0, loss_type=lt, label_smoothing=eps)[0])(
            big[0])
        assert np.isfinite(v) and np.isfinite(np.asarray(g)).all()
    bf = L.dpo_loss(*(jnp.asarray(x, jnp.bfloat16) for x in (pc, pr, pc, pr)), beta=0.3)[0]
    assert bf.dtype == jnp.float32


def test_sequence_log_probs_against_reference_and_dpo_pipeline():
    rng = np.random.default_rng(21)
    logits, targets, mask = make_tokens(rng, b=8, t=6, v=9)
    got = L.sequence_log_probs(logits, targets, mask)
    avg = L.sequence_log_probs(logits, targets, mask, average=True)
    for b in range(8):
        np.testing.assert_allclose(got[b], ref.sequence_log_prob(logits[b], targets[b], mask[b]), rtol=1e-5)
        np.testing.assert_allclose(avg[b], ref.sequence_log_prob(logits[b], targets[b], mask[b], True), rtol=1e-5)
    # Reference log-probs precomputed once (no reference model during the step).
    ref_logits = logits + rng.standard_normal(logits.shape).astype(np.float32)
    ref_lp = L.sequence_log_probs(ref_logits, targets, mask)

    def step_loss(lg):
        lp = L.sequence_log_probs(lg, targets, mask)
        return L.dpo_loss(lp[0::2], lp[1::2], ref_lp[0::2], ref_lp[1::2], beta=0.1)[0]

    check_sharded_jit(step_loss, (logits,), batch_argnums=(0,))
    check_gradients(step_loss, logits, order=1)


def test_bradley_terry_hand_reference_heads_margin_weights():
    np.testing.assert_allclose(L.bradley_terry_loss(jnp.array([1.0]), jnp.array([0.0]))[0],
                               math.log1p(math.exp(-1.0)), rtol=1e-6)
    rng = np.random.default_rng(22)
    chosen, rejected = (rng.standard_normal((16, 3)).astype(np.float32) for _ in range(2))
    margin = rng.uniform(0, 1, 16).astype(np.float32)
    weights = rng.poisson(1.0, (16, 3)).astype(np.float32)
    loss, aux = L.bradley_terry_loss(chosen, rejected, margin=margin, weights=weights)
    np.testing.assert_allclose(loss, ref.bradley_terry(chosen, rejected, margin, weights), rtol=1e-5)
    assert aux["per_head_loss"].shape == (3,)
    for k in range(3):  # each head's loss is its own Bradley-Terry loss
        single = L.bradley_terry_loss(chosen[:, k], rejected[:, k], margin=margin, weights=weights[:, k])[0]
        np.testing.assert_allclose(aux["per_head_loss"][k], single, rtol=1e-6)
    fn = lambda c, r, m: L.bradley_terry_loss(c, r, margin=m)
    loss, _ = check_jit_matches_eager(fn, chosen, rejected, margin)
    check_sharded_jit(fn, (chosen, rejected, margin), (0, 1, 2))
    check_shard_map_psum(lambda *x: fn(*x)[0], (chosen, rejected, margin), (0, 1, 2), loss, reduce="pmean")
    check_gradients(lambda c, r: fn(c, r, margin[:4])[0], chosen[:4], rejected[:4])


def test_preference_bad_inputs():
    a = jnp.zeros(4)
    with pytest.raises(ValueError, match="loss_type"):
        L.dpo_loss(a, a, a, a, beta=0.1, loss_type="kto")
    with pytest.raises(ValueError, match="beta"):
        L.dpo_loss(a, a, a, a, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        L.dpo_loss(a, a, a, a, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        L.dpo_loss(a, a, a, jnp.zeros(3), beta=0.1)
    with pytest.raises(ValueError, match=r"\[B\] or \[B, K\]"):
        L.bradley_terry_loss(jnp.zeros(4), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="margin"):
        L.bradley_terry_loss(jnp.zeros(4), jnp.zeros(4), margin=jnp.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        L.bradley_terry_loss(jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32))


def test_bradley_terry_batch_equals_vmap_of_pairs():
    rng = np.random.default_rng(23)
    chosen, rejected = (rng.standard_normal((8, 2)).astype(np.float32) for _ in range(2))
    loss = L.bradley_terry_loss(chosen, rejected)[0]
    per_pair = jax.vmap(lambda c, r: L.bradley_terry_loss(c[None], r[None])[0])(chosen, rejected)
    np.testing.assert_allclose(loss, per_pair.mean(), rtol=1e-6)
