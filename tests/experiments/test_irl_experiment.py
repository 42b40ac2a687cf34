import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import run
from jax_irl import checkpoint, parallel, stages, sweep
from jax_irl.algorithms import iqlearn

TINY = ["methods=(mle,mle+entropy,iqlearn:0.1,online:0.1)", "seeds=(0)", "base.pretrain.steps=6", "finetune.steps=4",
        "finetune.optimizer.warmup_steps=1", "base.pretrain.optimizer.warmup_steps=1", "task.train_examples=64",
        "task.eval_examples=4", "finetune.batch_size=8", "evaluation.num_samples=2", "evaluation.max_new_tokens=8",
        "base.vocab_size=300", "base.model.hidden_size=32", "base.model.intermediate_size=64", "settings.save_every=2",
        "base.calculation_rows=16", "evaluation.temperatures=(0,0.5,1)", "control=mle+entropy"]
GAIL = ["adversarial.gail.rounds=2", "adversarial.gail.disc_prompts=8", "adversarial.gail.disc_stage.steps=2",
        "adversarial.gail.disc_stage.batch_size=4", "adversarial.gail.disc_stage.optimizer.warmup_steps=1",
        "adversarial.gail.policy.iterations=1", "adversarial.gail.policy.prompts_per_rollout=4",
        "adversarial.gail.policy.group_size=2", "adversarial.gail.policy.max_new_tokens=8",
        "adversarial.gail.policy.epochs=1", "adversarial.gail.policy.minibatches=1", "adversarial.gail.mle_steps=2",
        "adversarial.gail.mle_batch=8"]


def test_methods_are_typed_variants_overridable_and_addable_from_the_command_line():
    mod = run.load_config_module("irl_arithmetic")
    cfg = run.apply_overrides(mod.config(), ["variants.iqlearn:0.1.gamma=0.9", "variants.mine.kind=online",
                                             "variants.mine.td_weight=0.5", "methods=(mle,mine)"])
    assert cfg.variants["iqlearn:0.1"] == iqlearn.Method("iqlearn", td_weight=0.1, gamma=0.9)
    assert cfg.variants["mine"] == iqlearn.Method("online", td_weight=0.5) and cfg.methods == ("mle", "mine")
    mod.validate(cfg)
    # The saved config.json turns back into the same config, the added variant included.
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert run.apply_overrides(mod.config(), run.to_overrides(saved)) == cfg
    with pytest.raises(run.ConfigError, match="td_weight must be >= 0"):
        run.apply_overrides(mod.config(), ["variants.mle.td_weight=-1"])
    with pytest.raises(run.ConfigError, match="kind must be one of"):
        run.apply_overrides(mod.config(), ["variants.x.kind=ppo"])
    with pytest.raises(run.ConfigError, match="unknown config key 'variants.mle.tdweight'"):
        run.apply_overrides(mod.config(), ["variants.mle.tdweight=1"])
    with pytest.raises(ValueError, match=r"unknown: \['dpo'\]"):
        mod.validate(run.apply_overrides(mod.config(), ["methods=(mle,dpo)"]))
    with pytest.raises(ValueError, match=r"control 'mle\+flat' must name a variant"):
        mod.validate(run.apply_overrides(mod.config(), ["control=mle+flat"]))
    # The adversarial family: nested fields of a variant, a new one, and the checks across fields.
    cfg = run.apply_overrides(mod.config(), ["adversarial.gail.policy.iterations=2", "adversarial.gail.rounds=1",
                                             "adversarial.g2.reward=gail", "adversarial.g2.policy.kl_coef=0.1",
                                             "methods=(mle,gail,g2)"])
    assert cfg.adversarial["gail"].policy.iterations == 2 and cfg.adversarial["gail"].rounds == 1
    assert cfg.adversarial["g2"].reward == "gail" and cfg.adversarial["g2"].policy.kl_coef == 0.1
    mod.validate(cfg)
    saved = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert run.apply_overrides(mod.config(), run.to_overrides(saved)) == cfg
    with pytest.raises(run.ConfigError, match="GRPOConfig.group_size must be an int >= 2"):
        run.apply_overrides(mod.config(), ["adversarial.gail.policy.group_size=1"])
    with pytest.raises(ValueError, match=r"adversarial.gail.policy.max_new_tokens \(48\) must equal "
                                         r"evaluation.max_new_tokens \(32\)"):
        mod.validate(run.apply_overrides(mod.config(), ["evaluation.max_new_tokens=32"]))
    with pytest.raises(ValueError, match="adversarial.gail samples 64 prompts a round"):
        mod.validate(run.apply_overrides(mod.config(), ["task.train_examples=40", "methods=(mle,gail)"]))
    # The small-data ablation needs that many training problems; refused before anything runs.
    with pytest.raises(ValueError, match=r"variant 'mle@250' trains on 250 examples but task.train_examples is 100"):
        mod.validate(run.apply_overrides(mod.config(), ["task.train_examples=100"]))


