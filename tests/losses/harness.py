"""Generic checks every loss goes through: jit == eager, gradients, and 8-device sharding."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

N_DEV = 8


def make_tokens(rng, b=4, t=7, v=11, prompt_max=2, scale=2.0, dtype=np.float32):
    """Random (logits [B,T,V], targets [B,T], mask [B,T]): a prompt prefix and padding tail are uncounted,
    every row has >= 1 counted token, and padding targets hold -100 (Hugging Face's ignore id)."""
    logits = (rng.standard_normal((b, t, v)) * scale).astype(dtype)
    targets = rng.integers(0, v, (b, t))
    mask = np.zeros((b, t), np.float32)
    for i in range(b):
        start = int(rng.integers(0, prompt_max + 1))
        end = int(rng.integers(start + 1, t + 1))
        mask[i, start:end] = 1.0
        targets[i, end:] = -100
    return logits, targets.astype(np.int32), mask


def assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


def check_jit_matches_eager(fn, *args):
    eager = fn(*args)
    jitted = jax.jit(fn)(*args)
    assert_tree_close(eager, jitted, rtol=1e-6, atol=1e-6)
    return eager


def check_gradients(scalar_fn, *float_args, order=2):
    """Finite-difference check of d(scalar_fn)/d(float_args) in float64."""
    with jax.enable_x64(True):
        args64 = tuple(jnp.asarray(np.asarray(a, np.float64)) for a in float_args)
        # jitted: one program per derivative instead of one dispatch per primitive per finite-difference probe
        check_grads(jax.jit(scalar_fn), args64, order=order, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-6)


def batch_mesh():
    return jax.make_mesh((N_DEV,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_sharded_jit(fn, args, batch_argnums):
    """fn under jit with the batch axis of args[batch_argnums] sharded over 8 devices == fn on one device."""
    mesh = batch_mesh()
    placed = []
    for i, a in enumerate(args):
        spec = P("data") if i in batch_argnums else P()
        placed.append(jax.device_put(a, NamedSharding(mesh, spec)))
    expected = jax.jit(fn)(*args)
    got = jax.jit(fn)(*placed)
    assert_tree_close(expected, got, rtol=1e-5, atol=1e-6)
    return got


def check_shard_map_psum(local_loss, args, batch_argnums, expected, reduce="psum"):
    """shard_map of local_loss over the batch axis, reduced with psum/pmean, == expected; and pmap likewise.

    local_loss(*shard_args) must return a scalar whose psum (or pmean) over shards is the global loss.
    """
    mesh = batch_mesh()
    specs = tuple(P("data") if i in batch_argnums else P() for i in range(len(args)))
    collective = jax.lax.psum if reduce == "psum" else jax.lax.pmean

    def body(*a):
        return collective(local_loss(*a), "data")

    got = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P()))(*args)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)

    def split(a, i):
        a = np.asarray(a)
        return a.reshape((N_DEV, a.shape[0] // N_DEV) + a.shape[1:]) if i in batch_argnums else a

    in_axes = tuple(0 if i in batch_argnums else None for i in range(len(args)))
    pm = jax.pmap(body, axis_name="data", in_axes=in_axes)(*(split(a, i) for i, a in enumerate(args)))
    np.testing.assert_allclose(np.asarray(pm), np.full(N_DEV, np.asarray(expected)), rtol=1e-5, atol=1e-6)


def check_shard_map_rowwise(fn, args):
    """A per-row transform under shard_map (rows split over 8 devices) and pmap == on one device."""
    mesh = batch_mesh()
    specs = tuple(P("data") for _ in args)
    expected = fn(*args)
    got = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P("data")))(*args)
    assert_tree_close(expected, got)
    split = [np.asarray(a).reshape((N_DEV, -1) + np.shape(a)[1:]) for a in args]
    pm = jax.pmap(fn)(*split)
    assert_tree_close(expected, jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), pm))
