"""The reward-model-ensembles recipe (Coste et al. 2024's protocol; Ahmed et al.'s shared-encoder K heads):
proxies (reward models of each kind on pi0's backbone or their own, trained by Bradley-Terry on gold-labelled
pairs of pi0's samples, with and without label noise) are optimised against by best-of-n (the unbiased estimator
over N samples per held-out prompt, under four aggregations) and by PPO at each KL coefficient, and the gold
reward is read off against the KL spent. One run per (kind, noise, seed). Results: results.json, results.md
(mean +- standard error over seeds), PNG plots of gold (and proxy) reward against KL. The configs
(``experiments/configs/ensembles_*.py``) declare the reward-model kinds and the sizes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import nnx

from experiments import lm_base
from jax_irl import losses, rollout, sampling, stages, sweep, tasks, train
from jax_irl.algorithms import pairs, ppo
from jax_irl.algorithms import reward_models as rm
from jax_irl.algorithms.pairs import OracleConfig
from jax_irl.data import arithmetic
from jax_irl.data.tokenizer import TextTokenizer
from jax_irl.models import hf, lora
from jax_irl.models.transformer import Transformer

AGGREGATIONS = (("mean", None), ("min", None), ("uwo", 0.5), ("lcb", 1.0))  # best-of-n's (how, coefficient)
NS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # best-of-n's n, up to bon_samples


@dataclasses.dataclass(frozen=True)
class EnsemblesConfig:
    task: tasks.TaskConfig = tasks.TaskConfig(name="arithmetic", train_examples=2000, eval_examples=32)
    base: lm_base.BaseConfig = lm_base.BaseConfig()
    sft: stages.StageConfig = stages.StageConfig(
        steps=300, batch_size=32, optimizer=train.OptimizerConfig(learning_rate=2e-3, schedule="cosine",
                                                                 warmup_steps=20, weight_decay=0.01))
    skip_sft: bool = False  # pi0 is the base as it is (an HF checkpoint that is already fine-tuned)
    gold_model: Optional[str] = None  # a local HF reward-model folder as the gold; None: the graded arithmetic reward
    rm_backbone: Optional[str] = None  # a local HF folder (a causal LM, or a BERT encoder) with its tokenizer for the
    # proxies' backbone; None: pi0's
    pairs: int = 600  # gold-labelled prompts (one pair each) for the proxies; ``held_out`` of the pairs held out
    held_out: float = 0.1  # the share of the labelled pairs held out to measure the proxies' pair accuracy
    candidates: int = 4  # pi0 samples per labelled prompt: the pair is the best and the worst under the gold
    oracle: OracleConfig = OracleConfig()  # deterministic labels (ties skipped) or Bradley-Terry
    label_noise: Tuple[float, ...] = (0.0, 0.25)
    rm_stage: stages.StageConfig = stages.StageConfig(steps=150, batch_size=16, optimizer=train.OptimizerConfig(
        learning_rate=3e-4, schedule="cosine", warmup_steps=10, weight_decay=0.01))
    variants: Dict[str, rm.RMKind] = dataclasses.field(default_factory=dict)  # by name (a config declares them)
    methods: Tuple[str, ...] = ()  # the variants that run, in table order
    bon_samples: int = 256  # N per held-out prompt (n runs over the powers of 2 up to it)
    sample_prompts_per_batch: Optional[int] = None  # pi0's samples drawn this many prompts at a time; None: all
    ppo: ppo.PPOConfig = ppo.PPOConfig(iterations=12, prompts_per_rollout=16, samples_per_prompt=4,
                                       max_new_tokens=48, epochs=2, minibatches=2,
                                       optimizer=train.OptimizerConfig(learning_rate=1e-4))
    ppo_kl: Tuple[float, ...] = (0.0, 0.05)  # PPO runs at each KL coefficient (its kl_coef is replaced); () for none
    ppo_uwo: float = 0.1  # the PPO reward: the proxy's UWO aggregate with this lambda
    seeds: Tuple[int, ...] = (0, 1, 2)
    settings: stages.RunSettings = stages.RunSettings()



def validate(cfg: EnsemblesConfig) -> None:
    """Checks across fields, made by the driver before anything is written."""
    if not cfg.methods:
        raise ValueError("methods must name at least one variant")
    sweep.check_selection(cfg.methods, cfg.variants)
    if not cfg.seeds or cfg.pairs < 10 or cfg.candidates < 2 or cfg.bon_samples < 2:
        raise ValueError("seeds must name a seed; pairs must be >= 10, candidates and bon_samples >= 2")
    if not cfg.label_noise or any(not 0.0 <= x < 0.5 for x in cfg.label_noise):
        raise ValueError(f"label_noise must list fractions in [0, 0.5); got {cfg.label_noise}")
    if any(not x >= 0 for x in cfg.ppo_kl):
        raise ValueError(f"ppo_kl must list coefficients >= 0; got {cfg.ppo_kl}")
    if not 0.0 < cfg.held_out < 1.0:
        raise ValueError(f"held_out must be a share of the labelled pairs in (0, 1); got {cfg.held_out}")
    if cfg.pairs > cfg.task.train_examples:
        raise ValueError(f"pairs={cfg.pairs} needs as many training prompts; task.train_examples="
                         f"{cfg.task.train_examples}")


def _aggregate(rewards: np.ndarray, how: str, coef: Optional[float]) -> np.ndarray:
    return np.asarray(losses.aggregate_rewards(jax.numpy.asarray(rewards), how, coef=coef))


def gold_function(cfg: EnsemblesConfig, max_length: int) -> pairs.GoldFn:
    """The gold reward: a local reward model (its own tokenizer), else the graded arithmetic checker."""
    if cfg.gold_model:
        return rm.reward_model_gold(hf.reward_model_from_pretrained(cfg.gold_model),
                                    TextTokenizer.load(cfg.gold_model), max_length=max_length)
    return pairs.per_sample(arithmetic.graded_reward)


def proxy_base(cfg: EnsemblesConfig, pi0: nnx.Module, tok: TextTokenizer) -> Tuple[nnx.Module, TextTokenizer]:
    """The proxies' backbone and tokenizer: ``rm_backbone``'s (with LoRA adapters on a decoder when the base has
    them), else pi0's."""
    if not cfg.rm_backbone:
        return pi0, tok
    rm_base, rm_tok = hf.backbone_from_pretrained(cfg.rm_backbone, dtype=cfg.base.dtype), TextTokenizer.load(cfg.rm_backbone)
    if cfg.base.lora.enabled:
        if isinstance(rm_base, Transformer):  # LoRA on the proxies' decoder backbone too, full heads
            rm_base = lora.apply(rm_base, cfg.base.lora, seed=1)
        else:
            print("note: lora applies to decoders; the proxies' BERT encoder backbone trains in full")
    return rm_base, rm_tok


