"""The base language model pi0 that the LM experiments start from, shared by them (not a config).

Either a local Hugging Face checkpoint (with its tokenizer), or, on CPU, a small Llama-style decoder with a
byte-level BPE trained on the task's text, pretrained as one resumable stage (``run_dir/base``) on the task's
inputs (the questions: every prompt token is a target) and, for the built-in arithmetic task, a corpus of
unrelated single calculations ('9 * 4 = 36', the arithmetic a pretrained LM brings; never a question or a
solution). The base's checkpoint fingerprint is the task and this config, so experiments that differ only
after the base reuse nothing by accident and a changed base is refused on resume.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, NamedTuple, Optional

import jax
import numpy as np
from flax import nnx

from jax_irl import rollout, sampling, stages, tasks, train
from jax_irl.algorithms import sft
from jax_irl.data import arithmetic, batching
from jax_irl.data import game24 as game24_data
from jax_irl.data.tokenizer import TextTokenizer, train_bpe
from jax_irl.models import lora as lora_lib
from jax_irl.models.config import ATTENTION, REMAT, TransformerConfig
from jax_irl.models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """The size of a Llama-style decoder built from scratch."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128


# The run settings a resumed run may change (``stages.RunSettings.RESUMABLE``), as config keys.
SETTINGS_RESUMABLE = tuple(f"settings.{k}" for k in stages.RunSettings.RESUMABLE)


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    hf_checkpoint: Optional[str] = None  # a local HF model folder (with its tokenizer): used as the base as it is
    dtype: str = "float32"  # compute dtype ('bfloat16' on accelerators); params stay float32
    attention: str = "einsum"  # TransformerConfig.attention: 'auto' takes cuDNN's fused attention on a GPU
    remat: str = "none"  # TransformerConfig.remat: activation checkpointing per block (none | full | dots | ...)
    model: ModelSize = ModelSize(hidden_size=96, intermediate_size=256)
    vocab_size: int = 1024  # of the BPE trained here (ignored with hf_checkpoint)
    max_length: int = 96  # rows are cut to this, then to the longest row
    max_positions: int = 256  # position range of a model built here (>= max_length + generated tokens)
    calculation_rows: int = 2000  # rows of the calculation corpus in pretraining (built-in arithmetic only)
    calculations_per_row: int = 6
    # LoRA on the base for every stage after it (0: full fine-tuning); the driver takes lora.rank=16 for
    # base.lora.rank=16. The pretraining of a built-in base always trains every weight.
    lora: lora_lib.LoraConfig = lora_lib.LoraConfig()
    pretrain: stages.StageConfig = stages.StageConfig(
        steps=1200, batch_size=32, optimizer=train.OptimizerConfig(learning_rate=3e-3, schedule="cosine",
                                                                  warmup_steps=20, weight_decay=0.01))

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {self.dtype!r}")
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}; got {self.attention!r}")
        if self.remat not in REMAT:
            raise ValueError(f"remat must be one of {REMAT}; got {self.remat!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2; got {self.max_length}")


def require_checkpoint(cfg: BaseConfig, experiment: str) -> None:
    """Paper-scale configs start from a pretrained model: refuse to run without one (before anything is written)."""
    if not cfg.hf_checkpoint:
        raise ValueError(f"{experiment} starts from a pretrained model: pass base.hf_checkpoint=/path/to/a/local/hf/"
                         f"model (a folder with config.json, *.safetensors and tokenizer.json)")


class Encoded(NamedTuple):
    tokenizer: TextTokenizer
    train: Dict[str, np.ndarray]  # encode_examples' rows (tokens, mask, prompt_lengths), cut to the longest
    eval_prompts: np.ndarray  # [E, W] left-padded
    eval_prompt_mask: np.ndarray  # [E, W]
    prompt_width: int  # W: the longest train or eval prompt


