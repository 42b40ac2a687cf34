"""Task metrics and diversity metrics.

Task: GSM8K-style answer extraction and exact match; ROUGE-1/2/Lsum through rouge-score; BLEU and chrF through
sacrebleu (the libraries' own numbers, so results compare with published ones). Diversity over the n samples
drawn for each prompt: Self-BLEU (lower is more diverse), distinct-n, and the mean per-token entropy of the
policy. Spearman rank correlation for "do extracted rewards track task quality".
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_irl.losses.soft_q import token_entropies

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


# Answers longer than this are not read as numbers (no task's answer is; Python refuses int() past 4300 digits and
# a float overflows far sooner): a model's runaway digits are a wrong answer, never an exception in the loop.
MAX_NUMBER_CHARS = 64


def _to_number(text: str) -> Optional[Fraction]:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    if len(cleaned) > MAX_NUMBER_CHARS:
        return None
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str) -> Optional[str]:
    """The final numeric answer of a GSM8K-style solution: what follows '####', else the last number in the
    text. Commas and '$' are dropped; returns a canonical string ('42', '-3.5', '7/2' never occurs) or None."""
    if "####" in text:
        tail = text.split("####")[-1]
        found = _NUMBER.findall(tail)
    else:
        found = _NUMBER.findall(text)
    if not found:
        return None
    value = _to_number(found[0] if "####" in text else found[-1])
    if value is None:
        return None
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def answers_match(prediction: str, reference: str) -> bool:
    p, r = extract_answer(prediction), extract_answer(reference)
    if p is None or r is None:
        return False
    return abs(Fraction(p) - Fraction(r)) < Fraction(1, 10 ** 6)  # exact: no float overflow


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions whose extracted final answer equals the reference's."""
    _check_pairs(predictions, references)
    return float(np.mean([answers_match(p, r) for p, r in zip(predictions, references)]))


