"""The preference-learning-as-Gibbs-sampling recipe (Xiong et al. 2023/24): pi0 (the shared base, fine-tuned
with MLE on the task's solutions unless ``skip_sft``) and a preference oracle (a gold reward: a local reward
model or the graded arithmetic checker); each method variant (offline DPO, RAFT and RSO on multi-step rejection
sampling, online iterative DPO, hybrid, pessimistic DPO) runs at every KL strength beta and every seed
(``gshf.run_method``) and reports the gold reward of its policy's samples on held-out prompts, KL(pi || pi0) and
the win rate against pi0; each method's gold is also read off its gold-KL frontier at matched KLs. Results:
results.json, results.md (mean +- standard error over seeds), PNG plots. The configs
(``experiments/configs/gshf_*.py``) declare the variants and the sizes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from flax import nnx

from experiments import lm_base
from jax_irl import metrics, rollout, stages, sweep, tasks, train
from jax_irl.algorithms import gshf, pairs
from jax_irl.algorithms import reward_models as rm
from jax_irl.data import arithmetic, jsonl
from jax_irl.data.tokenizer import TextTokenizer
from jax_irl.models import hf


@dataclasses.dataclass(frozen=True)
class UncertaintyRM:
    """Pessimistic DPO's uncertainty Gamma(x, a): the heads' standard deviation of a K-head reward model on pi0's
    backbone, trained by Bradley-Terry on gold-labelled pairs of pi0's samples (best against worst of
    ``candidates``) for the last ``prompts`` training prompts. Built only when a selected variant sets
    pessimism > 0; a local K-head reward-model folder (``model``) replaces it."""

    heads: int = 4
    prompts: int = 256
    candidates: int = 4
    stage: stages.StageConfig = stages.StageConfig(steps=100, batch_size=16, optimizer=train.OptimizerConfig(
        learning_rate=3e-4, schedule="cosine", warmup_steps=10, weight_decay=0.01))
    model: Optional[str] = None  # a local HF reward-model folder with K heads


@dataclasses.dataclass(frozen=True)
class GSHFConfig:
    task: tasks.TaskConfig = tasks.TaskConfig(name="arithmetic", train_examples=2000, eval_examples=64)
    base: lm_base.BaseConfig = lm_base.BaseConfig()
    sft: stages.StageConfig = stages.StageConfig(  # pi0: the base fine-tuned with MLE on the task's solutions
        steps=300, batch_size=32, optimizer=train.OptimizerConfig(learning_rate=2e-3, schedule="cosine",
                                                                 warmup_steps=20, weight_decay=0.01))
    skip_sft: bool = False  # pi0 is the base as it is (an HF checkpoint that is already fine-tuned)
    reward_model: Optional[str] = None  # a local HF reward-model folder as the oracle; None: graded_reward
    reward_aggregation: str = "mean"  # over the reward model's heads (mean | min)
    preference_file: Optional[str] = None  # a JSONL of prompt/chosen/rejected: the offline set of offline_dpo/hybrid
    optimizer: train.OptimizerConfig = train.OptimizerConfig(learning_rate=2e-4, max_grad_norm=1.0)  # DPO / RSO
    batch_pairs: int = 16
    oracle: pairs.OracleConfig = pairs.OracleConfig()
    uncertainty: UncertaintyRM = UncertaintyRM()
    variants: Dict[str, gshf.GSHFMethod] = dataclasses.field(default_factory=dict)  # by name (a config declares)
    methods: Tuple[str, ...] = ()  # the variants that run, in table order
    betas: Tuple[float, ...] = (0.1, 0.3, 1.0)  # every method runs at each (its beta field is replaced)
    # Methods spend different KLs at one beta: each is also read off its gold-KL frontier (its betas' points and
    # pi0 at KL 0, joined by lines) at these KLs, with seed-paired gaps to offline DPO.
    matched_kl: Tuple[float, ...] = (0.25, 0.5, 1.0)
    seeds: Tuple[int, ...] = (0, 1, 2)
    sample_prompts_per_batch: Optional[int] = None  # the sampler takes this many prompts at a time; None: all
    max_new_tokens: int = 48
    eval_samples: int = 4  # per held-out prompt
    settings: stages.RunSettings = stages.RunSettings()


def validate(cfg: GSHFConfig) -> None:
    """Checks across fields, made by the driver before anything is written."""
    if not cfg.methods:
        raise ValueError("methods must name at least one variant")
    sweep.check_selection(cfg.methods, cfg.variants)
    if not cfg.betas or any(not b > 0 for b in cfg.betas):
        raise ValueError(f"betas must be a non-empty list of values > 0; got {cfg.betas}")
    if not cfg.seeds or cfg.eval_samples < 1 or cfg.batch_pairs < 1:
        raise ValueError("seeds must name a seed; eval_samples and batch_pairs must be >= 1")
    if cfg.reward_aggregation in ("uwo", "lcb"):
        raise ValueError("reward_aggregation 'uwo' and 'lcb' need a coefficient: use 'mean' or 'min' here")
    if any(not k > 0 for k in cfg.matched_kl):
        raise ValueError(f"matched_kl must list KLs > 0; got {cfg.matched_kl}")
    if cfg.uncertainty.heads < 2 or cfg.uncertainty.prompts < 10 or cfg.uncertainty.candidates < 2:
        raise ValueError(f"uncertainty needs heads >= 2 (a disagreement), prompts >= 10 and candidates >= 2; got "
                         f"{cfg.uncertainty.heads}, {cfg.uncertainty.prompts}, {cfg.uncertainty.candidates}")
    if cfg.uncertainty.prompts > cfg.task.train_examples:
        raise ValueError(f"uncertainty.prompts={cfg.uncertainty.prompts} needs as many training prompts; "
                         f"task.train_examples={cfg.task.train_examples}")
    for name in cfg.methods:
        for b in cfg.betas:
            dataclasses.replace(cfg.variants[name], beta=b)  # e.g. a raft/rso schedule that beta would cross


def gold_fn(cfg: GSHFConfig) -> pairs.GoldFn:
    """The oracle's gold reward: a local reward model (re-tokenizing with its own tokenizer), else the graded
    arithmetic checker."""
    if cfg.reward_model:
        return rm.reward_model_gold(hf.reward_model_from_pretrained(cfg.reward_model),
                                      TextTokenizer.load(cfg.reward_model), aggregation=cfg.reward_aggregation,
                                      max_length=cfg.base.max_length + cfg.max_new_tokens)
    return pairs.per_sample(arithmetic.graded_reward)


def uncertainty_fn(cfg: GSHFConfig, run: stages.Run, pi0, tok, prompts: rollout.Prompts,
                   settings: pairs.SampleSettings) -> pairs.GoldFn:
    """Gamma(x, a) for pessimistic DPO: ``cfg.uncertainty.model``'s heads, or a K-head reward model trained on
    gold-labelled pairs of pi0's samples (cached in the run's folder/uncertainty/)."""
    u = cfg.uncertainty
    max_length = cfg.base.max_length + cfg.max_new_tokens
    if u.model:
        return rm.reward_model_uncertainty(hf.reward_model_from_pretrained(u.model), TextTokenizer.load(u.model),
                                           max_length=max_length)
    folder = run.path("uncertainty")

    chosen = prompts.take(np.arange(len(prompts.texts) - u.prompts, len(prompts.texts)))
    records = stages.cached_json(os.path.join(folder, "pairs.json"), lambda: pairs.label_samples(
        pi0, chosen, jax.random.PRNGKey(13), u.candidates, settings, cfg.oracle, np.random.default_rng(13)))["records"]
    kind = rm.RMKind("multihead", heads=u.heads)
    rm_run = run.sub("uncertainty/rm", desc=f"uncertainty rm ({u.heads} heads, {len(records)} pairs)", seed=0,
                     depends={"uncertainty": u, "oracle": cfg.oracle})
    model = rm.fit_pairs(rm_run, rm.build(kind, lambda r: nnx.clone(pi0), seed=0), kind, records, tok, u.stage,
                         max_length=max_length)
    return rm.reward_model_uncertainty(model, tok, max_length=max_length)


def matched(finals: Dict[str, Dict[int, dict]], cfg: GSHFConfig) -> Tuple[Dict[str, Dict[int, dict]], list]:
    """Each method's gold at the matched KLs (``sweep.frontier_at`` over its betas, pi0 at KL 0), per seed, and
    its seed-paired gap to offline DPO there; with the table's columns."""
    out, columns = {}, []
    for k in cfg.matched_kl:
        columns.append(sweep.Column(f"gold_at_{k:g}", f"gold at KL {k:g}"))
    if "offline_dpo" in cfg.methods:
        columns += [sweep.Column(f"gap_at_{k:g}", f"− offline DPO at KL {k:g}") for k in cfg.matched_kl]
    for m in cfg.methods:
        out[m] = {}
        for s in cfg.seeds:
            points = [(finals[f"{m}@{b:g}"][s]["kl"], finals[f"{m}@{b:g}"][s]["gold"]) for b in cfg.betas]
            out[m][s] = {f"gold_at_{k:g}": sweep.frontier_at(points, k, (0.0, finals[f"{m}@{cfg.betas[0]:g}"][s][
                "pi0_gold"])) for k in cfg.matched_kl}
    for m in cfg.methods if "offline_dpo" in cfg.methods else ():
        for s in cfg.seeds:
            out[m][s].update({f"gap_at_{k:g}": out[m][s][f"gold_at_{k:g}"] - out["offline_dpo"][s][f"gold_at_{k:g}"]
                              for k in cfg.matched_kl})
    return out, columns


