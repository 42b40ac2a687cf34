"""Ahead-of-time compilation for TPU topologies on this CPU machine (libtpu from the tpu extra): the chip table,
topology devices, the compiled steps' figures checked against the step's known sizes (argument and aliased bytes
exactly; FLOPs against 6 N tokens), the optimizer state sharded like the params, the activations kept split by
rows under a mesh, every experiment config's step catalogue, and the checker's command line."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_irl import aot, losses, parallel, train
from jax_irl.algorithms import gshf, iqlearn
from jax_irl.models import presets
from jax_irl.models.config import TransformerConfig, training_flops_per_token
from jax_irl.models.transformer import Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    V5E = aot.topology_devices("v5e:2x2")
except RuntimeError as err:  # libtpu missing: the tpu extra is part of tools/setup.sh, so this fails loudly in CI
    V5E = None
    LIBTPU_ERROR = str(err)
needs_libtpu = pytest.mark.skipif(V5E is None and not os.environ.get("CI"), reason="libtpu not installed")

# Every per-chip shard of this model is a whole number of TPU tiles (f32 (8, 128) tiles, 1024-element rows for
# vectors), so XLA's argument bytes are exactly the arrays' bytes, with no layout padding.
ALIGNED = TransformerConfig.for_family("llama", vocab_size=1024, hidden_size=4096, num_layers=1, num_heads=8,
                                       num_kv_heads=8, head_dim=128, intermediate_size=1024, dtype="bfloat16")


def _model(cfg):
    return aot.abstract_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def _shard_bytes(tree) -> int:
    """Bytes of one device's shards of the abstract arrays in tree (each carries its sharding)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def test_chip_table_and_device_kinds():
    assert aot.chip_of("v5p:4x4x4").hbm_bytes == 95 * aot.GiB
    assert aot.chip_of("v5e:4x4").peak_bf16_flops == 197e12
    # libtpu's words for the chips: a v5p is 'TPU v5', a v5e 'TPU v5 lite'
    assert aot.chip_for_device_kind("TPU v5").name == "v5p"
    assert aot.chip_for_device_kind("TPU v5 lite").name == "v5e"
    assert aot.chip_for_device_kind("TPU v6 lite").name == "v6e"
    assert aot.chip_for_device_kind("NVIDIA H200") is None
    with pytest.raises(ValueError, match="unknown chip 'v9'"):
        aot.chip_of("v9:2x2")


@needs_libtpu
def test_topology_devices_and_bad_names():
    assert V5E is not None, LIBTPU_ERROR
    assert len(V5E) == 4 and aot.chip_for_device_kind(V5E[0].device_kind).name == "v5e"
    v5p = aot.topology_devices("v5p:2x2x2")
    assert len(v5p) == 8 and aot.chip_for_device_kind(v5p[0].device_kind).name == "v5p"
    with pytest.raises(ValueError, match="must look like"):
        aot.topology_devices("v5e")
    with pytest.raises(ValueError, match="v5e:3x7"):
        aot.topology_devices("v5e:3x7")


def test_presets_match_their_published_sizes():
    published = {"llama3.2-1b": 1.24e9, "llama3.1-8b": 8.03e9, "gemma2-2b": 2.61e9, "qwen2.5-7b": 7.62e9}
    for name, count in published.items():
        cfg = presets.preset(name)
        model = _model(cfg)
        counted = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert counted == presets.parameter_count(cfg), name
        assert abs(counted - count) / count < 0.005, (name, counted)
    assert presets.preset("llama3-8b", remat="full").remat == "full"
    with pytest.raises(ValueError, match="unknown model preset 'gpt5'"):
        presets.preset("gpt5")


def test_optimizer_state_is_sharded_like_the_params():
    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=4))
    cfg = presets.preset("tiny")
    trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), iqlearn.make_loss_fn(iqlearn.Method("mle")),
                            train.OptimizerConfig(weight_decay=0.1), mesh)
    state = trainer.init_state(0)
    params = jax.tree.leaves(state.params)
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    for moments in (adam.mu, adam.nu):
        for p, m in zip(params, jax.tree.leaves(moments)):
            assert m.sharding == p.sharding
    assert any(p.sharding.spec != P() for p in params)  # FSDP actually shards something
    assert adam.count.sharding == NamedSharding(mesh, P())


