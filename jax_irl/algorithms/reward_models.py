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
    r"""A reward model of the given kind: a single head, K heads on one backbone, or an ensemble of K members.

    Args:
        kind: the ``RMKind`` ('single', 'multihead' with ``heads`` and ``freeze_encoder``, or 'ensemble' of
            ``heads`` members).
        make_backbone: ``make_backbone(rngs) -> nnx.Module``, a causal LM or encoder with ``hidden_states``
            (e.g. a fresh decoder, or ``functools.partial(copy_of, pretrained)``: every member then starts from it,
            and the heads differ).
        seed: the seed of the heads' (and the members') initialisation.

    Returns:
        An ``nnx.Module`` mapping (tokens ``[B, T]``, attention ``[B, T]``) to rewards ``[B, K]``.

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import reward_models as rm
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> backbone = lambda rngs: Transformer(presets.preset("tiny", vocab_size=16), rngs=rngs)
        >>> model = rm.build(rm.RMKind("ensemble", heads=3), backbone, seed=0)
        >>> model(np.ones((2, 5), np.int32), np.ones((2, 5), np.int32)).shape
        (2, 3)
    """
    rngs = nnx.Rngs(seed)
    if kind.kind == "ensemble":
        return EnsembleRewardModel(lambda r: RewardModel(make_backbone(r), 1, rngs=r), kind.heads, rngs=rngs)
    return RewardModel(make_backbone(rngs), kind.heads, stop_backbone_gradient=kind.freeze_encoder, rngs=rngs)


def clip_per_member(max_norm: float) -> optax.GradientTransformation:
    r"""Clip each ensemble member's gradient to a global norm of its own, so that the vmapped step of K members
    equals K separate single-model steps.

    Args:
        max_norm: the largest global norm of one member's gradient (slice k of every leaf's leading axis).

    Returns:
        An ``optax.GradientTransformation`` (stateless).

    Examples:
        >>> import jax.numpy as jnp
        >>> import numpy as np
        >>> from jax_irl.algorithms import reward_models as rm
        >>> updates, _ = rm.clip_per_member(1.0).update({"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}, None)
        >>> # member 0 (norm 5) is scaled to norm 1, member 1 (norm 0.5) is not
        >>> np.asarray(updates["w"], np.float64).round(2).tolist()
        [[0.6, 0.8], [0.3, 0.4]]
    """

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
    r"""The optimizer a reward-model kind needs beyond the Trainer's own.

    Args:
        kind: the ``RMKind``.
        opt: the stage's ``OptimizerConfig``.
        steps: the stage's steps (for the learning-rate schedule).

    Returns:
        For 'ensemble', ``opt`` behind a per-member clip (``clip_per_member``, replacing the global clip); for a
        frozen encoder, ``opt`` on the heads and no update and no optimizer state for the backbone (weight decay
        included); None for the others (the Trainer builds ``opt``).

    Examples:
        >>> from jax_irl import train
        >>> from jax_irl.algorithms import reward_models as rm
        >>> rm.optimizer_for(rm.RMKind(), train.OptimizerConfig(), 10) is None
        True
        >>> rm.optimizer_for(rm.RMKind("ensemble", heads=4), train.OptimizerConfig(max_grad_norm=1.0), 10) is None
        False
    """
    if kind.kind == "ensemble":
        inner = train.make_optimizer(dataclasses.replace(opt, max_grad_norm=None), steps)
        return optax.chain(clip_per_member(opt.max_grad_norm), inner) if opt.max_grad_norm else inner
    if kind.freeze_encoder:
        return optax.multi_transform({"train": train.make_optimizer(opt, steps), "frozen": optax.set_to_zero()},
                                     _frozen_labels)
    return None


