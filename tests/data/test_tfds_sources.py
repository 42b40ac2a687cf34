import time

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from jax_irl.data import tfds_sources  # noqa: E402


@pytest.mark.parametrize("task", sorted(tfds_sources.TASKS))
def test_tasks_format_mock_records_as_prompt_response(task):
    with tfds.testing.mock_data(num_examples=4):
        records = tfds_sources.load_examples(task, "train")
        assert len(records) == 4
        assert len(tfds_sources.load_examples(task, "train", limit=2)) == 2
    for r in records:
        assert set(r) == {"prompt", "response"} and r["response"].startswith(" ")
        assert isinstance(r["prompt"], str) and len(r["prompt"]) > 3


def test_unprepared_dataset_fails_at_once_with_instructions(tmp_path):
    start = time.time()
    with pytest.raises(tfds_sources.DatasetNotPreparedError, match=r"(?s)'gsm8k'.*not prepared.*download_and_prepare"):
        tfds_sources.load_examples("gsm8k", "train", data_dir=str(tmp_path))
    assert time.time() - start < 30  # no download attempt, no retries
    with pytest.raises(ValueError, match="unknown TFDS task 'squad'"):
        tfds_sources.load_examples("squad", "train")


def test_every_task_is_evaluated_on_a_held_out_split():
    """tldr used to be scored on its own training split (reddit_tifu/long has no other): every task now names a
    held-out split that its dataset has, and a task that names 'train' is refused where it is declared."""
    import dataclasses

    from jax_irl import tasks

    for name, spec in tfds_sources.TASKS.items():
        assert spec.eval_split in ("test", "validation"), name
        with tfds.testing.mock_data(num_examples=3):
            data = tasks.load(tasks.TaskConfig(name=name, train_examples=3, eval_examples=2))
        assert len(data.train_prompts) == 3 and len(data.eval_prompts) == 2
    assert tfds_sources.TASKS["tldr"].dataset == "reddit_tifu/long_split"
    with pytest.raises(ValueError, match="'gsm8k' would evaluate on its training split"):
        dataclasses.replace(tfds_sources.TASKS["gsm8k"], eval_split="train")
