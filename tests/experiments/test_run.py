import json

import pytest

from experiments import run
from experiments.configs import lm_tiny


def test_overrides_parse_by_type_and_nest():
    cfg = run.apply_overrides(lm_tiny.config(), ["steps=7", "optimizer.learning_rate=3e-4", "mesh.data=-1",
                                                 "optimizer.max_grad_norm=none", "td_weight=0"])
    assert cfg.steps == 7 and cfg.optimizer.learning_rate == 3e-4 and cfg.mesh.data == -1
    assert cfg.optimizer.max_grad_norm is None and cfg.td_weight == 0.0
    assert isinstance(cfg.td_weight, float)
    # A saved config.json turns back into the same config.
    import dataclasses

    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert run.apply_overrides(lm_tiny.config(), run.to_overrides(saved)) == cfg


def test_bad_keys_and_values_name_what_is_valid():
    with pytest.raises(run.ConfigError, match=r"unknown config key 'stpes'; valid keys:(.|\n)*optimizer.learning_rate"):
        run.apply_overrides(lm_tiny.config(), ["stpes=3"])
    with pytest.raises(run.ConfigError, match=r"steps='many': expected a value of type int"):
        run.apply_overrides(lm_tiny.config(), ["steps=many"])
    with pytest.raises(run.ConfigError, match="schedule must be"):
        run.apply_overrides(lm_tiny.config(), ["optimizer.schedule=wavy"])
    with pytest.raises(run.ConfigError, match="key=value"):
        run.apply_overrides(lm_tiny.config(), ["steps"])
    with pytest.raises(run.ConfigError, match="unknown config 'nope'; available: .*lm_tiny"):
        run.load_config_module("nope")


@pytest.mark.slow
def test_driver_runs_resumes_and_refuses_config_changes(tmp_path, capsys):
    folder = str(tmp_path / "run")
    assert run.main(["lm_tiny", "steps=20", "save_every=10", "optimizer.total_steps=30", "--run-dir", folder]) == 0
    with open(tmp_path / "run" / "results.json") as f:
        assert json.load(f)["steps"] == 20
    # Pointing at the run folder resumes it with its saved config; more steps are allowed.
    assert run.main(["lm_tiny", "steps=30", "--run-dir", folder]) == 0
    out = capsys.readouterr().out
    assert "resuming lm_tiny" in out and "resumed from step 20" in out
    with open(tmp_path / "run" / "results.json") as f:
        assert json.load(f)["steps"] == 30
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 31))
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    # Changing what the run is (not just how long) is refused with the allowed keys named.
    assert run.main(["lm_tiny", "td_weight=0.5", "--run-dir", folder]) == 2
    assert "only ['keep', 'mesh', 'save_every', 'steps'] may change when resuming, not ['td_weight']" in capsys.readouterr().err
