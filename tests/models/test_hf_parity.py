"""Parity with transformers (torch, CPU) on tiny random configs of each family, both directions."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jax_irl.models import hf  # noqa: E402
from jax_irl.models.config import TransformerConfig  # noqa: E402
from jax_irl.models.transformer import Transformer  # noqa: E402

FAMILIES = ["llama", "qwen2", "gemma", "gpt2", "llama3_rope_bias"]
VOCAB = 64


def _hf_config(family):
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       bos_token_id=0, eos_token_id=1)
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    if family == "llama":
        return transformers.LlamaConfig(**kw)
    if family == "llama3_rope_bias":  # llama3 RoPE scaling, attention and MLP biases, untied head
        return transformers.LlamaConfig(attention_bias=True, mlp_bias=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}, **kw)
    if family == "qwen2":
        return transformers.Qwen2Config(tie_word_embeddings=True, **kw)
    return transformers.GemmaConfig(head_dim=16, **kw)


def _torch_model(family, seed=0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_hf_config(family)).eval()
    with torch.no_grad():  # move every weight (norms included) away from its default init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, (3, 9))
    mask = np.ones((3, 9), np.int64)
    mask[1, :3] = 0  # left padding
    mask[2, -2:] = 0  # right padding
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    return ids, mask, positions


def _torch_logits(model, ids, mask, positions):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.float().numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_import_and_export_match_transformers_logits(family, tmp_path):
    model = _torch_model(family)
    model.save_pretrained(tmp_path / "hf")
    ids, mask, positions = _inputs()
    expected = _torch_logits(model, ids, mask, positions)
    ours = hf.from_pretrained(str(tmp_path / "hf"))
    got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits)
    real = mask.astype(bool)
    assert np.abs(got - expected)[real].max() <= 1e-4
    # The same weights with causal query blocks of 2 (5 blocks over 9 tokens): the same logits.
    blocked = Transformer(dataclasses.replace(ours.cfg, attention_block=2), rngs=nnx.Rngs(1))
    nnx.update(blocked, nnx.state(ours, nnx.Param))
    got_blocked = np.asarray(blocked(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits)
    assert np.abs(got_blocked - expected)[real].max() <= 1e-4
    # Export -> transformers loads it -> the same logits.
    hf.save_pretrained(ours, str(tmp_path / "export"))
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
    assert np.abs(_torch_logits(back, ids, mask, positions) - expected)[real].max() <= 1e-4


def test_bf16_checkpoint_and_sharded_folder(tmp_path):
    model = _torch_model("llama", seed=1)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", max_shard_size="20KB")
    files = os.listdir(tmp_path / "bf16")
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    ours = hf.from_pretrained(str(tmp_path / "bf16"))
    assert ours.embed[...].dtype == jnp.bfloat16
    ids, mask, positions = _inputs()
    expected = _torch_logits(model.float(), ids, mask, positions)  # bf16 weights, fp32 compute on both sides
    got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits)
    assert np.abs(got - expected)[mask.astype(bool)].max() <= 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_kv_cache_decoding_equals_full_forward(family):
    cfg = TransformerConfig.for_family(family, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                       num_kv_heads=2 if family != "gpt2" else 4, intermediate_size=48,
                                       max_position_embeddings=64)
    model = Transformer(dataclasses.replace(cfg, attention_block=2), rngs=nnx.Rngs(0))
    ids, mask, positions = _inputs()
    mask[2, -2:] = 1  # the cache test uses left padding only
    full = model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits
    cache = model.init_cache(3, 12)
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    graphdef, state = nnx.split(model)

    @jax.jit
    def traced(ids, mask, pos, cache, index):  # a cache index only known at run time, as in the sampler's loop
        return nnx.merge(graphdef, state)(ids, attention_mask=mask, positions=pos, cache=cache, cache_index=index)

    steps = []
    # A prefill of 5 tokens in causal query blocks (index 0, known when tracing), a chunk of 2 at index 5 (the
    # keys stop at slot 7), then single tokens, the first at a static index and the rest at traced ones.
    for start, end, index in ((0, 5, 0), (5, 7, 5), (7, 8, 7), (8, 9, jnp.int32(8))):
        args = tuple(jnp.asarray(a[:, start:end]) for a in (ids, mask, pos))
        if isinstance(index, int):
            out = model(args[0], attention_mask=args[1], positions=args[2], cache=cache, cache_index=index)
        else:
            out = traced(*args, cache, index)
        cache = out.cache
        steps.append(out.logits)
    incremental = np.concatenate([np.asarray(s) for s in steps], axis=1)
    np.testing.assert_allclose(incremental[mask.astype(bool)], np.asarray(full)[mask.astype(bool)], atol=1e-5)


def test_chunked_losses_from_model_hidden_states():
    from flax import nnx

    from jax_irl import losses

    cfg = TransformerConfig.for_family("gemma", vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2,
                                       num_kv_heads=1, head_dim=16, intermediate_size=48)
    model = Transformer(cfg, rngs=nnx.Rngs(3))
    ids = jnp.asarray(np.random.default_rng(1).integers(0, VOCAB, (2, 6)))
    out = model(ids)
    direct = losses.soft_q_stats(out.logits, ids)
    chunked = losses.chunked_soft_q_stats(out.hidden, model.unembedding(), ids, chunk_size=24)
    for a, b in zip(direct, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert model(ids, compute_logits=False).logits is None


def test_interop_errors_name_the_problem(tmp_path):
    model = _torch_model("llama")
    model.save_pretrained(tmp_path / "ok")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / "ok" / "model.safetensors"))
    missing = dict(tensors)
    del missing["model.layers.1.mlp.up_proj.weight"]
    (tmp_path / "missing").mkdir()
    save_file(missing, str(tmp_path / "missing" / "model.safetensors"))
    (tmp_path / "missing" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        hf.from_pretrained(str(tmp_path / "missing"))
    bad = dict(tensors)
    bad["model.layers.0.self_attn.q_proj.weight"] = bad["model.layers.0.self_attn.q_proj.weight"][:8]
    (tmp_path / "shape").mkdir()
    save_file(bad, str(tmp_path / "shape" / "model.safetensors"))
    (tmp_path / "shape" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"q_proj.weight.*does not fit"):
        hf.from_pretrained(str(tmp_path / "shape"))
    cfg = json.loads((tmp_path / "ok" / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'mamba' is not supported"):
        hf.from_pretrained(str(tmp_path / "ok"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="num_heads .* multiple of num_kv_heads"):
        TransformerConfig.for_family("llama", vocab_size=8, hidden_size=8, num_layers=1, num_heads=3,
                                     num_kv_heads=2, intermediate_size=8)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_generate_equals_transformers_generate(family, tmp_path):
    from jax_irl import sampling

    model = _torch_model(family, seed=2)
    with torch.no_grad():  # sharper distributions: no near-ties for argmax to break differently
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(tmp_path)
    ours = hf.from_pretrained(str(tmp_path))
    toks, mask = sampling.left_pad([[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]], pad_id=2)
    with torch.no_grad():
        expected = model.generate(input_ids=torch.tensor(toks, dtype=torch.long),
                                  attention_mask=torch.tensor(mask, dtype=torch.long), do_sample=False,
                                  max_new_tokens=10, pad_token_id=2, eos_token_id=1).numpy()[:, toks.shape[1]:]
    got = sampling.generate(ours, toks, mask, jax.random.PRNGKey(0), max_new_tokens=10, greedy=True, pad_id=2,
                            eos_ids=(1,))
    expected = np.pad(expected, ((0, 0), (0, 10 - expected.shape[1])), constant_values=2)
    np.testing.assert_array_equal(np.asarray(got.tokens), expected)


def test_convert_checkpoint_tool_round_trip(tmp_path, capsys):
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", pathlib.Path(__file__).resolve().parents[2] / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    _torch_model("qwen2").save_pretrained(tmp_path / "src")
    assert tool.main([str(tmp_path / "src"), str(tmp_path / "dst"), "--check"]) == 0
    out = capsys.readouterr().out
    diffs = [float(x.rstrip(";")) for x in out.split("diff")[-1].split() if x[0].isdigit()]
    assert len(diffs) == 2 and max(diffs) <= 1e-4
    assert tool.main([str(tmp_path / "src"), str(tmp_path / "bf"), "--param-dtype", "bfloat16"]) == 0
    assert hf.from_pretrained(str(tmp_path / "bf")).embed[...].dtype == jnp.bfloat16


def test_every_param_has_logical_axis_names_and_bf16_compute_tracks_fp32():
    from flax import nnx

    for family in ("llama", "gemma", "gpt2"):
        cfg = TransformerConfig.for_family(family, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                           num_kv_heads=2 if family != "gpt2" else 4, intermediate_size=48)
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        allowed = {"vocab", "embed", "heads", "kv", "mlp", None}
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            names = var.get_metadata().get("out_sharding")
            assert names is not None and len(names) == var.get_value().ndim, (family, path, names)
            assert set(names) <= allowed, (family, path, names)
        bf = Transformer(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(0))
        ids, mask, _ = _inputs()
        f32 = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits)
        b16 = bf(jnp.asarray(ids), attention_mask=jnp.asarray(mask)).logits
        assert b16.dtype == jnp.bfloat16
        real = mask.astype(bool)
        err = np.abs(np.asarray(b16, np.float32) - f32)[real].max()
        assert np.isfinite(np.asarray(b16, np.float32)).all() and err < 0.05 * np.abs(f32[real]).max() + 0.05, err


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_reward_model_from_a_sequence_classification_checkpoint_matches_transformers(tmp_path, family):
    """transformers' *ForSequenceClassification (the usual reward-model checkpoint) scores the last non-pad token
    of right-padded rows; the imported RewardModel gives the same rewards, one per label (head)."""
    cfg = _hf_config(family)
    cfg.num_labels = 2
    torch.manual_seed(1)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    ids = np.random.default_rng(2).integers(3, VOCAB, (3, 8))
    mask = np.ones((3, 8), np.int64)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = cfg.pad_token_id  # right padding with the pad id, as transformers finds the last token
    with torch.no_grad():
        want = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    rm = hf.reward_model_from_pretrained(str(tmp_path))
    got = np.asarray(rm(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(KeyError, match="not a sequence-classification"):
        hf.reward_model_from_pretrained(str(_save_causal(tmp_path / "lm", family)))


def _save_causal(folder, family):
    _torch_model(family).save_pretrained(folder)
    return folder


def test_damaged_checkpoint_files_name_the_file_and_non_finite_weights_are_refused(tmp_path):
    model = _torch_model("llama")
    model.save_pretrained(tmp_path / "ok")
    from safetensors.numpy import load_file, save_file

    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    for name, text, message in (("nokey", json.dumps({k: v for k, v in config.items() if k != "hidden_size"}),
                                 r"nokey/config.json lacks the key 'hidden_size'"),
                                ("badjson", "{not json", r"badjson/config.json is not valid JSON")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
        (tmp_path / name / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
        with pytest.raises(ValueError, match=message):
            hf.from_pretrained(str(tmp_path / name))
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "config.json").write_text(json.dumps(config))
    data = (tmp_path / "ok" / "model.safetensors").read_bytes()
    (tmp_path / "cut" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut/model.safetensors cannot be read"):
        hf.from_pretrained(str(tmp_path / "cut"))
    tensors = load_file(str(tmp_path / "ok" / "model.safetensors"))
    tensors["model.norm.weight"][3] = np.nan
    (tmp_path / "nan").mkdir()
    (tmp_path / "nan" / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "nan" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.norm.weight holds 1 non-finite value"):
        hf.from_pretrained(str(tmp_path / "nan"))
    loaded = hf.from_pretrained(str(tmp_path / "nan"), allow_non_finite=True)
    assert np.isnan(np.asarray(loaded.final_norm.weight[...])[3])
