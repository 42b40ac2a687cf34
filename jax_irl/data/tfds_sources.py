"""TFDS datasets read through ``tfds.data_source`` (array_record, no TensorFlow), formatted as prompt/response.

Never downloads: a dataset that is not prepared under the data directory raises at once with the command that
prepares it. Tasks: gsm8k (grade-school math, GSM8K's '####' answers), xsum (summarisation), tldr
(reddit_tifu/long_split: TL;DR summaries), wmt_de_en (wmt14 German -> English). Each task trains on its
'train' split and is evaluated on its held-out ``eval_split``.

Against the data Wulfmeier et al. 2024 name: GSM8K and XSUM are the same datasets. Their 'TLDR' is Reddit
TL;DR summarisation; its usual version (Stiennon et al. 2020) is a filtered subset (about 123k posts) of
Webis-TLDR-17, which TFDS ships as ``reddit`` with a train split only. ``tldr`` here reads TFDS
``reddit_tifu/long_split`` instead (Kim et al. 2019: posts of r/tifu only, their TL;DR lines as summaries,
about 42k), a smaller and narrower corpus of the same kind, with fixed train/validation/test splits (80/10/10,
those of PEGASUS). Their 'WMT22' has no TFDS builder (the newest is wmt19); ``wmt_de_en`` reads wmt14 German ->
English. For their exact data, write it as a JSONL file of prompt/response records and use task 'jsonl'.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Dict, List, Optional


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


@dataclasses.dataclass(frozen=True)
class TfdsTask:
    dataset: str  # TFDS name (with config)
    module: str  # the tensorflow_datasets module that registers the builder
    format: Callable[[Dict], Dict[str, str]]
    reference_field: str  # the record field that holds the reference output
    eval_split: str = "test"  # the held-out split evaluated on (never 'train')

    def __post_init__(self):
        if self.eval_split == "train":
            raise ValueError(f"TFDS task {self.dataset!r} would evaluate on its training split; name a held-out "
                             f"eval_split")


TASKS: Dict[str, TfdsTask] = {
    "gsm8k": TfdsTask("gsm8k", "tensorflow_datasets.text",
                      lambda r: {"prompt": f"Question: {_text(r['question'])}\nAnswer:",
                                 "response": " " + _text(r["answer"])}, "answer"),
    "xsum": TfdsTask("xsum", "tensorflow_datasets.summarization",
                     lambda r: {"prompt": f"Summarize:\n{_text(r['document'])}\nSummary:",
                                "response": " " + _text(r["summary"])}, "summary"),
    "tldr": TfdsTask("reddit_tifu/long_split", "tensorflow_datasets.summarization",
                     lambda r: {"prompt": f"{_text(r['documents'])}\nTL;DR:", "response": " " + _text(r["tldr"])},
                     "tldr"),
    "wmt_de_en": TfdsTask("wmt14_translate/de-en", "tensorflow_datasets.translate",
                          lambda r: {"prompt": f"Translate German to English:\n{_text(r['de'])}\nEnglish:",
                                     "response": " " + _text(r["en"])}, "en"),
}


class DatasetNotPreparedError(FileNotFoundError):
    pass


def load_examples(task: str, split: str, *, data_dir: Optional[str] = None,
                  limit: Optional[int] = None) -> List[Dict[str, str]]:
    """Prompt/response records of a TFDS task's split (the first ``limit`` of them)."""
    if task not in TASKS:
        raise ValueError(f"unknown TFDS task {task!r}; available: {sorted(TASKS)}")
    spec = TASKS[task]
    import tensorflow_datasets as tfds

    importlib.import_module(spec.module)  # registers the builder
    try:
        source = tfds.data_source(spec.dataset, split=split, data_dir=data_dir, download=False)
    except Exception as err:  # tfds raises assorted errors for a missing or TFRecord-only preparation
        where = data_dir or "the default TFDS data directory (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        raise DatasetNotPreparedError(
            f"TFDS dataset {spec.dataset!r} (split {split!r}) is not prepared as array_record in {where}. "
            f"Prepare it once, with network access:\n  python -c \"import tensorflow_datasets as tfds, {spec.module}; "
            f"tfds.builder('{spec.dataset}'"
            + (f", data_dir='{data_dir}'" if data_dir else "")
            + ").download_and_prepare(file_format='array_record')\"\n"
            f"(tfds said: {type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    n = len(source) if limit is None else min(limit, len(source))
    return [spec.format(source[i]) for i in range(n)]