def labelled_pairs(cfg: EnsemblesConfig, run_dir: str, pi0: nnx.Module, train_prompts: rollout.Prompts,
                   settings: pairs.SampleSettings) -> Tuple[list, list]:
    """pi0's samples on the first ``pairs`` training prompts, labelled by the gold (cached in data/pairs.json),
    split into the proxies' training pairs and the last ``held_out`` share held out."""
    records = stages.cached_json(os.path.join(run_dir, "data", "pairs.json"), functools.partial(
        pairs.label_samples, pi0, train_prompts.take(np.arange(cfg.pairs)), jax.random.PRNGKey(11), cfg.candidates,
        settings, cfg.oracle, np.random.default_rng(0)))["records"]
    if len(records) < 10:
        raise ValueError(f"only {len(records)} of {cfg.pairs} prompts gave a labelled pair (identical samples and gold "
                         f"ties are skipped): raise pairs or candidates, or label ties with oracle.temperature > 0")
    held = max(int(round(len(records) * cfg.held_out)), 1)
    return records[:-held], records[-held:]


def draw_bon_pool(pi0: nnx.Module, eval_prompts: rollout.Prompts, samples: int,
                  settings: pairs.SampleSettings) -> dict:
    """``samples`` samples of pi0 per held-out prompt with their gold rewards: {"texts", "gold"}."""
    texts, gold, _ = pairs.sample_texts(pi0, eval_prompts, jax.random.PRNGKey(12), samples, settings)
    return {"texts": texts, "gold": gold.tolist()}


