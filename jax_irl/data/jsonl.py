"""Local JSONL datasets: prompt/response records (imitation), prompt/chosen/rejected records (preferences), and
prompt/response/tests records (programs, ``read_program_records``).

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


def read_program_records(path: str) -> List[Dict[str, object]]:
    """SPoC-style program records: {"prompt", "response", "tests": [[stdin, expected stdout], ...]} (tests may
    also be objects {"stdin", "expected"}). Returns records with tests as [stdin, expected] pairs; a record
    without a test, or a test that is not two strings, is an error naming the file and line."""
    records = []
    with open(path, "rb") if os.path.exists(path) else _missing(path) as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{path}:{number}: not a JSON record ({err})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            for field in ("prompt", "response"):
                if not isinstance(record.get(field), str):
                    raise ValueError(f"{path}:{number}: field {field!r} must be a string (a program record needs "
                                     f"prompt, response and tests)")
            tests = record.get("tests")
            if not isinstance(tests, list) or not tests:
                raise ValueError(f"{path}:{number}: field 'tests' must be a non-empty list of [stdin, expected]")
            pairs = []
            for k, test in enumerate(tests):
                if isinstance(test, dict):
                    test = [test.get("stdin"), test.get("expected")]
                if not (isinstance(test, list) and len(test) == 2 and all(isinstance(x, str) for x in test)):
                    raise ValueError(f"{path}:{number}: test {k} must be [stdin, expected] (two strings); got "
                                     f"{str(test)[:80]}")
                pairs.append(test)
            records.append({"prompt": record["prompt"], "response": record["response"], "tests": pairs})
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def _missing(path: str):
    raise FileNotFoundError(f"no such JSONL file: {path}")


def write_jsonl(path: str, records: Iterable[Dict[str, str]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