def test_rows_stay_split_under_a_mesh_and_nothing_changes_outside():
    x = jnp.arange(8 * 12, dtype=jnp.float32).reshape(8, 12)
    assert losses.constrain_rows(x) is x  # no mesh: untouched
    mesh = parallel.make_mesh(parallel.MeshConfig(data=2, fsdp=4))
    w = jax.device_put(jnp.ones((12, 5)), NamedSharding(mesh, P("fsdp", None)))  # an FSDP-sharded weight
    with jax.set_mesh(mesh):
        out = jax.jit(lambda a, b: losses.constrain_rows(a @ b))(x, w)
        odd = jax.jit(lambda a: losses.constrain_rows(a))(x[:7])  # 7 rows do not divide over 8: left as is
    assert tuple(out.sharding.spec)[0] == ("data", "fsdp") and all(a is None for a in tuple(out.sharding.spec)[1:])
    np.testing.assert_allclose(np.asarray(out), np.asarray(x) @ np.ones((12, 5)))
    np.testing.assert_array_equal(np.asarray(odd), np.asarray(x[:7]))


@needs_libtpu
@pytest.mark.parametrize("which", ["sft", "dpo"])
def test_compiled_step_figures_match_the_known_sizes(which):
    mesh = parallel.make_mesh(parallel.MeshConfig(data=1, fsdp=4), V5E)
    model = _model(ALIGNED)
    rows, length = 8, 128 + 1
    if which == "sft":
        loss_fn = iqlearn.make_loss_fn(iqlearn.Method("mle"))
        batch = aot.lm_batch(mesh, rows, length)
    else:
        loss_fn = gshf.dpo_loss_fn(gshf.DPOConfig(beta=0.1))
        batch = aot.lm_batch(mesh, rows, length, extra={"ref_logps": ((rows,), jnp.float32)})
    step = aot.train_step(which, model, loss_fn, train.OptimizerConfig(), mesh, batch, ALIGNED)
    report = aot.compile_step(step, "v5e:2x2")
    assert report.error is None, report.error
    state, batch, _ = step.args  # (state, batch, the frozen rest: empty without LoRA)
    big = lambda tree: [x for x in jax.tree.leaves(tree) if x.ndim]  # noqa: E731
    params_and_moments = _shard_bytes(big((state.params, state.opt_state)))
    n = presets.parameter_count(ALIGNED)
    assert params_and_moments == 3 * 4 * n // 4  # float32 params, Adam's mu and nu, each split four ways
    rest = report.arguments_bytes - params_and_moments
    # the batch and three scalars (the step, the PRNG key, Adam's count): at least their bytes, at most their
    # bytes padded to whole (8, 128) tiles (4 KiB a scalar)
    tiled = sum(math.ceil(r / 8) * 8 * math.ceil(c / 128) * 128 * 4 if len(sh) == 2 else math.ceil(sh[0] / 1024) * 4096
                for sh in (leaf.sharding.shard_shape(leaf.shape) for leaf in jax.tree.leaves(batch))
                for r, c in [(sh + (1,))[:2]])
    assert _shard_bytes(batch) + 3 * 4 <= rest <= tiled + 3 * 4096
    assert report.aliased_bytes >= params_and_moments  # the donated state comes back in place
    assert report.fits and report.total_bytes < aot.chip_of("v5e:2x2").hbm_bytes
    # FLOPs: XLA's count over the chips against the model FLOPs (6 N per token + attention), both for the
    # step's tokens; XLA counts the matmuls it runs, N counts every weight once, forward and backward.
    tokens = rows * (length - 1)
    assert report.model_flops == pytest.approx(tokens * training_flops_per_token(ALIGNED, length - 1))
    assert 0.8 < report.flops * report.chips / report.model_flops < 1.3
    assert report.optimal_seconds > 0 and 0 < report.mfu < 1
    assert report.tokens_per_s == pytest.approx(tokens / report.optimal_seconds)


