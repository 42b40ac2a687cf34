"""Reward models and ensembles against reward over-optimisation (Coste et al. 2024, "Reward Model Ensembles Help
Mitigate Overoptimization"; Ahmed et al., a shared encoder with K linear heads), and best-of-n against a proxy.

Three kinds behind one Bradley-Terry code path (``RMKind``):
- 'single': one reward model (a backbone and one linear head on the last counted token's hidden state);
- 'multihead': one shared backbone and K linear heads (different initialisations, optionally bootstrap
  weights), the backbone trained or frozen (``freeze_encoder``: only the heads learn);
- 'ensemble': K independent reward models with stacked params (a leading axis K on every param, sharded as
  replicated along it), run with ``nnx.vmap``: one compiled forward and one optimizer step for all K.
Every kind maps (tokens [B, T], attention [B, T]) -> rewards [B, K] (K = 1 for 'single'), so scoring
(``rollout.RewardScores``), aggregation (``losses.aggregate_rewards``: mean, min/WCO, UWO, LCB) and PPO see one
interface. Training minimises the sum over heads of each head's Bradley-Terry loss
    L = sum_k  sum_b w_bk (-log sigmoid(r_k(x_b, y_b^+) - r_k(x_b, y_b^-))) / sum_b w_bk,
so each head (or member) follows its own loss's gradient; w are bootstrap weights (``losses.bootstrap_weights``,
drawn per step) or 1. For the ensemble, gradient clipping is per member (``clip_per_member``), so the vmapped
step equals K separate single-model steps.

Best-of-n with an unbiased estimator (Nakano et al. 2021; as in Coste et al.): from N >= n samples of a prompt
with proxy scores p and gold scores g, sort by p ascending; the expected gold score of the proxy's best of a
uniformly random n-subset is
    E[g_BoN(n)] = sum_{i=1}^{N} g_(i) C(i - 1, n - 1) / C(N, n),
since the sample of rank i is the subset's maximum exactly when the other n - 1 come from the i - 1 below it.
Its KL from the sampling policy is KL_bon(n) = log n - (n - 1) / n.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_irl import losses, rollout, stages, train
from jax_irl.algorithms import pairs
from jax_irl.data import batching
from jax_irl.models.heads import RewardModel

KINDS = ("single", "multihead", "ensemble")


@dataclasses.dataclass(frozen=True)
class RMKind:
    kind: str = "single"
    heads: int = 1  # K: heads of 'multihead', members of 'ensemble' (1 for 'single')
    freeze_encoder: bool = False  # 'multihead': train the heads only
    bootstrap: Optional[str] = None  # None | 'poisson' | 'bernoulli': per-head weights on each batch

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"RMKind.kind must be one of {KINDS}; got {self.kind!r}")
        if not (isinstance(self.heads, int) and self.heads >= 1):
            raise ValueError(f"RMKind.heads must be an int >= 1; got {self.heads!r}")
        if self.kind == "single" and self.heads != 1:
            raise ValueError(f"a 'single' reward model has one head; got heads={self.heads}")
        if self.freeze_encoder and self.kind != "multihead":
            raise ValueError("freeze_encoder applies to kind 'multihead' (a shared encoder under K heads)")
        if self.bootstrap not in (None, "poisson", "bernoulli"):
            raise ValueError(f"RMKind.bootstrap must be None, 'poisson' or 'bernoulli'; got {self.bootstrap!r}")


class EnsembleRewardModel(nnx.Module):
    """K independent reward models with stacked params, evaluated with nnx.vmap: rewards [B, K]."""

    def __init__(self, make_member: Callable[[nnx.Rngs], RewardModel], num_members: int, *, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=num_members)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
        def create(member_rngs):
            return make_member(member_rngs)

        self.members = create(rngs)
        self.num_members = num_members

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        out = nnx.vmap(lambda member, t, a: member(t, a), in_axes=(0, None, None), out_axes=0)(
            self.members, tokens, attention_mask)  # [K, B, 1]
        return jnp.moveaxis(out[..., 0], 0, -1)


def build(kind: RMKind, make_backbone: Callable[[nnx.Rngs], nnx.Module], seed: int) -> nnx.Module:
    """A reward model of ``kind`` whose backbone(s) come from ``make_backbone(rngs)`` (e.g. a fresh decoder, or a
    function returning a copy of a pretrained one: every member then starts from it, and the heads differ)."""
    rngs = nnx.Rngs(seed)
    if kind.kind == "ensemble":
        return EnsembleRewardModel(lambda r: RewardModel(make_backbone(r), 1, rngs=r), kind.heads, rngs=rngs)
    return RewardModel(make_backbone(rngs), kind.heads, stop_backbone_gradient=kind.freeze_encoder, rngs=rngs)


def clip_per_member(max_norm: float) -> optax.GradientTransformation:
    """Clip each ensemble member's gradient (slice k of every leaf's leading axis) to global norm ``max_norm``."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        squares = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)).astype(jnp.float32) ** 2, axis=1) for g in leaves)
        norms = jnp.sqrt(squares)
        scale = jnp.where(norms > max_norm, max_norm / jnp.maximum(norms, 1e-30), 1.0)
        return jax.tree.map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), updates), state

    return optax.GradientTransformation(init, update)


