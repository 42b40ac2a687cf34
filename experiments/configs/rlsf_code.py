"""Reinforcement learning from symbolic feedback (Jha et al. 2024) on a CPU-sized code task: pseudo-code to
Python (``data.pseudocode``, SPoC-like: one line of pseudo-code per line of code, stdin/stdout tests). SFT, then
PPO with a scalar reward (1 if the program passes every test) against PPO with the Python tool's token-level
rewards (the same, plus -0.2 on the tokens of a syntax error's line, a crash's traceback line, or the whole
program when a test fails), at the same steps and samples (the recipe: ``experiments.recipes.rlsf``). Every program
the model writes runs in the sandbox (``symbolic.sandbox``). Measured on 100 held-out specifications: the pass
rate (greedy and sampled), the compile rate, KL(pi || pi_sft).

The default runs the paper's two PPO arms at 3 seeds, at a learning rate (1e-4) at which 16 iterations of 32
programs move the policy (at 3e-5 no arm left pi_sft's pass rate). The other arms are one ``methods=`` away:
'token_mean' and 'paper' (``rlsf.MORE_VARIANTS``), and the group arms (``rlsf.GROUP_ARMS``: GRPO, Dr. GRPO, DAPO,
each with scalar or token credit; 4 specifications x 8 programs per iteration, PPO's 32). DAPO's soft
overlong punishment starts 4 tokens before the 64-token limit (``grpo.overlong_buffer=4``): the reference
programs' 95th length percentile is 61 tokens under the run's 512-token BPE, so its default buffer of 16 would
punish ordinary programs (under Game of 24's default buffer, DAPO collapsed that way).

    python -m experiments.run rlsf_code [seeds=(0,1,2)] [methods=(scalar,token,grpo,grpo_token,dapo)]
        [ppo.iterations=16] [grpo.iterations=16] [ppo.optimizer.learning_rate=3e-5]
"""

from __future__ import annotations

from experiments import lm_base
from experiments.lm_base import ModelSize
from experiments.recipes import rlsf
from experiments.recipes.rlsf import RLSFConfig, run, validate  # noqa: F401  (the driver's entry points)
from jax_irl import stages, tasks, train
from jax_irl.algorithms import grpo, ppo

RESUMABLE = rlsf.RESUMABLE


def config() -> RLSFConfig:
    return RLSFConfig(
        task=tasks.TaskConfig(name="pseudocode", train_examples=2000, eval_examples=100),
        base=lm_base.BaseConfig(
            model=ModelSize(hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256),
            vocab_size=512, max_length=128, max_positions=192, calculation_rows=0,
            pretrain=stages.StageConfig(steps=300, batch_size=32, optimizer=train.OptimizerConfig(
                learning_rate=3e-3, schedule="cosine", warmup_steps=20, weight_decay=0.01))),
        sft=stages.StageConfig(steps=1000, batch_size=32, optimizer=train.OptimizerConfig(
            learning_rate=2e-3, schedule="cosine", warmup_steps=20, weight_decay=0.01)),
        ppo=ppo.PPOConfig(iterations=16, prompts_per_rollout=16, samples_per_prompt=2, max_new_tokens=64, epochs=2,
                          minibatches=2, kl_coef=0.05, optimizer=train.OptimizerConfig(learning_rate=1e-4)),
        grpo=grpo.GRPOConfig(iterations=16, prompts_per_rollout=4, group_size=8, max_new_tokens=64, epochs=2,
                             minibatches=2, overlong_buffer=4, optimizer=train.OptimizerConfig(learning_rate=1e-4)),
        methods=("scalar", "token"),
        eval_every=8, eval_samples=1)
