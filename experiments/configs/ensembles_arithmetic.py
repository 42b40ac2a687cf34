"""Reward-model ensembles against over-optimisation (Coste et al. 2024's protocol; Ahmed et al.'s shared-encoder
K heads) on built-in arithmetic, CPU-sized.

Gold: the programmatic graded reward (``arithmetic.graded_reward``, in [0, 1]). pi0: the shared base
(``experiments.lm_base``) fine-tuned with MLE on the task's solutions. Proxies: reward models on pi0's backbone
(a copy; last counted token's hidden state, linear heads), trained by Bradley-Terry on a limited set of
gold-labelled pairs of pi0's own samples (best against worst of ``candidates`` per prompt), with and without
label noise (a fraction of the labels swapped), one run per (kind, noise, seed):
  single (one RM), multihead (one encoder, K heads), ensemble (K independent RMs, vmapped).
Optimising against each proxy:
- best-of-n on held-out prompts with the unbiased estimator from N samples per prompt, for n up to N, with
  KL_bon = log n - (n - 1) / n on the x axis, under the mean, min (WCO), UWO (lambda 0.5) and LCB (mean - 1 std)
  aggregations;
- PPO from pi0 against the proxy (UWO, lambda 0.1, as in Coste et al.) at each KL coefficient in ``ppo_kl``
  (one of them 0), the gold and proxy rewards of each rollout logged against its KL (k1 and Coste's k2).
Results: results.json, results.md (mean +- standard error over seeds), PNG plots of gold (and proxy) reward
against KL for best-of-n and for PPO.

    python -m experiments.run ensembles_arithmetic [seeds=(0,1,2)] [methods=(single,multihead,ensemble)]
        [label_noise=(0,0.25)] [ppo_kl=(0,0.05)] [variants.frozen.kind=multihead variants.frozen.heads=3
        variants.frozen.freeze_encoder=true]
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import nnx

from experiments import lm_base
from experiments.lm_base import SETTINGS_RESUMABLE
from jax_irl import losses, rollout, sampling, stages, sweep, tasks, train
from jax_irl.algorithms import pairs, ppo
from jax_irl.algorithms import reward_models as rm
from jax_irl.algorithms.pairs import OracleConfig
from jax_irl.data import arithmetic
from jax_irl.data.tokenizer import TextTokenizer
from jax_irl.models import hf, lora
from jax_irl.models.transformer import Transformer

RESUMABLE = SETTINGS_RESUMABLE + ("methods", "seeds", "variants", "label_noise", "ppo_kl")
# multihead_frozen is the paper's set-up (Ahmed et al.: K heads on a frozen pretrained encoder); multihead trains
# the encoder under its heads. The ensemble's members each see their own Poisson bootstrap of every batch (an
# online bootstrap: their own resample of the data, not only their own initialisation).
VARIANTS = {"single": rm.RMKind(), "multihead": rm.RMKind("multihead", heads=3),
            "multihead_frozen": rm.RMKind("multihead", heads=3, freeze_encoder=True),
            "ensemble": rm.RMKind("ensemble", heads=3, bootstrap="poisson")}
# The head-count ablation, declared (methods=(heads1,heads2,heads4,heads8) runs it): K heads on one encoder.
HEADS = {f"heads{k}": rm.RMKind("multihead", heads=k) for k in (1, 2, 4, 8)}
DEFAULT_METHODS = tuple(VARIANTS)
AGGREGATIONS = (("mean", None), ("min", None), ("uwo", 0.5), ("lcb", 1.0))


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
    pairs: int = 600  # gold-labelled prompts (one pair each) for the proxies; 10% of them held out
    candidates: int = 4  # pi0 samples per labelled prompt: the pair is the best and the worst under the gold
    oracle: OracleConfig = OracleConfig()  # deterministic labels (ties skipped) or Bradley-Terry
    label_noise: Tuple[float, ...] = (0.0, 0.25)
    rm_stage: stages.StageConfig = stages.StageConfig(steps=150, batch_size=16, optimizer=train.OptimizerConfig(
        learning_rate=3e-4, schedule="cosine", warmup_steps=10, weight_decay=0.01))
    variants: Dict[str, rm.RMKind] = dataclasses.field(default_factory=lambda: dict(VARIANTS, **HEADS))
    methods: Tuple[str, ...] = DEFAULT_METHODS
    bon_samples: int = 256  # N per held-out prompt (n runs over the powers of 2 up to it)
    sample_prompts_per_batch: Optional[int] = None  # pi0's samples drawn this many prompts at a time; None: all
    ppo: ppo.PPOConfig = ppo.PPOConfig(iterations=12, prompts_per_rollout=16, samples_per_prompt=4,
                                       max_new_tokens=48, epochs=2, minibatches=2,
                                       optimizer=train.OptimizerConfig(learning_rate=1e-4))
    ppo_kl: Tuple[float, ...] = (0.0, 0.05)  # PPO runs at each KL coefficient (its kl_coef is replaced)
    ppo_uwo: float = 0.1  # the PPO reward: the proxy's UWO aggregate with this lambda
    seeds: Tuple[int, ...] = (0, 1, 2)
    settings: stages.RunSettings = stages.RunSettings()


def config() -> EnsemblesConfig:
    return EnsemblesConfig()


def validate(cfg: EnsemblesConfig) -> None:
    sweep.check_selection(cfg.methods, cfg.variants)
    if not cfg.seeds or cfg.pairs < 10 or cfg.candidates < 2 or cfg.bon_samples < 2:
        raise ValueError("seeds must name a seed; pairs must be >= 10, candidates and bon_samples >= 2")
    if not cfg.label_noise or any(not 0.0 <= x < 0.5 for x in cfg.label_noise):
        raise ValueError(f"label_noise must list fractions in [0, 0.5); got {cfg.label_noise}")
    if any(not x >= 0 for x in cfg.ppo_kl):
        raise ValueError(f"ppo_kl must list coefficients >= 0; got {cfg.ppo_kl}")
    if cfg.pairs > cfg.task.train_examples:
        raise ValueError(f"pairs={cfg.pairs} needs as many training prompts; task.train_examples="
                         f"{cfg.task.train_examples}")


def _rows(tok, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> Dict[str, np.ndarray]:
    """Prompt + response rows with attention, for scoring by a reward model."""
    from jax_irl.data import batching

    enc = batching.encode_examples(tok, list(prompts), list(responses), max_length)
    return rm.pair_rows(batching.trim_padding({"tokens": enc["tokens"], "mask": enc["mask"]}, tok.pad_id))


def proxy_backbone(path: str, dtype: str):
    """A local Hugging Face folder as the proxies' backbone: a BERT encoder (config model_type 'bert') or a
    decoder (any family ``hf.from_pretrained`` reads)."""
    with open(os.path.join(path, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "bert":
        return hf.encoder_from_pretrained(path, dtype=dtype)
    return hf.from_pretrained(path, dtype=dtype)


def _aggregate(rewards: np.ndarray, how: str, coef: Optional[float]) -> np.ndarray:
    return np.asarray(losses.aggregate_rewards(jax.numpy.asarray(rewards), how, coef=coef))


def run(cfg: EnsemblesConfig, run_dir: str) -> dict:
    validate(cfg)
    stage = None if cfg.skip_sft else cfg.sft
    extra = {"sft": stage}
    if cfg.gold_model or cfg.rm_backbone:
        extra.update(gold_model=cfg.gold_model, rm_backbone=cfg.rm_backbone)
    prep = lm_base.prepare(cfg, run_dir, sft_stage=stage, depends=extra)
    data, enc, tok, pi0, depends = prep.data, prep.encoded, prep.tokenizer, prep.pi0, prep.run.fingerprint
    max_new = cfg.ppo.max_new_tokens
    max_length = cfg.base.max_length + max_new
    if cfg.gold_model:
        gold_fn = rm.reward_model_gold(hf.reward_model_from_pretrained(cfg.gold_model),
                                         TextTokenizer.load(cfg.gold_model), max_length=max_length)
    else:
        gold_fn = pairs.per_sample(arithmetic.graded_reward)
    if cfg.rm_backbone:  # the proxies' own backbone and tokenizer
        rm_base, rm_tok = proxy_backbone(cfg.rm_backbone, cfg.base.dtype), TextTokenizer.load(cfg.rm_backbone)
        if cfg.base.lora.enabled:
            if isinstance(rm_base, Transformer):  # LoRA on the proxies' decoder backbone too, full heads
                rm_base = lora.apply(rm_base, cfg.base.lora, seed=1)
            else:
                print("note: lora applies to decoders; the proxies' BERT encoder backbone trains in full")
    else:
        rm_base, rm_tok = pi0, tok
    settings = pairs.SampleSettings(tok, max_new, gold_fn, prompts_per_batch=cfg.sample_prompts_per_batch)
    train_tokens, train_mask = rollout.prompt_rows(enc.train["tokens"], enc.train["prompt_lengths"], tok.pad_id,
                                                   enc.prompt_width)
    train_prompts = rollout.Prompts(train_tokens, train_mask, list(data.train_prompts), list(data.train_responses))
    eval_prompts = rollout.Prompts(enc.eval_prompts, enc.eval_prompt_mask, list(data.eval_prompts),
                                   list(data.eval_references))

    # pi0's samples on the first `pairs` training prompts, labelled by the gold reward
    labelled_pairs = stages.cached_json(os.path.join(run_dir, "data", "pairs.json"), lambda: pairs.label_samples(
        pi0, train_prompts.take(np.arange(cfg.pairs)), jax.random.PRNGKey(11), cfg.candidates, settings, cfg.oracle,
        np.random.default_rng(0)))["records"]
    if len(labelled_pairs) < 10:
        raise ValueError(f"only {len(labelled_pairs)} of {cfg.pairs} prompts gave a labelled pair (identical samples and gold "
                         f"ties are skipped): raise pairs or candidates, or label ties with oracle.temperature > 0")
    held = max(len(labelled_pairs) // 10, 1)
    train_pairs, test_pairs = labelled_pairs[:-held], labelled_pairs[-held:]

    def bon_pool():  # N samples of pi0 per held-out prompt with their gold rewards
        texts, gold, _ = pairs.sample_texts(pi0, eval_prompts, jax.random.PRNGKey(12), cfg.bon_samples, settings)
        return {"texts": texts, "gold": gold.tolist()}

    pool = stages.cached_json(os.path.join(run_dir, "data", "bon_pool.json"), bon_pool)
    pool_gold = np.asarray(pool["gold"])
    pool_rows = _rows(rm_tok, [p for p in eval_prompts.texts for _ in range(cfg.bon_samples)],
                      [t for ts in pool["texts"] for t in ts], max_length)
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= cfg.bon_samples]
    reference_of = dict(zip(train_prompts.texts, train_prompts.references))
    ppo_prompts = rollout.Prompts(train_tokens, train_mask, list(data.train_prompts))

    def run_one(name, variant, seed, folder):
        kind, noise = variant
        run = prep.run.sub(os.path.relpath(folder, run_dir), seed=seed)
        model = rm.build(kind, lambda r: nnx.clone(rm_base), seed=seed)
        trained = rm.fit_pairs(run.sub("rm", desc=f"rm {name} seed {seed}", depends={"noise": noise}), model, kind,
                               rm.flip_labels(train_pairs, noise, seed=1000 + seed), rm_tok, cfg.rm_stage,
                               max_length=max_length)
        test = rm.evaluate_pairs(trained, rm.pair_rows(pairs.preference_rows(rm_tok, test_pairs, max_length)))
        scores = rollout.score_rows(trained, rollout.RewardScores("mean"), {k: pool_rows[k] for k in
                                                                            ("tokens", "attention")},
                                    rows_per_batch=64)["rewards"].reshape(len(eval_prompts.texts), cfg.bon_samples, -1)
        bon = {}
        for how, coef in AGGREGATIONS:
            proxy = _aggregate(scores, how, coef)
            bon[how] = {"gold": rm.bon_gold(proxy, pool_gold, ns).tolist(),
                        "proxy": rm.bon_gold(proxy, proxy, ns).tolist(),
                        "kl": rm.bon_kl(proxy, pool["texts"], ns).tolist()}  # measured: pi0 repeats itself

        def reward_fn(prompts, response_ids, response_mask):
            texts = [tok.decode(r[m > 0]) for r, m in zip(response_ids, response_mask)]
            scored = rollout.score_rows(trained, rollout.RewardScores("uwo", cfg.ppo_uwo),
                                        {k: v for k, v in _rows(rm_tok, prompts, texts, max_length).items()
                                         if k in ("tokens", "attention")}, rows_per_batch=64)["reward"]
            gold = np.asarray(gold_fn(list(prompts), [reference_of[p] for p in prompts], [[t] for t in texts]))[:, 0]
            return scored, {"gold": gold, "proxy": scored}

        runs = {}
        for coef in cfg.ppo_kl:
            settings_ppo = dataclasses.replace(cfg.ppo, kl_coef=coef)
            ppo_run = run.sub(f"ppo_kl{coef:g}", desc=f"ppo {name} kl {coef:g} seed {seed}",
                              depends={"kind": kind, "noise": noise, "kl": coef})
            _, stats = ppo.train_ppo(ppo_run, ppo.ActorCritic(nnx.clone(pi0), rngs=nnx.Rngs(seed)), pi0, settings_ppo,
                                     ppo_prompts, reward_fn, prep.spec)
            runs[f"{coef:g}"] = {str(s["iteration"]): {k: s.get(k, float("nan")) for k in ("gold", "proxy", "kl", "kl_k2", "kl_k3",
                                                                                 "kl_seq_k2")}
                                 for s in stats}
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
        return {"final": final, "bon": bon, "ppo": runs, "head_accuracy": test["accuracy"]}

    variants = {f"{m}@{noise:g}": (cfg.variants[m], noise) for m in cfg.methods for noise in cfg.label_noise}
    per_run = sweep.run_sweep(run_dir, variants, cfg.seeds, run_one,
                              fingerprint=dict(depends, pairs=cfg.pairs, candidates=cfg.candidates, oracle=cfg.oracle,
                                               rm_stage=cfg.rm_stage, bon_samples=cfg.bon_samples, ppo=cfg.ppo,
                                               ppo_uwo=cfg.ppo_uwo))
    finals = {n: {s: r["final"] for s, r in seeds.items()} for n, seeds in per_run.items()}
    columns = [sweep.Column("pair_accuracy", "held-out pair acc."), sweep.Column("disagreement", "heads' std")]
    columns += [sweep.Column(f"bon_{how}_gold_max_n", f"BoN-{ns[-1]} gold ({how})") for how, _ in AGGREGATIONS]
    columns += [sweep.Column("bon_mean_kl_max_n", f"BoN-{ns[-1]} KL, measured (KL_bon {sampling.best_of_n_kl(ns[-1]):.2f})")]
    for coef in cfg.ppo_kl:
        columns += [sweep.Column(f"ppo{coef:g}_gold", f"PPO β={coef:g} gold"),
                    sweep.Column(f"ppo{coef:g}_kl", f"PPO β={coef:g} KL")]
    pi0_gold = float(pool_gold.mean())
    bon_summary = {how: sweep.summarise({n: {s: {str(k): {"gold": g, "proxy": p, "kl": q} for k, g, p, q in
                                                 zip(ns, r["bon"][how]["gold"], r["bon"][how]["proxy"],
                                                     r["bon"][how].get("kl", [float("nan")] * len(ns)))}
                                             for s, r in seeds.items()} for n, seeds in per_run.items()})
                   for how, _ in AGGREGATIONS}
    ppo_summary = {f"{coef:g}": sweep.summarise({n: {s: r["ppo"][f"{coef:g}"] for s, r in seeds.items()}
                                                for n, seeds in per_run.items()}) for coef in cfg.ppo_kl}
    gold_words = f"the reward model {cfg.gold_model}" if cfg.gold_model else "the graded arithmetic reward in [0, 1]"
    summary = sweep.report(run_dir, finals, columns, variant_label="reward model@label noise",
                           note=f"Gold: {gold_words}; pi0's own mean gold on the held-out "
                                f"prompts is {pi0_gold:.3f}. Best-of-n from {cfg.bon_samples} samples per prompt "
                                f"(unbiased estimator); PPO against the proxy's UWO (lambda {cfg.ppo_uwo}), its last "
                                f"rollout's gold reward and KL (k1).",
                           bon=bon_summary, ppo=ppo_summary, ns=ns, pi0_gold=pi0_gold)
    _plot_bon(bon_summary, ns, pi0_gold, os.path.join(run_dir, "bon_gold_vs_kl.png"))
    _plot_ppo(ppo_summary, os.path.join(run_dir, "ppo_gold_vs_kl.png"))
    return summary


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