def test_base_fingerprint_depends_on_the_base_and_task_only(tmp_path):
    """The base stage is resumed (not retrained, not refused) under a config that differs only after it."""
    from experiments import lm_base
    from jax_irl import tasks

    mod = run.load_config_module("irl_arithmetic")
    cfg = run.apply_overrides(mod.config(), TINY)
    data = tasks.load(cfg.task)
    tok = lm_base.tokenizer(cfg.base, data, str(tmp_path))
    base_run = stages.Run.start(str(tmp_path), stages.RunSettings(save_every=3))
    first = lm_base.base_model(cfg.base, cfg.task, tok, data.train_prompts, base_run)
    tuned = run.apply_overrides(cfg, ["finetune.steps=7", "finetune.optimizer.learning_rate=1e-5",
                                      "evaluation.temperatures=(0.7)", "variants.mle.gamma=0.5"])
    again = lm_base.base_model(tuned.base, tuned.task, tok, data.train_prompts, base_run)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(first, nnx.Param), nnx.state(again, nnx.Param))
    for change in ("base.pretrain.steps=5", "base.calculation_rows=3", "task.max_number=9"):
        other = run.apply_overrides(cfg, [change])
        with pytest.raises(checkpoint.CheckpointMismatchError):
            lm_base.base_model(other.base, other.task, tok, data.train_prompts, base_run)


def test_pretraining_rows_are_questions_and_calculations_never_solutions():
    from jax_irl.data.tokenizer import train_bpe

    from experiments import lm_base
    from jax_irl import tasks

    mod = run.load_config_module("irl_arithmetic")
    cfg = run.apply_overrides(mod.config(), ["task.train_examples=40", "base.calculation_rows=10",
                                             "task.eval_examples=4"])
    prompts, responses, _, _ = tasks.load(cfg.task)
    tok = train_bpe([p + r for p, r in zip(prompts, responses)], vocab_size=300)
    rows = lm_base.pretraining_rows(cfg.base, cfg.task, tok, prompts)
    assert rows["tokens"].shape[0] == 50 and rows["mask"].shape[1] == rows["tokens"].shape[1] - 1
    texts = [tok.decode(r[1:][m > 0]) for r, m in zip(rows["tokens"], rows["mask"])]
    assert texts[:40] == prompts  # the question rows count the question's tokens and nothing after them
    assert all("?" not in t and "####" not in t and t.count(" = ") == cfg.base.calculations_per_row for t in texts[40:])
    assert (rows["tokens"][:, -1] != tok.pad_id).any()  # cut to the longest row
    assert not any(r.strip() and r.strip() in " ".join(texts) for r in responses)  # no solution appears whole


