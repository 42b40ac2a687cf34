"""The reward-ensembles experiment end to end at tiny size, and its config checks."""

import json
import math
import os
import shutil
import signal

import pytest

from experiments import run
from jax_irl import stages
from jax_irl.algorithms import ppo

TINY = ["seeds=(0)", "methods=(single,ensemble)", "label_noise=(0)", "base.pretrain.steps=6",
        "base.pretrain.optimizer.warmup_steps=1", "sft.steps=4", "sft.optimizer.warmup_steps=1", "sft.batch_size=8",
        "task.train_examples=40", "task.eval_examples=3", "base.vocab_size=300", "base.model.hidden_size=32",
        "base.model.intermediate_size=64", "base.calculation_rows=16", "pairs=24", "candidates=3", "oracle.temperature=0.1",
        "rm_stage.steps=3", "rm_stage.batch_size=4", "rm_stage.optimizer.warmup_steps=1", "bon_samples=4",
        "ppo.iterations=2", "ppo.prompts_per_rollout=8", "ppo.samples_per_prompt=2", "ppo.max_new_tokens=8",
        "ppo_kl=(0.1)", "settings.save_every=2"]


def test_config_checks_name_what_is_wrong():
    mod = run.load_config_module("ensembles_arithmetic")
    with pytest.raises(ValueError, match=r"unknown: \['triple'\]"):
        mod.validate(run.apply_overrides(mod.config(), ["methods=(single,triple)"]))
    with pytest.raises(ValueError, match="label_noise"):
        mod.validate(run.apply_overrides(mod.config(), ["label_noise=(0.7)"]))
    with pytest.raises(ValueError, match="ppo_kl"):
        mod.validate(run.apply_overrides(mod.config(), ["ppo_kl=(-1)"]))
    with pytest.raises(ValueError, match=r"held_out must be a share of the labelled pairs in \(0, 1\); got 1.0"):
        mod.validate(run.apply_overrides(mod.config(), ["held_out=1.0"]))
    with pytest.raises(run.ConfigError, match="freeze_encoder"):
        run.apply_overrides(mod.config(), ["variants.ensemble.freeze_encoder=true"])
    # the declared head-count ablation: K heads on one trained encoder, K = 1, 2, 4, 8
    ablation = run.apply_overrides(mod.config(), ["methods=(heads1,heads2,heads4,heads8)"])
    mod.validate(ablation)
    assert [(ablation.variants[m].kind, ablation.variants[m].heads, ablation.variants[m].freeze_encoder)
            for m in ablation.methods] == [("multihead", k, False) for k in (1, 2, 4, 8)]
    # the CPU default: the paper's frozen-encoder heads beside the trained ones, best-of-n only
    default = mod.config()
    assert default.methods == ("single", "multihead", "multihead_frozen", "ensemble") and default.ppo_kl == ()
    assert default.variants["multihead_frozen"].freeze_encoder and default.variants["ensemble"].bootstrap == "poisson"


