"""The inverse-RL comparison at paper scale: GSM8K from TFDS, fine-tuning a local Hugging Face checkpoint.

The same sweep, metrics and outputs as ``irl_arithmetic`` (gamma 0.9; MLE, MLE with an entropy bonus, offline
IQLearn over td_weight, IQLearn at gamma 1, online IQLearn with alpha = 0.1, GAIL, and the small-data ablation,
here on 1000 of GSM8K's 7473 problems; three seeds; accuracy, Self-BLEU, distinct-n, entropy and reward-accuracy
Spearman along the accuracy-diversity frontier, greedy and five temperatures, with the accuracy at matched
diversity against MLE), sized for accelerators: bf16 compute with float32 parameters, FSDP over every device,
losses computed from hidden states in vocabulary chunks (no [B, T, V] logits; the entropy-bonus control still
builds the logits of each row's response window, which its entropies need), and evaluation of all 1319 test
problems in batches. GSM8K has one solution per problem, so there is no expert Self-BLEU line and no held-out
(correct, wrong) pair scoring, which need the built-in task's solution variants and wrong solutions.

    python -m experiments.run irl_gsm8k base.hf_checkpoint=/models/Qwen2.5-0.5B task.data_dir=/data/tensorflow_datasets

GSM8K must be prepared once as array_record (the error message gives the command); nothing is downloaded.
Other TFDS tasks work the same way (``task.name=xsum``, ``tldr``, ``wmt_de_en``; their metric is ROUGE-1 or BLEU).
"""

from __future__ import annotations

import dataclasses

from experiments import lm_base
from experiments.configs.irl_arithmetic import DEFAULT_METHODS, RESUMABLE, SMALL_DATA, VARIANTS  # noqa: F401
from experiments.configs.irl_arithmetic import GAMMA, small_data_variants
from experiments.recipes import irl
from experiments.recipes.irl import EvalConfig, IRLConfig, run  # noqa: F401  (the driver's entry point)
from jax_irl import parallel, stages, tasks, train
from jax_irl.algorithms import grpo
from jax_irl.algorithms.gail import GAILConfig

SMALL = 1000  # the small-data ablation at this scale: 1000 of the 7473 training problems


def variants() -> dict:
    """The arithmetic variants with 16 policy prompts per step (online), the small-data ones on ``SMALL``."""
    out = {name: dataclasses.replace(m, policy_prompts=16) for name, m in VARIANTS.items() if m.train_examples is None}
    return dict(out, **small_data_variants(SMALL))


def config() -> IRLConfig:
    return IRLConfig(
        task=tasks.TaskConfig(name="gsm8k", train_examples=7473, eval_examples=1319),
        # required: a local folder with config.json, safetensors and the tokenizer
        base=lm_base.BaseConfig(hf_checkpoint=None, dtype="bfloat16", max_length=512),
        # 1000 steps at batch 64: about 8.6 epochs of GSM8K's 7473 training problems
        finetune=stages.StageConfig(steps=1000, batch_size=64, optimizer=train.OptimizerConfig(
            learning_rate=1e-5, schedule="cosine", warmup_steps=50, weight_decay=0.0, max_grad_norm=1.0)),
        evaluation=EvalConfig(num_samples=4, max_new_tokens=256, prompts_per_batch=128, rows_per_score=32),
        variants=variants(),
        # GAIL from the MLE start: 5 rounds of 512 answers against the data's for the discriminator (200 steps at
        # 32 pairs), then 20 GRPO iterations of 32 prompts x 8 answers a round, KL to the MLE start at 0.05.
        adversarial={"gail": GAILConfig(
            rounds=5, disc_prompts=512, gamma=GAMMA,
            disc_stage=stages.StageConfig(steps=200, batch_size=32, optimizer=train.OptimizerConfig(
                learning_rate=1e-5, schedule="cosine", warmup_steps=20, weight_decay=0.0, max_grad_norm=1.0)),
            policy=grpo.GRPOConfig(method="grpo", iterations=20, prompts_per_rollout=32, group_size=8,
                                   max_new_tokens=256, epochs=1, minibatches=4, kl_coef=0.05,
                                   optimizer=train.OptimizerConfig(learning_rate=1e-6, max_grad_norm=1.0)))},
        methods=tuple(m.replace(f"@{SMALL_DATA}", f"@{SMALL}") for m in DEFAULT_METHODS),
        control="mle+entropy:0.12",  # the CPU model's entropy match; re-tune the bonus ladder at this scale
        settings=stages.RunSettings(mesh=parallel.MeshConfig(data=1, fsdp=-1), save_every=250, vocab_chunk=16384),
    )


def validate(cfg: IRLConfig) -> None:
    """Called by the driver before the run starts."""
    lm_base.require_checkpoint(cfg.base, "irl_gsm8k")
    irl.validate(cfg)
