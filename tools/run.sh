#!/usr/bin/env bash
# Quick start, part 1: set up .venv if missing, then run the main job on built-in data on CPU.
# Extra arguments go to the driver: overrides such as seeds=(0,) or --run-dir DIR (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup.sh"
cd "$root"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec .venv/bin/python -m experiments.run irl_arithmetic "$@"