def tokenizer(cfg: BaseConfig, data: tasks.TaskData, run_dir: str) -> TextTokenizer:
    """The checkpoint's tokenizer, the run folder's, or a new BPE on the training text (saved in the folder)."""
    if cfg.hf_checkpoint:
        return TextTokenizer.load(cfg.hf_checkpoint)
    folder = os.path.join(run_dir, "tokenizer")
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return TextTokenizer.load(folder)
    tok = train_bpe([p + r for p, r in zip(data.train_prompts, data.train_responses)], vocab_size=cfg.vocab_size)
    if jax.process_index() == 0:
        tok.save(folder)
    return tok


def encode(cfg: BaseConfig, data: tasks.TaskData, tok: TextTokenizer) -> Encoded:
    """Training rows and left-padded eval prompts, one prompt width for both (one compiled sampler shape)."""
    encoded = batching.encode_examples(tok, data.train_prompts, data.train_responses, cfg.max_length)
    if int(encoded["truncated"]):
        print(f"note: {int(encoded['truncated'])} responses were cut to max_length={cfg.max_length}")
    encoded = batching.trim_padding(encoded, tok.pad_id)
    eval_encoded = batching.encode_examples(tok, data.eval_prompts, data.eval_references, cfg.max_length)
    width = int(max(encoded["prompt_lengths"].max(), eval_encoded["prompt_lengths"].max()))
    prompts, mask = rollout.prompt_rows(eval_encoded["tokens"], eval_encoded["prompt_lengths"], tok.pad_id,
                                                width)
    return Encoded(tok, encoded, prompts, mask, width)


def pretraining_rows(cfg: BaseConfig, task: tasks.TaskConfig, tok, train_prompts) -> Dict[str, np.ndarray]:
    """The base's pretraining data: the task's inputs (every prompt token is a target) and, for the built-in
    task, the calculation corpus. tokens [N, T], mask [N, T-1]."""
    encoded = batching.encode_examples(tok, train_prompts, [""] * len(train_prompts), cfg.max_length)
    mask = np.zeros_like(encoded["mask"])
    for i, n in enumerate(encoded["prompt_lengths"]):
        mask[i, : n - 1] = 1.0  # the prompt's tokens after bos; the empty response's eos is not a target
    tokens = encoded["tokens"]
    if task.name == "arithmetic" and cfg.calculation_rows:
        corpus = arithmetic.calculation_corpus(seed=1, num_rows=cfg.calculation_rows, per_row=cfg.calculations_per_row,
                                               max_number=task.max_number)
        calc = batching.encode_examples(tok, [""] * len(corpus), corpus, cfg.max_length)
        tokens, mask = np.concatenate([tokens, calc["tokens"]]), np.concatenate([mask, calc["mask"]])
    if task.name == "game24" and cfg.calculation_rows:
        corpus = game24_data.calculation_corpus(seed=1, num_rows=cfg.calculation_rows, per_row=cfg.calculations_per_row)
        calc = batching.encode_examples(tok, [""] * len(corpus), corpus, cfg.max_length)
        tokens, mask = np.concatenate([tokens, calc["tokens"]]), np.concatenate([mask, calc["mask"]])
    return batching.trim_padding({"tokens": tokens, "mask": mask}, tok.pad_id)


def base_model(cfg: BaseConfig, task: tasks.TaskConfig, tok: TextTokenizer, train_prompts,
               run: stages.Run) -> nnx.Module:
    """The HF checkpoint, or a model pretrained with MLE on ``pretraining_rows`` in ``run``'s folder/base
    (resumable; with ``run.settings``, seed 0); with LoRA adapters (``cfg.lora``, fresh: the model equals the base)
    when its rank is above 0."""
    model = _base_model(cfg, task, tok, train_prompts, run)
    if cfg.lora.enabled:
        model = lora_lib.apply(model, cfg.lora, seed=0)
        counts = lora_lib.count(model)
        print(f"lora: rank {cfg.lora.rank} on {','.join(cfg.lora.modules())}: {counts['adapter']:,} trainable "
              f"parameters, {100.0 * counts['adapter'] / counts['total']:.2f}% of {counts['total']:,}")
    return model


