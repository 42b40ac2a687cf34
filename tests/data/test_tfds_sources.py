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
