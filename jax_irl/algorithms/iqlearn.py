"""Inverse-RL fine-tuning (Wulfmeier et al. 2024): MLE, offline IQLearn and online IQLearn, and their evaluation.

A method is written 'mle', 'iqlearn:<td_weight>' or 'online:<td_weight>' (online mixes the policy's own samples
into IQLearn's value term with weight alpha). ``make_loss_fn`` turns it into a ``loss_fn(model, batch, rng)``
for ``train.Trainer``; online batches carry the policy samples that ``policy_samples`` draws from the current
model. ``evaluate`` samples n responses per prompt at each temperature and reports task accuracy, diversity
(Self-BLEU, distinct-n, entropy) and how well the model's extracted rewards (summed implied rewards of its own
samples) rank correct above wrong answers (Spearman).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_irl import losses, metrics, sampling


@dataclasses.dataclass(frozen=True)
class Method:
    kind: str  # mle | iqlearn | online
    td_weight: float = 0.0

    @property
    def name(self) -> str:
        return "mle" if self.kind == "mle" else f"{self.kind}:{self.td_weight:g}"

    @classmethod
    def parse(cls, text: str) -> "Method":
        kind, _, weight = text.partition(":")
        if kind == "mle" and not weight:
            return cls("mle")
        if kind in ("iqlearn", "online") and weight:
            try:
                value = float(weight)
            except ValueError:
                value = -1.0
            if value >= 0:
                return cls(kind, value)
        raise ValueError(f"method {text!r} must be 'mle', 'iqlearn:<td_weight>' or 'online:<td_weight>' "
                         f"with td_weight >= 0")


def make_loss_fn(method: Method, *, gamma: float, alpha: float):
    """loss_fn(model, batch, rng) for the method. batch: tokens [B, T], mask [B, T-1]; online batches also hold
    policy_tokens [B', T'], policy_attention [B', T'] and policy_mask [B', T'-1] (see ``policy_samples``)."""

    def logits_of(model, tokens, attention=None):
        return model(tokens[:, :-1], attention_mask=None if attention is None else attention[:, :-1]).logits

    def loss_fn(model, batch, rng):
        logits = logits_of(model, batch["tokens"])
        targets = batch["tokens"][:, 1:]
        if method.kind == "mle":
            return losses.mle_loss(logits, targets, batch["mask"])
        if method.kind == "iqlearn":
            return losses.iqlearn_loss(logits, targets, batch["mask"], gamma=gamma, td_weight=method.td_weight)
        policy_logits = logits_of(model, batch["policy_tokens"], batch["policy_attention"])
        return losses.iqlearn_online_loss(logits, targets, batch["mask"], policy_logits, batch["policy_mask"],
                                          alpha=alpha, gamma=gamma, td_weight=method.td_weight)

    return loss_fn


def prompt_rows(tokens: np.ndarray, prompt_lengths: np.ndarray, pad_id: int, width: int):
    """Left-padded prompts [B, width] and their mask from right-padded example rows."""
    return sampling.left_pad([list(row[:n]) for row, n in zip(tokens, prompt_lengths)], pad_id=pad_id, width=width)


def policy_samples(model, prompts: np.ndarray, prompt_mask: np.ndarray, key, *, max_new_tokens: int, eos_id: int,
                   pad_id: int, temperature: float = 1.0, num_samples: int = 1) -> Dict[str, np.ndarray]:
    """Responses sampled from the model, as rows for the losses: policy_tokens [B*n, P+N] (left-padded prompt
    then response), policy_attention [B*n, P+N], policy_mask [B*n, P+N-1] on the response's targets, plus the
    raw SampleOutput fields tokens/lengths for decoding."""
    out = sampling.generate(model, prompts, prompt_mask, key, max_new_tokens=max_new_tokens, temperature=temperature,
                            eos_ids=(eos_id,), pad_id=pad_id, num_samples=num_samples)
    gen, gen_mask = np.asarray(out.tokens), np.asarray(out.mask)
    rep_prompts = np.repeat(prompts, num_samples, 0)
    rep_mask = np.repeat(prompt_mask, num_samples, 0)
    rows = np.concatenate([rep_prompts, gen], 1).astype(np.int32)
    attention = np.concatenate([rep_mask, gen_mask], 1).astype(np.int32)
    width = prompts.shape[1]
    target_mask = np.zeros((rows.shape[0], rows.shape[1] - 1), np.float32)
    target_mask[:, width - 1:] = gen_mask  # target t predicts rows[t + 1]
    return {"policy_tokens": rows, "policy_attention": attention, "policy_mask": target_mask, "generated": gen,
            "generated_mask": gen_mask}


@jax.jit
def _sequence_rewards_and_entropy(logits, targets, mask, gamma):
    rewards = losses.implied_rewards(logits, targets, mask, gamma=gamma)
    return jnp.sum(rewards, -1), metrics.token_entropy(logits, mask)


def evaluate(model, tokenizer, prompts: np.ndarray, prompt_mask: np.ndarray, references: Sequence[str], key, *,
             temperatures: Sequence[float], num_samples: int, max_new_tokens: int, gamma: float,
             correct_fn=metrics.answers_match) -> Dict[str, Dict[str, float]]:
    """Per temperature: accuracy (mean over all samples), Self-BLEU, distinct-1/2, entropy and the Spearman
    correlation between each sample's extracted reward and its correctness."""
    results = {}
    for temperature in temperatures:
        key, sub = jax.random.split(key)
        s = policy_samples(model, prompts, prompt_mask, sub, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id, temperature=temperature, num_samples=num_samples)
        texts = [tokenizer.decode(row[m > 0]) for row, m in zip(s["generated"], s["generated_mask"])]
        refs = [r for r in references for _ in range(num_samples)]
        correct = np.array([correct_fn(t, r) for t, r in zip(texts, refs)], float)
        logits = model(jnp.asarray(s["policy_tokens"][:, :-1]),
                       attention_mask=jnp.asarray(s["policy_attention"][:, :-1])).logits
        seq_rewards, entropy = _sequence_rewards_and_entropy(logits, jnp.asarray(s["policy_tokens"][:, 1:]),
                                                             jnp.asarray(s["policy_mask"]), gamma)
        grouped: List[List[str]] = [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
        results[f"{temperature:g}"] = {
            "accuracy": float(correct.mean()),
            "self_bleu": metrics.self_bleu(grouped) if num_samples > 1 else float("nan"),
            "distinct_1": metrics.distinct_n(grouped, 1),
            "distinct_2": metrics.distinct_n(grouped, 2),
            "entropy": float(entropy),
            "reward_correlation": metrics.spearman(np.asarray(seq_rewards), correct),
            "mean_reward": float(np.mean(np.asarray(seq_rewards))),
        }
    return results