def _frozen_labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if "backbone" in str(path[0]) else "train", params)


def optimizer_for(kind: RMKind, opt: train.OptimizerConfig, steps: int) -> Optional[optax.GradientTransformation]:
    """The optimizer a kind needs beyond ``opt``: the ensemble's clips per member (then ``opt`` without its global
    clip); a frozen encoder's gets no update and no optimizer state (weight decay included), only the heads
    train. None for the others (the Trainer builds ``opt``)."""
    if kind.kind == "ensemble":
        inner = train.make_optimizer(dataclasses.replace(opt, max_grad_norm=None), steps)
        return optax.chain(clip_per_member(opt.max_grad_norm), inner) if opt.max_grad_norm else inner
    if kind.freeze_encoder:
        return optax.multi_transform({"train": train.make_optimizer(opt, steps), "frozen": optax.set_to_zero()},
                                     _frozen_labels)
    return None


def pair_rows(rows: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """``pairs.preference_rows``' layout (chosen at 2i, rejected at 2i + 1; tokens [2N, T], target mask
    [2N, T-1]) plus 'attention' [2N, T]: 1 up to each row's last counted token."""
    mask = np.asarray(rows["mask"])
    t = np.arange(mask.shape[1])
    last = np.max(np.where(mask > 0, t[None], -1), axis=1) + 1  # the last counted token's position in tokens
    attention = (np.arange(mask.shape[1] + 1)[None] <= last[:, None]).astype(np.int32)
    return dict(rows, attention=attention)


def text_rows(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int) -> Dict[str, np.ndarray]:
    """Prompt + response rows with 'attention' (``pair_rows``), trimmed of all-padding columns, for scoring texts
    by a reward model (``rollout.RewardScores``)."""
    enc = batching.encode_examples(tokenizer, list(prompts), list(responses), max_length)
    return pair_rows(batching.trim_padding({"tokens": enc["tokens"], "mask": enc["mask"]}, tokenizer.pad_id))


def copy_of(model: nnx.Module, rngs: nnx.Rngs) -> nnx.Module:
    """``build``'s make_backbone that starts every member from a copy of ``model`` (use
    ``functools.partial(copy_of, model)``): the members share the backbone's weights, their heads differ."""
    del rngs
    return nnx.clone(model)


def bt_loss_fn(kind: RMKind):
    """loss_fn(model, batch, rng) for ``train.Trainer``: batch rows alternate chosen / rejected (pair_rows);
    the sum over heads of the heads' Bradley-Terry losses, with bootstrap weights when configured. Logs the
    mean accuracy, each head's accuracy ('accuracy_k'), and the heads' mean disagreement (std of the margins)."""

    def loss_fn(model, batch, rng):
        rewards = model(batch["tokens"], batch["attention"])  # [2B, K]
        chosen, rejected = rewards[0::2], rewards[1::2]
        weights = None
        if kind.bootstrap is not None:
            weights = losses.bootstrap_weights(rng, chosen.shape[0], chosen.shape[1], kind.bootstrap)
        loss, aux = losses.bradley_terry_loss(chosen, rejected, weights=weights)
        per_head = jnp.atleast_1d(aux["accuracy"])
        out = {"accuracy": jnp.mean(per_head), "disagreement": jnp.mean(losses.head_disagreement(chosen - rejected))}
        out.update({f"accuracy_{k}": per_head[k] for k in range(per_head.shape[0])})
        return loss * chosen.shape[1], out

    return loss_fn


def classify_loss_fn(kind: RMKind):
    """loss_fn(model, batch, rng) for ``train.Trainer``: GAIL's discriminator (``losses.discriminator_loss``) on
    rows that alternate data / policy (pair_rows: 'chosen' the data's response, 'rejected' the policy's), each
    head a classifier of its own, their losses summed. Logs the heads' mean data and policy accuracies."""

    def loss_fn(model, batch, rng):
        del rng
        logits = model(batch["tokens"], batch["attention"])  # [2B, K]
        total, data_acc, policy_acc = 0.0, 0.0, 0.0
        for k in range(logits.shape[1]):
            loss, aux = losses.discriminator_loss(logits[0::2, k], logits[1::2, k])
            total, data_acc, policy_acc = total + loss, data_acc + aux["data_accuracy"], policy_acc + aux[
                "policy_accuracy"]
        heads = logits.shape[1]
        return total, {"data_accuracy": data_acc / heads, "policy_accuracy": policy_acc / heads}

    return loss_fn


OBJECTIVES = ("bradley_terry", "classify")


def fit_pairs(run: stages.Run, model: nnx.Module, kind: RMKind, records: Sequence[Dict[str, str]], tokenizer,
              stage: stages.StageConfig, *, max_length: int, objective: str = "bradley_terry") -> nnx.Module:
    """Train a reward model of ``kind`` on preference records (prompt, chosen, rejected) as a stage of ``run``
    (``stages.run_stage``; its fingerprint gains the kind and the pair count), resuming there, by Bradley-Terry
    (``bt_loss_fn``) or, with ``objective='classify'``, as GAIL's discriminator between the chosen (data) and
    rejected (policy) responses (``classify_loss_fn``); pairs whose two responses encode to the same tokens are
    dropped (``pairs.distinct_pairs``). Batches of ``stage.batch_size`` pairs are a pure function of (run.seed,
    position). Returns the trained model."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
    records = pairs.distinct_pairs(tokenizer, records, max_length, what="reward-model pairs")
    rows = pair_rows(pairs.preference_rows(tokenizer, records, max_length))
    sampler = batching.IndexSampler(len(records), min(stage.batch_size, len(records)), seed=run.seed)
    batch_fn = batching.Batches(sampler, {k: rows[k] for k in ("tokens", "attention")}, rows_per_example=2)
    loss_fn = bt_loss_fn(kind) if objective == "bradley_terry" else classify_loss_fn(kind)
    depends = {"kind": kind, "pairs": len(records)}
    if objective != "bradley_terry":  # (a Bradley-Terry fit keeps the fingerprint it always had)
        depends["objective"] = objective
    return run.sub(depends=depends).stage(model, loss_fn, stage, batch_fn,
                                          tx=optimizer_for(kind, stage.optimizer, stage.steps)).model


def evaluate_pairs(model, rows: Dict[str, np.ndarray], rows_per_batch: int = 64) -> Dict[str, object]:
    """Per-head accuracy on held-out pairs ('accuracy' [K] list), and the accuracy of the mean and min
    aggregates, and the heads' mean disagreement on the pairs' margins."""
    from jax_irl import rollout

    scores = rollout.score_rows(model, rollout.RewardScores("mean"), {k: rows[k] for k in ("tokens", "attention")},
                                rows_per_batch=rows_per_batch)["rewards"]
    margin = scores[0::2] - scores[1::2]  # [N, K]
    return {"accuracy": (margin > 0).mean(0).tolist(), "mean_accuracy": float((margin.mean(1) > 0).mean()),
            "min_accuracy": float((scores[0::2].min(1) > scores[1::2].min(1)).mean()),
            "disagreement": float(margin.std(1).mean())}


def flip_labels(records: Sequence[Dict[str, str]], fraction: float, seed: int):
    """A copy of preference records with ``fraction`` of them (chosen at random, seeded) swapped: label noise."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label-noise fraction must be in [0, 1]; got {fraction}")
    flip = np.random.default_rng(seed).random(len(records)) < fraction
    return [dict(r, chosen=r["rejected"], rejected=r["chosen"]) if f else dict(r) for r, f in zip(records, flip)]