def pair_rows(rows: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    r"""Preference rows with the attention mask a reward model reads.

    Args:
        rows: ``pairs.preference_rows``' rows: tokens ``[2N, T]`` (chosen at 2i, rejected at 2i + 1) and target
            mask ``[2N, T - 1]``.

    Returns:
        The same rows plus 'attention' ``[2N, T]``: 1 up to each row's last counted token (its eos), where the
        reward head reads the hidden state.

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import reward_models as rm
        >>> rows = rm.pair_rows({"tokens": np.zeros((1, 5), np.int32), "mask": np.array([[0, 1, 1, 0]])})
        >>> rows["attention"].tolist()
        [[1, 1, 1, 1, 0]]
    """
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
    r"""The reward models' Bradley-Terry loss, each head on its own loss:

    $$
    L = \sum_k \frac{\sum_b w_{bk} \, \big(-\log \sigma(r_k(x_b, y_b^+) - r_k(x_b, y_b^-))\big)}{\sum_b w_{bk}},
    $$

    with bootstrap weights w (``losses.bootstrap_weights``, drawn from the step's rng) when ``kind.bootstrap``
    is set, else 1.

    Args:
        kind: the ``RMKind`` (its ``bootstrap``).

    Returns:
        ``loss_fn(model, batch, rng) -> (loss, aux)`` for ``train.Trainer``: the batch's tokens and attention
        alternate chosen / rejected rows (``pair_rows``); aux holds the mean accuracy, each head's
        ('accuracy_k') and the heads' mean disagreement (the std of their margins).

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import reward_models as rm
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> backbone = lambda rngs: Transformer(presets.preset("tiny", vocab_size=16), rngs=rngs)
        >>> rows = rm.pair_rows({"tokens": np.array([[1, 2, 3, 4], [1, 2, 5, 0]] * 2),
        ...                      "mask": np.array([[0, 1, 1], [0, 1, 0]] * 2, np.float32)})
        >>> model = rm.build(rm.RMKind("multihead", heads=2), backbone, seed=0)
        >>> loss, aux = rm.bt_loss_fn(rm.RMKind("multihead", heads=2))(model, rows, None)
        >>> r = np.asarray(model(rows["tokens"], rows["attention"]), np.float64)   # [4, 2]
        >>> by_hand = np.log1p(np.exp(-(r[0::2] - r[1::2]))).mean(0).sum()   # each head's mean, summed
        >>> sorted(aux), bool(abs(float(loss) - by_hand) < 1e-5)
        (['accuracy', 'accuracy_0', 'accuracy_1', 'disagreement'], True)
    """

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
    r"""Train a reward model on preference records as a resumable stage of ``run``.

    Pairs whose two responses encode to the same tokens are dropped (``pairs.distinct_pairs``). Batches of
    ``stage.batch_size`` pairs are a pure function of (``run.seed``, position).

    Args:
        run: the stage's run; its fingerprint gains the kind and the pair count (and a non-default objective).
        model: the reward model to start from (``build``).
        kind: its ``RMKind`` (the loss's bootstrap, the optimizer: ``optimizer_for``).
        records: preference records (prompt, chosen, rejected).
        tokenizer: the ``TextTokenizer`` of the rows.
        stage: steps, batch size (pairs) and optimizer.
        max_length: the rows' length.
        objective: 'bradley_terry' (``bt_loss_fn``) or 'classify': GAIL's discriminator, chosen = data, rejected
            = policy (``losses.discriminator_loss``).

    Returns:
        The trained model.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout
        >>> from jax_irl.data import batching
        >>> from jax_irl.data.tokenizer import train_bpe
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> tok = train_bpe(["1 + 2 = 3", "2 + 2 = 4", "3 + 1 = 4"], vocab_size=280)
        >>> model = Transformer(presets.preset("tiny", vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
        >>> texts = ["1 + 2 =", "2 + 2 ="]
        >>> enc = batching.encode_examples(tok, texts, ["3", "4"], 8)
        >>> tokens, mask = rollout.prompt_rows(enc["tokens"], enc["prompt_lengths"], tok.pad_id, 6)
        >>> prompts = rollout.Prompts(tokens, mask, texts, references=["3", "4"])
        >>> import tempfile
        >>> from jax_irl import parallel, stages
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> run = stages.Run(tempfile.mkdtemp(), mesh, progress=False)
        >>> from jax_irl.algorithms import reward_models as rm
        >>> model = rm.build(rm.RMKind(), lambda rngs: Transformer(presets.preset("tiny", vocab_size=tok.vocab_size),
        ...                                                        rngs=rngs), seed=0)
        >>> records = [{"prompt": "1 + 2 =", "chosen": "3", "rejected": "4"}, {"prompt": "2 + 2 =", "chosen": "4",
        ...            "rejected": "3"}]
        >>> trained = rm.fit_pairs(run, model, rm.RMKind(), records, tok, stages.StageConfig(steps=10, batch_size=2),
        ...                        max_length=8)
        >>> rm.evaluate_pairs(trained, rm.pair_rows(pairs.preference_rows(tok, records, 8)))["accuracy"]
        [1.0]
    """
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
    r"""How well a reward model's heads rank held-out pairs.

    Args:
        model: a reward model (rewards ``[B, K]``).
        rows: ``pair_rows``' rows of the held-out pairs (tokens, attention; chosen at 2i, rejected at 2i + 1).
        rows_per_batch: rows per scoring call (``rollout.score_rows``).

    Returns:
        'accuracy' (a list of K per-head accuracies), 'mean_accuracy' and 'min_accuracy' (of the heads' mean and
        min), and 'disagreement' (the mean over pairs of the heads' standard deviation of the margin).

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import reward_models as rm
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> backbone = lambda rngs: Transformer(presets.preset("tiny", vocab_size=16), rngs=rngs)
        >>> rows = rm.pair_rows({"tokens": np.array([[1, 2, 3, 4], [1, 2, 5, 0]] * 2),
        ...                      "mask": np.array([[0, 1, 1], [0, 1, 0]] * 2, np.float32)})
        >>> out = rm.evaluate_pairs(rm.build(rm.RMKind("multihead", heads=2), backbone, seed=0), rows)
        >>> len(out["accuracy"]), sorted(out)
        (2, ['accuracy', 'disagreement', 'mean_accuracy', 'min_accuracy'])
    """
    from jax_irl import rollout

    scores = rollout.score_rows(model, rollout.RewardScores("mean"), {k: rows[k] for k in ("tokens", "attention")},
                                rows_per_batch=rows_per_batch)["rewards"]
    margin = scores[0::2] - scores[1::2]  # [N, K]
    return {"accuracy": (margin > 0).mean(0).tolist(), "mean_accuracy": float((margin.mean(1) > 0).mean()),
            "min_accuracy": float((scores[0::2].min(1) > scores[1::2].min(1)).mean()),
            "disagreement": float(margin.std(1).mean())}


def flip_labels(records: Sequence[Dict[str, str]], fraction: float, seed: int):
    r"""Label noise: a copy of preference records with a seeded random share of them swapped.

    Args:
        records: preference records (prompt, chosen, rejected).
        fraction: the expected share to swap, in [0, 1] (each record independently).
        seed: the numpy seed of the draw.

    Returns:
        New records, the swapped ones with chosen and rejected exchanged.

    Examples:
        >>> from jax_irl.algorithms import reward_models as rm
        >>> rm.flip_labels([{"prompt": "p", "chosen": "a", "rejected": "b"}], 1.0, seed=0)
        [{'prompt': 'p', 'chosen': 'b', 'rejected': 'a'}]
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label-noise fraction must be in [0, 1]; got {fraction}")
    flip = np.random.default_rng(seed).random(len(records)) < fraction
    return [dict(r, chosen=r["rejected"], rejected=r["chosen"]) if f else dict(r) for r, f in zip(records, flip)]


# --- best-of-n ----------------------------------------------------------------------------------------------


def bon_weights(num_samples: int, n: int) -> np.ndarray:
    r"""The best-of-n weight of each rank: the probability that the sample of rank i (of N, sorted by proxy score
    ascending) is the proxy's best of a uniformly random n-subset,

    $$
    w_i = \binom{i - 1}{n - 1} \Big/ \binom{N}{n}.
    $$

    Args:
        num_samples: N, the pool's size.
        n: the subset's size, 1 <= n <= N.

    Returns:
        ``[N]`` float64 weights (summing to 1), computed in logs (exact enough for N in the thousands).

    Examples:
        >>> from jax_irl.algorithms import reward_models as rm
        >>> rm.bon_weights(4, 2).round(4).tolist()
        [0.0, 0.1667, 0.3333, 0.5]
    """
    if not 1 <= n <= num_samples:
        raise ValueError(f"best-of-n needs 1 <= n <= N; got n={n}, N={num_samples}")
    i = np.arange(1, num_samples + 1)
    # In logs: exact enough for N in the thousands (math.comb overflows floats there).
    log_w = np.array([math.lgamma(k) - math.lgamma(n) - math.lgamma(k - n + 1) if k >= n else -np.inf for k in i])
    log_w -= math.lgamma(num_samples + 1) - math.lgamma(n + 1) - math.lgamma(num_samples - n + 1)
    return np.exp(log_w)


def bon_gold(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    r"""The unbiased estimate of the best-of-n gold score (Nakano et al. 2021; Coste et al. 2024):

    $$
    \mathbb{E}[g_{\mathrm{BoN}}(n)] = \sum_{i=1}^{N} g_{(i)} \binom{i - 1}{n - 1} \Big/ \binom{N}{n},
    $$

    with the samples sorted by proxy score (ties keep the samples' order: a stable sort).

    Args:
        proxy: ``[P, N]`` (or ``[N]``) proxy scores of N samples per prompt.
        gold: the same samples' gold scores, the same shape.
        ns: the n to evaluate (each 1 <= n <= N).

    Returns:
        ``[len(ns)]`` estimates, averaged over prompts.

    Raises:
        ValueError: on shapes that differ or non-finite scores.

    Examples:
        >>> from jax_irl.algorithms import reward_models as rm
        >>> # n = 1: the mean gold score; n = 3: the gold score of the proxy's best
        >>> rm.bon_gold([[0.1, 0.5, 0.3]], [[1.0, 0.0, 2.0]], ns=(1, 3)).round(6).tolist()
        [1.0, 0.0]

    References:
        Nakano et al., "WebGPT: Browser-assisted question-answering with human feedback", 2021.
        Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization", ICLR 2024.
    """
    proxy, gold = np.atleast_2d(np.asarray(proxy, float)), np.atleast_2d(np.asarray(gold, float))
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold must have the same shape [P, N]; got {proxy.shape} and {gold.shape}")
    if not (np.all(np.isfinite(proxy)) and np.all(np.isfinite(gold))):
        raise ValueError("proxy and gold scores must be finite")
    order = np.argsort(proxy, axis=-1, kind="stable")
    ranked = np.take_along_axis(gold, order, -1)
    return np.array([float((ranked @ bon_weights(proxy.shape[-1], n)).mean()) for n in ns])


def bon_kl(proxy: np.ndarray, texts: Sequence[Sequence[str]], ns: Sequence[int]) -> np.ndarray:
    r"""The measured KL of the best-of-n distribution from the sampling policy, on each prompt's pool of samples.

    Over a prompt's pool, the sampling policy is the empirical distribution p(y) = count(y) / N, and best-of-n
    (a uniformly random n-subset, its proxy-best kept; ties keep the samples' order as in ``bon_gold``) picks the
    sample of rank i with probability ``bon_weights``, so q(y) sums those over y's copies and

    $$
    \mathrm{KL}(q \,\|\, p) = \sum_y q(y) \log \frac{q(y)}{p(y)}.
    $$

    With distinct samples it tends to the analytic log n - (n - 1) / n (``sampling.best_of_n_kl``) as N grows;
    where the policy repeats itself it is smaller, since best-of-n then often picks a response the policy already
    favours.

    Args:
        proxy: ``[P, N]`` proxy scores of N samples per prompt.
        texts: ``[P][N]`` the samples themselves (equal texts are one response).
        ns: the n to evaluate.

    Returns:
        ``[len(ns)]`` KLs in nats, averaged over prompts.

    Examples:
        >>> from jax_irl.algorithms import reward_models as rm
        >>> proxy = [[0.1, 0.2, 0.3, 0.4]]
        >>> rm.bon_kl(proxy, [["a", "b", "c", "d"]], ns=(1, 4)).round(4).tolist()   # 0 and log 4
        [0.0, 1.3863]
        >>> rm.bon_kl(proxy, [["b", "a", "a", "a"]], ns=(4,)).round(4).tolist()     # log(1 / 0.75)
        [0.2877]
    """
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
    r"""A gold reward (``pairs.GoldFn``) from a trained reward model: the oracle of the paper's experiments.

    Each prompt + response is re-tokenized with the reward model's own tokenizer and scored in one
    ``rollout.score_rows`` pass; its K heads are aggregated with ``losses.aggregate_rewards``.

    Args:
        reward_model: a reward model (``models.heads.RewardModel``, e.g. ``hf.reward_model_from_pretrained``).
        tokenizer: its tokenizer.
        aggregation: over the heads: 'mean', 'min', 'uwo' or 'lcb' (``losses.aggregate_rewards``).
        coef: the coefficient of 'uwo' / 'lcb'.
        max_length: the scored rows' length.
        rows_per_batch: rows per scoring call.

    Returns:
        ``gold(prompts [P], references [P], responses [P][n]) -> rewards [P, n]`` (the references are not read).

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout
        >>> from jax_irl.data import batching
        >>> from jax_irl.data.tokenizer import train_bpe
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> tok = train_bpe(["1 + 2 = 3", "2 + 2 = 4", "3 + 1 = 4"], vocab_size=280)
        >>> model = Transformer(presets.preset("tiny", vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
        >>> texts = ["1 + 2 =", "2 + 2 ="]
        >>> enc = batching.encode_examples(tok, texts, ["3", "4"], 8)
        >>> tokens, mask = rollout.prompt_rows(enc["tokens"], enc["prompt_lengths"], tok.pad_id, 6)
        >>> prompts = rollout.Prompts(tokens, mask, texts, references=["3", "4"])
        >>> from jax_irl.algorithms import reward_models as rm
        >>> scorer = rm.build(rm.RMKind("multihead", heads=3), lambda rngs: Transformer(
        ...     presets.preset("tiny", vocab_size=tok.vocab_size), rngs=rngs), seed=0)
        >>> gold = rm.reward_model_gold(scorer, tok, aggregation="min", max_length=16)
        >>> gold(texts, ["3", "4"], [["3", "4", "5"], ["4", "3", "2"]]).shape
        (2, 3)
    """
    scorer = rollout.RewardScores(aggregation, coef)

    def gold(prompts, references, responses):
        scores = _reward_model_scores(reward_model, tokenizer, prompts, responses, scorer, max_length, rows_per_batch)
        return np.asarray(scores["reward"], np.float64).reshape(len(prompts), -1)

    return gold


def reward_model_uncertainty(reward_model, tokenizer, *, max_length: int = 1024,
                             rows_per_batch: int = 32) -> pairs.GoldFn:
    r"""Pessimistic DPO's uncertainty Gamma(x, a): the population standard deviation of a K-head reward model's
    heads on each response (``losses.head_disagreement``), in the ``pairs.GoldFn`` signature.

    Args:
        reward_model: a reward model with K >= 2 heads.
        tokenizer: its tokenizer.
        max_length: the scored rows' length.
        rows_per_batch: rows per scoring call.

    Returns:
        ``uncertainty(prompts [P], references [P], responses [P][n]) -> [P, n]`` (>= 0).

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout
        >>> from jax_irl.data import batching
        >>> from jax_irl.data.tokenizer import train_bpe
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> tok = train_bpe(["1 + 2 = 3", "2 + 2 = 4", "3 + 1 = 4"], vocab_size=280)
        >>> model = Transformer(presets.preset("tiny", vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
        >>> texts = ["1 + 2 =", "2 + 2 ="]
        >>> enc = batching.encode_examples(tok, texts, ["3", "4"], 8)
        >>> tokens, mask = rollout.prompt_rows(enc["tokens"], enc["prompt_lengths"], tok.pad_id, 6)
        >>> prompts = rollout.Prompts(tokens, mask, texts, references=["3", "4"])
        >>> from jax_irl.algorithms import reward_models as rm
        >>> scorer = rm.build(rm.RMKind("multihead", heads=3), lambda rngs: Transformer(
        ...     presets.preset("tiny", vocab_size=tok.vocab_size), rngs=rngs), seed=0)
        >>> u = rm.reward_model_uncertainty(scorer, tok, max_length=16)(texts, ["", ""], [["3", "4"], ["4", "3"]])
        >>> u.shape, bool((u >= 0).all())
        ((2, 2), True)
    """
    scorer = rollout.RewardScores()

    def uncertainty(prompts, references, responses):
        scores = _reward_model_scores(reward_model, tokenizer, prompts, responses, scorer, max_length, rows_per_batch)
        return np.asarray(losses.head_disagreement(jnp.asarray(scores["rewards"])), np.float64).reshape(
            len(prompts), -1)

    return uncertainty


__all__ = ["EnsembleRewardModel", "KINDS", "RMKind", "bon_gold", "bon_kl", "bon_weights", "bt_loss_fn", "build",
           "clip_per_member", "evaluate_pairs", "fit_pairs", "flip_labels", "optimizer_for", "pair_rows", "reward_model_gold",
           "reward_model_uncertainty"]