@dataclasses.dataclass(frozen=True)
class Shared:
    """What every (kind, noise, seed) run uses: built once by ``shared``."""

    cfg: EnsemblesConfig
    prep: lm_base.Prepared
    run_dir: str
    gold_fn: pairs.GoldFn
    rm_base: nnx.Module  # the proxies' backbone
    rm_tok: TextTokenizer
    train_pairs: list
    test_pairs: list
    pool: dict  # best-of-n's samples of pi0 per held-out prompt: {"texts", "gold"}
    pool_rows: Dict[str, np.ndarray]  # the pool as reward-model rows
    ns: Tuple[int, ...]
    ppo_prompts: rollout.Prompts  # the training prompts (texts only: the PPO reward looks up their references)
    references: Dict[str, str]  # training prompt -> its reference solution

    @property
    def max_length(self) -> int:
        return self.cfg.base.max_length + self.cfg.ppo.max_new_tokens


def shared(cfg: EnsemblesConfig, run_dir: str, prep: lm_base.Prepared) -> Shared:
    data, enc, tok, pi0 = prep.data, prep.encoded, prep.tokenizer, prep.pi0
    max_length = cfg.base.max_length + cfg.ppo.max_new_tokens
    gold_fn = gold_function(cfg, max_length)
    rm_base, rm_tok = proxy_base(cfg, pi0, tok)
    settings = pairs.SampleSettings(tok, cfg.ppo.max_new_tokens, gold_fn, prompts_per_batch=cfg.sample_prompts_per_batch)
    train_tokens, train_mask = rollout.prompt_rows(enc.train["tokens"], enc.train["prompt_lengths"], tok.pad_id,
                                                   enc.prompt_width)
    train_prompts = rollout.Prompts(train_tokens, train_mask, list(data.train_prompts), list(data.train_responses))
    eval_prompts = rollout.Prompts(enc.eval_prompts, enc.eval_prompt_mask, list(data.eval_prompts),
                                   list(data.eval_references))
    train_pairs, test_pairs = labelled_pairs(cfg, run_dir, pi0, train_prompts, settings)
    pool = stages.cached_json(os.path.join(run_dir, "data", "bon_pool.json"), functools.partial(
        draw_bon_pool, pi0, eval_prompts, cfg.bon_samples, settings))
    pool_rows = rm.text_rows(rm_tok, [p for p in eval_prompts.texts for _ in range(cfg.bon_samples)],
                      [t for ts in pool["texts"] for t in ts], max_length)
    return Shared(cfg=cfg, prep=prep, run_dir=run_dir, gold_fn=gold_fn, rm_base=rm_base, rm_tok=rm_tok,
                  train_pairs=train_pairs, test_pairs=test_pairs, pool=pool, pool_rows=pool_rows,
                  ns=tuple(n for n in NS if n <= cfg.bon_samples),
                  ppo_prompts=rollout.Prompts(train_tokens, train_mask, list(data.train_prompts)),
                  references=dict(zip(train_prompts.texts, train_prompts.references)))


def fit_proxy(sh: Shared, name: str, kind: rm.RMKind, noise: float, seed: int, run: stages.Run) -> nnx.Module:
    """A proxy of ``kind`` trained by Bradley-Terry on the training pairs with a fraction ``noise`` swapped."""
    model = rm.build(kind, functools.partial(rm.copy_of, sh.rm_base), seed=seed)
    return rm.fit_pairs(run.sub("rm", desc=f"rm {name} seed {seed}", depends={"noise": noise}), model, kind,
                        rm.flip_labels(sh.train_pairs, noise, seed=1000 + seed), sh.rm_tok, sh.cfg.rm_stage,
                        max_length=sh.max_length)