COLUMNS = (sweep.Column("gold", "gold reward"), sweep.Column("kl", "KL(pi ‖ pi0)"),
           sweep.Column("win_rate", "win rate vs pi0"), sweep.Column("labels", "labels", 0))


def context(cfg: GSHFConfig, prep: lm_base.Prepared) -> gshf.Context:
    """What every method run shares: pi0, the training and held-out prompts, the sampler's settings (with the
    uncertainty oracle when a selected variant is pessimistic), the oracle and the DPO optimizer."""
    data, enc, tok = prep.data, prep.encoded, prep.tokenizer
    train_tokens, train_mask = rollout.prompt_rows(enc.train["tokens"], enc.train["prompt_lengths"], tok.pad_id,
                                                   enc.prompt_width)
    settings = pairs.SampleSettings(tok, cfg.max_new_tokens, gold_fn(cfg), prompts_per_batch=cfg.sample_prompts_per_batch)
    train_prompts = rollout.Prompts(train_tokens, train_mask, list(data.train_prompts), list(data.train_responses))
    if any(cfg.variants[m].pessimism for m in cfg.methods):
        settings = settings._replace(uncertainty=uncertainty_fn(cfg, prep.run, prep.pi0, tok, train_prompts,
                                                                settings))
    return gshf.Context(
        pi0=prep.pi0, train_prompts=train_prompts,
        eval_prompts=rollout.Prompts(enc.eval_prompts, enc.eval_prompt_mask, list(data.eval_prompts),
                                     list(data.eval_references)),
        settings=settings, oracle=cfg.oracle,
        optimizer=cfg.optimizer, batch_pairs=cfg.batch_pairs, max_length=cfg.base.max_length,
        eval_samples=cfg.eval_samples,
        offline_records=jsonl.read_jsonl(cfg.preference_file, "preference") if cfg.preference_file else None)


