"""Reinforcement learning from symbolic feedback (Jha et al. 2024) on the Game of 24, CPU-sized: SFT, then PPO
with a scalar reward against PPO with the Game of 24 tool's token-level rewards, at the same steps and samples
(the recipe: ``experiments.recipes.rlsf``).

pi_sft is the base (BPE + pretraining on the puzzles' prompts and unrelated single calculations) fine-tuned with
MLE on solver-written step solutions ('12 + 9 = 21' ...) of the training puzzles. 'scalar' pays 1 on the last
token of a solved puzzle; 'token' pays the same and adds -0.2 on every token that the tool's certificate blames
(a false step, a number not available, a wrong final value, a line that is not a step). Measured on 100
held-out puzzles: success (greedy and sampled), the fraction of true steps, KL(pi || pi_sft).

The default runs the PPO arms at matched KL (an adaptive coefficient towards 1 nat a response): 'scalar', 'token',
'token_mean' (the token rewards length-normalised to the scalar arm's scale) and 'paper' (0 on blamed tokens, 1
elsewhere). The critic-free arms (GRPO, GRPO with the certificate's token credit added or with a failed response's
advantage on its blamed tokens, Dr. GRPO, DAPO, each with and without token credit; ``rlsf.GROUP_ARMS``) sample
8 puzzles x 8 responses per iteration, the 64 responses of PPO's 16 x 4, for the same 150 iterations.

    python -m experiments.run rlsf_game24 [seeds=(0,1,2)] [methods=(scalar,token,grpo,dapo)] [ppo.iterations=150]
        [grpo.iterations=150] [group_arms.dapo.credit=blame]
        [variants.paper.kind=token variants.paper.low=0 variants.paper.high=1 variants.paper.bonus=0]
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
        task=tasks.TaskConfig(name="game24", train_examples=1262, eval_examples=100),
        base=lm_base.BaseConfig(
            model=ModelSize(hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256),
            vocab_size=512, max_length=64, max_positions=128, calculation_rows=3000, calculations_per_row=6,
            pretrain=stages.StageConfig(steps=1500, batch_size=32, optimizer=train.OptimizerConfig(
                learning_rate=3e-3, schedule="cosine", warmup_steps=20, weight_decay=0.01))),
        sft=stages.StageConfig(steps=800, batch_size=32, optimizer=train.OptimizerConfig(
            learning_rate=2e-3, schedule="cosine", warmup_steps=20, weight_decay=0.01)),
        # The PPO arms at matched KL: Ziegler et al.'s controller moves each arm's coefficient (from 0.05) towards
        # a KL of 1 nat a response; at a horizon of 800 responses it can move it 10.8x over the 150 rollouts of 64.
        ppo=ppo.PPOConfig(iterations=150, prompts_per_rollout=16, samples_per_prompt=4, max_new_tokens=36, epochs=2,
                          minibatches=2, kl_coef=0.05, kl_target=1.0, kl_horizon=800,
                          optimizer=train.OptimizerConfig(learning_rate=3e-5)),
        # DAPO's soft overlong penalty over the last 4 of the 36 tokens: pi_sft's responses take 29-30, so the
        # preset's buffer (36 // 4 = 9) would fall on ordinary lengths and make length most of the advantage.
        grpo=grpo.GRPOConfig(iterations=150, prompts_per_rollout=8, group_size=8, max_new_tokens=36, epochs=2,
                             minibatches=2, overlong_buffer=4, optimizer=train.OptimizerConfig(learning_rate=3e-5)),
        # the paper's comparison: PPO with the scalar reward against the certificate's token rewards (summed,
        # length-normalised, and the paper's 0/1 rule); the group arms (rlsf.GROUP_ARMS) are one methods= away
        methods=tuple(rlsf.VARIANTS) + tuple(rlsf.MORE_VARIANTS),
        eval_every=25, eval_samples=2)