@pytest.mark.slow
def test_irl_experiment_end_to_end_and_resume(tmp_path, capsys):
    """The sweep with GAIL as the third family beside MLE, the control and IQLearn, then a resume."""
    folder = str(tmp_path / "irl")
    tiny = [t for t in TINY if not t.startswith("methods=")] + ["methods=(mle,mle+entropy,iqlearn:0.1,online:0.1,gail)"]
    assert run.main(["irl_arithmetic", *tiny, *GAIL, "--run-dir", folder]) == 0
    out = capsys.readouterr().out
    assert "| mle | 0.5 |" in out and "| online:0.1 | 1 |" in out and "| gail | 1 |" in out
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    assert set(results["summary"]) == {"mle", "mle+entropy", "iqlearn:0.1", "online:0.1", "gail"}
    for method, temps in results["summary"].items():
        assert set(temps) == {"0", "0.5", "1"}
        for vals in temps.values():
            assert 0.0 <= vals["accuracy"][0] <= 1.0 and 0.0 <= vals["distinct_2"][0] <= 1.0
            assert 0.0 <= vals["self_bleu"][0] <= 100.0 and vals["entropy"][0] > 0
        assert temps["0"]["self_bleu"][0] == pytest.approx(100.0)  # greedy: a prompt's samples are identical
    # Accuracy at matched diversity against MLE, read off the frontiers (one seed here: no standard error).
    matched = results["matched_diversity"]
    assert set(matched) == {"mle+entropy", "iqlearn:0.1", "online:0.1", "gail"}
    for m in matched.values():
        assert 0.0 <= m["self_bleu"] <= 100.0 and 0.0 <= m["accuracy"][0] <= 1.0 and -1.0 <= m["gap"][0] <= 1.0
        assert m["reference"] == "mle"
    # The extracted rewards scored on the 4 held-out (correct, wrong) pairs; the diverse expert's own Self-BLEU.
    assert set(results["reward_pair_accuracy"]) == set(results["summary"])
    assert all(v[0] in (0.0, 0.25, 0.5, 0.75, 1.0) for v in results["reward_pair_accuracy"].values())
    assert 0.0 < results["expert_self_bleu"] <= 100.0
    # Distance from the expert's distribution over each problem's solution texts, and the expert's own level.
    for temps in results["summary"].values():
        for vals in temps.values():
            assert 0.0 <= vals["expert_tv"][0] <= 1.0 and 0.0 <= vals["expert_coverage"][0] <= 1.0
            assert 0.0 <= vals["expert_valid"][0] <= 1.0
    own = results["expert_own_match"]
    assert own["valid"] == 1.0 and 0.0 <= own["tv"] < 1.0 and 0.0 < own["coverage"] <= 1.0
    assert os.path.getsize(os.path.join(folder, "accuracy_vs_diversity.png")) > 10_000
    assert os.path.getsize(os.path.join(folder, "metrics_vs_temperature.png")) > 10_000
    with open(os.path.join(folder, "results.md")) as f:
        text = f.read()
    entropy_rows = len(results["matched_entropy"])
    assert text.count("\n| ") == 15 + 6 + (1 + entropy_rows if entropy_rows else 0)
    # ... and against the entropy-bonus control at matched token entropy, gaps paired by seed
    assert "| method | against | matched entropy | accuracy there | gap (paired by seed) |" in text
    assert {"mle", "iqlearn:0.1", "online:0.1"} <= set(results["matched_entropy"]) <= {
        "mle", "iqlearn:0.1", "online:0.1", "gail"}
    for m in results["matched_entropy"].values():
        assert m["entropy"] > 0 and 0.0 <= m["accuracy"][0] <= 1.0 and -1.0 <= m["gap"][0] <= 1.0
    assert "| method | against | matched Self-BLEU | accuracy there | gap | reward pair accuracy |" in text
    assert "| TV to the expert | expert coverage |" in text
    assert "| mle+entropy | mle | " in text
    # The online run trained on its own samples: its logged value gaps are there.
    with open(os.path.join(folder, "runs", "online_0.1-seed0", "metrics.jsonl")) as f:
        assert all("policy_value_gap" in json.loads(line) for line in f)
    # GAIL: its discriminator's buffer grows by replay, and every stage left checkpoints
    with open(os.path.join(folder, "runs", "gail-seed0", sweep.RESULT_FILE)) as f:
        rounds = json.load(f)["result"]["gail_rounds"]
    assert [r["pairs"] for r in rounds] == [8.0, 16.0]
    for r in rounds:
        assert 0.0 <= r["disc_data_accuracy"] <= 1.0 and 0.0 <= r["disc_policy_accuracy"] <= 1.0
        assert np.isfinite(r["policy_reward"]) and np.isfinite(r["policy_kl"])
    for part in ("mle", "round_0/disc", "round_0/policy", "round_0/mle", "round_1/policy"):
        assert os.path.isdir(os.path.join(folder, "runs", "gail-seed0", part, "checkpoints")), part
    # Resume with one more seed: finished runs are reused as they are, the new seed runs.
    before = results["per_run"]["mle"]["0"]
    assert run.main(["irl_arithmetic", "seeds=(0,1)", "methods=(mle,mle+entropy)", "--run-dir", folder]) == 0
    with open(os.path.join(folder, "results.json")) as f:
        again = json.load(f)
    assert again["per_run"]["mle"]["0"] == before and set(again["per_run"]["mle"]) == {"0", "1"}
    # A finished run is never reused under a changed variant: refused, with the difference named.
    saved = open(os.path.join(folder, "config.json")).read()
    with pytest.raises(sweep.StaleResultError, match="variant.gamma: finished run has 0.9, now 0.5"):
        run.main(["irl_arithmetic", "variants.mle.gamma=0.5", "--run-dir", folder])
    assert open(os.path.join(folder, "config.json")).read() == saved  # a refused resume leaves the folder as it was