@pytest.mark.slow
def test_ensembles_experiment_end_to_end_reuse_and_exact_resume(tmp_path, capsys, monkeypatch):
    folder = str(tmp_path / "ens")
    assert run.main(["ensembles_arithmetic", *TINY, "--run-dir", folder]) == 0
    assert "| ensemble@0 |" in capsys.readouterr().out
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    assert set(results["summary"]) == {"single@0", "ensemble@0"}  # multihead: tests/algorithms/test_reward_models
    assert results["ns"] == [1, 2, 4]
    with open(os.path.join(folder, "data", "pairs.json")) as f:
        labelled = len(json.load(f)["records"])
    assert results["held_out_pairs"] == max(round(labelled * 0.15), 1)  # the config's share
    assert results["train_pairs"] + results["held_out_pairs"] == labelled
    for name, vals in results["summary"].items():
        assert 0.0 <= vals["pair_accuracy"][0] <= 1.0 and 0.0 <= vals["bon_mean_gold_max_n"][0] <= 1.0
        assert set(results["ppo"]["0.1"][name]) == {"0", "1"}
    # best-of-1 is pi0's own mean gold reward, whatever the proxy
    pool = results["pi0_gold"]
    for how in ("mean", "min", "uwo", "lcb"):
        for tree in results["bon"][how].values():
            assert tree["1"]["gold"][0] == pytest.approx(pool, abs=1e-9)
            assert tree["1"]["kl"][0] == pytest.approx(0.0, abs=1e-12)  # best-of-1 is pi0
            assert 0.0 <= tree["4"]["kl"][0] <= math.log(4) + 1e-9  # best of all 4: at most log N
    for name in results["summary"]:  # the PPO axis: k2 of each response's log-ratio, >= 0.5 (its mean)^2
        assert all(it["kl_seq_k2"][0] >= 0.5 * it["kl"][0] ** 2 - 1e-6 for it in results["ppo"]["0.1"][name].values())
    for png in ("bon_gold_vs_kl.png", "ppo_gold_vs_kl.png"):
        assert os.path.getsize(os.path.join(folder, png)) > 10_000
    assert run.main(["ensembles_arithmetic", "--run-dir", folder]) == 0
    with open(os.path.join(folder, "results.json")) as f:
        assert json.load(f)["per_run"] == results["per_run"]
    # Without PPO (the CPU default): best-of-n only, the same proxies reused; no PPO column, curve or plot.
    os.remove(os.path.join(folder, "ppo_gold_vs_kl.png"))
    assert run.main(["ensembles_arithmetic", "ppo_kl=()", "--run-dir", folder]) == 0
    with open(os.path.join(folder, "results.json")) as f:
        no_ppo = json.load(f)
    assert no_ppo["ppo"] == {} and not os.path.exists(os.path.join(folder, "ppo_gold_vs_kl.png"))
    assert no_ppo["bon"] == results["bon"] and "PPO β=" not in open(os.path.join(folder, "results.md")).read()
    # Killed inside the ensemble's PPO run, the resumed sweep ends with the same results as the uninterrupted one.
    original, sent = ppo.PPORun.minibatch_indices, []

    def preempting(self, i, epoch, minibatch):
        if (i, epoch, minibatch) == (1, 0, 1) and "ensemble" in self.dir and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, i, epoch, minibatch)

    monkeypatch.setattr(ppo.PPORun, "minibatch_indices", preempting)
    split = str(tmp_path / "split")
    # The shared stages and the single RM's finished run, as a resumed sweep finds them: the kill lands in the
    # ensemble's run, the one left to do.
    for part in ("tokenizer", "base", "sft", "data", os.path.join("runs", "single@0-seed0")):
        shutil.copytree(os.path.join(folder, part), os.path.join(split, part))
    with pytest.raises(stages.StagePreempted):
        run.main(["ensembles_arithmetic", *TINY, "--run-dir", split])
    assert sent and not os.path.exists(os.path.join(split, "results.json"))
    assert run.main(["ensembles_arithmetic", "--run-dir", split]) == 0
    with open(os.path.join(split, "results.json")) as f:
        assert json.load(f)["per_run"] == results["per_run"]


def test_the_paper_scale_config_asks_for_its_checkpoints_and_data():
    mod = run.load_config_module("ensembles_alpaca")
    cfg = mod.config()
    with pytest.raises(ValueError, match="base.hf_checkpoint"):
        mod.validate(cfg)
    with pytest.raises(ValueError, match="gold_model"):
        mod.validate(run.apply_overrides(cfg, ["base.hf_checkpoint=/models/p"]))
    with pytest.raises(ValueError, match="task.data_dir"):
        mod.validate(run.apply_overrides(cfg, ["base.hf_checkpoint=/models/p", "gold_model=/g", "rm_backbone=/r"]))
    assert cfg.base.dtype == "bfloat16" and cfg.settings.mesh.fsdp == -1 and cfg.variants["multihead"].heads == 4