def _check_pairs(predictions, references):
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def _sentence_lines(text: str) -> str:
    """rougeLsum scores sentence by sentence, split on newlines; put one sentence per line if there are none."""
    if "\n" in text:
        return text
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def rouge(predictions: Sequence[str], references: Sequence[str],
          types: Sequence[str] = ("rouge1", "rouge2", "rougeLsum"), use_stemmer: bool = True) -> Dict[str, float]:
    """Mean ROUGE F-measures (x100) from rouge-score."""
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    totals = {t: 0.0 for t in types}
    for p, r in zip(predictions, references):
        if "rougeLsum" in types:
            p, r = _sentence_lines(p), _sentence_lines(r)
        scores = scorer.score(r, p)  # rouge-score takes (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: 100.0 * v / len(predictions) for t, v in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU from sacrebleu (one reference per prediction)."""
    import sacrebleu

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF from sacrebleu."""
    import sacrebleu

    _check_pairs(predictions, references)
    return float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score)


def expert_match(samples_per_prompt: Sequence[Sequence[str]], support_per_prompt: Sequence[Sequence[str]]
                 ) -> Dict[str, float]:
    """How close a model's samples come to an expert that writes each prompt's ``support`` texts uniformly at
    random (the built-in arithmetic expert: ``data.arithmetic.solution_variants``), the distribution imitation
    learning is after. Texts are compared stripped. Per prompt, with p the samples' empirical distribution and
    q uniform over the support S:

        tv = 1/2 (sum_{v in S} |p(v) - 1/|S|| + p(outside S)),  coverage = |S seen| / |S|,  valid = p(S),

    each averaged over prompts. With k samples a prompt even the expert's own samples have tv > 0 and coverage
    < 1 (draw them for the reference level). Returns {'tv', 'coverage', 'valid'}."""
    if len(samples_per_prompt) != len(support_per_prompt) or not samples_per_prompt:
        raise ValueError(f"need one support per prompt (> 0 prompts); got {len(samples_per_prompt)} sample lists "
                         f"and {len(support_per_prompt)} supports")
    tv, coverage, valid = [], [], []
    for samples, support in zip(samples_per_prompt, support_per_prompt):
        support = list(dict.fromkeys(t.strip() for t in support))
        if not samples or not support:
            raise ValueError("every prompt needs at least one sample and one support text")
        counts: Dict[str, int] = {}
        for t in samples:
            counts[t.strip()] = counts.get(t.strip(), 0) + 1
        n, q = len(samples), 1.0 / len(support)
        inside = sum(counts.get(v, 0) for v in support) / n
        tv.append(0.5 * (sum(abs(counts.get(v, 0) / n - q) for v in support) + (1.0 - inside)))
        coverage.append(sum(v in counts for v in support) / len(support))
        valid.append(inside)
    return {"tv": float(np.mean(tv)), "coverage": float(np.mean(coverage)), "valid": float(np.mean(valid))}


def self_bleu(samples_per_prompt: Sequence[Sequence[str]]) -> float:
    """Mean over prompts of the mean over samples of BLEU(sample_i, the prompt's other samples), x100.

    100 means every sample repeats the others; lower is more diverse. Each prompt needs >= 2 samples. A sample
    identical to all the others scores 100 whatever its length (sentence BLEU gives 0 to texts shorter than its
    4-grams, which would rate a greedy decoder's identical short answers as maximally diverse)."""
    import sacrebleu

    if not samples_per_prompt:
        raise ValueError("no prompts to score")
    per_prompt = []
    for samples in samples_per_prompt:
        if len(samples) < 2:
            raise ValueError(f"self-BLEU needs at least 2 samples per prompt; got {len(samples)}")
        scores = []
        for i, s in enumerate(samples):
            others = [o for j, o in enumerate(samples) if j != i]
            scores.append(100.0 if all(o == s for o in others) else sacrebleu.sentence_bleu(s, others).score)
        per_prompt.append(np.mean(scores))
    return float(np.mean(per_prompt))


def distinct_n(samples_per_prompt: Sequence[Sequence[str]], n: int) -> float:
    """Mean over prompts of (distinct n-grams / total n-grams) across that prompt's samples (whitespace tokens).
    A prompt whose samples hold no n-gram counts as 0."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    if not samples_per_prompt:
        raise ValueError("no prompts to score")
    ratios = []
    for samples in samples_per_prompt:
        grams = [tuple(toks[i:i + n]) for s in samples for toks in [s.split()] for i in range(len(toks) - n + 1)]
        ratios.append(len(set(grams)) / len(grams) if grams else 0.0)
    return float(np.mean(ratios))


@jax.jit
def token_entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over counted tokens of the policy's entropy -sum_a pi(a|s) log pi(a|s). logits [B, T, V], mask [B, T].
    Entries of -inf (banned tokens) contribute nothing."""
    ent = token_entropies(logits)
    m = jnp.asarray(mask).astype(jnp.float32)
    return jnp.sum(ent * m) / jnp.maximum(jnp.sum(m), 1.0)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy); NaN when either side is constant or there are fewer than 3 points."""
    from scipy.stats import spearmanr

    if len(x) != len(y):
        raise ValueError(f"{len(x)} values against {len(y)}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(spearmanr(x, y).statistic)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean over seeds (sample std / sqrt(n)); NaN (undefined) for fewer than two values."""
    v = np.asarray(values, float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")


def matched_accuracy(diversity: Sequence[float], accuracy: Sequence[float], target: float) -> float:
    """A method's accuracy at a given diversity, read off its frontier: the (diversity, accuracy) points of one
    model over a sweep of sampling temperatures, sorted by diversity, linearly interpolated at ``target``. NaN
    where ``target`` lies outside the points' diversity range (no extrapolation). Any one diversity measure
    serves (Self-BLEU, distinct-n), as long as every frontier uses it."""
    d, a = np.asarray(diversity, float), np.asarray(accuracy, float)
    if d.shape != a.shape or d.ndim != 1 or len(d) < 2:
        raise ValueError(f"need two or more (diversity, accuracy) points of one shape; got {d.shape} and {a.shape}")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(a)) and math.isfinite(target)):
        raise ValueError("diversity, accuracy and target must be finite")
    order = np.argsort(d, kind="stable")
    d, a = d[order], a[order]
    if target < d[0] or target > d[-1]:
        return math.nan
    return float(np.interp(target, d, a))


