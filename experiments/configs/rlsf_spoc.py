"""RLSF at paper scale (Jha et al. 2024's pseudo-code-to-C++ task): a local Hugging Face checkpoint, SPoC-style
JSONL data ({"prompt": pseudo-code, "response": C++ code, "tests": [[stdin, expected], ...]}), the g++ tool in
the sandbox, bf16 compute, an FSDP mesh, vocabulary-chunked log-probs. The same recipe and outputs as
``rlsf_code`` (``experiments.recipes.rlsf``): SFT on the file's solutions, then PPO with the scalar pass/fail reward
against PPO with g++'s token-level rewards, three seeds.

GRPO with scalar and token-level credit (32 programs x 8 samples per iteration, PPO's 256) runs beside PPO.

    python -m experiments.run rlsf_spoc base.hf_checkpoint=/models/a-code-model task.data_dir=/data/spoc.jsonl
"""

from __future__ import annotations

from experiments import lm_base
from experiments.recipes import rlsf
from experiments.recipes.rlsf import RLSFConfig, run  # noqa: F401  (the driver's entry points)
from jax_irl import parallel, stages, tasks, train
from jax_irl.algorithms import grpo, ppo

RESUMABLE = rlsf.RESUMABLE


def config() -> RLSFConfig:
    return RLSFConfig(
        task=tasks.TaskConfig(name="spoc", data_dir=None, train_examples=16_000, eval_examples=1_000),
        base=lm_base.BaseConfig(hf_checkpoint=None, dtype="bfloat16", max_length=1024),
        sft=stages.StageConfig(steps=2000, batch_size=64, optimizer=train.OptimizerConfig(
            learning_rate=1e-5, schedule="cosine", warmup_steps=100, weight_decay=0.0)),
        ppo=ppo.PPOConfig(iterations=200, prompts_per_rollout=64, samples_per_prompt=4, max_new_tokens=512, epochs=2,
                          minibatches=4, kl_coef=0.05, kl_target=6.0, optimizer=train.OptimizerConfig(
                              learning_rate=1e-6, max_grad_norm=1.0)),
        grpo=grpo.GRPOConfig(iterations=200, prompts_per_rollout=32, group_size=8, max_new_tokens=512, epochs=2,
                             minibatches=4, optimizer=train.OptimizerConfig(learning_rate=1e-6, max_grad_norm=1.0)),
        methods=("scalar", "token", "grpo", "grpo_token"),
        eval_every=20, eval_samples=4, check_workers=None,
        settings=stages.RunSettings(mesh=parallel.MeshConfig(data=1, fsdp=-1), save_every=100, vocab_chunk=16384))


def validate(cfg: RLSFConfig) -> None:
    lm_base.require_checkpoint(cfg.base, "rlsf_spoc")
    if not cfg.task.data_dir:
        raise ValueError("rlsf_spoc reads SPoC-style records: pass task.data_dir=/path/to/spoc.jsonl")
    rlsf.validate(cfg)
