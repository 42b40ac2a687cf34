import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_irl import losses as L
from tests.losses import reference as ref
from tests.losses.harness import (
    assert_tree_close,
    check_gradients,
    check_jit_matches_eager,
    check_sharded_jit,
    make_tokens,
)


def test_hand_computed_values_log_probs_and_rewards():
    # Two response tokens over a 2-token vocabulary.
    logits = jnp.array([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    targets = jnp.array([[0, 0]])
    mask = jnp.array([[1, 1]])
    np.testing.assert_allclose(L.soft_values(logits), [[math.log(2), math.log(4)]], rtol=1e-6)
    np.testing.assert_allclose(L.token_log_probs(logits, targets), [[-math.log(2), math.log(3 / 4)]], rtol=1e-6)
    # r_0 = Q(s0,a0) - V(s1) = 0 - log 4; r_1 = Q(s1,a1) - 0 (end of response) = log 3.
    np.testing.assert_allclose(L.implied_rewards(logits, targets, mask), [[-math.log(4), math.log(3)]], rtol=1e-6)
    np.testing.assert_allclose(L.implied_rewards(logits, targets, mask, gamma=0.5),
                               [[-0.5 * math.log(4), math.log(3)]], rtol=1e-6)
    # Temperature 2: V = 2 * logsumexp(logits / 2).
    np.testing.assert_allclose(L.soft_values(jnp.array([0.0, 2.0]), temperature=2.0), 2 * math.log(1 + math.e),
                               rtol=1e-6)


@pytest.mark.parametrize("gamma,tau", [(1.0, 1.0), (0.9, 0.7)])
def test_implied_rewards_match_token_loop_reference(gamma, tau):
    rng = np.random.default_rng(0)
    logits, targets, mask = make_tokens(rng, b=5, t=8, v=13)
    got = np.asarray(L.implied_rewards(logits, targets, mask, gamma=gamma, temperature=tau))
    expected = np.zeros_like(got)
    for (b, t), (_, r) in ref.iqlearn_terms(logits, targets, mask, gamma, tau).items():
        expected[b, t] = r
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    logp = np.asarray(L.token_log_probs(logits, np.maximum(targets, 0), temperature=tau))
    for b in range(5):
        for t in range(8):
            row = logits[b, t].astype(np.float64) / tau
            exp_lp = row[max(targets[b, t], 0)] - ref.logsumexp(row)
            assert abs(logp[b, t] - exp_lp) < 1e-5


def test_jit_vmap_grads_and_sharding_of_implied_rewards():
    rng = np.random.default_rng(1)
    logits, targets, mask = make_tokens(rng, b=8, t=6, v=9)
    fn = lambda lg, tg, m: L.implied_rewards(lg, tg, m, gamma=0.95, temperature=0.8)
    batch = check_jit_matches_eager(fn, logits, targets, mask)
    per_example = jax.vmap(lambda lg, tg, m: fn(lg[None], tg[None], m[None])[0])(logits, targets, mask)
    assert_tree_close(batch, per_example)
    check_sharded_jit(fn, (logits, targets, mask), batch_argnums=(0, 1, 2))
    check_gradients(lambda lg: jnp.sum(fn(lg, targets, mask) ** 2), logits)


def test_terminal_override_for_packed_rows():
    # One row packing two responses: positions 0-1 and 3-4. Without terminal flags the value of s_2 leaks
    # into r_1; with them, r_1 = Q(s_1, a_1).
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.standard_normal((1, 5, 4)), jnp.float32)
    targets = jnp.array([[1, 2, 0, 3, 1]])
    mask = jnp.array([[1, 1, 0, 1, 1]])
    terminal = jnp.array([[False, True, False, False, True]])
    r = L.implied_rewards(logits, targets, mask, terminal=terminal)
    np.testing.assert_allclose(r[0, 1], logits[0, 1, 2], rtol=1e-6)
    np.testing.assert_allclose(r[0, 0], logits[0, 0, 1] - L.soft_values(logits)[0, 1], rtol=1e-6)
    default = L.implied_rewards(logits, targets, mask)
    np.testing.assert_allclose(default[0, 1], logits[0, 1, 2] - L.soft_values(logits)[0, 2], rtol=1e-6)


@pytest.mark.parametrize("chunk,tau,with_bias,dtype", [
    (16, 1.0, False, jnp.float32),   # divides V
    (7, 0.6, True, jnp.float32),     # remainder chunk
    (1000, 1.0, True, jnp.float32),  # one chunk larger than V
    (10, 1.0, False, jnp.bfloat16),
])
def test_chunked_stats_equal_direct_values_and_gradients(chunk, tau, with_bias, dtype):
    rng = np.random.default_rng(3)
    b, t, d, v = 3, 5, 8, 48
    hidden = jnp.asarray(rng.standard_normal((b, t, d)), dtype)
    w = jnp.asarray(rng.standard_normal((d, v)) / 2, dtype)
    bias = jnp.asarray(rng.standard_normal(v), dtype) if with_bias else None
    targets = jnp.asarray(rng.integers(0, v, (b, t)))
    mask = jnp.asarray((rng.random((b, t)) > 0.3).astype(np.float32))

    def direct(h, w, bias):
        logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
        if bias is not None:
            logits = logits + bias.astype(jnp.float32)
        return L.soft_q_stats(logits, targets, tau)

    def chunked(h, w, bias):
        return L.chunked_soft_q_stats(h, w, targets, temperature=tau, chunk_size=chunk, bias=bias)

    tol = dict(rtol=1e-5, atol=1e-4) if dtype == jnp.float32 else dict(rtol=2e-3, atol=2e-2)
    assert_tree_close(direct(hidden, w, bias), jax.jit(chunked)(hidden, w, bias), **tol)

    def loss(stats_fn):
        def f(h, w, bias):
            q, val = stats_fn(h, w, bias)
            return L.iqlearn_loss_from_q(q, val, mask, gamma=0.9, td_weight=0.3, temperature=tau)[0]
        return f

    g_direct = jax.grad(loss(direct), argnums=(0, 1, 2) if with_bias else (0, 1))(hidden, w, bias)
    g_chunked = jax.jit(jax.grad(loss(chunked), argnums=(0, 1, 2) if with_bias else (0, 1)))(hidden, w, bias)
    assert_tree_close(g_direct, g_chunked, **tol)


def _all_shapes(jaxpr):
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for p in eqn.params.values():
            subs = p if isinstance(p, (list, tuple)) else [p]
            for s in subs:
                inner = getattr(s, "jaxpr", None)
                if inner is not None:
                    shapes += _all_shapes(getattr(inner, "jaxpr", inner))
    return shapes


def test_chunked_stats_never_build_full_logits_forward_or_backward():
    b, t, d, v, chunk = 2, 3, 4, 97, 10
    hidden = jnp.ones((b, t, d))
    w = jnp.ones((d, v)) * 0.01
    targets = jnp.zeros((b, t), jnp.int32)

    def f(h, w):
        q, val = L.chunked_soft_q_stats(h, w, targets, chunk_size=chunk)
        return jnp.sum(val - q)

    shapes = _all_shapes(jax.make_jaxpr(jax.grad(f, argnums=(0, 1)))(hidden, w).jaxpr)
    full = [s for s in shapes if v in s and s != (d, v)]
    assert not full, f"an intermediate spans the whole vocabulary: {full}"
    assert (b * t, chunk) in shapes  # the chunked logits are there instead
    # And the direct path does build them (so the check can fail).
    direct_shapes = _all_shapes(jax.make_jaxpr(lambda h: jnp.sum(L.soft_values(h @ w)))(hidden).jaxpr)
    assert (b, t, v) in direct_shapes


def test_shape_dtype_and_token_id_errors():
    logits = jnp.zeros((2, 3, 5))
    targets = jnp.zeros((2, 3), jnp.int32)
    mask = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"logits must have shape \[B, T, V\]"):
        L.implied_rewards(logits[0], targets, mask)
    with pytest.raises(ValueError, match="disagree"):
        L.implied_rewards(logits, targets[:1], mask)
    with pytest.raises(ValueError, match="mask"):
        L.implied_rewards(logits, targets, mask[:, :2])
    with pytest.raises(TypeError, match="integer token ids"):
        L.implied_rewards(logits, targets.astype(jnp.float32), mask)
    with pytest.raises(TypeError, match="floating-point"):
        L.soft_values(jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"outside \[0, 5\).*targets\[1, 2\] = 7"):
        L.implied_rewards(logits, targets.at[1, 2].set(7), mask)
    with pytest.raises(ValueError, match="temperature"):
        L.soft_values(logits, temperature=0.0)
    # -100 padding is fine where the mask is 0, and under jit an out-of-range counted id gives NaN, not a
    # silently wrong number.
    r = L.implied_rewards(logits, targets.at[0, 2].set(-100), mask.at[0, 2].set(0))
    assert np.isfinite(np.asarray(r)).all()
    r_jit = jax.jit(L.implied_rewards)(logits, targets.at[1, 2].set(7), mask)
    assert np.isnan(np.asarray(r_jit)[1, 2])
    with pytest.raises(ValueError, match=r"unembedding must have shape \[D, V\]"):
        L.chunked_soft_q_stats(jnp.zeros((2, 3, 4)), jnp.zeros((5, 9)), targets)


