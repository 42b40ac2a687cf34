"""The paper-scale config, run at toy size: a local Hugging Face checkpoint, GSM8K through TFDS mock data, bf16
compute, chunked-vocabulary losses, FSDP over the 8 test devices and batched evaluation."""

import json
import os

import pytest

from experiments import run

tfds = pytest.importorskip("tensorflow_datasets")


def test_gsm8k_config_requires_a_checkpoint(tmp_path, capsys):
    assert run.main(["irl_gsm8k", "--run-dir", str(tmp_path / "r")]) == 2
    assert "pass base.hf_checkpoint=" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_gsm8k_config_runs_on_a_local_checkpoint_and_mock_data(tmp_path, capsys, tiny_hf_llama):
    ckpt, _ = tiny_hf_llama
    folder = str(tmp_path / "run")
    tiny = [f"base.hf_checkpoint={ckpt}", "methods=(mle,online:0.1)", "seeds=(0)", "finetune.steps=2",
            "finetune.optimizer.warmup_steps=1", "task.train_examples=16", "task.eval_examples=3",
            "finetune.batch_size=8", "evaluation.num_samples=2", "evaluation.max_new_tokens=4",
            "variants.online:0.1.policy_prompts=8", "base.max_length=48", "evaluation.prompts_per_batch=2",
            "evaluation.rows_per_score=3", "settings.vocab_chunk=8192", "settings.save_every=2", "evaluation.temperatures=(0,1)"]
    with tfds.testing.mock_data(num_examples=16):
        assert run.main(["irl_gsm8k", *tiny, "--run-dir", folder]) == 0
    assert "| online:0.1 | 1 |" in capsys.readouterr().out
    with open(os.path.join(folder, "results.json")) as f:
        summary = json.load(f)["summary"]
    assert set(summary) == {"mle", "online:0.1"}
    for temps in summary.values():
        assert set(temps) == {"0", "1"}  # greedy and T = 1
        assert all(vals["entropy"][0] > 0 and 0 <= vals["accuracy"][0] <= 1 for vals in temps.values())
    with open(os.path.join(folder, "runs", "online_0.1-seed0", "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2]
    assert not os.path.exists(os.path.join(folder, "base"))  # no pretraining: the checkpoint is the base
