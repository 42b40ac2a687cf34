#!/usr/bin/env bash
# Quick start, part 2: set up .venv if missing, then run the full test suite (slow end-to-end tests included).
# Extra arguments go to pytest, e.g. `bash tools/test.sh -m "not slow" -k dpo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup.sh"
cd "$root"
workers="${PYTEST_WORKERS:-$(nproc)}"
exec .venv/bin/python -m pytest -n "$workers" --dist worksteal -p no:cacheprovider "$@" tests