# --- best-of-n ----------------------------------------------------------------------------------------------


def bon_weights(num_samples: int, n: int) -> np.ndarray:
    """[N] weights C(i - 1, n - 1) / C(N, n) of the samples sorted by proxy score ascending (rank i = 1..N)."""
    if not 1 <= n <= num_samples:
        raise ValueError(f"best-of-n needs 1 <= n <= N; got n={n}, N={num_samples}")
    i = np.arange(1, num_samples + 1)
    # In logs: exact enough for N in the thousands (math.comb overflows floats there).
    log_w = np.array([math.lgamma(k) - math.lgamma(n) - math.lgamma(k - n + 1) if k >= n else -np.inf for k in i])
    log_w -= math.lgamma(num_samples + 1) - math.lgamma(n + 1) - math.lgamma(num_samples - n + 1)
    return np.exp(log_w)


def bon_gold(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """The unbiased estimate of the best-of-n gold score for each n in ``ns``: proxy, gold [..., N] (one row per
    prompt; the estimate is averaged over rows). Ties in the proxy keep the samples' order (stable sort)."""
    proxy, gold = np.atleast_2d(np.asarray(proxy, float)), np.atleast_2d(np.asarray(gold, float))
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold must have the same shape [P, N]; got {proxy.shape} and {gold.shape}")
    if not (np.all(np.isfinite(proxy)) and np.all(np.isfinite(gold))):
        raise ValueError("proxy and gold scores must be finite")
    order = np.argsort(proxy, axis=-1, kind="stable")
    ranked = np.take_along_axis(gold, order, -1)
    return np.array([float((ranked @ bon_weights(proxy.shape[-1], n)).mean()) for n in ns])


def bon_kl(proxy: np.ndarray, texts: Sequence[Sequence[str]], ns: Sequence[int]) -> np.ndarray:
    """The measured KL of the best-of-n distribution from the sampling policy, for each n in ``ns``, averaged over
    prompts: proxy [P, N] scores of N samples per prompt, texts ``[P][N]`` the samples themselves.

    Over a prompt's pool, the sampling policy is the empirical distribution p(y) = count(y) / N, and best-of-n
    (a uniformly random n-subset, its proxy-best kept; ties keep the samples' order as in ``bon_gold``) picks the
    sample of rank i with probability C(i - 1, n - 1) / C(N, n), so q(y) sums those over y's copies and
    KL = sum_y q(y) log(q(y) / p(y)). With distinct samples it tends to the analytic log n - (n - 1) / n
    (``sampling.best_of_n_kl``) as N grows; where the policy repeats itself it is smaller, since best-of-n then
    often picks a response the policy already favours."""
    proxy = np.atleast_2d(np.asarray(proxy, float))
    if len(texts) != proxy.shape[0] or any(len(row) != proxy.shape[1] for row in texts):
        raise ValueError(f"texts must be [P][N] like proxy {proxy.shape}")
    if not np.all(np.isfinite(proxy)):
        raise ValueError("proxy scores must be finite")
    # Per prompt, once: each rank's distinct response (as an id) and each response's share of the pool.
    ranked, shares = [], []
    for scores, row in zip(proxy, texts):
        ids = {t: i for i, t in enumerate(dict.fromkeys(row))}
        ranked.append(np.array([ids[row[j]] for j in np.argsort(scores, kind="stable")]))
        shares.append(np.bincount(ranked[-1], minlength=len(ids)) / len(row))
    out = []
    for n in ns:
        weights = bon_weights(proxy.shape[1], n)
        total = 0.0
        for order, p in zip(ranked, shares):
            q = np.bincount(order, weights=weights, minlength=len(p))
            total += float(np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0) / p), 0.0)))
        out.append(total / proxy.shape[0])
    return np.array(out)


