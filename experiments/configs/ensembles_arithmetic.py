"""Reward-model ensembles against over-optimisation (Coste et al. 2024's protocol; Ahmed et al.'s shared-encoder
K heads) on built-in arithmetic, CPU-sized.

Gold: the programmatic graded reward (``arithmetic.graded_reward``, in [0, 1]). pi0: the shared base
(``experiments.lm_base``) fine-tuned with MLE on the task's solutions. Proxies: reward models on pi0's backbone
(a copy; last counted token's hidden state, linear heads), trained by Bradley-Terry on a limited set of
gold-labelled pairs of pi0's own samples (best against worst of ``candidates`` per prompt), with and without
label noise (a fraction of the labels swapped), one run per (kind, noise, seed):
  single (one RM), multihead (one encoder, K heads, trained or frozen), ensemble (K independent RMs, vmapped).
Optimising against each proxy:
- best-of-n on held-out prompts with the unbiased estimator from N samples per prompt, for n up to N, with
  KL_bon = log n - (n - 1) / n on the x axis, under the mean, min (WCO), UWO (lambda 0.5) and LCB (mean - 1 std)
  aggregations;
- PPO from pi0 against the proxy (UWO, lambda 0.1, as in Coste et al.) at each KL coefficient in ``ppo_kl``
  (none by default), the gold and proxy rewards of each rollout logged against its KL (k1 and Coste's k2).
Results: results.json, results.md (mean +- standard error over seeds), PNG plots of gold (and proxy) reward
against KL for best-of-n and for PPO.

    python -m experiments.run ensembles_arithmetic [seeds=(0,1,2)] [methods=(single,multihead,ensemble)]
        [label_noise=(0,0.25)] [ppo_kl=(0,0.05)] [bon_samples=256] [held_out=0.15]
        [variants.frozen.kind=multihead variants.frozen.heads=3 variants.frozen.freeze_encoder=true]
"""

from __future__ import annotations

import dataclasses

from experiments.lm_base import SETTINGS_RESUMABLE
from experiments.recipes.ensembles import EnsemblesConfig, run, validate  # noqa: F401  (the driver's entry points)
from jax_irl.algorithms import reward_models as rm

RESUMABLE = SETTINGS_RESUMABLE + ("methods", "seeds", "variants", "label_noise", "ppo_kl")
# multihead_frozen is the paper's set-up (Ahmed et al.: K heads on a frozen pretrained encoder); multihead trains
# the encoder under its heads. The ensemble's members each see their own Poisson bootstrap of every batch (an
# online bootstrap: their own resample of the data, not only their own initialisation).
VARIANTS = {"single": rm.RMKind(), "multihead": rm.RMKind("multihead", heads=3),
            "multihead_frozen": rm.RMKind("multihead", heads=3, freeze_encoder=True),
            "ensemble": rm.RMKind("ensemble", heads=3, bootstrap="poisson")}
# The head-count ablation, declared (methods=(heads1,heads2,heads4,heads8) runs it): K heads on one encoder.
HEADS = {f"heads{k}": rm.RMKind("multihead", heads=k) for k in (1, 2, 4, 8)}
DEFAULT_METHODS = tuple(VARIANTS)


def config() -> EnsemblesConfig:
    # Proxies that learn: 4000 labelled prompts (best against worst of 8 of pi0's samples; 15% of the pairs held
    # out, about 550), 300 steps of 32 pairs (200 steps stopped at a held-out accuracy of 0.63). The proxies'
    # training is most of the run (the 3-member ensemble alone 3.2-3.4 times a single model's), so within the CPU
    # budget the default spends it on best-of-n: 128 samples per held-out prompt, clean labels, no PPO.
    # Declared: ppo_kl=(0,) (PPO without a KL term against each proxy, 12 iterations; about 2 more minutes) or
    # ppo_kl=(0,0.05) (and the penalised arm), bon_samples=256, label_noise=(0,0.25) (the noisy arm).
    base = EnsemblesConfig()
    return EnsemblesConfig(
        variants=dict(VARIANTS, **HEADS), methods=DEFAULT_METHODS,
        task=dataclasses.replace(base.task, train_examples=4000), pairs=4000, candidates=8, held_out=0.15,
        label_noise=(0.0,), ppo_kl=(), bon_samples=128,
        rm_stage=dataclasses.replace(base.rm_stage, steps=300, batch_size=32))