@dataclasses.dataclass(frozen=True)
class MethodRunner:
    """``sweep.run_sweep``'s run_one: one (method at a beta, seed) in its sub-run of the experiment's run."""

    cfg: GSHFConfig
    ctx: gshf.Context
    run: stages.Run
    run_dir: str

    def __call__(self, name: str, method: gshf.GSHFMethod, seed: int, folder: str) -> dict:
        depends = {"uncertainty": self.cfg.uncertainty} if method.pessimism else None
        return gshf.run_method(method, self.ctx, self.run.sub(os.path.relpath(folder, self.run_dir), seed=seed,
                                                               depends=depends))


def sweep_fingerprint(cfg: GSHFConfig, prep: lm_base.Prepared) -> dict:
    """What every method run depends on besides its variant and seed."""
    return dict(prep.run.fingerprint, oracle=cfg.oracle, optimizer=cfg.optimizer,
                preference_file=cfg.preference_file, reward_model=cfg.reward_model,
                reward_aggregation=cfg.reward_aggregation, batch_pairs=cfg.batch_pairs,
                eval_samples=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens)


def report(cfg: GSHFConfig, run_dir: str, per_run: Dict[str, Dict[int, dict]]) -> dict:
    """results.json, results.md (the table at each beta and along the gold-KL frontier) and the plots."""
    finals = {name: {s: r["final"] for s, r in seeds.items()} for name, seeds in per_run.items()}
    online = [n for n in per_run if cfg.variants[n.split("@")[0]].kind in ("online", "hybrid")]
    rounds = sweep.summarise({n: {s: r["rounds"] for s, r in per_run[n].items()} for n in online})
    pi0_gold = [r["pi0_gold"] for r in next(iter(finals.values())).values()]  # one value per seed
    reference = sweep.cell(float(np.mean(pi0_gold)), metrics.standard_error(pi0_gold), 3)
    gold_kind = "the reward model's" if cfg.reward_model else "graded, in [0, 1]"
    at_kl, at_columns = matched(finals, cfg)
    at_summary = sweep.summarise(at_kl)
    appendix = "Along the gold-KL frontier:\n\n" + sweep.markdown_table(
        at_summary, at_columns, num_seeds=len(cfg.seeds), note="Each method's gold reward at a matched KL, read off "
        "the line through pi0 (KL 0) and its runs at each beta; nan beyond its largest KL. The gaps to "
        "offline DPO are paired by seed.")
    summary = sweep.report(run_dir, finals, COLUMNS, variant_label="method@beta",
                           note=f"Gold reward ({gold_kind}) and win rate on held-out prompts; pi0's own gold reward "
                                f"there is {reference}. KL is the mean summed log-ratio of the policy's own samples.",
                           appendix=appendix, matched_kl={"summary": at_summary, "per_run": at_kl},
                           rounds={"summary": rounds, "per_run": {
                               n: {str(s): r["rounds"] for s, r in per_run[n].items()} for n in online}})
    sweep.plot_frontier(summary, x=COLUMNS[1], y=COLUMNS[0], series=lambda n: n.split("@")[0],
                        path=os.path.join(run_dir, "gold_vs_kl.png"), title="gold reward against KL from pi0",
                        reference=(0.0, float(np.mean(pi0_gold)), "pi0"))
    if rounds:
        sweep.plot_over_groups(rounds, ys=(COLUMNS[0], COLUMNS[1], sweep.Column("length", "response length")),
                               x_label="round",
                               path=os.path.join(run_dir, "gold_per_round.png"))
    return summary


def run(cfg: GSHFConfig, run_dir: str) -> dict:
    validate(cfg)
    stage = None if cfg.skip_sft else cfg.sft
    prep = lm_base.prepare(cfg, run_dir, sft_stage=stage, depends={"sft": stage}, base_vocab_chunk=False)
    variants = {f"{m}@{b:g}": dataclasses.replace(cfg.variants[m], beta=b) for m in cfg.methods for b in cfg.betas}
    per_run = sweep.run_sweep(run_dir, variants, cfg.seeds, MethodRunner(cfg, context(cfg, prep), prep.run, run_dir),
                              fingerprint=sweep_fingerprint(cfg, prep))
    return report(cfg, run_dir, per_run)
