"""Inverse-RL imitation (Wulfmeier et al. 2024) on built-in GSM8K-style arithmetic, CPU-sized.

A base model is pretrained on the task's inputs (the questions) and, for the built-in task, on a corpus of
unrelated single calculations ('9 * 4 = 36', the arithmetic a pretrained LM brings; never a question or a
solution). It is then fine-tuned on question -> solution pairs with MLE, offline IQLearn over a sweep of
td_weight, and online IQLearn (policy samples mixed in with alpha = 0.1), for several seeds. Each fine-tuned model
is evaluated at several sampling temperatures: task accuracy, diversity (Self-BLEU, distinct-n, entropy) and the
Spearman correlation between its extracted rewards and correctness. Results: results.json, results.md (mean +-
standard error over seeds), PNG plots.

    python -m experiments.run irl_arithmetic [seeds=(0,1,2)] [methods=(mle,iqlearn:0.1)] [task=gsm8k ...]

Finished (method, seed) runs are kept in the run folder, so pointing --run-dir at it resumes the sweep.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from flax import nnx

from experiments.configs._shared import ModelSize
from jax_irl import checkpoint, losses, metrics, parallel, train
from jax_irl.algorithms import iqlearn
from jax_irl.data import arithmetic, batching, tfds_sources
from jax_irl.data.tokenizer import TextTokenizer, train_bpe
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

# A resumed sweep may add methods or seeds: finished (method, seed) runs are reused, new ones run.
RESUMABLE = ("mesh", "distributed", "save_every", "methods", "seeds")


@dataclasses.dataclass(frozen=True)
class IRLConfig:
    task: str = "arithmetic"  # 'arithmetic' (built in) or a TFDS task: gsm8k, xsum, tldr, wmt_de_en
    data_dir: Optional[str] = None  # TFDS data directory
    hf_checkpoint: Optional[str] = None  # start from a local HF model folder (with its tokenizer) instead
    dtype: str = "float32"  # compute dtype ('bfloat16' on accelerators); params stay float32
    vocab_chunk: Optional[int] = None  # losses from hidden states in vocabulary chunks (no [B, T, V] logits)
    model: ModelSize = ModelSize(hidden_size=96, intermediate_size=256)
    vocab_size: int = 1024
    max_length: int = 96  # rows are then cut to the longest one
    train_examples: int = 2000
    max_number: int = 12  # operand cap of the built-in arithmetic task (difficulty)
    calculation_rows: int = 2000  # rows of the calculation corpus in the base's pretraining (built-in task only)
    calculations_per_row: int = 6
    eval_prompts: int = 48
    pretrain_steps: int = 1200
    pretrain_learning_rate: float = 3e-3
    finetune_steps: int = 300
    batch_size: int = 32
    optimizer: train.OptimizerConfig = train.OptimizerConfig(learning_rate=2e-3, schedule="cosine", warmup_steps=20,
                                                             total_steps=300, weight_decay=0.01)
    methods: Tuple[str, ...] = ("mle", "iqlearn:0.01", "iqlearn:0.1", "iqlearn:1", "online:0.1")
    alpha: float = 0.1
    gamma: float = 1.0
    seeds: Tuple[int, ...] = (0, 1, 2)
    temperatures: Tuple[float, ...] = (0.5, 1.0)
    num_samples: int = 4
    max_new_tokens: int = 48
    eval_prompts_per_batch: Optional[int] = None  # sample the eval prompts in batches of this many (None: all)
    eval_rows_per_score: Optional[int] = None  # score the samples' rewards in batches of this many rows
    online_prompts_per_step: int = 8
    mesh: parallel.MeshConfig = parallel.MeshConfig()
    distributed: parallel.DistributedConfig = parallel.DistributedConfig()
    save_every: int = 100

    def __post_init__(self):
        for m in self.methods:
            iqlearn.Method.parse(m)
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if self.num_samples < 2:
            raise ValueError("num_samples must be >= 2 (Self-BLEU compares a prompt's samples)")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {self.dtype!r}")
        if self.vocab_chunk is not None and self.vocab_chunk < 1:
            raise ValueError(f"vocab_chunk must be None or >= 1; got {self.vocab_chunk}")
        if self.task != "arithmetic" and self.task not in tfds_sources.TASKS:
            raise ValueError(f"task must be 'arithmetic' or one of {sorted(tfds_sources.TASKS)}; got {self.task!r}")


def config() -> IRLConfig:
    return IRLConfig()


def task_score(task: str):
    """Per-sample task metric: exact match for math, ROUGE-1 F for summaries, sentence BLEU for translation."""
    if task in ("arithmetic", "gsm8k"):
        return lambda text, ref: float(metrics.answers_match(text, ref))
    if task in ("xsum", "tldr"):
        return lambda text, ref: metrics.rouge([text], [ref], types=("rouge1",))["rouge1"] / 100.0
    return lambda text, ref: metrics.bleu([text], [ref]) / 100.0


def load_task(cfg: IRLConfig):
    """(train prompts, train responses, eval prompts, eval references)."""
    if cfg.task == "arithmetic":
        train_set, test_set = arithmetic.make_splits(seed=0, num_train=cfg.train_examples, num_test=cfg.eval_prompts,
                                                     max_number=cfg.max_number)
        fmt = lambda p: f"Question: {p['question']}\nAnswer:"  # noqa: E731
        return ([fmt(p) for p in train_set], [" " + p["answer"] for p in train_set],
                [fmt(p) for p in test_set], [p["answer"] for p in test_set])
    train_set = tfds_sources.load_examples(cfg.task, "train", data_dir=cfg.data_dir, limit=cfg.train_examples)
    split = "test" if cfg.task in ("gsm8k", "xsum", "wmt_de_en") else "train"
    test_set = tfds_sources.load_examples(cfg.task, split, data_dir=cfg.data_dir, limit=cfg.eval_prompts)
    return ([r["prompt"] for r in train_set], [r["response"] for r in train_set], [r["prompt"] for r in test_set],
            [r["response"].strip() for r in test_set])


def _model_config(cfg: IRLConfig, vocab_size: int) -> TransformerConfig:
    return TransformerConfig.for_family("llama", vocab_size=vocab_size, dtype=cfg.dtype,
                                        max_position_embeddings=cfg.max_length + cfg.max_new_tokens,
                                        **dataclasses.asdict(cfg.model))


# Fields that only the fine-tuning and evaluation read: the base model does not depend on them.
FINETUNE_FIELDS = ("optimizer", "finetune_steps", "methods", "seeds", "alpha", "gamma", "temperatures",
                   "num_samples", "max_new_tokens", "online_prompts_per_step", "eval_prompts_per_batch",
                   "eval_rows_per_score", "vocab_chunk")


def _fingerprint(cfg: IRLConfig, stage: str, **extra) -> dict:
    """What a stage depends on: for the base, the config without the fine-tuning fields; for a (method, seed)
    run, the config without the sweep's lists, plus the run's own."""
    skip = FINETUNE_FIELDS if stage == "base" else ("methods", "seeds")
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}
    return dict(fields, stage=stage, **extra)


def pretraining_rows(cfg: IRLConfig, tok, train_prompts) -> Dict[str, np.ndarray]:
    """The base's pretraining data: the task's inputs (every prompt token is a target) and, for the built-in
    task, the calculation corpus. tokens [N, T], mask [N, T-1]."""
    encoded = batching.encode_examples(tok, train_prompts, [""] * len(train_prompts), cfg.max_length)
    mask = np.zeros_like(encoded["mask"])
    for i, n in enumerate(encoded["prompt_lengths"]):
        mask[i, : n - 1] = 1.0  # the prompt's tokens after bos; the empty response's eos is not a target
    tokens = encoded["tokens"]
    if cfg.task == "arithmetic" and cfg.calculation_rows:
        corpus = arithmetic.calculation_corpus(seed=1, num_rows=cfg.calculation_rows, per_row=cfg.calculations_per_row,
                                               max_number=cfg.max_number)
        calc = batching.encode_examples(tok, [""] * len(corpus), corpus, cfg.max_length)
        tokens, mask = np.concatenate([tokens, calc["tokens"]]), np.concatenate([mask, calc["mask"]])
    return batching.trim_padding({"tokens": tokens, "mask": mask}, tok.pad_id)


def _pretrain_base(cfg, tok, train_prompts, mesh, run_dir):
    """The base model: an LM pretrained on ``pretraining_rows``, or the given HF checkpoint."""
    if cfg.hf_checkpoint:
        from jax_irl.models import hf

        return hf.from_pretrained(cfg.hf_checkpoint, dtype=cfg.dtype, param_dtype="float32")
    model = Transformer(_model_config(cfg, tok.vocab_size), rngs=nnx.Rngs(0))
    rows = pretraining_rows(cfg, tok, train_prompts)
    opt = train.OptimizerConfig(learning_rate=cfg.pretrain_learning_rate, schedule="cosine", warmup_steps=20,
                                total_steps=cfg.pretrain_steps, weight_decay=0.01)
    trainer = train.Trainer(model, lambda m, b, r: losses.mle_loss(m(b["tokens"][:, :-1]).logits, b["tokens"][:, 1:],
                                                                    b["mask"]), opt, mesh)
    sampler = batching.BatchSampler(len(rows["tokens"]), cfg.batch_size, seed=1000)
    folder = os.path.join(run_dir, "base")
    with checkpoint.Checkpointer(os.path.join(folder, "checkpoints"), fingerprint=_fingerprint(cfg, "base"),
                                 save_every=cfg.save_every, keep=1, resumable_keys=RESUMABLE) as ckpt:
        state, position = train.resume_or_init(trainer, ckpt, seed=0)
        state, status = train.fit(trainer, state, sampler.batch_fn(rows),
                                  steps=cfg.pretrain_steps, start_position=position, checkpointer=ckpt,
                                  log_dir=folder, desc="pretrain base")
    if status != "done":
        raise SystemExit(f"preempted while pretraining the base model; resume with --run-dir {run_dir}")
    return trainer.model(state)


def _finetune_and_evaluate(cfg, method, seed, base, tok, encoded, eval_rows, references, prompt_width, mesh,
                           run_dir) -> Dict[str, Dict[str, float]]:
    folder = os.path.join(run_dir, "finetune", f"{method.name.replace(':', '_')}-seed{seed}")
    done_file = os.path.join(folder, "eval.json")
    if os.path.exists(done_file):
        with open(done_file) as f:
            return json.load(f)
    loss_fn = iqlearn.make_loss_fn(method, gamma=cfg.gamma, alpha=cfg.alpha, vocab_chunk=cfg.vocab_chunk)
    trainer = train.Trainer(base, loss_fn, cfg.optimizer, mesh)
    sampler = batching.BatchSampler(len(encoded["tokens"]), cfg.batch_size, seed=seed)
    arrays = {"tokens": encoded["tokens"], "mask": encoded["mask"]}
    base_fn = sampler.batch_fn(arrays)

    def online_batch(position, current):
        batch = base_fn(position)
        idx = sampler.local_indices(position)[: cfg.online_prompts_per_step]
        prompts, pmask = iqlearn.prompt_rows(encoded["tokens"][idx], encoded["prompt_lengths"][idx], tok.pad_id,
                                             prompt_width)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), position)
        s = iqlearn.policy_samples(current, prompts, pmask, key, max_new_tokens=cfg.max_new_tokens,
                                   eos_id=tok.eos_id, pad_id=tok.pad_id)
        batch.update(policy_tokens=s["policy_tokens"], policy_attention=s["policy_attention"],
                     policy_mask=s["policy_mask"])
        return batch

    online = method.kind == "online"
    with checkpoint.Checkpointer(os.path.join(folder, "checkpoints"),
                                 fingerprint=_fingerprint(cfg, method.name, seed=seed),
                                 save_every=cfg.save_every, keep=1, resumable_keys=RESUMABLE) as ckpt:
        state, position = train.resume_or_init(trainer, ckpt, seed=seed)
        state, status = train.fit(trainer, state, online_batch if online else base_fn, steps=cfg.finetune_steps,
                                  start_position=position, checkpointer=ckpt, log_dir=folder,
                                  batch_needs_model=online, desc=f"{method.name} seed {seed}")
    if status != "done":
        raise SystemExit(f"preempted during {method.name} seed {seed}; resume with --run-dir {run_dir}")
    prompts, pmask = eval_rows
    result = iqlearn.evaluate(trainer.model(state), tok, prompts, pmask, references, jax.random.PRNGKey(10_000 + seed),
                              temperatures=cfg.temperatures, num_samples=cfg.num_samples,
                              max_new_tokens=cfg.max_new_tokens, gamma=cfg.gamma, correct_fn=task_score(cfg.task),
                              prompts_per_batch=cfg.eval_prompts_per_batch, rows_per_score=cfg.eval_rows_per_score)
    with open(done_file, "w") as f:
        json.dump(result, f, indent=2)
    return result


COLUMNS = ("accuracy", "self_bleu", "distinct_2", "entropy", "reward_correlation")


def summarise(per_run: Dict[str, Dict[int, Dict[str, Dict[str, float]]]]) -> Dict[str, Dict[str, Dict[str, list]]]:
    """method -> temperature -> metric -> [mean, standard error] over seeds (NaN seeds left out)."""
    out: Dict[str, Dict[str, Dict[str, list]]] = {}
    for method, seeds in per_run.items():
        temps = next(iter(seeds.values())).keys()
        out[method] = {}
        for t in temps:
            out[method][t] = {}
            for col in COLUMNS + ("distinct_1", "mean_reward"):
                vals = [r[t][col] for r in seeds.values() if not np.isnan(r[t][col])]
                out[method][t][col] = ([float(np.mean(vals)), metrics.standard_error(vals)] if vals
                                       else [float("nan"), float("nan")])
    return out


def _cell(mean: float, se: float, digits: int) -> str:
    return f"{mean:.{digits}f}" if np.isnan(se) else f"{mean:.{digits}f} ± {se:.{digits}f}"


def markdown_table(summary, num_seeds: int) -> str:
    lines = ["| method | temperature | accuracy | Self-BLEU | distinct-2 | entropy | reward-accuracy Spearman |",
             "|---|---|---|---|---|---|---|"]
    for method, temps in summary.items():
        for t, vals in temps.items():
            cells = [_cell(*vals[c], 1 if c == "self_bleu" else 3) for c in COLUMNS]
            lines.append(f"| {method} | {t} | " + " | ".join(cells) + " |")
    spread = (f"Mean ± standard error over {num_seeds} seeds." if num_seeds > 1
              else "One seed, so no standard errors.")
    lines.append(f"\n{spread} Accuracy and diversity are over all samples; Self-BLEU: lower is more diverse.")
    return "\n".join(lines) + "\n"


def plot(summary, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = list(next(iter(summary.values())).keys())
    fig, axes = plt.subplots(1, len(temps), figsize=(5 * len(temps), 4), squeeze=False)
    for ax, t in zip(axes[0], temps):
        for method, vals in summary.items():
            x, xe = vals[t]["self_bleu"]
            y, ye = vals[t]["accuracy"]
            ax.errorbar(x, y, xerr=None if np.isnan(xe) else xe, yerr=None if np.isnan(ye) else ye, fmt="o",
                        capsize=3, label=method)
        ax.set_xlabel("Self-BLEU (lower = more diverse)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"temperature {t}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: IRLConfig, run_dir: str) -> dict:
    train_prompts, train_responses, eval_prompts, references = load_task(cfg)
    tok_dir = os.path.join(run_dir, "tokenizer")
    if cfg.hf_checkpoint:
        tok = TextTokenizer.load(cfg.hf_checkpoint)
    elif os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        tok = TextTokenizer.load(tok_dir)
    else:
        tok = train_bpe([p + r for p, r in zip(train_prompts, train_responses)], vocab_size=cfg.vocab_size)
        if jax.process_index() == 0:
            tok.save(tok_dir)
    encoded = batching.encode_examples(tok, train_prompts, train_responses, cfg.max_length)
    if int(encoded["truncated"]):
        print(f"note: {int(encoded['truncated'])} responses were cut to max_length={cfg.max_length}")
    encoded = batching.trim_padding(encoded, tok.pad_id)
    eval_encoded = batching.encode_examples(tok, eval_prompts, references, cfg.max_length)
    prompt_width = int(max(encoded["prompt_lengths"].max(), eval_encoded["prompt_lengths"].max()))
    eval_rows = iqlearn.prompt_rows(eval_encoded["tokens"], eval_encoded["prompt_lengths"], tok.pad_id, prompt_width)
    mesh = parallel.make_mesh(cfg.mesh)
    base = _pretrain_base(cfg, tok, train_prompts, mesh, run_dir)
    per_run: Dict[str, Dict[int, dict]] = {}
    for name in cfg.methods:
        method = iqlearn.Method.parse(name)
        per_run[method.name] = {}
        for seed in cfg.seeds:
            per_run[method.name][seed] = _finetune_and_evaluate(cfg, method, seed, base, tok, encoded, eval_rows,
                                                                 references, prompt_width, mesh, run_dir)
    summary = summarise(per_run)
    table = markdown_table(summary, len(cfg.seeds))
    if jax.process_index() == 0:
        with open(os.path.join(run_dir, "results.json"), "w") as f:
            json.dump({"summary": summary, "per_run": {m: {str(s): r for s, r in v.items()}
                                                       for m, v in per_run.items()}}, f, indent=2)
        with open(os.path.join(run_dir, "results.md"), "w") as f:
            f.write(table)
        plot(summary, os.path.join(run_dir, "accuracy_vs_diversity.png"))
    print(table)
    return summary


