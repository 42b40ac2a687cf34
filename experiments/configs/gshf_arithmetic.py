"""Preference learning as Gibbs sampling (Xiong et al. 2023/24) on built-in arithmetic, CPU-sized.

pi0 is the IRL experiment's base (``experiments.lm_base``) fine-tuned with MLE on the task's solutions. The
preference oracle is a graded, programmatic gold reward (``arithmetic.graded_reward``: final answer, true
calculation steps, format). Each method variant (offline DPO, RAFT and RSO on multi-step rejection sampling,
online iterative DPO, hybrid) runs at every KL strength beta (eta) in ``betas`` and every seed; each run reports
the gold reward of its policy's samples on held-out prompts, KL(pi || pi0) and the win rate against pi0, so
every method traces a gold reward against KL frontier. Results: results.json, results.md (mean +- standard
error over seeds), PNG plots.

    python -m experiments.run gshf_arithmetic [seeds=(0,1,2)] [methods=(online,offline_dpo,raft)] [betas=(0.1,0.5)]
        [variants.online.warm_start=true] [oracle.temperature=0.1]
"""

from __future__ import annotations

from experiments.lm_base import SETTINGS_RESUMABLE
from experiments.recipes.gshf import GSHFConfig, UncertaintyRM, run, validate  # noqa: F401  (the driver's entry points)
from jax_irl.algorithms.gshf import GSHFMethod

RESUMABLE = SETTINGS_RESUMABLE + ("methods", "seeds", "variants", "betas")

# The label budget: 4 rounds x 128 prompts = 512 labelled prompts per run, the best against the worst of 8 of pi0's
# samples (offline) or the main agent's sample against the best of 8 (online). RAFT and RSO share one sampler: two
# steps (eta 3, then beta) over fresh pools of 4, 16 samples of pi0 a prompt; 3 stays above every beta of the sweep.
# RSO trains DPO on pairs of the accepted samples, RAFT fine-tunes on them.
BUDGET = dict(rounds=4, prompts_per_round=128)
VARIANTS = {"offline_dpo": GSHFMethod("offline_dpo", candidates=8, **BUDGET),
            "raft": GSHFMethod("raft", rs_schedule=(3.0,), **BUDGET),
            "rso": GSHFMethod("rso", rs_schedule=(3.0,), **BUDGET),
            "online": GSHFMethod("online", candidates=8, **BUDGET),
            "hybrid": GSHFMethod("hybrid", candidates=8, **BUDGET),
            # Xiong et al.'s offline pessimism: offline DPO with the margin c (Gamma_rejected - Gamma_chosen), Gamma a
            # K-head reward model's disagreement (``UncertaintyRM``); c = 1 against heads' stds of about 0.1-1.
            "pessimistic_dpo": GSHFMethod("offline_dpo", pessimism=1.0, candidates=8, **BUDGET)}
# The default runs the paper's comparison (offline against online and hybrid iterative DPO); the rejection-sampling
# baselines and pessimism are declared: methods=(offline_dpo,raft,rso,...).
METHODS = ("offline_dpo", "online", "hybrid")


def config() -> GSHFConfig:
    # betas (0.1, 0.3, 1.0), matched KLs (0.25, 0.5, 1.0), 2000 training and 64 held-out prompts, pi0 from 300
    # MLE steps: the recipe's defaults are this CPU size.
    return GSHFConfig(variants=dict(VARIANTS), methods=METHODS)
