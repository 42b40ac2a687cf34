import json
import os
import re

import numpy as np
import pytest

from experiments import run
from experiments.configs import lm_tiny


def test_overrides_parse_by_type_and_nest():
    cfg = run.apply_overrides(lm_tiny.config(), ["train.steps=70", "train.optimizer.learning_rate=3e-4", "settings.mesh.data=-1",
                                                 "train.optimizer.max_grad_norm=none", "td_weight=0",
                                                 "settings.distributed.coordinator_address=10.0.0.1:1234",
                                                 "settings.distributed.num_processes=4"])
    assert cfg.settings.distributed.coordinator_address == "10.0.0.1:1234"
    assert cfg.settings.distributed.num_processes == 4
    assert cfg.train.steps == 70 and cfg.train.optimizer.learning_rate == 3e-4 and cfg.settings.mesh.data == -1
    assert cfg.train.optimizer.max_grad_norm is None and cfg.td_weight == 0.0
    assert isinstance(cfg.td_weight, float)
    # A saved config.json turns back into the same config.
    import dataclasses

    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert run.apply_overrides(lm_tiny.config(), run.to_overrides(saved)) == cfg
    # A config.json saved when the run settings were top-level fields reads with them under settings.
    legacy = {k: v for k, v in saved.items() if k != "settings"}
    legacy.update({k: saved["settings"][k] for k in ("mesh", "distributed", "save_every", "keep")})
    assert run.apply_overrides(lm_tiny.config(), run.to_overrides(legacy)) == cfg


def test_bad_keys_and_values_name_what_is_valid():
    with pytest.raises(run.ConfigError, match=r"unknown config key 'stpes'; valid keys:(.|\n)*train.optimizer.learning_rate"):
        run.apply_overrides(lm_tiny.config(), ["stpes=3"])
    with pytest.raises(run.ConfigError, match=r"train.steps='many': expected a value of type int"):
        run.apply_overrides(lm_tiny.config(), ["train.steps=many"])
    with pytest.raises(run.ConfigError, match="schedule must be"):
        run.apply_overrides(lm_tiny.config(), ["train.optimizer.schedule=wavy"])
    with pytest.raises(run.ConfigError, match="total_steps=30 but the stage trains 300 steps"):
        run.apply_overrides(lm_tiny.config(), ["train.optimizer.total_steps=30"])
    with pytest.raises(run.ConfigError, match="warmup_steps=20 is longer than the stage's 10 steps"):
        run.apply_overrides(lm_tiny.config(), ["train.steps=10"])
    with pytest.raises(run.ConfigError, match="key=value"):
        run.apply_overrides(lm_tiny.config(), ["steps"])
    with pytest.raises(run.ConfigError, match="unknown config 'nope'; available: .*lm_tiny"):
        run.load_config_module("nope")


def _float_keys(cfg):
    import typing

    def is_float(tp):
        return tp is float or (typing.get_origin(tp) is typing.Union and float in typing.get_args(tp))

    return [k for k, tp in run.flat_fields(cfg).items() if is_float(tp)]


@pytest.mark.parametrize("name", run.available_configs())
def test_every_float_field_of_every_config_refuses_nan_and_inf_up_front(name):
    cfg = run.load_config_module(name).config()
    keys = _float_keys(cfg)
    assert keys, name
    for key in keys:
        for text in ("nan", "inf", "-inf"):
            with pytest.raises(run.ConfigError, match=re.escape(f"{key}={float(text)}: expected a finite number")):
                run.apply_overrides(cfg, [f"{key}={text}"])


_OUT_OF_RANGE = {"an integer >= 1": ("0", "-3"), ">= 0": ("-1",), "> 0": ("0", "-0.5"), "in [0, 1]": ("-0.1", "1.5"),
                 "in [0, 0.5)": ("0.5",), "in [0, 1)": ("1.0", "-0.1"), "an integer >= 1, or -1 for the rest of the devices": ("0", "-2")}