@needs_libtpu
def test_a_step_that_cannot_compile_is_a_report_with_the_reason():
    mesh = parallel.make_mesh(parallel.MeshConfig(data=1, fsdp=4), V5E)
    cfg = presets.preset("tiny")

    def broken(model, batch, rng):
        return jnp.sum(batch["tokens"].astype(jnp.float32) @ jnp.ones((3, 3))), {}

    step = aot.train_step("broken", _model(cfg), broken, train.OptimizerConfig(), mesh, aot.lm_batch(mesh, 4, 9), cfg)
    report = aot.compile_step(step, "v5e:2x2")
    assert report.error and "TypeError" in report.error and report.fits is None
    assert "| broken |" in aot.table([report]) and "no" in aot.table([report])


@needs_libtpu
def test_every_paper_config_has_its_steps_and_a_small_one_compiles_and_fits():
    from experiments import aot as experiment_steps
    from experiments import run as driver

    mesh = parallel.make_mesh(parallel.MeshConfig(data=1, fsdp=4), V5E)
    cfg_tiny = presets.preset("tiny")
    expected = {
        "irl_gsm8k": {"iqlearn", "iqlearn_online", "eval_score", "eval_prefill", "eval_decode", "gail_disc",
                      "gail_update", "gail_rollout_prefill", "gail_rollout_decode"},
        "gshf_gsm8k": {"dpo", "reference_score", "prefill", "decode"},
        "rlsf_spoc": {"sft", "ppo_update", "rollout_score", "reference_score", "rollout_prefill", "rollout_decode",
                      "grpo_update"},
        "ensembles_alpaca": {"rm_single", "rm_multihead", "rm_multihead_frozen", "rm_ensemble", "ppo_update",
                             "rollout_score", "reference_score", "rollout_prefill", "rollout_decode", "bon_prefill", "bon_decode"},
    }
    for name, names in expected.items():
        cfg = driver.load_config_module(name).config()
        steps = experiment_steps.steps_for(cfg, cfg_tiny, mesh)
        assert {s.name for s in steps} == names, name
        if name == "gshf_gsm8k":  # RAFT/RSO's 8 ** 2 samples a prompt, 256 prompts at a time
            assert {s.name: s.batch for s in steps}["prefill"] == cfg.sample_prompts_per_batch * 64
        if name == "ensembles_alpaca":  # the best-of-n pool is sampled 16 prompts x 256 at a time
            assert {s.name: s.batch for s in steps}["bon_prefill"] == cfg.sample_prompts_per_batch * cfg.bon_samples
    # rlsf_spoc at a small size: every step compiles and fits, with the config's own shapes
    cfg = driver.apply_overrides(driver.load_config_module("rlsf_spoc").config(), [
        "base.max_length=64", "sft.batch_size=8", "ppo.prompts_per_rollout=4", "ppo.samples_per_prompt=2",
        "ppo.max_new_tokens=16", "ppo.minibatches=2", "settings.vocab_chunk=128", "grpo.prompts_per_rollout=2",
        "grpo.group_size=4", "grpo.max_new_tokens=16", "grpo.minibatches=2"])
    steps = experiment_steps.steps_for(cfg, cfg_tiny, mesh)
    by_name = {s.name: s for s in steps}
    assert by_name["sft"].batch == 8 and by_name["sft"].length == 64
    assert by_name["ppo_update"].batch == 4 and by_name["rollout_decode"].batch == 8
    assert by_name["rollout_prefill"].length == 64 - 16
    assert by_name["grpo_update"].batch == 4 and by_name["grpo_update"].length == 64
    reports = [aot.compile_step(s, "v5e:2x2") for s in steps]
    assert all(r.error is None and r.fits for r in reports), [(r.step, r.error) for r in reports]
    for r in reports:
        assert r.flops_ratio == pytest.approx(r.flops * r.chips / r.model_flops)
    # The prefill unembeds only each row's last position: its model FLOPs leave out the other positions' D x V.
    width = by_name["rollout_prefill"].length
    forward = training_flops_per_token(cfg_tiny, width) / 3
    assert by_name["rollout_prefill"].flops_per_token == pytest.approx(
        forward - 2 * cfg_tiny.hidden_size * cfg_tiny.vocab_size * (width - 1) / width)
    # A step whose model FLOPs XLA's count falls far short of is flagged in its note and under the table.
    import dataclasses

    sft = dataclasses.replace(by_name["sft"], flops_per_token=10 * by_name["sft"].flops_per_token)
    flagged = aot.compile_step(sft, "v5e:2x2")
    assert flagged.flops_ratio < aot.LOW_FLOPS_RATIO and "too optimistic" in flagged.note
    assert "XLA counted" in aot.table([flagged]).split("\n")[-1]
    assert "XLA counted" not in aot.compile_step(by_name["sft"], "v5e:2x2").note