def best_of_n(sh: Shared, proxy: nnx.Module) -> Dict[str, Dict[str, list]]:
    """Per aggregation: the gold and proxy reward of best-of-n under the proxy at each n (unbiased estimator over
    the pool), and the measured KL of the best-of-n distribution (pi0 repeats itself, so below KL_bon)."""
    rows = {k: sh.pool_rows[k] for k in ("tokens", "attention")}
    scores = rollout.score_rows(proxy, rollout.RewardScores("mean"), rows, rows_per_batch=64)["rewards"]
    scores = scores.reshape(len(sh.pool["texts"]), sh.cfg.bon_samples, -1)
    pool_gold, ns = np.asarray(sh.pool["gold"]), list(sh.ns)
    bon = {}
    for how, coef in AGGREGATIONS:
        proxy_reward = _aggregate(scores, how, coef)
        bon[how] = {"gold": rm.bon_gold(proxy_reward, pool_gold, ns).tolist(),
                    "proxy": rm.bon_gold(proxy_reward, proxy_reward, ns).tolist(),
                    "kl": rm.bon_kl(proxy_reward, sh.pool["texts"], ns).tolist()}
    return bon


@dataclasses.dataclass(frozen=True)
class ProxyReward:
    """PPO's reward function: the proxy's UWO aggregate (lambda ``uwo``) of each response, with the gold and the
    proxy reward in the extras that PPO logs."""

    proxy: nnx.Module
    sh: Shared
    uwo: float

    def __call__(self, prompts: Sequence[str], response_ids: np.ndarray, response_mask: np.ndarray):
        tok, sh = self.sh.prep.tokenizer, self.sh
        texts = [tok.decode(r[m > 0]) for r, m in zip(response_ids, response_mask)]
        rows = rm.text_rows(sh.rm_tok, prompts, texts, sh.max_length)
        scored = rollout.score_rows(self.proxy, rollout.RewardScores("uwo", self.uwo),
                                    {k: rows[k] for k in ("tokens", "attention")}, rows_per_batch=64)["reward"]
        gold = np.asarray(sh.gold_fn(list(prompts), [sh.references[p] for p in prompts], [[t] for t in texts]))[:, 0]
        return scored, {"gold": gold, "proxy": scored}


PPO_LOGGED = ("gold", "proxy", "kl", "kl_k2", "kl_k3", "kl_seq_k2")


def ppo_curves(sh: Shared, name: str, kind: rm.RMKind, noise: float, seed: int, run: stages.Run,
               proxy: nnx.Module) -> Dict[str, Dict[str, dict]]:
    """PPO from pi0 against the proxy at each KL coefficient: per coefficient, per iteration, the logged values."""
    pi0, runs = sh.prep.pi0, {}
    for coef in sh.cfg.ppo_kl:
        ppo_run = run.sub(f"ppo_kl{coef:g}", desc=f"ppo {name} kl {coef:g} seed {seed}",
                          depends={"kind": kind, "noise": noise, "kl": coef})
        _, stats = ppo.train_ppo(ppo_run, ppo.ActorCritic(nnx.clone(pi0), rngs=nnx.Rngs(seed)), pi0,
                                 dataclasses.replace(sh.cfg.ppo, kl_coef=coef), sh.ppo_prompts,
                                 ProxyReward(proxy, sh, sh.cfg.ppo_uwo), sh.prep.spec)
        runs[f"{coef:g}"] = {str(s["iteration"]): {k: s.get(k, float("nan")) for k in PPO_LOGGED} for s in stats}
    return runs


def final_values(cfg: EnsemblesConfig, test: dict, bon: dict, runs: dict) -> Dict[str, float]:
    """The table's values for one run: the proxy's held-out pair accuracy and disagreement, best-of-n's gold at
    the largest n and at its peak, and each PPO run's last rollout."""
    final = {"pair_accuracy": test["mean_accuracy"], "min_pair_accuracy": test["min_accuracy"],
             "disagreement": test["disagreement"]}
    for how, curve in bon.items():
        final[f"bon_{how}_gold_max_n"] = curve["gold"][-1]
        final[f"bon_{how}_gold_peak"] = max(curve["gold"])
        final[f"bon_{how}_kl_max_n"] = curve["kl"][-1]
    for coef, curve in runs.items():
        last = curve[str(cfg.ppo.iterations - 1)]
        final[f"ppo{coef}_gold"], final[f"ppo{coef}_proxy"], final[f"ppo{coef}_kl"] = (
            last["gold"], last["proxy"], last["kl"])
    return final


