import json
import os

import pytest

from experiments import run
from jax_irl.algorithms import iqlearn

TINY = ["methods=(mle,iqlearn:0.1,online:0.1)", "seeds=(0)", "pretrain_steps=6", "finetune_steps=4",
        "optimizer.total_steps=4", "optimizer.warmup_steps=1", "train_examples=64", "eval_prompts=4",
        "batch_size=8", "num_samples=2", "max_new_tokens=8", "online_prompts_per_step=8", "vocab_size=300",
        "model.hidden_size=32", "model.intermediate_size=64", "save_every=2", "calculation_rows=16"]


def test_method_names_parse_and_bad_ones_are_refused():
    assert iqlearn.Method.parse("online:0.1") == iqlearn.Method("online", 0.1)
    for bad in ("ppo", "iqlearn", "iqlearn:-1", "online:x"):
        with pytest.raises(ValueError, match="must be 'mle'"):
            iqlearn.Method.parse(bad)
    with pytest.raises(run.ConfigError, match="must be 'mle'"):
        run.apply_overrides(run.load_config_module("irl_arithmetic").config(), ["methods=(mle,dpo:1)"])


def test_base_depends_on_pretraining_fields_only():
    mod = run.load_config_module("irl_arithmetic")
    cfg = mod.config()
    tuned = run.apply_overrides(cfg, ["finetune_steps=7", "optimizer.learning_rate=1e-5", "temperatures=(0.7)"])
    assert mod._fingerprint(cfg, "base") == mod._fingerprint(tuned, "base")
    assert mod._fingerprint(cfg, "mle", seed=0) != mod._fingerprint(tuned, "mle", seed=0)
    for change in ("pretrain_steps=5", "calculation_rows=3", "model.hidden_size=8"):
        assert mod._fingerprint(run.apply_overrides(cfg, [change]), "base") != mod._fingerprint(cfg, "base")


def test_pretraining_rows_are_questions_and_calculations_never_solutions():
    from jax_irl.data.tokenizer import train_bpe

    mod = run.load_config_module("irl_arithmetic")
    cfg = run.apply_overrides(mod.config(), ["train_examples=40", "calculation_rows=10", "eval_prompts=4"])
    prompts, responses, _, _ = mod.load_task(cfg)
    tok = train_bpe([p + r for p, r in zip(prompts, responses)], vocab_size=300)
    rows = mod.pretraining_rows(cfg, tok, prompts)
    assert rows["tokens"].shape[0] == 50 and rows["mask"].shape[1] == rows["tokens"].shape[1] - 1
    texts = [tok.decode(r[1:][m > 0]) for r, m in zip(rows["tokens"], rows["mask"])]
    assert texts[:40] == prompts  # the question rows count the question's tokens and nothing after them
    assert all("?" not in t and "####" not in t and t.count(" = ") == cfg.calculations_per_row for t in texts[40:])
    assert (rows["tokens"][:, -1] != tok.pad_id).any()  # cut to the longest row
    assert not any(r.strip() and r.strip() in " ".join(texts) for r in responses)  # no solution appears whole


def test_summary_table_hand_computed(tmp_path):
    mod = run.load_config_module("irl_arithmetic")
    row = {"accuracy": 0.5, "self_bleu": 80.0, "distinct_1": 0.3, "distinct_2": 0.4, "entropy": 0.2,
           "reward_correlation": float("nan"), "mean_reward": -1.0}
    two = mod.summarise({"mle": {0: {"1": row}, 1: {"1": dict(row, accuracy=0.7, reward_correlation=0.5)}}})
    assert two["mle"]["1"]["accuracy"] == pytest.approx([0.6, 0.1])  # std 0.1414 / sqrt(2)
    assert two["mle"]["1"]["reward_correlation"][0] == 0.5  # the NaN seed is left out
    table = mod.markdown_table(two, 2)
    assert "| mle | 1 | 0.600 ± 0.100 | 80.0 ± 0.0 | 0.400 ± 0.000 | 0.200 ± 0.000 | 0.500 |" in table
    assert "over 2 seeds" in table
    one = mod.summarise({"mle": {0: {"1": row}}})
    assert "| mle | 1 | 0.500 | 80.0 | 0.400 | 0.200 | nan |" in mod.markdown_table(one, 1)
    mod.plot(one, str(tmp_path / "plot.png"))  # NaN error bars are left out, not an error
    assert (tmp_path / "plot.png").stat().st_size > 10_000


@pytest.mark.slow
def test_irl_experiment_end_to_end_and_resume(tmp_path, capsys):
    folder = str(tmp_path / "irl")
    assert run.main(["irl_arithmetic", *TINY, "--run-dir", folder]) == 0
    out = capsys.readouterr().out
    assert "| mle | 0.5 |" in out and "| online:0.1 | 1 |" in out
    with open(os.path.join(folder, "results.json")) as f:
        results = json.load(f)
    assert set(results["summary"]) == {"mle", "iqlearn:0.1", "online:0.1"}
    for method, temps in results["summary"].items():
        assert set(temps) == {"0.5", "1"}
        for vals in temps.values():
            assert 0.0 <= vals["accuracy"][0] <= 1.0 and 0.0 <= vals["distinct_2"][0] <= 1.0
            assert 0.0 <= vals["self_bleu"][0] <= 100.0 and vals["entropy"][0] > 0
    assert os.path.getsize(os.path.join(folder, "accuracy_vs_diversity.png")) > 10_000
    with open(os.path.join(folder, "results.md")) as f:
        assert f.read().count("\n| ") == 6  # 3 methods x 2 temperatures
    # The online run trained on its own samples: its logged value gaps are there.
    with open(os.path.join(folder, "finetune", "online_0.1-seed0", "metrics.jsonl")) as f:
        assert all("policy_value_gap" in json.loads(line) for line in f)
    # Resume with one more seed: finished runs are reused as they are, the new seed runs.
    before = results["per_run"]["mle"]["0"]
    assert run.main(["irl_arithmetic", "seeds=(0,1)", "--run-dir", folder]) == 0
    with open(os.path.join(folder, "results.json")) as f:
        again = json.load(f)
    assert again["per_run"]["mle"]["0"] == before and set(again["per_run"]["mle"]) == {"0", "1"}
