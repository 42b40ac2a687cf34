"""layers.dense: x @ w with a JVP that lays out the weight gradient for the backend. Its value, both derivative
modes and the float64 finite-difference check, against plain ``x @ w``; for both branches (d <= f: the
transposed-input form; d > f: the plain form) and with either argument held fixed; dense_many (one input, several
weights sharing the transposed input) the same way, with weights of both branches and a frozen one among them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_irl.models.layers import dense, dense_many
from tests.losses import harness


def _args(d, f, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((8, 5, d)), jnp.float32),
            jnp.asarray(rng.standard_normal((d, f)) * 0.3, jnp.float32),
            jnp.asarray(rng.standard_normal((8, 5, f)), jnp.float32))


@pytest.mark.parametrize("d,f", [(6, 9), (9, 6), (7, 7)])
def test_dense_equals_matmul_in_value_and_both_derivative_modes(d, f):
    x, w, ct = _args(d, f)
    np.testing.assert_array_equal(np.asarray(dense(x, w)), np.asarray(x @ w))
    loss = lambda fn: lambda x, w: jnp.sum(jnp.tanh(fn(x, w)) * ct)  # noqa: E731
    got = jax.grad(loss(dense), argnums=(0, 1))(x, w)
    want = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, w)
    harness.assert_tree_close(got, want, rtol=1e-5, atol=1e-5)
    # Only one argument differentiated (a frozen weight, or a fixed input): the other tangent is a symbolic zero.
    np.testing.assert_allclose(jax.grad(loss(dense), argnums=1)(x, w), want[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.grad(loss(dense), argnums=0)(x, w), want[0], rtol=1e-5, atol=1e-5)
    dx, dw = jnp.ones_like(x) * 0.1, jnp.ones_like(w) * -0.2
    _, jvp_got = jax.jvp(dense, (x, w), (dx, dw))
    _, jvp_want = jax.jvp(jnp.matmul, (x, w), (dx, dw))
    np.testing.assert_allclose(jvp_got, jvp_want, rtol=1e-5, atol=1e-5)
    harness.check_gradients(lambda x, w: jnp.sum(jnp.sin(dense(x, w))), x[:2], w)  # float64, order 2, fwd + rev
    harness.check_jit_matches_eager(jax.grad(loss(dense), argnums=(0, 1)), x, w)


def test_dense_gradients_sharded_over_the_batch():
    x, w, ct = _args(6, 10)

    def grads(x, ct):
        return jax.grad(lambda x, w: jnp.sum(dense(x, w) * ct), argnums=(0, 1))(x, w)

    got = harness.check_sharded_jit(grads, (x, ct), batch_argnums=(0, 1))
    want = jax.grad(lambda x, w: jnp.sum((x @ w) * ct), argnums=(0, 1))(x, w)
    harness.assert_tree_close(got, want, rtol=1e-5, atol=1e-5)


def test_dense_in_bfloat16_keeps_the_dtypes():
    x, w, ct = _args(6, 9)
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    gx, gw = jax.grad(lambda x, w: jnp.sum(dense(x, w).astype(jnp.float32) * ct), argnums=(0, 1))(xb, wb)
    assert gx.dtype == gw.dtype == jnp.bfloat16
    want = jax.grad(lambda w: jnp.sum((x @ w) * ct))(w)
    np.testing.assert_allclose(np.asarray(gw, np.float32), want, rtol=3e-2, atol=3e-1)


def test_dense_many_equals_separate_matmuls_in_value_and_both_derivative_modes():
    x, _, _ = _args(6, 9)
    rng = np.random.default_rng(3)
    ws = tuple(jnp.asarray(rng.standard_normal((6, f)) * 0.3, jnp.float32) for f in (9, 4, 6))  # d <= f, d > f, d = f
    cts = tuple(jnp.asarray(rng.standard_normal((8, 5, w.shape[1])), jnp.float32) for w in ws)
    for got, w in zip(dense_many(x, ws), ws):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(x @ w))

    def loss(fn):
        return lambda x, ws: sum(jnp.sum(jnp.tanh(y) * ct) for y, ct in zip(fn(x, ws), cts))

    separate = lambda x, ws: tuple(x @ w for w in ws)  # noqa: E731
    want = jax.grad(loss(separate), argnums=(0, 1))(x, ws)
    harness.assert_tree_close(jax.grad(loss(dense_many), argnums=(0, 1))(x, ws), want, rtol=1e-5, atol=1e-5)
    # One weight frozen (a symbolic-zero tangent among differentiated ones), and the input held fixed.
    frozen = lambda x, w0, w2: loss(dense_many)(x, (w0, jax.lax.stop_gradient(ws[1]), w2))  # noqa: E731
    g = jax.grad(frozen, argnums=(0, 1, 2))(x, ws[0], ws[2])
    harness.assert_tree_close(g, (want[0], want[1][0], want[1][2]), rtol=1e-5, atol=1e-5)
    harness.assert_tree_close(jax.grad(loss(dense_many), argnums=1)(x, ws), want[1], rtol=1e-5, atol=1e-5)
    tangents = (jnp.ones_like(x) * 0.1, tuple(jnp.ones_like(w) * -0.2 for w in ws))
    harness.assert_tree_close(jax.jvp(dense_many, (x, ws), tangents)[1], jax.jvp(separate, (x, ws), tangents)[1],
                              rtol=1e-5, atol=1e-5)
    harness.check_gradients(lambda x, a, b: sum(jnp.sum(jnp.sin(y)) for y in dense_many(x, (a, b))), x[:2], ws[0],
                            ws[1])  # float64, order 2, fwd + rev
    harness.check_jit_matches_eager(jax.grad(loss(dense_many), argnums=(0, 1)), x, ws)
