"""Preference learning as Gibbs sampling (Xiong et al. 2023/24) on built-in arithmetic, CPU-sized.

pi0 is the IRL experiment's base (``experiments.lm_base``) fine-tuned with MLE on the task's solutions. The
preference oracle is a graded, programmatic gold reward (``arithmetic.graded_reward``: final answer, true
calculation steps, format). Each method variant (offline DPO, RAFT and RSO on multi-step rejection sampling,
online iterative DPO, hybrid) runs at every KL strength beta (eta) in ``betas`` and every seed; each run reports
the gold reward of its policy's samples on held-out prompts, KL(pi || pi0) and the win rate against pi0, so
every method traces a gold reward against KL frontier. Results: results.json, results.md (mean +- standard
error over seeds), PNG plots.

    python -m experiments.run gshf_arithmetic [seeds=(0,1,2)] [methods=(online,offline_dpo)] [betas=(0.1,0.5)]
        [variants.online.warm_start=true] [oracle.temperature=0.1]
"""

from __future__ import annotations

from experiments.lm_base import SETTINGS_RESUMABLE
from experiments.recipes.gshf import GSHFConfig, UncertaintyRM, run, validate  # noqa: F401  (the driver's entry points)
from jax_irl.algorithms.gshf import GSHFMethod

RESUMABLE = SETTINGS_RESUMABLE + ("methods", "seeds", "variants", "betas")

# RAFT and RSO share one sampler: two steps (eta 3, then beta) over fresh pools of 4, 16 samples of pi0 a prompt;
# 3 stays above every beta of the sweep. RSO trains DPO on pairs of the accepted samples, RAFT fine-tunes on them.
VARIANTS = {"offline_dpo": GSHFMethod("offline_dpo"),
            "raft": GSHFMethod("raft", rs_schedule=(3.0,)), "rso": GSHFMethod("rso", rs_schedule=(3.0,)),
            "online": GSHFMethod("online"), "hybrid": GSHFMethod("hybrid"),
            # Xiong et al.'s offline pessimism: offline DPO with the margin c (Gamma_rejected - Gamma_chosen), Gamma a
            # K-head reward model's disagreement (``UncertaintyRM``); c = 1 against heads' stds of about 0.1-1.
            "pessimistic_dpo": GSHFMethod("offline_dpo", pessimism=1.0)}


def config() -> GSHFConfig:
    # betas (0.1, 0.3, 1.0), matched KLs (0.25, 0.5, 1.0), 2000 training and 64 held-out prompts, pi0 from 300
    # MLE steps: the recipe's defaults are this CPU size.
    return GSHFConfig(variants=dict(VARIANTS), methods=tuple(VARIANTS))
