"""Inverse-RL fine-tuning (Wulfmeier et al. 2024): MLE, offline IQLearn and online IQLearn, and their evaluation.

A ``Method`` is a typed variant: ``kind`` 'mle', 'iqlearn' (offline) or 'online' (the policy's own samples
mixed into IQLearn's value term with weight ``alpha``), with ``td_weight``, ``gamma`` and, for online,
``alpha``, ``policy_prompts`` (prompts sampled per step) and ``chi2`` (the chi^2 term on data, or on the
data/policy mixture as in the original IQ-Learn) as fields; for the paper's controls, ``entropy_bonus`` (MLE
with an entropy bonus, ``losses.mle_entropy_loss``) and ``train_examples`` (train on the first n examples
only). ``make_loss_fn`` turns it into a ``loss_fn(model, batch, rng)`` for ``train.Trainer`` (kind 'mle' is
``sft.loss_fn``, supervised fine-tuning's); ``online_batch_fn``
adds the policy samples to the data batches; ``finetune`` runs the method as one resumable stage; ``evaluate``
samples n responses per prompt at each temperature and reports task score, diversity (Self-BLEU, distinct-n,
entropy) and how well the model's extracted rewards (summed implied rewards of its own samples) rank good above
bad samples (Spearman, and its within- and across-prompt parts); ``reward_pair_accuracy`` scores them on given
(correct, wrong) pairs.
The losses and their derivation are in ``losses.imitation``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

from jax_irl import losses, metrics, rollout, sampling, stages, train
from jax_irl.algorithms import sft
from jax_irl.data import batching

KINDS = ("mle", "iqlearn", "online")


@dataclasses.dataclass(frozen=True)
class Method:
    kind: str = "mle"  # mle | iqlearn | online
    td_weight: float = 0.0  # lambda of the chi^2 (TD) regulariser; 0 with kind 'iqlearn' is exactly MLE
    gamma: float = 1.0  # discount of the implied rewards (also used to extract rewards in evaluation)
    alpha: float = 0.1  # online: weight of the policy's states in the value term (the paper's 0.1)
    policy_prompts: int = 8  # online: prompts sampled from the current policy per training step
    chi2: str = "data"  # online: the chi^2 term on data states, or on the data/policy 'mixture' (Garg et al.)
    entropy_bonus: float = 0.0  # mle: MLE minus this times the policy's mean entropy at data states (a control)
    train_examples: Optional[int] = None  # train on only the first n training examples (the small-data ablation)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method kind must be one of {KINDS}; got {self.kind!r}")
        if not self.td_weight >= 0:
            raise ValueError(f"td_weight must be >= 0; got {self.td_weight}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1]; got {self.gamma}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha}")
        if self.policy_prompts < 1:
            raise ValueError(f"policy_prompts must be >= 1; got {self.policy_prompts}")
        if self.chi2 not in losses.CHI2_SUPPORTS:
            raise ValueError(f"chi2 must be one of {losses.CHI2_SUPPORTS}; got {self.chi2!r}")
        if not self.entropy_bonus >= 0:
            raise ValueError(f"entropy_bonus must be >= 0; got {self.entropy_bonus}")
        if self.entropy_bonus and self.kind != "mle":
            raise ValueError(f"entropy_bonus is the MLE control (kind 'mle'); got kind {self.kind!r}")
        if self.train_examples is not None and self.train_examples < 1:
            raise ValueError(f"train_examples must be None (all) or >= 1; got {self.train_examples}")


def make_loss_fn(method: Method, *, vocab_chunk: Optional[int] = None, window: Optional[int] = None,
                 policy_window: Optional[int] = None):
    """loss_fn(model, batch, rng) for the method. batch: tokens [B, T], mask [B, T-1]; online batches also hold
    policy_tokens [B', T'], policy_attention [B', T'] and policy_mask [B', T'-1] (``online_batch_fn``).

    (Q(s, a), V(s)) come from ``rollout.causal_lm``: from full logits, or with ``vocab_chunk`` from the hidden
    states in vocabulary chunks of that size, never building the [B, T, V] logits (equal to float rounding).
    ``window`` (for the data rows) and ``policy_window`` (for the policy samples, e.g. max_new_tokens) compute the
    unembedding only on each row's response span (``rollout.loss_window``); the losses, which count only masked
    positions and their successors, are unchanged up to float rounding."""

    def soft_q(model, tokens, mask, attention=None, width=None):
        out = rollout.causal_lm(model, tokens, attention, vocab_chunk=vocab_chunk, mask=mask, window=width)
        return out.target_q, out.values, out.mask

    if method.kind == "mle":  # supervised fine-tuning's own loss (with the entropy-bonus control)
        return sft.loss_fn(vocab_chunk=vocab_chunk, window=window, entropy_bonus=method.entropy_bonus)

    def loss_fn(model, batch, rng):
        target_q, values, mask = soft_q(model, batch["tokens"], batch["mask"], width=window)
        if method.kind == "iqlearn":
            return losses.iqlearn_loss_from_q(target_q, values, mask, gamma=method.gamma,
                                              td_weight=method.td_weight)
        policy_q, policy_values, policy_mask = soft_q(model, batch["policy_tokens"], batch["policy_mask"],
                                                      batch["policy_attention"], policy_window)
        return losses.iqlearn_online_loss_from_q(target_q, values, mask, policy_values, policy_mask,
                                                 alpha=method.alpha, gamma=method.gamma, td_weight=method.td_weight,
                                                 chi2=method.chi2, policy_target_q=policy_q)

    return loss_fn


def online_batch_fn(method: Method, sampler: batching.IndexSampler, encoded: Dict[str, np.ndarray], *, seed: int,
                    prompt_width: int, max_new_tokens: int, eos_id: int, pad_id: int) -> Callable:
    """batch_fn(position, model) for ``train.fit``: the data batch at ``position`` plus responses sampled from
    the current model for the first ``method.policy_prompts`` of its prompts, drawn with
    fold_in(PRNGKey(seed), position) so that a resumed run draws the same samples."""
    data_fn = sampler.batch_fn({"tokens": encoded["tokens"], "mask": encoded["mask"]})

    def batch_fn(position, model):
        batch = data_fn(position)
        idx = sampler.local_indices(position)[: method.policy_prompts]
        prompts, pmask = rollout.prompt_rows(encoded["tokens"][idx], encoded["prompt_lengths"][idx], pad_id,
                                             prompt_width)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), position)
        s = rollout.sample_rows(model, prompts, pmask, key, max_new_tokens=max_new_tokens, eos_id=eos_id,
                                pad_id=pad_id)
        batch.update(policy_tokens=s["tokens"], policy_attention=s["attention"], policy_mask=s["mask"])
        return batch

    return batch_fn


def finetune(run: stages.Run, method: Method, base, stage: stages.StageConfig, encoded: Dict[str, np.ndarray],
             spec: Optional[sampling.SamplingSpec] = None):
    """The method as one resumable stage from ``base`` on encoded rows (tokens, mask, prompt_lengths) in
    ``run`` (``stages.run_stage``); returns the fine-tuned model. Batches: ``batching.IndexSampler`` with
    ``run.seed``; online adds policy samples drawn by ``spec`` (eos and pad ids, ``max_new_tokens``, and the
    ``prompt_width`` prompts are padded to), which only online methods need. With ``method.train_examples`` only
    the first that many rows are trained on (for the same number of steps)."""
    encoded = sft.first_examples(encoded, method.train_examples)
    sampler = batching.IndexSampler(len(encoded["tokens"]), stage.batch_size, seed=run.seed)
    online = method.kind == "online"
    if online:
        if spec is None or spec.max_new_tokens is None or spec.prompt_width is None:
            raise ValueError(f"online IQLearn samples from the policy: pass a sampling spec with max_new_tokens and "
                             f"prompt_width; got {spec!r}")
        batch_fn = train.ModelBatches(online_batch_fn(method, sampler, encoded, seed=run.seed,
                                                      prompt_width=spec.prompt_width,
                                                      max_new_tokens=spec.max_new_tokens, eos_id=spec.eos_id,
                                                      pad_id=spec.pad_id))
    else:
        batch_fn = sampler.batch_fn({"tokens": encoded["tokens"], "mask": encoded["mask"]})
    loss_fn = make_loss_fn(method, vocab_chunk=run.settings.vocab_chunk, window=rollout.loss_window(encoded["mask"]),
                           policy_window=spec.max_new_tokens if online else None)
    return run.stage(base, loss_fn, stage, batch_fn).model


def evaluate(model, tokenizer, prompts: np.ndarray, prompt_mask: np.ndarray, references: Sequence[str], key, *,
             temperatures: Sequence[float], num_samples: int, max_new_tokens: int, gamma: float,
             correct_fn: Callable[[str, str], float] = metrics.answers_match, prompts_per_batch: Optional[int] = None,
             rows_per_score: Optional[int] = None,
             expert_support: Optional[Sequence[Sequence[str]]] = None) -> Dict[str, Dict[str, float]]:
    """Per temperature: accuracy (the mean task score over all samples), Self-BLEU, distinct-1/2, entropy (mean
    over generated tokens), mean extracted reward, and the Spearman correlation between each sample's extracted
    reward (summed implied rewards at ``gamma``) and its task score. Sampling and scoring are
    ``rollout.sample_and_evaluate``'s (``prompts_per_batch`` / ``rows_per_score`` for large sets). With
    ``expert_support`` (per prompt, the texts an expert writes uniformly at random), also the distance of the
    samples' distribution from the expert's (``metrics.expert_match``: 'expert_tv', 'expert_coverage',
    'expert_valid')."""
    scorer = rollout.LMScores(("implied_rewards", "entropy"), gamma=gamma, per_row=True)
    evaluated = rollout.sample_and_evaluate(model, tokenizer, prompts, prompt_mask, references, key,
                                            temperatures=temperatures, num_samples=num_samples,
                                            max_new_tokens=max_new_tokens, score_fn=lambda t, r: float(correct_fn(t, r)),
                                            scorer=scorer, prompts_per_batch=prompts_per_batch,
                                            rows_per_score=rows_per_score)
    results = {}
    for temperature, ev in evaluated.items():
        rewards, counts = ev.row_scores["implied_rewards"], ev.row_scores["num_tokens"]
        grouped: List[List[str]] = [ev.texts[i:i + num_samples] for i in range(0, len(ev.texts), num_samples)]
        split = (metrics.correlation_split(rewards, ev.scores, np.repeat(np.arange(len(grouped)), num_samples))
                 if np.all(np.isfinite(rewards)) else {"within": float("nan"), "across": float("nan")})
        results[temperature] = {
            "accuracy": float(ev.scores.mean()),
            "self_bleu": metrics.self_bleu(grouped) if num_samples > 1 else float("nan"),
            "distinct_1": metrics.distinct_n(grouped, 1),
            "distinct_2": metrics.distinct_n(grouped, 2),
            "entropy": float(np.sum(ev.row_scores["entropy"], dtype=np.float64) / max(float(np.sum(counts)), 1.0)),
            "reward_correlation": metrics.spearman(rewards, ev.scores),
            "reward_within": split["within"],  # Pearson, within prompts: does the reward rank a prompt's samples?
            "reward_across": split["across"],  # Pearson of prompt means: does it tell easy prompts from hard?
            "mean_reward": float(np.mean(rewards)),
        }
        if expert_support is not None:
            match = metrics.expert_match(grouped, expert_support)
            results[temperature].update({f"expert_{k}": v for k, v in match.items()})
    return results


def reward_pair_accuracy(model, tokenizer, prompts: Sequence[str], good: Sequence[str], bad: Sequence[str], *,
                         gamma: float, max_length: int, rows_per_score: Optional[int] = None) -> float:
    """How often the model's extracted reward (its summed implied rewards at ``gamma``, as ``evaluate`` scores
    samples) ranks ``good[i]`` above ``bad[i]``, two responses to ``prompts[i]`` (e.g. a correct and a wrong
    solution of a held-out problem: ``data.arithmetic.wrong_solution``). Ties count one half."""
    if not (len(prompts) == len(good) == len(bad)) or not prompts:
        raise ValueError(f"need as many prompts, good and bad responses (> 0); got {len(prompts)}, {len(good)}, "
                         f"{len(bad)}")
    enc = batching.encode_examples(tokenizer, list(prompts) * 2, list(good) + list(bad), max_length)
    rows = batching.trim_padding({"tokens": enc["tokens"], "mask": enc["mask"]}, tokenizer.pad_id)
    scores = rollout.score_rows(model, rollout.LMScores(("implied_rewards",), gamma=gamma, per_row=True), rows,
                                rows_per_batch=rows_per_score)["implied_rewards"]
    return metrics.pair_ranking_accuracy(scores[:len(prompts)], scores[len(prompts):])
