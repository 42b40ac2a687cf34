"""The inverse-RL comparison at paper scale: GSM8K from TFDS, fine-tuning a local Hugging Face checkpoint.

The same sweep, metrics and outputs as ``irl_arithmetic`` (MLE, offline IQLearn over td_weight, online IQLearn
with alpha = 0.1; three seeds; accuracy, Self-BLEU, distinct-n, entropy and reward-accuracy Spearman at two
temperatures), sized for accelerators: bf16 compute with float32 parameters, FSDP over every device, losses
computed from hidden states in vocabulary chunks (no [B, T, V] logits), and evaluation of all 1319 test
problems in batches.

    python -m experiments.run irl_gsm8k hf_checkpoint=/models/Qwen2.5-0.5B data_dir=/data/tensorflow_datasets

GSM8K must be prepared once as array_record (the error message gives the command); nothing is downloaded.
Other TFDS tasks work the same way (``task=xsum``, ``tldr``, ``wmt_de_en``; their metric is ROUGE-1 or BLEU).
"""

from __future__ import annotations

from experiments.configs import irl_arithmetic
from experiments.configs.irl_arithmetic import RESUMABLE, IRLConfig  # noqa: F401  (RESUMABLE is read by the driver)
from jax_irl import parallel, train

FINETUNE_STEPS = 1000  # about 8.6 epochs of GSM8K's 7473 training problems at batch 64


def config() -> IRLConfig:
    return IRLConfig(
        task="gsm8k",
        hf_checkpoint=None,  # required: a local folder with config.json, safetensors and the tokenizer
        dtype="bfloat16",
        vocab_chunk=16384,
        max_length=512,
        train_examples=7473,
        eval_prompts=1319,
        batch_size=64,
        finetune_steps=FINETUNE_STEPS,
        optimizer=train.OptimizerConfig(learning_rate=1e-5, schedule="cosine", warmup_steps=50,
                                        total_steps=FINETUNE_STEPS, weight_decay=0.0, max_grad_norm=1.0),
        num_samples=4,
        max_new_tokens=256,
        online_prompts_per_step=16,
        eval_prompts_per_batch=128,
        eval_rows_per_score=32,
        mesh=parallel.MeshConfig(data=1, fsdp=-1),
        save_every=250,
    )


def validate(cfg: IRLConfig) -> None:
    """Called by the driver before the run starts."""
    if not cfg.hf_checkpoint:
        raise ValueError("irl_gsm8k fine-tunes a pretrained model: pass hf_checkpoint=/path/to/a/local/hf/model "
                         "(a folder with config.json, *.safetensors and tokenizer.json)")


def run(cfg: IRLConfig, run_dir: str) -> dict:
    validate(cfg)
    return irl_arithmetic.run(cfg, run_dir)