# --- reward models as gold rewards ---------------------------------------------------------------------


def _reward_model_scores(reward_model, tokenizer, prompts, responses, scorer, max_length: int, rows_per_batch: int):
    flat = [(p, t) for p, ts in zip(prompts, responses) for t in ts]
    enc = batching.encode_examples(tokenizer, [p for p, _ in flat], [t for _, t in flat], max_length)
    length = enc["prompt_lengths"] + (enc["mask"] > 0).sum(1)  # prompt, response and eos
    attention = (np.arange(enc["tokens"].shape[1])[None] < length[:, None]).astype(np.int32)
    return rollout.score_rows(reward_model, scorer, {"tokens": enc["tokens"], "attention": attention},
                              rows_per_batch=rows_per_batch)


def reward_model_gold(reward_model, tokenizer, *, aggregation: str = "mean", coef: Optional[float] = None,
                      max_length: int = 1024, rows_per_batch: int = 32) -> pairs.GoldFn:
    """A GoldFn from a reward model (``models.heads.RewardModel``, e.g. ``hf.reward_model_from_pretrained``) and
    its own tokenizer: prompt + response re-tokenized for the reward model, its K heads aggregated with
    ``losses.aggregate_rewards``. This is the oracle of the paper's experiments (a trained reward model)."""
    scorer = rollout.RewardScores(aggregation, coef)

    def gold(prompts, references, responses):
        scores = _reward_model_scores(reward_model, tokenizer, prompts, responses, scorer, max_length, rows_per_batch)
        return np.asarray(scores["reward"], np.float64).reshape(len(prompts), -1)

    return gold


def reward_model_uncertainty(reward_model, tokenizer, *, max_length: int = 1024,
                             rows_per_batch: int = 32) -> pairs.GoldFn:
    """Gamma(x, a): the population standard deviation of a K-head reward model's heads on each response
    (``losses.head_disagreement``), in the GoldFn signature; the uncertainty of pessimistic DPO's margin."""
    scorer = rollout.RewardScores()

    def uncertainty(prompts, references, responses):
        scores = _reward_model_scores(reward_model, tokenizer, prompts, responses, scorer, max_length, rows_per_batch)
        return np.asarray(losses.head_disagreement(jnp.asarray(scores["rewards"])), np.float64).reshape(
            len(prompts), -1)

    return uncertainty


__all__ = ["EnsembleRewardModel", "KINDS", "RMKind", "bon_gold", "bon_kl", "bon_weights", "bt_loss_fn", "build",
           "clip_per_member", "evaluate_pairs", "fit_pairs", "flip_labels", "optimizer_for", "pair_rows", "reward_model_gold",
           "reward_model_uncertainty"]