@pytest.mark.parametrize("name", run.available_configs())
def test_every_numeric_field_out_of_range_is_refused_up_front_by_name(name, tmp_path):
    """Each numeric field with a range (``run.RANGES``, by field name), in every config and its variants: the
    config's own value passes, and each out-of-range override is refused by ``resolve`` (which writes nothing),
    naming the key."""
    cfg = run.load_config_module(name).config()
    run._check_ranges(cfg)
    keys = [k for k in run.flat_fields(cfg) if run.range_rule(k) is not None]
    assert len(keys) >= 15, keys
    folder = str(tmp_path / "run")
    for key in keys:
        words = run.range_rule(key)[1]
        for text in _OUT_OF_RANGE[words]:
            with pytest.raises(run.ConfigError, match=re.escape(key)):
                run.resolve(name, [f"{key}={text}"], folder)
    assert not os.path.exists(folder)
    with pytest.raises(run.ConfigError, match=re.escape("ppo.optimizer.learning_rate must be > 0; got 0.0")):
        run.resolve("rlsf_game24", ["ppo.optimizer.learning_rate=0"], folder)


def test_optimizer_settings_out_of_range_are_refused_by_name():
    for override, match in (("train.optimizer.eps=-1", "eps must be a finite number > 0"),
                            ("train.optimizer.eps=0", "eps must be a finite number > 0"),
                            ("train.optimizer.b1=1.0", "b1 must be in"), ("train.optimizer.b2=-0.1", "b2 must be in"),
                            ("train.optimizer.weight_decay=-0.01", "weight_decay must be"),
                            ("train.optimizer.max_grad_norm=0", "max_grad_norm must be")):
        with pytest.raises(run.ConfigError, match=match):
            run.apply_overrides(lm_tiny.config(), [override])