@needs_libtpu
@pytest.mark.slow
def test_the_checker_command_writes_its_table_and_json(tmp_path):
    out = tmp_path / "aot.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "aot.py"), "gshf_gsm8k", "--topology", "v5e:2x2", "--model",
           "tiny", "--steps", "dpo", "--out", str(out), "batch_pairs=4", "base.max_length=64", "settings.vocab_chunk=256"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| dpo | v5e:2x2 | fsdp4 | 8 x 64 |" in done.stdout
    saved = json.loads(out.read_text())
    assert saved["config"] == "gshf_gsm8k" and saved["chip"]["name"] == "v5e"
    (report,) = saved["reports"]
    assert report["fits"] and report["error"] is None and report["mfu"] > 0
    bad = subprocess.run(cmd[:7] + ["--steps", "nonsense", "--out", str(tmp_path / "x.json")], capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert bad.returncode == 2 and "no step of gshf_gsm8k matches --steps nonsense" in bad.stderr
    bad = subprocess.run(cmd[:2] + ["irl_gsm8k", "--model", "gpt5", "--topology", "v5e:2x2"], capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert bad.returncode == 2 and "unknown model preset 'gpt5'" in bad.stderr


@needs_libtpu
@pytest.mark.slow
def test_the_weak_scaling_run_and_its_plot(tmp_path):
    out, png = tmp_path / "scaling.json", tmp_path / "scaling.png"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "aot.py"), "--scaling", "--model", "tiny", "--rows-per-chip", "2",
           "--length", "32", "--topologies", "v5p:2x2x1,v5p:2x2x2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads(out.read_text())
    rows = [(r["step"], r["topology"], r["chips"], r["batch"], r["fits"], r["error"]) for r in saved["reports"]]
    assert rows == [("sft", "v5p:2x2x1", 4, 8, True, None), ("decode", "v5p:2x2x1", 4, 8, True, None),
                    ("sft", "v5p:2x2x2", 8, 16, True, None), ("decode", "v5p:2x2x2", 8, 16, True, None)]
    sft4, sft8 = saved["reports"][0], saved["reports"][2]
    # weak scaling under FSDP: twice the chips hold half the params and optimizer state each, at the same tokens a chip
    assert sft8["arguments_bytes"] < sft4["arguments_bytes"] and sft8["length"] == sft4["length"] == 33
    assert sft8["model_flops"] == pytest.approx(2 * sft4["model_flops"])
    plot = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "aot_plot.py"), str(out), str(png)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_mfu_knows_the_peaks_of_libtpus_device_kinds():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_mfu", os.path.join(ROOT, "tools", "bench_mfu.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.peak_tflops("TPU v5") == 459.0  # a v5p, as libtpu names it
    assert bench.peak_tflops("TPU v5 lite") == 197.0
    assert bench.peak_tflops("NVIDIA H200") == 989.0
    assert bench.peak_tflops("a toaster") is None
