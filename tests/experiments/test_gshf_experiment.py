"""The GSHF experiment end to end at tiny size, and its config checks."""

import json
import math
import os

import pytest

from experiments import run

VARIANT = ["rounds=2", "prompts_per_round=8", "candidates=2"]
# RAFT and hybrid run in tests/algorithms/test_gshf.py (the same run_method); here the kinds that reach the
# driver's own code: the uncertainty model (pessimistic DPO), RSO's pairs and the matched-KL table.
METHODS = ("offline_dpo", "rso", "online", "pessimistic_dpo")
TINY = [f"methods=({','.join(METHODS)})", "betas=(0.1,1)", "seeds=(0)", "base.pretrain.steps=6",
        "base.pretrain.optimizer.warmup_steps=1", "sft.steps=4", "sft.optimizer.warmup_steps=1", "sft.batch_size=8",
        "task.train_examples=64", "task.eval_examples=4", "base.vocab_size=300", "base.model.hidden_size=32",
        "base.model.intermediate_size=64", "base.calculation_rows=16", "max_new_tokens=8", "eval_samples=2",
        "batch_pairs=4", "oracle.temperature=0.1", "settings.save_every=2", "uncertainty.prompts=16", "uncertainty.heads=2",
        "uncertainty.stage.steps=3", "uncertainty.stage.optimizer.warmup_steps=1"] + [
    f"variants.{m}.{v}" for m in METHODS for v in VARIANT]


def test_config_checks_name_what_is_wrong():
    mod = run.load_config_module("gshf_arithmetic")
    with pytest.raises(ValueError, match=r"unknown: \['ppo'\]"):
        mod.validate(run.apply_overrides(mod.config(), ["methods=(online,ppo)"]))
    with pytest.raises(ValueError, match="betas must be"):
        mod.validate(run.apply_overrides(mod.config(), ["betas=(0.1,-1)"]))
    with pytest.raises(run.ConfigError, match="enhancer must be"):
        run.apply_overrides(mod.config(), ["variants.online.enhancer=greedy"])
    with pytest.raises(ValueError, match="rs_schedule must decrease and stay above beta=1"):
        mod.validate(run.apply_overrides(mod.config(), ["methods=(offline_dpo,raft)",
                                                        "variants.raft.rs_schedule=(0.5)", "betas=(0.1,1)"]))
    with pytest.raises(ValueError, match="uncertainty needs heads >= 2"):
        mod.validate(run.apply_overrides(mod.config(), ["uncertainty.heads=1"]))
    with pytest.raises(ValueError, match="uncertainty.prompts=5000 needs as many training prompts"):
        mod.validate(run.apply_overrides(mod.config(), ["uncertainty.prompts=5000"]))


@pytest.mark.slow
def test_gshf_experiment_end_to_end_and_reuse(tmp_path, capsys):
    folder = str(tmp_path / "gshf")
    assert run.main(["gshf_arithmetic", *TINY, "--run-dir", folder]) == 0
    out = capsys.readouterr().out
    assert "| online@0.1 |" in out and "| rso@1 |" in out
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    assert set(results["summary"]) == {f"{m}@{b}" for m in METHODS for b in ("0.1", "1")}
    for name, vals in results["summary"].items():
        assert 0.0 <= vals["gold"][0] <= 1.0 and 0.0 <= vals["win_rate"][0] <= 1.0, name
        assert vals["labels"][0] > 0, name
    assert set(results["rounds"]["summary"]) == {"online@0.1", "online@1"}
    assert set(results["rounds"]["summary"]["online@0.1"]) == {"0", "1"}
    for png in ("gold_vs_kl.png", "gold_per_round.png"):
        assert os.path.getsize(os.path.join(folder, png)) > 10_000
    with open(os.path.join(folder, "results.md")) as f:
        text = f.read()
    # 8 method@beta rows, then the matched-KL table: its header and one row per method.
    assert text.count("\n| ") == 8 + 1 + 4 and "| gold at KL 0.25 |" in text
    assert set(results["matched_kl"]["summary"]) == set(METHODS)
    for seed, vals in results["matched_kl"]["per_run"]["offline_dpo"].items():
        for k in ("0.25", "0.5", "1"):  # offline DPO's gap to itself: 0 wherever its frontier reaches the KL
            assert vals[f"gap_at_{k}"] == 0.0 or math.isnan(vals[f"gold_at_{k}"]), (seed, k, vals)
    # Pessimistic DPO's pairs carry the 2-head reward model's disagreement, trained once for the run.
    with open(os.path.join(folder, "runs", "pessimistic_dpo@0.1-seed0", "round_0", "pairs.json")) as f:
        records = json.load(f)["records"]
    assert records and all(r["chosen_uncertainty"] >= 0 and r["rejected_uncertainty"] >= 0 for r in records)
    assert len({r["chosen_uncertainty"] for r in records}) > 1
    assert os.path.isdir(os.path.join(folder, "uncertainty", "rm", "checkpoints"))
    # Resuming a finished sweep reuses every run as it is.
    assert run.main(["gshf_arithmetic", "--run-dir", folder]) == 0
    with open(os.path.join(folder, "results.json")) as f:
        assert json.load(f)["per_run"] == results["per_run"]


@pytest.mark.slow
def test_gshf_with_lora_runs_the_online_dpo_loop_on_adapters(tmp_path, capsys):
    folder = str(tmp_path / "gshf_lora")
    tiny = [t for t in TINY if not t.startswith(("methods=", "betas="))] + [
        "methods=(online)", "betas=(0.1)", "lora.rank=2", "lora.targets=q,v,down"]
    assert run.main(["gshf_arithmetic", *tiny, "--run-dir", folder]) == 0
    out = capsys.readouterr().out
    assert "lora: rank 2 on q,v,down" in out and "| online@0.1 |" in out
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    assert set(results["summary"]) == {"online@0.1"}
    # Each DPO stage starts at its reference (pi0: the base with pi0's adapters, one set of base weights), so its
    # first loss is log 2 with a zero margin, and its steps move the policy through the adapters alone.
    stages = [os.path.join(root, "metrics.jsonl") for root, _, files in os.walk(os.path.join(folder, "runs"))
              if "metrics.jsonl" in files]
    assert len(stages) == 2, stages  # the online loop's two rounds of DPO
    for path in stages:
        with open(path) as f:
            records = [json.loads(line) for line in f]
        first, last = records[0], records[-1]
        assert abs(first["loss"] - math.log(2)) < 1e-5 and abs(first["reward_margin"]) < 1e-4, (path, first)
        assert abs(last["reward_margin"]) > 10 * abs(first["reward_margin"]) + 1e-5, (path, last)
