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
import functools
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


def make_loss_fn(method: Method, *, gamma: float, alpha: float, vocab_chunk: Optional[int] = None):
    """loss_fn(model, batch, rng) for the method. batch: tokens [B, T], mask [B, T-1]; online batches also hold
    policy_tokens [B', T'], policy_attention [B', T'] and policy_mask [B', T'-1] (see ``policy_samples``).

    With ``vocab_chunk`` the losses read (Q(s, a), V(s)) from the hidden states through
    ``losses.chunked_soft_q_stats`` in vocabulary chunks of that size, never building the [B, T, V] logits (large
    vocabularies at long lengths); the values equal the full-logits path to float rounding."""

    def soft_q(model, tokens, attention=None):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        mask = None if attention is None else attention[:, :-1]
        if vocab_chunk:
            hidden = model(inputs, attention_mask=mask, compute_logits=False).hidden
            return losses.chunked_soft_q_stats(hidden, model.unembedding(), targets, chunk_size=vocab_chunk)
        return losses.soft_q_stats(model(inputs, attention_mask=mask).logits, targets)

    def loss_fn(model, batch, rng):
        target_q, values = soft_q(model, batch["tokens"])
        if method.kind == "mle":
            return losses.mle_loss_from_q(target_q, values, batch["mask"])
        if method.kind == "iqlearn":
            return losses.iqlearn_loss_from_q(target_q, values, batch["mask"], gamma=gamma,
                                              td_weight=method.td_weight)
        _, policy_values = soft_q(model, batch["policy_tokens"], batch["policy_attention"])
        return losses.iqlearn_online_loss_from_q(target_q, values, batch["mask"], policy_values, batch["policy_mask"],
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


@functools.partial(jax.jit, static_argnums=0)
def _score_rows(graphdef, state, tokens, attention, mask, gamma):
    """Per row: the summed implied rewards of its response; and the summed per-token entropy and token count."""
    model = nnx.merge(graphdef, state)
    logits = model(tokens[:, :-1], attention_mask=attention[:, :-1]).logits
    rewards = losses.implied_rewards(logits, tokens[:, 1:], mask, gamma=gamma)
    count = jnp.sum(mask.astype(jnp.float32))
    return jnp.sum(rewards, -1), metrics.token_entropy(logits, mask) * jnp.maximum(count, 1.0), count


def _pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """x with copies of its last row appended up to a multiple of ``multiple`` rows (one compiled shape)."""
    extra = -len(x) % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, 0)]) if extra else x


def score_samples(model, samples: Dict[str, np.ndarray], gamma: float, rows_per_batch: Optional[int] = None):
    """(summed implied rewards per row [N], mean per-token entropy) of ``policy_samples`` rows, scored in
    batches of ``rows_per_batch`` rows (all at once by default) so that [rows, T, V] logits stay small."""
    tokens, attention, mask = samples["policy_tokens"], samples["policy_attention"], samples["policy_mask"]
    n = len(tokens)
    size = rows_per_batch or n
    graphdef, state = nnx.split(model)
    padded = [_pad_rows(x, size) for x in (tokens, attention, mask)]
    padded[2][n:] = 0.0  # padding rows count no tokens
    rewards, entropy_sum, count = [], 0.0, 0.0
    for i in range(0, len(padded[0]), size):
        r, e, c = _score_rows(graphdef, state, *(jnp.asarray(x[i:i + size]) for x in padded), gamma)
        rewards.append(np.asarray(r))
        entropy_sum, count = entropy_sum + float(e), count + float(c)
    return np.concatenate(rewards)[:n], entropy_sum / max(count, 1.0)


def evaluate(model, tokenizer, prompts: np.ndarray, prompt_mask: np.ndarray, references: Sequence[str], key, *,
             temperatures: Sequence[float], num_samples: int, max_new_tokens: int, gamma: float,
             correct_fn=metrics.answers_match, prompts_per_batch: Optional[int] = None,
             rows_per_score: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """Per temperature: accuracy (mean over all samples), Self-BLEU, distinct-1/2, entropy and the Spearman
    correlation between each sample's extracted reward and its correctness.

    Prompts are sampled ``prompts_per_batch`` at a time (all at once by default; batch i draws with
    fold_in(key_t, i)), and the samples scored ``rows_per_score`` rows at a time (default: a prompt batch's rows):
    set both for large eval sets and vocabularies."""
    if len(prompts) != len(references) or not len(prompts):
        raise ValueError(f"need one reference per prompt and at least one prompt; got {len(prompts)} prompts and "
                         f"{len(references)} references")
    n = len(prompts)
    size = prompts_per_batch or n
    padded_prompts, padded_mask = _pad_rows(prompts, size), _pad_rows(prompt_mask, size)
    results = {}
    for temperature in temperatures:
        key, sub = jax.random.split(key)
        batches = []
        for b, i in enumerate(range(0, len(padded_prompts), size)):
            s = policy_samples(model, padded_prompts[i:i + size], padded_mask[i:i + size], jax.random.fold_in(sub, b),
                               max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                               temperature=temperature, num_samples=num_samples)
            batches.append(s)
        # Every batch has the same row width; the rows of padding prompts are dropped.
        s = {k: np.concatenate([batch[k] for batch in batches])[: n * num_samples] for k in batches[0]}
        texts = [tokenizer.decode(row[m > 0]) for row, m in zip(s["generated"], s["generated_mask"])]
        seq_rewards, entropy = score_samples(model, s, gamma, rows_per_score or size * num_samples)
        refs = [r for r in references for _ in range(num_samples)]
        correct = np.array([correct_fn(t, r) for t, r in zip(texts, refs)], float)
        grouped: List[List[str]] = [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]
        results[f"{temperature:g}"] = {
            "accuracy": float(correct.mean()),
            "self_bleu": metrics.self_bleu(grouped) if num_samples > 1 else float("nan"),
            "distinct_1": metrics.distinct_n(grouped, 1),
            "distinct_2": metrics.distinct_n(grouped, 2),
            "entropy": entropy,
            "reward_correlation": metrics.spearman(seq_rewards, correct),
            "mean_reward": float(np.mean(seq_rewards)),
        }
    return results
