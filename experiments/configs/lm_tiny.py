"""A tiny Llama-style model trained with offline IQLearn on built-in addition problems, on a device mesh,
with Orbax checkpoints; evaluated by greedy exact match. Runs in about a minute on 2 CPU cores.

    python -m experiments.run lm_tiny train.steps=300 td_weight=0.1 settings.mesh.data=-1

A resumed run may train longer (``train.steps``); its learning-rate schedule then spans the new step count.
"""

from __future__ import annotations

from experiments.lm_base import SETTINGS_RESUMABLE
from experiments.recipes.lm_tiny import LMTinyConfig, run  # noqa: F401  (the driver's entry points)

RESUMABLE = ("train.steps",) + SETTINGS_RESUMABLE


def config() -> LMTinyConfig:
    # 300 steps of 64 rows at td_weight 0.1 on 4000 problems with operands below 50: about a minute on 2 CPU cores.
    return LMTinyConfig()
