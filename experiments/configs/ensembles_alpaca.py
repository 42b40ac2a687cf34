"""Reward-model ensembles at paper scale (Coste et al. 2024's AlpacaFarm protocol; Ahmed et al.'s K heads): the
policy, the gold reward model and the proxies' backbone from local Hugging Face checkpoints, prompts from a
local JSONL file of {"prompt", "response"} records (AlpacaFarm-style instructions), bf16 compute, an FSDP mesh,
vocabulary-chunked log-probs. The same protocol and outputs as ``ensembles_arithmetic``: proxies (single,
multihead, ensemble; K = 4) trained on gold-labelled pairs of the policy's samples, with and without 25% label
noise, then best-of-n up to n = 256 and PPO against the proxy's UWO at two KL coefficients, three seeds.

    python -m experiments.run ensembles_alpaca base.hf_checkpoint=/models/policy-1b gold_model=/models/gold-rm-7b \\
        rm_backbone=/models/pythia-160m task.data_dir=/data/alpaca_instructions.jsonl
"""

from __future__ import annotations

from experiments import lm_base
from experiments.configs.ensembles_arithmetic import RESUMABLE  # noqa: F401
from experiments.recipes import ensembles
from experiments.recipes.ensembles import EnsemblesConfig, run  # noqa: F401  (the driver's entry points)
from jax_irl import parallel, stages, tasks, train
from jax_irl.algorithms import ppo
from jax_irl.algorithms import reward_models as rm


def config() -> EnsemblesConfig:
    return EnsemblesConfig(
        task=tasks.TaskConfig(name="jsonl", data_dir=None, train_examples=20_000, eval_examples=500),
        base=lm_base.BaseConfig(hf_checkpoint=None, dtype="bfloat16", max_length=512),
        skip_sft=True,
        pairs=10_000, candidates=4, label_noise=(0.0, 0.25),
        rm_stage=stages.StageConfig(steps=2000, batch_size=64, optimizer=train.OptimizerConfig(
            learning_rate=1e-5, schedule="cosine", warmup_steps=100, weight_decay=0.0)),
        variants={"single": rm.RMKind(), "multihead": rm.RMKind("multihead", heads=4),
                  "multihead_frozen": rm.RMKind("multihead", heads=4, freeze_encoder=True),
                  "ensemble": rm.RMKind("ensemble", heads=4, bootstrap="poisson")},
        methods=("single", "multihead", "multihead_frozen", "ensemble"),
        bon_samples=256, sample_prompts_per_batch=16,  # 16 x 256 rows in the sampler at once, not 500 x 256
        ppo=ppo.PPOConfig(iterations=300, prompts_per_rollout=64, samples_per_prompt=4, max_new_tokens=256, epochs=2,
                          minibatches=4, optimizer=train.OptimizerConfig(learning_rate=1e-6, max_grad_norm=1.0)),
        ppo_kl=(0.0, 0.01), ppo_uwo=0.1,
        settings=stages.RunSettings(mesh=parallel.MeshConfig(data=1, fsdp=-1), save_every=200, vocab_chunk=16384))


def validate(cfg: EnsemblesConfig) -> None:
    lm_base.require_checkpoint(cfg.base, "ensembles_alpaca")
    for field in ("gold_model", "rm_backbone"):
        if not getattr(cfg, field):
            raise ValueError(f"ensembles_alpaca needs {field}=/path/to/a/local/hf/folder (the gold reward model and "
                             f"the proxies' backbone are checkpoints at paper scale)")
    if not cfg.task.data_dir:
        raise ValueError("ensembles_alpaca reads its prompts from a JSONL file: pass task.data_dir=/path/to.jsonl")
    ensembles.validate(cfg)