def matched_gap(frontiers_a: Sequence[Tuple[Sequence[float], Sequence[float]]],
                frontiers_b: Sequence[Tuple[Sequence[float], Sequence[float]]], target: float) -> Tuple[float, float]:
    """(mean, standard error) of accuracy_a - accuracy_b at diversity ``target``: the paper's question, which
    method is more accurate at the same diversity. Each argument holds one (diversity, accuracy) frontier per
    seed (``matched_accuracy``); the two methods' seeds are independent runs, so the standard error is
    sqrt(se_a^2 + se_b^2). Seeds whose frontier does not reach ``target`` are left out; NaN when fewer than one
    seed per side remains (the standard error needs two)."""
    a = [matched_accuracy(d, acc, target) for d, acc in frontiers_a]
    b = [matched_accuracy(d, acc, target) for d, acc in frontiers_b]
    a, b = [x for x in a if math.isfinite(x)], [x for x in b if math.isfinite(x)]
    if not a or not b:
        return math.nan, math.nan
    se = math.sqrt(standard_error(a) ** 2 + standard_error(b) ** 2) if len(a) > 1 and len(b) > 1 else math.nan
    return float(np.mean(a) - np.mean(b)), se


def matched_paired_gap(frontiers_a: Sequence[Tuple[Sequence[float], Sequence[float]]],
                       frontiers_b: Sequence[Tuple[Sequence[float], Sequence[float]]],
                       target: float) -> Tuple[float, float]:
    """(mean, standard error) over seeds of accuracy_a(seed) - accuracy_b(seed) at ``target``, the two lists
    holding one frontier per seed in the same seed order: for runs that share a seed's randomness (the base, the
    batch order, the evaluation's keys), pairing removes what the seeds share from the gap's standard error.
    Seeds where either frontier misses ``target`` are left out; NaN when none remains (the error needs two)."""
    if len(frontiers_a) != len(frontiers_b):
        raise ValueError(f"paired frontiers need one per seed on both sides; got {len(frontiers_a)} and "
                         f"{len(frontiers_b)}")
    gaps = [matched_accuracy(da, aa, target) - matched_accuracy(db, ab, target)
            for (da, aa), (db, ab) in zip(frontiers_a, frontiers_b)]
    gaps = [g for g in gaps if math.isfinite(g)]
    if not gaps:
        return math.nan, math.nan
    return float(np.mean(gaps)), standard_error(gaps) if len(gaps) > 1 else math.nan


def correlation_split(rewards: Sequence[float], scores: Sequence[float], groups: Sequence[int]) -> Dict[str, float]:
    """A reward-metric correlation split into its within-group and across-group parts (groups: the prompt of
    each sample). 'within': Pearson correlation of the samples' deviations from their prompt's means (does the
    reward rank a prompt's samples?); 'across': Pearson correlation of the prompt means, one point per prompt
    (does it tell easy prompts from hard ones?); 'pooled': the plain correlation over all samples, which mixes the
    two. A part is NaN where its inputs are constant."""
    r, y, g = np.asarray(rewards, float), np.asarray(scores, float), np.asarray(groups)
    if not (r.shape == y.shape == g.shape) or r.ndim != 1:
        raise ValueError(f"rewards, scores and groups must be [N] alike; got {r.shape}, {y.shape}, {g.shape}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(y))):
        raise ValueError("rewards and scores must be finite")
    keys, inverse = np.unique(g, return_inverse=True)
    counts = np.bincount(inverse)
    mean_r, mean_y = np.bincount(inverse, r) / counts, np.bincount(inverse, y) / counts

    def pearson(u, v):
        u, v = u - u.mean(), v - v.mean()
        den = math.sqrt(float(u @ u) * float(v @ v))
        return float(u @ v) / den if den > 0 else math.nan

    return {"pooled": pearson(r, y), "within": pearson(r - mean_r[inverse], y - mean_y[inverse]),
            "across": pearson(mean_r, mean_y) if len(keys) > 2 else math.nan}


def pair_ranking_accuracy(reward_good: Sequence[float], reward_bad: Sequence[float]) -> float:
    """How often a reward ranks the good response of a pair (a correct solution) above the bad one (a wrong
    solution to the same problem): the fraction with reward_good > reward_bad, ties counting one half."""
    g, b = np.asarray(reward_good, float), np.asarray(reward_bad, float)
    if g.shape != b.shape or g.ndim != 1 or len(g) == 0:
        raise ValueError(f"need two [N] arrays of rewards, N > 0; got {g.shape} and {b.shape}")
    return float(np.mean((g > b) + 0.5 * (g == b)))


__all__ = ["extract_answer", "answers_match", "exact_match", "rouge", "bleu", "chrf", "expert_match", "self_bleu", "distinct_n",
           "token_entropy", "spearman", "standard_error", "matched_accuracy", "matched_gap", "correlation_split",
           "pair_ranking_accuracy"]
