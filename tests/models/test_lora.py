"""LoRA adapters: the adapted forward, training only the adapters, merge, the disabled reference, adapter-only
checkpoints with exact resume, sharding, export (merged to transformers, adapters to peft), bad input."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses, parallel, stages, train
from jax_irl.models import heads, lora
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

ALL = ("attn", "mlp", "embed")


def _cfg(**kw):
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                tie_embeddings=False)
    base.update(kw)
    return TransformerConfig.for_family("llama", **base)


def _tokens(b=3, t=9, seed=1):
    return np.random.default_rng(seed).integers(0, 64, (b, t)).astype(np.int32)


def _perturbed(model, scale=0.1, seed=0):
    """Move every adapter off its zero start (both a and b), as training would."""
    for number, (_, adapter) in enumerate(lora.adapters(model)):
        k = jax.random.fold_in(jax.random.PRNGKey(seed), number)
        adapter.a[...] = jax.random.normal(k, adapter.a.shape) * scale
        adapter.b[...] = jax.random.normal(jax.random.fold_in(k, 1), adapter.b.shape) * scale
    return model


def _reference_delta(model, adapted, tokens):
    """An independent forward: the base model with every targeted weight replaced by W + (alpha/r) a b, built
    in numpy from the adapter arrays (not through lora.merge)."""
    cfg = lora.adapted_config(adapted)
    weights = nnx.state(model, nnx.Param)
    plain = Transformer(model.cfg, rngs=nnx.Rngs(0))
    nnx.update(plain, weights)
    for i, (blk, ablk) in enumerate(zip(plain.layers, adapted.layers)):
        for owner, aowner in ((blk.attn, ablk.attn), (blk.mlp, ablk.mlp)):
            for name, adapter in (getattr(aowner, "lora", None) or {}).items():
                w = getattr(owner, name)
                extra = cfg.alpha / cfg.rank * np.asarray(adapter.a[...]) @ np.asarray(adapter.b[...])
                w[...] = jnp.asarray(np.asarray(w[...]) + extra.reshape(w.shape))
    if getattr(adapted, "embed_lora", None) is not None:
        ad = adapted.embed_lora
        plain.embed[...] = plain.embed[...] + cfg.alpha / cfg.rank * np.asarray(ad.a[...]) @ np.asarray(ad.b[...])
    return plain(tokens).logits


def test_config_resolves_targets_and_refuses_bad_values():
    assert lora.LoraConfig(rank=4, targets="attn,down").modules() == ("q", "k", "v", "o", "down")
    assert lora.LoraConfig(rank=4, targets=("mlp", "embed")).modules() == ("gate", "up", "down", "embed")
    assert lora.LoraConfig(rank=8, alpha=16).scale == 2.0
    for bad, match in [(dict(rank=-1), "rank must be an int >= 0"), (dict(rank=2.5), "rank must be an int"),
                       (dict(rank=4, alpha=0), "alpha must be a finite number > 0"),
                       (dict(rank=4, alpha=float("nan")), "alpha"), (dict(rank=4, dropout=1.0), "dropout"),
                       (dict(rank=4, targets=("attn", "qproj")), "unknown lora target 'qproj'"),
                       (dict(rank=4, targets=()), "at least one")]:
        with pytest.raises(ValueError, match=match):
            lora.LoraConfig(**bad)


def test_at_init_equals_the_base_exactly_and_shares_its_arrays():
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))
    tokens = _tokens()
    base = model(tokens).logits
    adapted = lora.apply(model, lora.LoraConfig(rank=4, targets=ALL), seed=3)
    np.testing.assert_array_equal(np.asarray(adapted(tokens).logits), np.asarray(base))  # B = 0 (embed: A = 0)
    assert adapted.layers[0].attn.q.get_value() is model.layers[0].attn.q.get_value()  # the base is not copied
    assert not lora.has_adapters(model)  # the input model is unchanged
    counts = lora.count(adapted)
    d, f, kvd, r, L, V = 32, 48, 2 * 8, 4, 2, 64
    per_layer = r * ((d + d) * 2 + (d + kvd) * 2 + 2 * (d + f) + (f + d))  # q, o; k, v; gate, up; down
    assert counts["adapter"] == L * per_layer + r * (V + d)
    assert counts["base"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("targets", [ALL, ("q", "v"), ("down",), ("embed",)])
def test_adapted_forward_equals_the_weights_plus_the_low_rank_product(targets):
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))
    tokens = _tokens()
    adapted = _perturbed(lora.apply(model, lora.LoraConfig(rank=3, alpha=6.0, targets=targets), seed=0))
    got = adapted(tokens).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(_reference_delta(model, adapted, tokens)), atol=2e-5)
    merged = lora.merge(adapted)
    assert not lora.has_adapters(merged) and lora.has_adapters(adapted)
    np.testing.assert_allclose(np.asarray(merged(tokens).logits), np.asarray(got), atol=1e-6)
    # the KV-cache decoding path carries the adapters too
    cache = adapted.init_cache(tokens.shape[0], tokens.shape[1])
    step_logits = []
    for t in range(tokens.shape[1]):
        out = adapted(tokens[:, t:t + 1], positions=jnp.full((tokens.shape[0], 1), t), cache=cache, cache_index=t)
        cache = out.cache
        step_logits.append(out.logits[:, 0])
    np.testing.assert_allclose(np.stack(step_logits, 1), np.asarray(got), atol=2e-5)


def test_disabled_view_is_the_base_and_equals_a_separately_loaded_reference(tmp_path):
    pytest.importorskip("safetensors")
    from jax_irl.models import hf

    model = Transformer(_cfg(), rngs=nnx.Rngs(5))
    hf.save_pretrained(model, str(tmp_path / "base"))
    reference = hf.from_pretrained(str(tmp_path / "base"))
    adapted = _perturbed(lora.apply(model, lora.LoraConfig(rank=4, targets=ALL)))
    tokens = _tokens()
    off = lora.disabled(adapted)
    np.testing.assert_allclose(np.asarray(off(tokens).logits), np.asarray(reference(tokens).logits), atol=1e-6)
    assert off.layers[1].mlp.up.get_value() is adapted.layers[1].mlp.up.get_value()  # one set of base weights
    assert float(jnp.abs(adapted(tokens).logits - off(tokens).logits).max()) > 1e-3  # the adapters still act


def _batch(seed=0, rows=8, t=10):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 64, (rows, t)).astype(np.int32)
    return {"tokens": tokens, "mask": np.ones((rows, t - 1), np.float32)}


def _mle(model, batch, rng):
    logits = model(batch["tokens"][:, :-1]).logits
    return losses.iqlearn_loss(logits, batch["tokens"][:, 1:], batch["mask"], gamma=1.0, td_weight=0.0)


def _train(model, shape=(1, 1, 1), devices=None, steps=6, lr=1e-2):
    mesh = parallel.make_mesh(parallel.MeshConfig(*shape), devices)
    trainer = train.Trainer(model, _mle, train.OptimizerConfig(learning_rate=lr), mesh)
    state = trainer.init_state(0)
    curve = []
    for step in range(steps):
        state, metrics = trainer.step(state, parallel.global_batch(_batch(step % 2), mesh))
        curve.append(float(metrics["loss"]))
    return np.array(curve), state, trainer


def test_training_changes_only_the_adapters_and_keeps_optimizer_state_for_them_alone():
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    adapted = lora.apply(model, lora.LoraConfig(rank=4, targets=ALL))
    curve, state, trainer = _train(adapted, devices=jax.devices()[:1])
    assert curve[-1] < curve[0] - 0.05  # it learns through the adapters alone
    counts = lora.count(adapted)
    trained = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    assert trained == counts["adapter"]
    moments = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.opt_state) if x.ndim)
    assert moments == 2 * counts["adapter"]  # Adam's mu and nu, for the adapters only
    after = trainer.model(state)
    frozen = nnx.state(lora.merge(lora.disabled(after)), nnx.Param)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), frozen, before)  # bitwise
    b_norm = sum(float(jnp.sum(jnp.abs(ad.b[...]))) for _, ad in lora.adapters(after))
    assert b_norm > 0  # B left zero


def test_reward_model_trains_the_backbone_adapters_and_the_full_head():
    backbone = lora.apply(Transformer(_cfg(), rngs=nnx.Rngs(0)), lora.LoraConfig(rank=2, targets=("attn",)))
    rm = heads.RewardModel(backbone, num_heads=2, rngs=nnx.Rngs(1))
    trainable = nnx.state(rm, lora.trainable(rm))
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
    assert any(p.startswith("head.") for p in paths)
    assert all(p.startswith("head.") or ".lora." in p for p in paths), sorted(paths)[:5]
    head = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(rm.head, nnx.Param)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable)) == lora.count(rm)["adapter"] + head


def test_same_loss_curve_on_one_device_and_on_8_device_meshes():
    make = lambda: lora.apply(Transformer(_cfg(num_heads=8, num_kv_heads=8), rngs=nnx.Rngs(0)),  # noqa: E731
                              lora.LoraConfig(rank=4, targets=ALL))
    base, _, _ = _train(make(), devices=jax.devices()[:1])
    for shape in [(2, 2, 2), (1, 2, 4)]:
        curve, state, trainer = _train(make(), shape=shape)
        np.testing.assert_allclose(curve, base, atol=1e-5, err_msg=str(shape))
    # the frozen base is laid out by its logical names on the mesh, as a fully trained model's params are
    q = trainer.rest["layers"][0]["attn"]["q"].get_value()
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


def test_dropout_acts_in_training_only():
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))
    plain = _perturbed(lora.apply(model, lora.LoraConfig(rank=4, targets=ALL)))
    dropped = _perturbed(lora.apply(model, lora.LoraConfig(rank=4, dropout=0.5, targets=ALL)))
    tokens = _tokens()
    np.testing.assert_array_equal(np.asarray(dropped(tokens).logits), np.asarray(plain(tokens).logits))
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    losses_seen = []
    for m in (plain, dropped):
        trainer = train.Trainer(m, _mle, train.OptimizerConfig(learning_rate=0.0), mesh)
        _, metrics = trainer.step(trainer.init_state(0), parallel.global_batch(_batch(), mesh))
        losses_seen.append(float(metrics["loss"]))
    assert abs(losses_seen[0] - losses_seen[1]) > 1e-4  # dropout changed the training loss
    # and the eval loss of the dropout model equals the plain one (no key outside the step)
    np.testing.assert_allclose(float(_mle(dropped, _batch(), None)[0]), losses_seen[0], rtol=1e-5)


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_adapter_only_checkpoints_resume_exactly(tmp_path):
    cfg = _cfg(vocab_size=1024, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=4)
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])

    def batch_fn(position):
        return _batch(position % 3)

    def run(folder, steps):
        model = lora.apply(Transformer(cfg, rngs=nnx.Rngs(0)), lora.LoraConfig(rank=2, targets=("attn", "mlp")))
        stage = stages.StageConfig(steps=steps, batch_size=8, optimizer=train.OptimizerConfig(learning_rate=1e-2))
        run = stages.Run(str(folder), mesh, stages.RunSettings(save_every=2), fingerprint={"test": "lora"},
                         resumable_keys=("stage.steps",), progress=False)
        return model, stages.run_stage(run, model, _mle, stage, batch_fn)

    model, straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    _, resumed = run(tmp_path / "b", 4)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 straight.state.params, resumed.state.params)
    counts = lora.count(model)
    step_dir = os.path.join(tmp_path, "a", "checkpoints", "4")
    size = _dir_bytes(step_dir)
    adapter_bytes = 3 * 4 * counts["adapter"]  # float32 adapters and Adam's two moments
    # Orbax's metadata adds a few hundred KiB (it varies by run); a checkpoint holding the base at all would
    # exceed the base's own float32 bytes (833 KiB here), which this one stays well below.
    assert adapter_bytes <= size < 4 * counts["base"], (size, adapter_bytes, 4 * counts["base"])


def test_bad_input_gets_clear_errors():
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rank is 0"):
        lora.apply(model, lora.LoraConfig(rank=0))
    with pytest.raises(ValueError, match=r"rank 17 exceeds the 'k' projection's smaller side \(32 x 16\)"):
        lora.apply(model, lora.LoraConfig(rank=17, targets=("k",)))
    tied = Transformer(_cfg(tie_embeddings=True), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tied embeddings"):
        lora.apply(tied, lora.LoraConfig(rank=2, targets=("embed",)))
    plain_mlp = Transformer(_cfg(mlp="plain", activation="gelu"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no 'gate' projection"):
        lora.apply(plain_mlp, lora.LoraConfig(rank=2, targets=("mlp",)))
    adapted = lora.apply(model, lora.LoraConfig(rank=2))
    with pytest.raises(ValueError, match="has LoRA adapters already"):
        lora.apply(adapted, lora.LoraConfig(rank=2))
    merged = lora.merge(adapted)
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        lora.merge(merged)
    with pytest.raises(ValueError, match="no LoRA adapters to disable"):
        lora.disabled(model)
    with pytest.raises(TypeError, match="LoraConfig"):
        lora.apply(model, {"rank": 2})


def test_exports_merged_weights_to_transformers_and_adapters_to_peft(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from jax_irl.models import hf

    model = Transformer(_cfg(), rngs=nnx.Rngs(2))
    adapted = _perturbed(lora.apply(model, lora.LoraConfig(rank=4, alpha=8.0, targets=ALL)), seed=4)
    tokens = _tokens()
    expected = np.asarray(adapted(tokens).logits)
    with pytest.raises(ValueError, match="save lora.merge"):
        hf.save_pretrained(adapted, str(tmp_path / "refused"))
    hf.save_pretrained(lora.merge(adapted), str(tmp_path / "merged"))
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        got = merged(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)

    hf.save_pretrained(model, str(tmp_path / "base"))
    hf.save_peft_adapter(adapted, str(tmp_path / "adapter"), base_model_name_or_path=str(tmp_path / "base"))
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).eval()
    with_adapter = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        got = with_adapter(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    gpt2 = Transformer(TransformerConfig.for_family("gpt2", vocab_size=64, hidden_size=32, num_layers=1,
                                                    num_heads=4, intermediate_size=64), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="fused c_attn"):
        hf.save_peft_adapter(lora.apply(gpt2, lora.LoraConfig(rank=2, targets=("attn",))), str(tmp_path / "g"))


@pytest.mark.parametrize("bits", ["int8", "int4"])
def test_quantized_base_is_within_half_a_step_and_trains_adapters_only(bits):
    cfg = _cfg(hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    adapted = lora.apply(model, lora.LoraConfig(rank=4, targets=("attn", "mlp"), quantize=bits))
    assert lora.is_quantized(adapted) and not lora.is_quantized(model)
    want = jnp.int8 if bits == "int8" else jnp.int4
    for blk, qblk in zip(model.layers, adapted.layers):
        for owner, qowner, names in ((blk.attn, qblk.attn, "qkvo"), (blk.mlp, qblk.mlp, ("gate", "up", "down"))):
            for n in names:
                assert getattr(qowner, n)[...].dtype == want
                w = np.asarray(getattr(owner, n)[...], np.float32)
                deq = np.asarray(lora.weight(qowner, n, jnp.float32))
                scale = np.asarray(getattr(qowner, n + "_qscale")[...])
                d_out = scale.shape[-1]
                step = np.broadcast_to(scale, (scale.shape[0], w.size // d_out // scale.shape[0], d_out)).reshape(w.shape)
                assert np.all(np.abs(deq - w) <= step / 2 + 1e-7), n  # round to nearest: within half a step
                if bits == "int4":
                    assert scale.shape[0] == w.size // d_out // lora.INT4_GROUP  # one scale per 64 input rows
    frozen_before = jax.tree.map(np.asarray, nnx.state(adapted, nnx.Not(nnx.LoRAParam)))
    curve, state, trainer = _train(adapted, devices=jax.devices()[:1])
    assert curve[-1] < curve[0] - 0.05
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)) == lora.count(adapted)["adapter"]
    after = trainer.model(state)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 nnx.state(after, nnx.Not(nnx.LoRAParam)), frozen_before)  # the integers and scales, bitwise
    merged = lora.merge(after)
    assert not lora.is_quantized(merged) and merged.layers[0].attn.q[...].dtype == jnp.float32
    tokens = _tokens()
    np.testing.assert_allclose(np.asarray(merged(tokens).logits), np.asarray(after(tokens).logits), atol=1e-6)


def test_quantize_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="quantize must be one of"):
        lora.LoraConfig(rank=4, quantize="nf3")
    with pytest.raises(ValueError, match="needs rank > 0"):
        lora.LoraConfig(rank=0, quantize="int8")
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))  # hidden 32: not a multiple of int4's 64-row groups
    with pytest.raises(ValueError, match="do not split into groups of 64; use quantize='int8'"):
        lora.apply(model, lora.LoraConfig(rank=2, quantize="int4"))


@pytest.mark.parametrize("policy,dropout", [("full", 0.3), ("dots", 0.0)])
def test_remat_gives_the_same_adapter_gradients(policy, dropout):
    tokens = _tokens(b=4, t=12)

    def grads(remat):
        model = lora.apply(Transformer(_cfg(remat=remat), rngs=nnx.Rngs(0)),
                           lora.LoraConfig(rank=4, dropout=dropout, targets=ALL))
        _perturbed(model)
        graphdef, params, rest = nnx.split(model, lora.trainable(model), ...)

        def loss(params, rest):
            m = nnx.merge(graphdef, params, rest)
            lora.set_dropout_key(m, jax.random.PRNGKey(7))
            return jnp.mean(jax.nn.log_softmax(m(tokens).logits) ** 2)

        return jax.jit(jax.grad(loss))(params, rest)

    plain = grads("none")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), grads(policy),
                 plain)
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(plain)) > 0
