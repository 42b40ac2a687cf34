"""The inverse-RL imitation recipe (Wulfmeier et al. 2024): each method variant fine-tunes the shared base on
question -> solution pairs (``iqlearn.finetune``), then every model is evaluated greedily and at several sampling
temperatures (its accuracy-diversity frontier): task accuracy, diversity (Self-BLEU, distinct-n, entropy), the
Spearman correlation between its extracted rewards and correctness, and, on the built-in task whose expert is
known, the distance to the expert's solution distribution and how often the extracted reward ranks a held-out
correct solution above a wrong one. Each method's accuracy at matched diversity against the first method trained
on the same data is read off the frontiers. Results: results.json, results.md (mean +- standard error over
seeds), PNG plots. The configs (``experiments/configs/irl_*.py``) declare the variants and the sizes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional, Sequence, Tuple

import jax
import numpy as np

from experiments import lm_base
from jax_irl import metrics, stages, sweep, tasks, train
from jax_irl.algorithms import gail
from jax_irl.algorithms.iqlearn import Method, evaluate, finetune, reward_pair_accuracy
from jax_irl.data import arithmetic


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
    # Each training problem's solution drawn from its valid variants (step and operand order): a diverse expert.
    task: tasks.TaskConfig = tasks.TaskConfig(name="arithmetic", train_examples=2000, eval_examples=48,
                                              diverse_solutions=True)
    base: lm_base.BaseConfig = lm_base.BaseConfig()
    finetune: stages.StageConfig = stages.StageConfig(
        steps=300, batch_size=32, optimizer=train.OptimizerConfig(learning_rate=2e-3, schedule="cosine",
                                                                 warmup_steps=20, weight_decay=0.01))
    evaluation: EvalConfig = EvalConfig()
    variants: Dict[str, Method] = dataclasses.field(default_factory=dict)  # by name (a config declares them)
    # The adversarial family (GAIL), by name beside the variants: ``gail.GAILConfig``, its MLE start being
    # ``finetune``.
    adversarial: Dict[str, gail.GAILConfig] = dataclasses.field(default_factory=dict)
    methods: Tuple[str, ...] = ()  # the variants that run, in table order (the first is the reference)
    # The entropy-bonus control: when it runs, every method trained on the same data is also compared with it at
    # matched token entropy (does a method do more than flatten the policy?); None: no such table.
    control: Optional[str] = None
    seeds: Tuple[int, ...] = (0, 1, 2)
    settings: stages.RunSettings = stages.RunSettings()


def arms(cfg: IRLConfig) -> Dict[str, object]:
    """Every method by name: the variants (``iqlearn.Method``) and the adversarial ones (``gail.GAILConfig``)."""
    return sweep.merge_families(variants=cfg.variants, adversarial=cfg.adversarial)


def validate(cfg: IRLConfig) -> None:
    """Checks across fields, made by the driver before anything is written."""
    if not cfg.methods:
        raise ValueError("methods must name at least one variant")
    every = arms(cfg)
    sweep.check_selection(cfg.methods, every)
    if cfg.control is not None and cfg.control not in every:
        raise ValueError(f"control {cfg.control!r} must name a variant; known: {sorted(every)}")
    if not cfg.seeds or cfg.evaluation.num_samples < 2:
        raise ValueError("seeds must name at least one seed and evaluation.num_samples must be >= 2")
    for name in cfg.methods:
        n = every[name].train_examples
        if n is not None and n > cfg.task.train_examples:
            raise ValueError(f"variant {name!r} trains on {n} examples but task.train_examples is "
                             f"{cfg.task.train_examples}")
    temps = cfg.evaluation.temperatures
    if not temps or any(not t >= 0 for t in temps) or len(set(temps)) != len(temps):
        raise ValueError(f"evaluation.temperatures must be distinct values >= 0 (0: greedy); got {temps}")
    if not cfg.base.hf_checkpoint and cfg.base.max_length + cfg.evaluation.max_new_tokens > cfg.base.max_positions:
        raise ValueError(f"base.max_length + evaluation.max_new_tokens exceeds base.max_positions "
                         f"({cfg.base.max_positions})")
    for name in cfg.methods:
        if name in cfg.adversarial:
            adv = cfg.adversarial[name]
            if adv.policy.max_new_tokens != cfg.evaluation.max_new_tokens:
                raise ValueError(f"adversarial.{name}.policy.max_new_tokens ({adv.policy.max_new_tokens}) must equal "
                                 f"evaluation.max_new_tokens ({cfg.evaluation.max_new_tokens})")
            n = min(adv.train_examples or cfg.task.train_examples, cfg.task.train_examples)
            if adv.disc_prompts > n or adv.policy.prompts_per_rollout > n:
                raise ValueError(f"adversarial.{name} samples {adv.disc_prompts} prompts a round for its "
                                 f"discriminator and {adv.policy.prompts_per_rollout} a rollout; it trains on {n}")


COLUMNS = (sweep.Column("accuracy", "accuracy"), sweep.Column("self_bleu", "Self-BLEU", 1),
           sweep.Column("distinct_2", "distinct-2"), sweep.Column("entropy", "entropy"),
           sweep.Column("reward_correlation", "reward-accuracy Spearman"))


def expert_reference(cfg: IRLConfig, data: tasks.TaskData) -> Optional[dict]:
    """What the built-in arithmetic task can say about its expert: the Self-BLEU of ``num_samples`` expert
    solutions per held-out problem (drawn as the training solutions were; 100 with one text per problem), and
    held-out (prompt, correct, wrong) pairs for scoring the extracted rewards (the canonical solution against
    ``arithmetic.wrong_solution``: one slip, carried on). None for other tasks."""
    if cfg.task.name != "arithmetic":
        return None
    _, test_set = tasks.arithmetic_problems(cfg.task)
    n = cfg.evaluation.num_samples
    samples = (arithmetic.expert_samples(test_set, n, seed=2) if cfg.task.diverse_solutions
               else [[p["answer"]] * n for p in test_set])
    # The expert's distribution over each problem's solution texts: uniform over its variants (diverse), or its
    # one canonical text; the expert's own n samples give the finite-sample level of the match metrics.
    support = ([arithmetic.solution_variants(p) for p in test_set] if cfg.task.diverse_solutions
               else [[p["answer"]] for p in test_set])
    return {"self_bleu": metrics.self_bleu(samples), "support": support,
            "own_match": metrics.expert_match(samples, support),
            "pairs": (list(data.eval_prompts), [" " + p["answer"] for p in test_set],
                      [" " + arithmetic.wrong_solution(p, seed=i) for i, p in enumerate(test_set)])}


def run(cfg: IRLConfig, run_dir: str) -> dict:
    validate(cfg)
    prep = lm_base.prepare(cfg, run_dir, depends={"finetune": cfg.finetune}, base_vocab_chunk=False)
    data, enc, tok, base = prep.data, prep.encoded, prep.tokenizer, prep.base
    ev = cfg.evaluation
    expert = expert_reference(cfg, data)

    def one(name, method, seed, folder):
        run = prep.run.sub(os.path.relpath(folder, run_dir), desc=f"{name} seed {seed}", seed=seed,
                           depends={"method": method, "seed": seed})
        spec = prep.spec._replace(max_new_tokens=ev.max_new_tokens)
        extra = {}
        if isinstance(method, gail.GAILConfig):
            made = gail.finetune(run, method, base, cfg.finetune, enc.train,
                                 gail.Texts(data.train_prompts, data.train_responses), tok, spec)
            model, extra = made.model, {"gail_rounds": made.rounds}
        else:
            model = finetune(run, method, base, cfg.finetune, enc.train, spec)
        result = {**extra, "temperatures": evaluate(
            model, tok, enc.eval_prompts, enc.eval_prompt_mask, data.eval_references, jax.random.PRNGKey(10_000 + seed),
            temperatures=ev.temperatures, num_samples=ev.num_samples, max_new_tokens=ev.max_new_tokens,
            gamma=method.gamma, correct_fn=tasks.get(cfg.task.name).score, prompts_per_batch=ev.prompts_per_batch,
            rows_per_score=ev.rows_per_score, expert_support=None if expert is None else expert["support"])}
        if expert is not None:
            result["reward_pair_accuracy"] = reward_pair_accuracy(
                model, tok, *expert["pairs"], gamma=method.gamma, max_length=cfg.base.max_length,
                rows_per_score=ev.rows_per_score)
        return result

    every = arms(cfg)
    per_run = sweep.run_sweep(run_dir, {m: every[m] for m in cfg.methods}, cfg.seeds, one,
                              fingerprint=dict(prep.run.fingerprint, evaluation=ev))
    by_temperature = {m: {s: r["temperatures"] for s, r in seeds.items()} for m, seeds in per_run.items()}
    pairs = {m: [r.get("reward_pair_accuracy", float("nan")) for r in seeds.values()] for m, seeds in per_run.items()}
    pairs = {m: sweep.mean_se(v) for m, v in pairs.items()}
    metric = tasks.get(cfg.task.name).metric
    cols = (dataclasses.replace(COLUMNS[0], header=metric),) + COLUMNS[1:]
    if expert is not None and all("expert_tv" in temps[t] for seeds in by_temperature.values()
                                  for temps in seeds.values() for t in temps):  # (results made before it lack it)
        cols += (sweep.Column("expert_tv", "TV to the expert"), sweep.Column("expert_coverage", "expert coverage"))
    # Each method against the first method trained on the same data (all of it, or its train_examples): the
    # small-data variants against the small-data MLE, the rest against MLE.
    matched = {}
    for name in cfg.methods:
        same_data = [m for m in cfg.methods if every[m].train_examples == every[name].train_examples]
        if name != same_data[0]:
            found = matched_diversity({m: by_temperature[m] for m in (same_data[0], name)}, reference=same_data[0])
            matched.update({k: dict(v, reference=same_data[0]) for k, v in found.items()})
    at_entropy = {}
    if cfg.control in cfg.methods:  # (a selection without the control has no such table)
        same = [m for m in cfg.methods if every[m].train_examples == every[cfg.control].train_examples]
        at_entropy = matched_diversity({m: by_temperature[m] for m in same}, reference=cfg.control, axis="entropy",
                                       paired=True)
    appendix = method_table(cfg.methods, matched, pairs, metric=metric)
    if at_entropy:
        appendix += "\n\nAt matched token entropy, against the entropy-bonus control:\n\n" + entropy_table(
            at_entropy, cfg.control, metric)
    expert_bleu = None if expert is None else expert["self_bleu"]
    summary = sweep.report(run_dir, by_temperature, cols, group_label="temperature", matched_diversity=matched,
                           matched_entropy=at_entropy,
                           reward_pair_accuracy=pairs, expert_self_bleu=expert_bleu,
                           expert_own_match=None if expert is None else expert["own_match"],
                           note=f"{metric.capitalize()} and diversity are over all samples; Self-BLEU: lower is more "
                                f"diverse." + ("" if expert_bleu is None else
                                               f" The expert's own Self-BLEU: {expert_bleu:.1f}; its own "
                                               f"{ev.num_samples} samples a problem are at TV "
                                               f"{expert['own_match']['tv']:.3f} and coverage "
                                               f"{expert['own_match']['coverage']:.3f} from its distribution."),
                           over_groups=((cols[0], cols[1], cols[4]), "sampling temperature",
                                        "metrics_vs_temperature.png"),
                           appendix=appendix)
    # The frontier: one line per method through its temperatures (greedy at Self-BLEU 100).
    sweep.plot_frontier({f"{name}@{t}": tree for name, temps in summary.items() for t, tree in temps.items()},
                        x=dataclasses.replace(COLUMNS[1], header="Self-BLEU (lower = more diverse)"), y=cols[0],
                        series=lambda n: n.rsplit("@", 1)[0], path=os.path.join(run_dir, "accuracy_vs_diversity.png"),
                        title="accuracy-diversity frontier over sampling temperatures",
                        x_line=None if expert_bleu is None else (expert_bleu, "expert's Self-BLEU"))
    return summary


def matched_diversity(per_run: Dict[str, Dict[int, dict]], reference: str, axis: str = "self_bleu",
                      paired: bool = False) -> Dict[str, dict]:
    """Each method against ``reference`` at matched diversity, the paper's question: along each seed's frontier
    (``axis``: Self-BLEU by default, or token entropy; against accuracy, over the evaluation temperatures), the
    accuracy at a common value of ``axis``, interpolated. The target is the middle of the range that both
    methods' seed-mean frontiers cover. Returns {method: {axis: the target, 'accuracy' (mean, se), 'gap' (mean,
    se) against the reference}} for the methods whose frontiers overlap the reference's (two or more
    temperatures needed). With ``paired`` the gap is the mean of per-seed gaps (``metrics.matched_paired_gap``:
    the runs of one seed share the base, the batch order and the evaluation's keys)."""
    if reference not in per_run or len(next(iter(per_run[reference].values()))) < 2:
        return {}
    frontiers = {name: [([r[t][axis] for t in r], [r[t]["accuracy"] for t in r]) for r in seeds.values()]
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
        gap = (metrics.matched_paired_gap if paired else metrics.matched_gap)(frontiers[name], frontiers[reference],
                                                                              target)
        out[name] = {axis: target, "accuracy": [float(np.mean(own)), metrics.standard_error(own)], "gap": list(gap)}
    return out


def entropy_table(matched: Dict[str, dict], control: str, metric: str) -> str:
    """Each method against the entropy-bonus control at matched token entropy (seed-paired gaps)."""
    lines = [f"| method | against | matched entropy | {metric} there | gap (paired by seed) |", "|---|---|---|---|---|"]
    for name, m in matched.items():
        lines.append(f"| {name} | {control} | {m['entropy']:.3f} | {sweep.cell(*m['accuracy'], 3)} | "
                     f"{sweep.cell(*m['gap'], 3)} |")
    return "\n".join(lines) + (
        f"\n\nThe entropy-bonus control ({control}) flattens MLE's policy; read at the same token entropy along each "
        f"seed's frontier (entropy against {metric} over the temperatures), a method's gap to it is what it does "
        f"beyond flattening. Gaps are the mean of per-seed gaps (the runs of a seed share its base, batch order "
        f"and evaluation keys) ± their standard error.")


def method_table(methods: Sequence[str], matched: Dict[str, dict], pairs: Dict[str, list], metric: str) -> str:
    """One row per method: its accuracy at matched diversity and the gap to its reference (``matched``'s
    'reference', the first method trained on the same data), and its extracted reward's accuracy at ranking
    held-out (correct, wrong) pairs."""
    lines = [f"| method | against | matched Self-BLEU | {metric} there | gap | reward pair accuracy |",
             "|---|---|---|---|---|---|"]
    for name in methods:
        m = matched.get(name)
        cells = ["", "", "", ""] if m is None else [m["reference"], f"{m['self_bleu']:.1f}",
                                                    sweep.cell(*m["accuracy"], 3), sweep.cell(*m["gap"], 3)]
        pair = "" if np.isnan(pairs[name][0]) else sweep.cell(*pairs[name], 3)
        lines.append("| " + " | ".join([name] + cells + [pair]) + " |")
    return "\n".join(lines) + (
        f"\n\n{metric.capitalize()} read off each seed's frontier (Self-BLEU against {metric} over the evaluation "
        f"temperatures, interpolated) at the middle of the Self-BLEU range that the method and the one it is "
        f"compared against (the first method trained on the same data) both cover; gap: the method minus that "
        f"one, mean ± standard error over seeds. Reward pair accuracy: how often the extracted reward (summed "
        f"implied rewards) ranks a held-out problem's correct solution above a wrong one (one slipped "
        f"calculation, carried on); 0.5 is chance.")
