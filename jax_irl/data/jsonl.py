"""Local JSONL datasets: prompt/response records (imitation) and prompt/chosen/rejected records (preferences).

Every problem names the file and the line: invalid JSON, a missing or non-string field, an empty file.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List

SCHEMAS = {
    "sft": ("prompt", "response"),
    "preference": ("prompt", "chosen", "rejected"),
}


def read_jsonl(path: str, kind: str = "sft") -> List[Dict[str, str]]:
    """Records of the given kind ('sft' or 'preference') from a JSONL file; blank lines are skipped."""
    if kind not in SCHEMAS:
        raise ValueError(f"kind must be one of {sorted(SCHEMAS)}; got {kind!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such JSONL file: {path}")
    fields = SCHEMAS[kind]
    records = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid UTF-8 (byte {err.start}: {raw[err.start:err.start + 1]!r})"
                                 ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            for field in fields:
                if field not in record:
                    raise ValueError(f"{path}:{number}: missing field {field!r} (a {kind} record needs {fields})")
                if not isinstance(record[field], str):
                    raise ValueError(f"{path}:{number}: field {field!r} must be a string, got "
                                     f"{type(record[field]).__name__}")
            records.append({k: record[k] for k in fields})
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def write_jsonl(path: str, records: Iterable[Dict[str, str]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
