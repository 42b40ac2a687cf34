"""The attention implementations of a cache-free forward: 'xla' (jax.nn.dot_product_attention) and the 'einsum'
path's causal query blocks against the full score matrix, values and gradients, sharded; 'auto' on CPU is the
'einsum' path exactly; 'cudnn' is refused where it cannot run, with the config field named."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses
from jax_irl.models import transformer
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer, query_blocks
from tests.losses import harness

VOCAB = 40


def _model(attention, family="llama", **kw):
    cfg = TransformerConfig.for_family(family, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                       num_kv_heads=kw.pop("num_kv_heads", 2 if family != "gpt2" else 4),
                                       intermediate_size=48, max_position_embeddings=64, attention=attention, **kw)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def _rows(b=8, t=10):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, (b, t))
    mask = np.ones((b, t), np.int32)
    mask[1, :4] = 0  # left padding: fully masked query rows at the start
    mask[2, -3:] = 0  # right padding
    mask[5, :t - 1] = 0  # a single real token
    return jnp.asarray(ids), jnp.asarray(mask)


def _same_params(src, dst):
    nnx.update(dst, nnx.state(src, nnx.Param))
    return dst


def test_query_blocks_split_the_length_evenly():
    assert query_blocks(255, 64) == [(0, 64), (64, 128), (128, 191), (191, 255)]
    assert query_blocks(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert query_blocks(10, 0) == query_blocks(10, 64) == query_blocks(10, 10) == [(0, 10)]
    assert query_blocks(1, 3) == [(0, 1)]


def _plain_attend(qg, k, v, allowed, dtype):
    """The attention of transformer._attend written plainly, for autodiff: scores, masked softmax, weighted sum."""
    scores = jnp.einsum("bkgth,bksh->bkgts", qg, k, preferred_element_type=jnp.float32) / np.sqrt(qg.shape[-1])
    probs = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("bkgts,bksh->bkgth", probs.astype(dtype), v)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attend_jvp_equals_autodiff_of_the_plain_attention(dtype):
    """_attend's own JVP (FlashAttention-2's rowsum(dO * O) in reverse mode) against autodiff of the plain
    computation: value, gradients, forward mode, a second-order product; masked keys and a query with none."""
    rng = np.random.default_rng(0)
    b, kv, g, t, s, hd = 2, 2, 3, 5, 7, 4
    qg, k, v, ct = (jnp.asarray(rng.standard_normal(shape), dtype)
                    for shape in ((b, kv, g, t, hd), (b, kv, s, hd), (b, kv, s, hd), (b, kv, g, t, hd)))
    allowed = jnp.asarray(rng.random((b, 1, 1, t, s)) > 0.4).at[..., 0].set(True).at[1, :, :, 2].set(False)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)

    def fns(attend):
        fwd = lambda q, k, v: attend(q, k, v, allowed, dtype)  # noqa: E731
        loss = lambda q, k, v: jnp.sum(fwd(q, k, v).astype(jnp.float32) * ct.astype(jnp.float32))  # noqa: E731
        return fwd, loss

    (fwd, loss), (plain_fwd, plain_loss) = fns(transformer._attend), fns(_plain_attend)
    np.testing.assert_array_equal(np.asarray(fwd(qg, k, v), np.float32), np.asarray(plain_fwd(qg, k, v), np.float32))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(qg, k, v)
    harness.assert_tree_close(jax.tree.map(lambda a: a.astype(jnp.float32), grads),
                              jax.tree.map(lambda a: a.astype(jnp.float32),
                                           jax.grad(plain_loss, argnums=(0, 1, 2))(qg, k, v)), **tol)
    assert all(a.dtype == dtype for a in grads)
    tangents = (ct, k[:, :, ::-1], v * 0.5)
    harness.assert_tree_close(jax.jvp(fwd, (qg, k, v), tangents)[1].astype(jnp.float32),
                              jax.jvp(plain_fwd, (qg, k, v), tangents)[1].astype(jnp.float32), **tol)
    hvp = lambda ls: jax.jvp(jax.grad(lambda q: ls(q, k, v)), (qg,), (ct,))[1].astype(jnp.float32)  # noqa: E731
    np.testing.assert_allclose(np.asarray(hvp(loss)), np.asarray(hvp(plain_loss)), **tol)


@pytest.mark.parametrize("other", ["xla", "query_blocks"])
@pytest.mark.parametrize("family,kv", [("llama", 2), ("llama", 1), ("gemma", 4), ("gpt2", 4)])
def test_xla_attention_and_query_blocks_equal_the_full_score_matrix_values_and_gradients(family, kv, other):
    # The reference: the 'einsum' path over the whole [T, T] score matrix. 'query_blocks' is the same path in
    # blocks of 3 queries (4 blocks over the 9 input positions of the loss, 4 over the 10 of the forward).
    ref = _model("einsum", family, num_kv_heads=kv, attention_block=0)
    if other == "xla":
        fused = _same_params(ref, _model("xla", family, num_kv_heads=kv))
    else:
        fused = _same_params(ref, _model("einsum", family, num_kv_heads=kv, attention_block=3))
    ids, mask = _rows()
    real = np.asarray(mask).astype(bool)
    forward = nnx.jit(lambda m: m(ids, attention_mask=mask).logits)
    a, b = forward(ref), forward(fused)
    assert np.all(np.isfinite(np.asarray(b)))  # padded query rows too
    np.testing.assert_allclose(np.asarray(b)[real], np.asarray(a)[real], rtol=1e-5, atol=1e-5)

    # Targets count where their input position is real: a query with no key to attend to (row 5's last input,
    # after all-padding) has no defined output, and the implementations differ there (the full matrix averages
    # every value, a query block its own keys' values, a fused kernel may return zeros).
    target_mask = mask[:, 1:] * mask[:, :-1]
    assert int(target_mask.sum()) < int(mask[:, 1:].sum())

    def loss(model):
        logits = model(ids[:, :-1], attention_mask=mask[:, :-1]).logits
        return losses.mle_loss(logits, ids[:, 1:], target_mask)[0]

    grad = nnx.jit(nnx.grad(loss))
    ga, gb = grad(ref), grad(fused)
    flat_a, flat_b = jax.tree.leaves(nnx.state(ga)), jax.tree.leaves(nnx.state(gb))
    assert len(flat_a) == len(flat_b) > 0
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attention,block", [("xla", 64), ("einsum", 3)])
def test_xla_attention_and_query_blocks_under_jit_and_sharded_jit(attention, block):
    model = _model(attention, attention_block=block)
    graphdef, state = nnx.split(model)
    ids, mask = _rows()

    def fn(ids, mask):
        return nnx.merge(graphdef, state)(ids, attention_mask=mask).logits

    harness.check_jit_matches_eager(fn, ids, mask)
    harness.check_sharded_jit(fn, (ids, mask), batch_argnums=(0, 1))


def test_auto_is_the_einsum_path_off_a_gpu_and_decoding_ignores_the_choice():
    assert jax.default_backend() == "cpu"
    ref = _model("einsum")
    auto = _same_params(ref, _model("auto"))
    ids, mask = _rows()
    np.testing.assert_array_equal(np.asarray(auto(ids, attention_mask=mask).logits),
                                  np.asarray(ref(ids, attention_mask=mask).logits))
    # With a KV cache every choice takes the cached path: 'xla' decodes exactly like 'einsum'.
    fused = _same_params(ref, _model("xla"))
    ref_out, fused_out = (m(ids[:, :6], attention_mask=mask[:, :6], cache=m.init_cache(8, 12), cache_index=0).logits
                          for m in (ref, fused))
    np.testing.assert_array_equal(np.asarray(fused_out), np.asarray(ref_out))


def test_cudnn_is_refused_where_it_cannot_run():
    with pytest.raises(ValueError, match="attention must be one of"):
        _model("flash")
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="attention_block must be an int >= 0"):
            _model("einsum", attention_block=bad)
    with pytest.raises(ValueError, match="attention='cudnn' needs dtype='bfloat16'"):
        _model("cudnn")
    with pytest.raises(ValueError, match="head_dim a multiple of 8"):
        _model("cudnn", dtype="bfloat16", head_dim=12)
    model = _model("cudnn", dtype="bfloat16")
    ids, mask = _rows()
    with pytest.raises(ValueError, match="attention='cudnn' runs on a GPU backend only; this one is 'cpu'"):
        model(ids, attention_mask=mask)
    # 'auto' with bfloat16 on CPU runs (the einsum path) and matches 'einsum' in bfloat16 exactly.
    bf16 = dataclasses.replace(model.cfg, attention="einsum")
    ref = _same_params(model, Transformer(bf16, rngs=nnx.Rngs(0)))
    auto = _same_params(model, Transformer(dataclasses.replace(bf16, attention="auto"), rngs=nnx.Rngs(0)))
    np.testing.assert_array_equal(np.asarray(auto(ids, attention_mask=mask).logits, np.float32),
                                  np.asarray(ref(ids, attention_mask=mask).logits, np.float32))


def test_experiment_base_config_and_hf_import_take_the_attention_choice(tmp_path):
    from experiments import lm_base
    from jax_irl.models import hf

    with pytest.raises(ValueError, match="attention must be one of"):
        lm_base.BaseConfig(attention="flash")
    assert lm_base.BaseConfig(attention="auto").attention == "auto"
    model = _model("einsum")
    hf.save_pretrained(model, str(tmp_path))
    loaded = hf.from_pretrained(str(tmp_path), attention="xla")
    assert loaded.cfg.attention == "xla" and hf.from_pretrained(str(tmp_path)).cfg.attention == "einsum"
    ids, mask = _rows()
    np.testing.assert_allclose(np.asarray(loaded(ids, attention_mask=mask).logits)[np.asarray(mask) == 1],
                               np.asarray(model(ids, attention_mask=mask).logits)[np.asarray(mask) == 1],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,kv", [("llama", 2), ("llama", 1), ("gemma", 4), ("gpt2", 4)])
def test_a_window_equals_those_positions_of_the_full_forward_values_and_gradients(family, kv):
    """Transformer(window=(start, W)): the last block, the final norm and the unembedding on W positions per row
    give the full forward's hidden states and logits there, and the same gradients of a loss on them; positions
    past the row's end repeat the last one."""
    from jax_irl.models.transformer import take_rows

    model = _model("einsum", family, num_kv_heads=kv, attention_block=4)
    ids, mask = _rows()
    start = jnp.asarray([0, 4, 2, 6, 3, 9, 1, 7], jnp.int32)  # row 7's window runs past the end (positions 7-11)
    width = 5
    rows = jnp.minimum(start[:, None] + jnp.arange(width)[None], ids.shape[1] - 1)
    real = np.asarray(take_rows(mask, rows)).astype(bool)  # queries with a key to attend to
    full = model(ids, attention_mask=mask)
    win = model(ids, attention_mask=mask, window=(start, width))
    assert win.hidden.shape == (8, width, 32) and win.logits.shape == (8, width, VOCAB) and win.cache is None
    np.testing.assert_allclose(np.asarray(win.logits)[real], np.asarray(take_rows(full.logits, rows))[real],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(win.hidden)[real], np.asarray(take_rows(full.hidden, rows))[real],
                               rtol=1e-5, atol=1e-5)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=(8, width, VOCAB)) * real[..., None], jnp.float32)

    def loss(m, windowed):
        out = m(ids, attention_mask=mask, window=(start, width) if windowed else None).logits
        return jnp.sum((out if windowed else take_rows(out, rows)) * weights)

    g_full = nnx.jit(nnx.grad(lambda m: loss(m, False)))(model)
    g_win = nnx.jit(nnx.grad(lambda m: loss(m, True)))(model)
    for a, b in zip(jax.tree.leaves(nnx.state(g_win)), jax.tree.leaves(nnx.state(g_full))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-6)  # gradients of order 1-10
    if (family, kv) != ("llama", 2):
        return
    # Under jit and sharded over the batch (one family: the path is the same for all).
    graphdef, state = nnx.split(model)

    def fn(ids, mask, start):
        return nnx.merge(graphdef, state)(ids, attention_mask=mask, window=(start, width)).logits

    harness.check_jit_matches_eager(fn, ids, mask, start)
    harness.check_sharded_jit(fn, (ids, mask, start), batch_argnums=(0, 1, 2))


def test_a_window_refuses_bad_input():
    model = _model("einsum")
    ids, mask = _rows()
    start = jnp.zeros(8, jnp.int32)
    with pytest.raises(ValueError, match="window width must be a positive int; got 0"):
        model(ids, attention_mask=mask, window=(start, 0))
    with pytest.raises(ValueError, match=r"window start must have shape \[B\] = \(8,\); got \(3,\)"):
        model(ids, attention_mask=mask, window=(start[:3], 4))
    with pytest.raises(ValueError, match="window is for cache-free forwards"):
        model(ids, attention_mask=mask, cache=model.init_cache(8, 12), cache_index=0, window=(start, 4))