@dataclasses.dataclass(frozen=True)
class ProxyRun:
    """``sweep.run_sweep``'s run_one: one (kind, label noise, seed): fit the proxy, evaluate it on the held-out
    pairs, best-of-n and PPO against it."""

    sh: Shared

    def __call__(self, name: str, variant: Tuple[rm.RMKind, float], seed: int, folder: str) -> dict:
        kind, noise = variant
        sh = self.sh
        run = sh.prep.run.sub(os.path.relpath(folder, sh.run_dir), seed=seed)
        proxy = fit_proxy(sh, name, kind, noise, seed, run)
        test = rm.evaluate_pairs(proxy, rm.pair_rows(pairs.preference_rows(sh.rm_tok, sh.test_pairs, sh.max_length)))
        bon = best_of_n(sh, proxy)
        runs = ppo_curves(sh, name, kind, noise, seed, run, proxy)
        return {"final": final_values(sh.cfg, test, bon, runs), "bon": bon, "ppo": runs,
                "head_accuracy": test["accuracy"]}


def columns(cfg: EnsemblesConfig, ns: Sequence[int]) -> List[sweep.Column]:
    out = [sweep.Column("pair_accuracy", "held-out pair acc."), sweep.Column("disagreement", "heads' std")]
    out += [sweep.Column(f"bon_{how}_gold_max_n", f"BoN-{ns[-1]} gold ({how})") for how, _ in AGGREGATIONS]
    out += [sweep.Column("bon_mean_kl_max_n",
                         f"BoN-{ns[-1]} KL, measured (KL_bon {sampling.best_of_n_kl(ns[-1]):.2f})")]
    for coef in cfg.ppo_kl:
        out += [sweep.Column(f"ppo{coef:g}_gold", f"PPO β={coef:g} gold"),
                sweep.Column(f"ppo{coef:g}_kl", f"PPO β={coef:g} KL")]
    return out


def report(sh: Shared, per_run: Dict[str, Dict[int, dict]]) -> dict:
    """results.json, results.md and the best-of-n and PPO plots."""
    cfg, ns = sh.cfg, list(sh.ns)
    finals = {n: {s: r["final"] for s, r in seeds.items()} for n, seeds in per_run.items()}
    pi0_gold = float(np.asarray(sh.pool["gold"]).mean())
    bon_summary = {how: sweep.summarise({n: {s: {str(k): {"gold": g, "proxy": p, "kl": q} for k, g, p, q in
                                                 zip(ns, r["bon"][how]["gold"], r["bon"][how]["proxy"],
                                                     r["bon"][how].get("kl", [float("nan")] * len(ns)))}
                                             for s, r in seeds.items()} for n, seeds in per_run.items()})
                   for how, _ in AGGREGATIONS}
    ppo_summary = {f"{coef:g}": sweep.summarise({n: {s: r["ppo"][f"{coef:g}"] for s, r in seeds.items()}
                                                for n, seeds in per_run.items()}) for coef in cfg.ppo_kl}
    gold_words = f"the reward model {cfg.gold_model}" if cfg.gold_model else "the graded arithmetic reward in [0, 1]"
    summary = sweep.report(sh.run_dir, finals, columns(cfg, ns), variant_label="reward model@label noise",
                           note=f"Gold: {gold_words}; pi0's own mean gold on the held-out "
                                f"prompts is {pi0_gold:.3f}. Pair accuracy on {len(sh.test_pairs)} held-out pairs "
                                f"(the proxies train on {len(sh.train_pairs)}). Best-of-n from {cfg.bon_samples} "
                                f"samples per prompt (unbiased estimator)" + (
                                    f"; PPO against the proxy's UWO (lambda {cfg.ppo_uwo}), its last rollout's gold "
                                    f"reward and KL (k1)." if cfg.ppo_kl else "; no PPO runs (ppo_kl is empty)."),
                           bon=bon_summary, ppo=ppo_summary, ns=ns, pi0_gold=pi0_gold,
                           held_out_pairs=len(sh.test_pairs), train_pairs=len(sh.train_pairs))
    _plot_bon(bon_summary, ns, pi0_gold, os.path.join(sh.run_dir, "bon_gold_vs_kl.png"))
    if ppo_summary:
        _plot_ppo(ppo_summary, os.path.join(sh.run_dir, "ppo_gold_vs_kl.png"))
    return summary