def _base_model(cfg: BaseConfig, task, tok, train_prompts, run: stages.Run) -> nnx.Module:
    if cfg.hf_checkpoint:
        from jax_irl.models import hf  # needs the hf extra (safetensors) only on this path

        return hf.from_pretrained(cfg.hf_checkpoint, dtype=cfg.dtype, param_dtype="float32", attention=cfg.attention,
                                  remat=cfg.remat)
    model_cfg = TransformerConfig.for_family("llama", vocab_size=tok.vocab_size, dtype=cfg.dtype,
                                             attention=cfg.attention, remat=cfg.remat,
                                             max_position_embeddings=cfg.max_positions,
                                             **dataclasses.asdict(cfg.model))
    model = Transformer(model_cfg, rngs=nnx.Rngs(0))
    rows = pretraining_rows(cfg, task, tok, train_prompts)
    sampler = batching.IndexSampler(len(rows["tokens"]), cfg.pretrain.batch_size, seed=1000)
    # The pretraining does not depend on the LoRA settings of the stages after it.
    base = run.sub("base", desc="pretrain base", seed=0, depends={
        "task": dataclasses.asdict(task), "base": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "lora"}})
    return base.stage(model, sft.loss_fn(vocab_chunk=run.settings.vocab_chunk), cfg.pretrain,
                      sampler.batch_fn(rows)).model


class Prepared(NamedTuple):
    """What every LM experiment starts from (``prepare``)."""

    data: tasks.TaskData
    encoded: Encoded
    tokenizer: TextTokenizer
    run: stages.Run  # the experiment's run: its folder, settings, mesh; fingerprint: what the stages after the
    # base depend on (the task, the base config, vocab_chunk, the SFT stage and the experiment's entries)
    base: nnx.Module  # the base model (with fresh LoRA adapters when base.lora.rank > 0)
    pi0: nnx.Module  # the base after the SFT stage (the base itself without one)
    spec: sampling.SamplingSpec  # the tokenizer's eos and pad ids, prompts padded to the encoded prompt width

    @property
    def mesh(self):
        return self.run.mesh


def prepare(cfg, run_dir: str, *, sft_stage: Optional[stages.StageConfig] = None, sft_desc: str = "pi0 (sft)",
            depends: Optional[Dict[str, object]] = None, base_vocab_chunk: bool = True) -> Prepared:
    """The set-up the LM experiments share: task -> tokenizer -> encoded rows -> run (mesh) -> base -> pi0.

    ``cfg`` is an experiment config with ``task``, ``base`` and ``settings`` (``stages.RunSettings``). The base is
    the HF checkpoint or pretrained in run_dir/base (with ``settings.vocab_chunk`` when ``base_vocab_chunk``);
    with ``sft_stage`` pi0 is the base fine-tuned with MLE on the task's solutions in run_dir/sft
    (``sft.finetune``, seed 0), else the base. The returned run's fingerprint (that of the stages after the base,
    the SFT stage's included) is the task, the base config and vocab_chunk, plus the entries of ``depends`` (the
    SFT stage's config under 'sft', the experiment's other dependencies)."""
    data = tasks.load(cfg.task)
    enc = encode(cfg.base, data, tokenizer(cfg.base, data, run_dir))
    settings = cfg.settings
    root = stages.Run.start(run_dir, settings if base_vocab_chunk else dataclasses.replace(settings, vocab_chunk=None))
    base = base_model(cfg.base, cfg.task, enc.tokenizer, data.train_prompts, root)
    run = dataclasses.replace(root, settings=settings).sub(depends={
        "task": cfg.task, "base": cfg.base, "vocab_chunk": settings.vocab_chunk, **(depends or {})})
    pi0 = base if sft_stage is None else sft.finetune(run.sub("sft", desc=sft_desc, seed=0), base, sft_stage,
                                                      enc.train)
    spec = sampling.SamplingSpec.of(enc.tokenizer, prompt_width=enc.prompt_width)
    return Prepared(data, enc, enc.tokenizer, run, base, pi0, spec)