def test_chunked_stats_with_banned_tokens_and_extreme_logits():
    # -inf bias entries (banned tokens), a whole chunk of them, and hidden states giving logits near +-1e4.
    rng = np.random.default_rng(4)
    b, t, d, v = 2, 3, 4, 20
    hidden = jnp.asarray(rng.standard_normal((b, t, d)) * 100, jnp.float32)
    w = jnp.asarray(rng.standard_normal((d, v)) * 25, jnp.float32)
    bias = jnp.zeros(v).at[:5].set(-jnp.inf).at[12].set(-jnp.inf)
    targets = jnp.asarray(rng.integers(5, 12, (b, t)))
    q_c, v_c = L.chunked_soft_q_stats(hidden, w, targets, chunk_size=5, bias=bias)
    q_d, v_d = L.soft_q_stats(hidden @ w + bias, targets)
    assert_tree_close((q_c, v_c), (q_d, v_d), rtol=1e-5, atol=1e-2)
    assert np.isfinite(np.asarray(v_c)).all()
    g = jax.grad(lambda h: jnp.sum(L.chunked_soft_q_stats(h, w, targets, chunk_size=5, bias=bias)[1]))(hidden)
    assert np.isfinite(np.asarray(g)).all()


def test_chunked_stats_and_implied_rewards_under_shard_map_and_pmap():
    from tests.losses.harness import check_shard_map_rowwise

    rng = np.random.default_rng(5)
    hidden = jnp.asarray(rng.standard_normal((8, 3, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, (8, 3)))
    check_shard_map_rowwise(lambda h, t: L.chunked_soft_q_stats(h, w, t, chunk_size=4), (hidden, targets))
    logits, targets, mask = make_tokens(rng, b=8, t=5, v=6)
    check_shard_map_rowwise(lambda lg, t, m: L.implied_rewards(lg, t, m, gamma=0.9), (logits, targets, mask))