def run(cfg: EnsemblesConfig, run_dir: str) -> dict:
    validate(cfg)
    stage = None if cfg.skip_sft else cfg.sft
    extra = {"sft": stage}
    if cfg.gold_model or cfg.rm_backbone:
        extra.update(gold_model=cfg.gold_model, rm_backbone=cfg.rm_backbone)
    sh = shared(cfg, run_dir, lm_base.prepare(cfg, run_dir, sft_stage=stage, depends=extra))
    variants = {f"{m}@{noise:g}": (cfg.variants[m], noise) for m in cfg.methods for noise in cfg.label_noise}
    per_run = sweep.run_sweep(run_dir, variants, cfg.seeds, ProxyRun(sh),
                              fingerprint=dict(sh.prep.run.fingerprint, pairs=cfg.pairs, candidates=cfg.candidates,
                                               oracle=cfg.oracle, rm_stage=cfg.rm_stage, bon_samples=cfg.bon_samples,
                                               ppo=cfg.ppo, ppo_uwo=cfg.ppo_uwo))
    return report(sh, per_run)


def _plot_gold_and_proxy(panels, path: str, *, pi0_gold: Optional[float] = None) -> None:
    """One panel per (title, x label, y label, curves): each curve (name, x, gold, gold's standard error or None,
    proxy) draws the gold reward solid (with a band) and the proxy dotted in the same colour on a right axis,
    since the proxies' scales differ from the gold's and from each other's."""
    if jax.process_index() != 0:
        return
    plt = sweep._pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, xlabel, ylabel, curves) in zip(axes[0], panels):
        proxy_ax = ax.twinx()
        for name, x, gold, se, proxy in curves:
            line = ax.plot(x, gold, marker="o" if se is not None else ".", label=f"{name} gold")[0]
            if se is not None:
                ax.fill_between(x, gold - se, gold + se, alpha=0.15, color=line.get_color())
            proxy_ax.plot(x, proxy, ls=":", color=line.get_color(), alpha=0.5)
        if pi0_gold is not None:
            ax.axhline(pi0_gold, color="gray", lw=0.8)
        proxy_ax.set_ylabel("proxy reward (dotted)")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_bon(bon_summary, ns, pi0_gold: float, path: str) -> None:
    x = sampling.best_of_n_kl(ns)
    panels = [(f"best-of-n, {how} aggregation", "KL_bon = log n - (n-1)/n", "gold reward",
               [(name, x, np.array([tree[str(n)]["gold"][0] for n in ns]),
                 np.nan_to_num(np.array([tree[str(n)]["gold"][1] for n in ns])),
                 [tree[str(n)]["proxy"][0] for n in ns]) for name, tree in summary.items()])
              for how, summary in bon_summary.items()]
    _plot_gold_and_proxy(panels, path, pi0_gold=pi0_gold)


def _plot_ppo(ppo_summary, path: str) -> None:
    def curve(name, tree):
        its = sorted(tree, key=int)
        return (name, [tree[i]["kl_seq_k2"][0] for i in its], [tree[i]["gold"][0] for i in its], None,
                [tree[i]["proxy"][0] for i in its])
    panels = [(f"PPO against the proxy's UWO, KL coefficient {coef}", "KL(pi || pi0): 0.5 (response log-ratio)^2 (Coste et al.)",
               "gold reward of the rollouts", [curve(name, tree) for name, tree in summary.items()])
              for coef, summary in ppo_summary.items()]
    _plot_gold_and_proxy(panels, path)
