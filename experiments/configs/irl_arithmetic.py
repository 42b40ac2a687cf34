"""Inverse-RL imitation (Wulfmeier et al. 2024) on built-in GSM8K-style arithmetic, CPU-sized.

A base model (``experiments.lm_base``) is fine-tuned on question -> solution pairs by each method variant
(MLE, offline IQLearn over a sweep of td_weight, online IQLearn with alpha = 0.1) for several seeds; each model
is evaluated greedily and at five sampling temperatures (its accuracy-diversity frontier): task accuracy,
diversity (Self-BLEU, distinct-n, entropy) and the Spearman correlation between its extracted rewards and
correctness (with its within- and across-prompt parts in results.json). Each method's accuracy at matched
diversity against the first method (MLE) is read off the frontiers. Results: results.json, results.md
(mean +- standard error over seeds), PNG plots.

    python -m experiments.run irl_arithmetic [seeds=(0,1,2)] [methods=(mle,iqlearn:0.1)]
        [variants.iqlearn:0.1.gamma=0.9] [variants.mine.kind=online variants.mine.td_weight=0.5 methods=(mle,mine)]

Finished (method, seed) runs are kept in the run folder, so pointing --run-dir at it resumes the sweep; methods,
seeds and new variants may be added then.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

import jax
import numpy as np

from experiments import lm_base
from jax_irl import metrics, parallel, sweep, train
from jax_irl.algorithms.iqlearn import Method, evaluate, finetune
from jax_irl.data import tasks

RESUMABLE = ("mesh", "distributed", "save_every", "methods", "seeds", "variants")

VARIANTS = {"mle": Method("mle"), "iqlearn:0.01": Method("iqlearn", td_weight=0.01),
            "iqlearn:0.1": Method("iqlearn", td_weight=0.1), "iqlearn:1": Method("iqlearn", td_weight=1.0),
            "online:0.1": Method("online", td_weight=0.1, alpha=0.1)}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    # The accuracy-diversity frontier: greedy (0) and five sampling temperatures.
    temperatures: Tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 1.0, 1.3)
    num_samples: int = 4  # per prompt (>= 2: Self-BLEU compares a prompt's samples)
    max_new_tokens: int = 48
    prompts_per_batch: Optional[int] = None  # sample the eval prompts in batches of this many (None: all)
    rows_per_score: Optional[int] = None  # score the samples in batches of this many rows


@dataclasses.dataclass(frozen=True)
class IRLConfig:
    task: tasks.TaskConfig = tasks.TaskConfig(name="arithmetic", train_examples=2000, eval_examples=48)
    base: lm_base.BaseConfig = lm_base.BaseConfig()
    finetune: train.StageConfig = train.StageConfig(
        steps=300, batch_size=32, optimizer=train.OptimizerConfig(learning_rate=2e-3, schedule="cosine",
                                                                 warmup_steps=20, weight_decay=0.01))
    evaluation: EvalConfig = EvalConfig()
    variants: Dict[str, Method] = dataclasses.field(default_factory=lambda: dict(VARIANTS))
    methods: Tuple[str, ...] = tuple(VARIANTS)  # the variants that run, in table order
    seeds: Tuple[int, ...] = (0, 1, 2)
    vocab_chunk: Optional[int] = None  # losses from hidden states in vocabulary chunks (no [B, T, V] logits)
    mesh: parallel.MeshConfig = parallel.MeshConfig()
    distributed: parallel.DistributedConfig = parallel.DistributedConfig()
    save_every: int = 100


def config() -> IRLConfig:
    return IRLConfig()


def validate(cfg: IRLConfig) -> None:
    """Checks across fields, made by the driver before anything is written."""
    sweep.check_selection(cfg.methods, cfg.variants)
    if not cfg.seeds or cfg.evaluation.num_samples < 2:
        raise ValueError("seeds must name at least one seed and evaluation.num_samples must be >= 2")
    temps = cfg.evaluation.temperatures
    if not temps or any(not t >= 0 for t in temps) or len(set(temps)) != len(temps):
        raise ValueError(f"evaluation.temperatures must be distinct values >= 0 (0: greedy); got {temps}")
    if not cfg.base.hf_checkpoint and cfg.base.max_length + cfg.evaluation.max_new_tokens > cfg.base.max_positions:
        raise ValueError(f"base.max_length + evaluation.max_new_tokens exceeds base.max_positions "
                         f"({cfg.base.max_positions})")


COLUMNS = (sweep.Column("accuracy", "accuracy"), sweep.Column("self_bleu", "Self-BLEU", 1),
           sweep.Column("distinct_2", "distinct-2"), sweep.Column("entropy", "entropy"),
           sweep.Column("reward_correlation", "reward-accuracy Spearman"))


def run(cfg: IRLConfig, run_dir: str) -> dict:
    validate(cfg)
    data = tasks.load(cfg.task)
    enc = lm_base.encode(cfg.base, data, lm_base.tokenizer(cfg.base, data, run_dir))
    mesh = parallel.make_mesh(cfg.mesh)
    base = lm_base.base_model(cfg.base, cfg.task, enc.tokenizer, data.train_prompts, mesh, run_dir,
                              save_every=cfg.save_every)
    depends = {"task": cfg.task, "base": cfg.base, "finetune": cfg.finetune, "vocab_chunk": cfg.vocab_chunk}
    ev, tok = cfg.evaluation, enc.tokenizer

    def one(name, method, seed, folder):
        model = finetune(method, base, cfg.finetune, mesh, enc.train, folder, seed=seed, save_every=cfg.save_every,
                         fingerprint=dict(depends, method=method, seed=seed), prompt_width=enc.prompt_width,
                         max_new_tokens=ev.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
                         vocab_chunk=cfg.vocab_chunk, desc=f"{name} seed {seed}",
                         resume_hint=f"Resume with --run-dir {run_dir}")
        return evaluate(model, tok, enc.eval_prompts, enc.eval_prompt_mask, data.eval_references,
                        jax.random.PRNGKey(10_000 + seed), temperatures=ev.temperatures, num_samples=ev.num_samples,
                        max_new_tokens=ev.max_new_tokens, gamma=method.gamma,
                        correct_fn=tasks.get(cfg.task.name).score, prompts_per_batch=ev.prompts_per_batch,
                        rows_per_score=ev.rows_per_score)

    per_run = sweep.run_sweep(run_dir, {m: cfg.variants[m] for m in cfg.methods}, cfg.seeds, one,
                              fingerprint=dict(depends, evaluation=ev))
    metric = tasks.get(cfg.task.name).metric
    cols = (dataclasses.replace(COLUMNS[0], header=metric),) + COLUMNS[1:]
    matched = matched_diversity(per_run, reference=cfg.methods[0])
    summary = sweep.report(run_dir, per_run, cols, group_label="temperature", matched_diversity=matched,
                           note=f"{metric.capitalize()} and diversity are over all samples; Self-BLEU: lower is more "
                                f"diverse.",
                           over_groups=((cols[0], cols[1], cols[4]), "sampling temperature",
                                        "metrics_vs_temperature.png"),
                           appendix=matched_table(matched, reference=cfg.methods[0], metric=metric))
    # The frontier: one line per method through its temperatures (greedy at Self-BLEU 100).
    sweep.plot_frontier({f"{name}@{t}": tree for name, temps in summary.items() for t, tree in temps.items()},
                        x=dataclasses.replace(COLUMNS[1], header="Self-BLEU (lower = more diverse)"), y=cols[0],
                        series=lambda n: n.rsplit("@", 1)[0], path=os.path.join(run_dir, "accuracy_vs_diversity.png"),
                        title="accuracy-diversity frontier over sampling temperatures")
    return summary


def matched_diversity(per_run: Dict[str, Dict[int, dict]], reference: str) -> Dict[str, dict]:
    """Each method against ``reference`` at matched diversity, the paper's question: along each seed's frontier
    (Self-BLEU, accuracy over the evaluation temperatures), the accuracy at a common Self-BLEU, interpolated.
    The target is the middle of the Self-BLEU range that both methods' seed-mean frontiers cover. Returns
    {method: {'self_bleu', 'accuracy' (mean, se), 'gap' (mean, se) against the reference}} for the methods
    whose frontiers overlap the reference's (two or more temperatures needed)."""
    if reference not in per_run or len(next(iter(per_run[reference].values()))) < 2:
        return {}
    frontiers = {name: [([r[t]["self_bleu"] for t in r], [r[t]["accuracy"] for t in r]) for r in seeds.values()]
                 for name, seeds in per_run.items()}
    spans = {}
    for name, fronts in frontiers.items():
        mean = np.nanmean([d for d, _ in fronts], axis=0)
        spans[name] = float(np.min(mean)), float(np.max(mean))
    out = {}
    for name in per_run:
        low, high = max(spans[name][0], spans[reference][0]), min(spans[name][1], spans[reference][1])
        if name == reference or not (np.isfinite(low) and np.isfinite(high)) or low > high:
            continue
        target = 0.5 * (low + high)
        own = [metrics.matched_accuracy(d, a, target) for d, a in frontiers[name]]
        own = [x for x in own if np.isfinite(x)]
        out[name] = {"self_bleu": target, "accuracy": [float(np.mean(own)), metrics.standard_error(own)],
                     "gap": list(metrics.matched_gap(frontiers[name], frontiers[reference], target))}
    return out


def matched_table(matched: Dict[str, dict], reference: str, metric: str) -> str:
    if not matched:
        return ""
    lines = [f"| method | matched Self-BLEU | {metric} there | gap to {reference} |", "|---|---|---|---|"]
    for name, m in matched.items():
        lines.append(f"| {name} | {m['self_bleu']:.1f} | {sweep.cell(*m['accuracy'], 3)} | "
                     f"{sweep.cell(*m['gap'], 3)} |")
    return "\n".join(lines) + (f"\n\n{metric.capitalize()} read off each seed's frontier (Self-BLEU against "
                               f"{metric} over the evaluation temperatures, interpolated) at the middle of the "
                               f"Self-BLEU range both methods cover; gap: mean ± standard error over seeds.")