@pytest.mark.slow
def test_driver_runs_resumes_and_refuses_config_changes(tmp_path, capsys):
    folder = str(tmp_path / "run")
    assert run.main(["lm_tiny", "train.steps=20", "settings.save_every=10", "train.optimizer.warmup_steps=4",
                     "--run-dir", folder]) == 0
    with open(tmp_path / "run" / "results.json") as f:
        assert json.load(f)["steps"] == 20
    # The driver turned on the persistent compilation cache (conftest points it at a folder per test worker), so
    # the resumed run below loads its steps from it.
    import jax

    cache = jax.config.jax_compilation_cache_dir
    assert cache and cache.startswith(os.environ["JAX_IRL_COMPILATION_CACHE"]) and os.listdir(cache)
    # Pointing at the run folder resumes it with its saved config; more steps are allowed, and the cosine
    # schedule then spans the new count (it was not left at its end, learning rate 0, for the added steps).
    assert run.main(["lm_tiny", "train.steps=30", "--run-dir", folder]) == 0
    out = capsys.readouterr().out
    assert "resuming lm_tiny" in out and "resumed from step 20" in out and "now spans 30 steps" in out
    with open(tmp_path / "run" / "results.json") as f:
        assert json.load(f)["steps"] == 30
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == list(range(1, 31))
    peak = 3e-3  # the config's learning rate; cosine over the 26 steps after a 4-step warmup
    want = [peak * 0.5 * (1 + np.cos(np.pi * (s - 4) / 26)) for s in range(20, 30)]
    np.testing.assert_allclose([r["learning_rate"] for r in rows[20:]], want, rtol=1e-5)
    assert rows[-1]["learning_rate"] > 0
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    # Changing what the run is (not just how long) is refused with the allowed keys named.
    before = {p: (tmp_path / "run" / p).read_text() for p in ("config.json", "run.json")}
    assert run.main(["lm_tiny", "td_weight=0.5", "--run-dir", folder]) == 2
    assert ("only ['settings.distributed', 'settings.keep', 'settings.keep_rollouts', 'settings.mesh', "
            "'settings.rows_per_score', 'settings.save_every', 'train.steps'] may change when resuming, not "
            "['td_weight']") in capsys.readouterr().err
    # Repeating the command with a value that equals the saved one is a resume, not a change.
    assert run.main(["lm_tiny", "td_weight=0.1", "train.steps=30", "--run-dir", folder]) == 0
    assert {p: (tmp_path / "run" / p).read_text() for p in before} == before
    # Another config's folder, a file as the folder, and run settings no checkpoint could use are refused
    # before anything is written.
    assert run.main(["irl_arithmetic", "--run-dir", folder]) == 2
    assert "is a run folder of config 'lm_tiny', not 'irl_arithmetic'" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert run.main(["lm_tiny", "--run-dir", str(tmp_path / "afile")]) == 2
    assert "is a file, not a run folder" in capsys.readouterr().err
    for bad in ("settings.save_every=0", "settings.keep=0", "train.optimizer.learning_rate=-1"):
        assert run.main(["lm_tiny", bad, "--run-dir", str(tmp_path / "new")]) == 2
        assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_driver_on_two_processes_matches_one_process(tmp_path):
    import os
    import subprocess
    import sys

    from tests.processes import ROOT as root, free_port, wait_all

    port = free_port()
    args = ["train.steps=6", "train.optimizer.warmup_steps=2", "settings.save_every=3", "train_problems=500",
            "eval_problems=20"]
    base = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu")
    procs = []
    for i in range(2):
        env = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-m", "experiments.run", "lm_tiny", *args, "settings.mesh.data=2",
                                       "settings.mesh.fsdp=2", "settings.mesh.tensor=2", "--run-dir", str(tmp_path / "multi")],
                                      cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    wait_all(procs)
    env = dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    single = subprocess.run([sys.executable, "-m", "experiments.run", "lm_tiny", *args, "--run-dir",
                             str(tmp_path / "single")], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    def losses(folder):
        with open(tmp_path / folder / "metrics.jsonl") as f:
            return [json.loads(line)["loss"] for line in f]

    assert len(losses("multi")) == 6
    assert max(abs(a - b) for a, b in zip(losses("multi"), losses("single"))) < 1e-5
    assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["3", "6"]


def test_addition_problems_mask_exactly_the_answer_and_eos():
    from experiments.recipes import addition

    rows, prompt_len, answers = addition.make_problems(np.random.default_rng(0), 5, 50)
    mask = addition.response_mask(rows, prompt_len)
    for i in range(5):
        counted = [addition.CHARS[t] if t < len(addition.CHARS) else "<eos>" for t in rows[i, 1:][mask[i] > 0]]
        assert "".join(counted[:-1]) == str(answers[i]) and counted[-1] == "<eos>"
        assert addition.decode_answer(rows[i], int(prompt_len[i])) == answers[i]


def test_compilation_cache_setting(monkeypatch, tmp_path):
    import jax

    from jax_irl import parallel

    monkeypatch.setenv(parallel.COMPILATION_CACHE_ENV, "off")
    assert parallel.enable_compilation_cache(str(tmp_path)) is None
    monkeypatch.setenv(parallel.COMPILATION_CACHE_ENV, str(tmp_path / "c"))
    before = jax.config.jax_compilation_cache_dir
    try:  # a folder already set (by the user, or an earlier run in this process) is kept
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
        assert parallel.enable_compilation_cache(str(tmp_path / "default")) == str(tmp_path / "mine")
        jax.config.update("jax_compilation_cache_dir", None)
        folder = parallel.enable_compilation_cache(str(tmp_path / "default"))
        assert folder.startswith(str(tmp_path / "c")) and folder.endswith("-p0") and os.path.isdir(folder)
    finally:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", before)
        compilation_cache.reset_cache()  # the worker's own cache folder again, for the tests after this one
