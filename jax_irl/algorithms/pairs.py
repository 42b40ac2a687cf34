"""Preference pairs: gold rewards, the preference oracle that labels pairs with them, and the pair rows that
DPO and the reward models train on. GSHF (``gshf``) and the reward-ensemble runs share them.

    gold = pairs.per_sample(arithmetic.graded_reward)                # or reward_models.reward_model_gold(...)
    texts, rewards, _ = pairs.sample_texts(pi0, prompts, key, n=4, s=pairs.SampleSettings(tok, 64, gold))
    records, counts = pairs.make_pairs(prompts.texts, texts, rewards, pairs.OracleConfig(), rng)
    rows = pairs.preference_rows(tok, records, max_length=256)     # chosen at row 2i, rejected at 2i + 1

A gold reward is a batched function ``gold(prompts [P], references [P], responses [P][n]) -> rewards [P, n]``
(``GoldFn``): a programmatic checker through ``per_sample``, or a reward model through
``reward_models.reward_model_gold``. The oracle (``OracleConfig``) labels by it deterministically (the higher
reward wins; ties skipped) or by Bradley-Terry, P(a_1 > a_2) = sigmoid((r_1 - r_2) / temperature). Pairs are
records {"prompt", "chosen", "rejected"}, the JSONL preference format of ``data.jsonl``, so a user's own
preference file trains the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from jax_irl import rollout
from jax_irl.data import batching

# The gold reward r*, batched: gold(prompts [P], references [P], responses [P][n]) -> rewards [P, n].
GoldFn = Callable[[Sequence[str], Sequence[str], Sequence[Sequence[str]]], np.ndarray]


def per_sample(score: Callable[[str, str], float]) -> GoldFn:
    r"""A batched gold reward (``GoldFn``) from a per-sample score.

    Args:
        score: ``score(response, reference) -> float`` for one response, e.g. a programmatic checker such as
            ``arithmetic.graded_reward``.

    Returns:
        ``gold(prompts [P], references [P], responses [P][n]) -> rewards [P, n]`` (float64).

    Examples:
        >>> from jax_irl.algorithms import pairs
        >>> gold = pairs.per_sample(lambda text, ref: float(text.strip() == ref))
        >>> gold(["1 + 1 ="], ["2"], [["2", " 3"]])
        array([[1., 0.]])
    """

    def gold(prompts, references, responses):
        return np.array([[score(t, ref) for t in ts] for ts, ref in zip(responses, references)], np.float64)

    return gold


@dataclasses.dataclass(frozen=True)
class OracleConfig:
    temperature: float = 0.0  # Bradley-Terry temperature of the labels; 0: deterministic (higher reward wins)
    pair_rule: str = "best_worst"  # of n >= 2 candidates: best vs worst under the reward, or a random pair

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"oracle temperature must be >= 0; got {self.temperature}")
        if self.pair_rule not in ("best_worst", "random"):
            raise ValueError(f"pair_rule must be 'best_worst' or 'random'; got {self.pair_rule!r}")


def make_pairs(prompts: Sequence[str], candidates: Sequence[Sequence[str]], rewards: np.ndarray,
               oracle: OracleConfig, rng: np.random.Generator) -> Tuple[List[Dict[str, str]], Dict[str, int]]:
    r"""One labelled preference pair per prompt from its candidates and their gold rewards: the preference oracle.

    The pair is the best and the worst candidate (``oracle.pair_rule='best_worst'``; ties broken by position) or
    two random distinct ones ('random'); the label is deterministic (``oracle.temperature`` 0: the higher reward
    is chosen) or drawn from Bradley-Terry,

    $$
    P(a_i \succ a_j) = \sigma\big((r_i - r_j) / \tau\big).
    $$

    A pair of identical texts, or of equal rewards under deterministic labels, teaches nothing and is skipped.

    Args:
        prompts: ``[P]`` prompt texts.
        candidates: ``[P][n]`` candidate responses per prompt (n >= 2).
        rewards: ``[P, n]`` their gold rewards (finite).
        oracle: the ``OracleConfig`` (temperature, pair rule).
        rng: a numpy generator for random pairs and Bradley-Terry draws.

    Returns:
        ``(records, counts)``: records ``{"prompt", "chosen", "rejected"}`` (the JSONL preference format) and
        ``{'pairs', 'identical', 'ties'}``, how many were made and skipped.

    Raises:
        ValueError: on shapes that disagree, fewer than 2 candidates, or non-finite rewards.

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import pairs
        >>> records, counts = pairs.make_pairs(["a", "b"], [["x", "y", "z"], ["u", "u", "v"]],
        ...                                    np.array([[0.1, 0.9, 0.5], [1.0, 1.0, 1.0]]), pairs.OracleConfig(),
        ...                                    np.random.default_rng(0))
        >>> records, counts
        ([{'prompt': 'a', 'chosen': 'y', 'rejected': 'x'}], {'pairs': 1, 'identical': 1, 'ties': 0})
    """
    rewards = np.asarray(rewards, np.float64)
    if len(prompts) != len(candidates) or rewards.shape != (len(prompts), len(candidates[0]) if candidates else 0):
        raise ValueError(f"need one row of candidates and rewards per prompt; got {len(prompts)} prompts, "
                         f"{len(candidates)} candidate rows, rewards {rewards.shape}")
    if rewards.shape[1] < 2:
        raise ValueError(f"a pair needs at least 2 candidates per prompt; got {rewards.shape[1]}")
    if not np.isfinite(rewards).all():
        raise ValueError("gold rewards must be finite")
    records, counts = [], {"pairs": 0, "identical": 0, "ties": 0}
    for prompt, texts, r in zip(prompts, candidates, rewards):
        if oracle.pair_rule == "best_worst":
            i, j = int(np.argmax(r)), int(np.argmin(r))
            if i == j:
                i, j = 0, 1
        else:
            i, j = (int(k) for k in rng.choice(len(texts), 2, replace=False))
        if texts[i] == texts[j]:
            counts["identical"] += 1
            continue
        if oracle.temperature == 0:
            if r[i] == r[j]:
                counts["ties"] += 1
                continue
            first_wins = r[i] > r[j]
        else:
            first_wins = rng.random() < 1.0 / (1.0 + math.exp(-(r[i] - r[j]) / oracle.temperature))
        chosen, rejected = (texts[i], texts[j]) if first_wins else (texts[j], texts[i])
        records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        counts["pairs"] += 1
    return records, counts


def preference_rows(tokenizer, records: Sequence[Dict[str, str]], max_length: int) -> Dict[str, np.ndarray]:
    r"""The token rows DPO and the reward models train on, from preference records.

    Args:
        tokenizer: a ``TextTokenizer`` (encode, pad_id, eos_id, bos_id).
        records: ``[N]`` records with 'prompt', 'chosen' and 'rejected' strings.
        max_length: the row length T before trimming (``batching.encode_examples``: long prompts are clipped from
            the left, long responses cut).

    Returns:
        tokens ``[2N, T']`` with pair i's chosen response at row 2i and its rejected one at 2i + 1, and their target
        masks ``[2N, T' - 1]`` (1 on the response tokens and eos); columns that are padding in every row are
        trimmed (T' <= T).

    Raises:
        ValueError: on an empty buffer or a record missing a string field (named, with its index).

    Examples:
        >>> from jax_irl.algorithms import pairs
        >>> from jax_irl.data.tokenizer import train_bpe
        >>> tok = train_bpe(["1 + 2 = 3", "2 + 2 = 4"], vocab_size=280)
        >>> rows = pairs.preference_rows(tok, [{"prompt": "1 + 2 =", "chosen": "3", "rejected": "4 4"}], 16)
        >>> rows["tokens"].shape[0], rows["mask"].sum(1).tolist()   # 1 token + eos, 3 tokens + eos
        (2, [2.0, 4.0])
    """
    if not records:
        raise ValueError("the preference buffer is empty: no pair to train on")
    prompts, responses = [], []
    for n, record in enumerate(records):
        for field in ("prompt", "chosen", "rejected"):
            if not isinstance(record.get(field), str):
                raise ValueError(f"preference record {n} needs a string {field!r}; got {record.get(field)!r}")
        prompts += [record["prompt"], record["prompt"]]
        responses += [record["chosen"], record["rejected"]]
    encoded = batching.encode_examples(tokenizer, prompts, responses, max_length)
    return batching.trim_padding({"tokens": encoded["tokens"], "mask": encoded["mask"]}, tokenizer.pad_id)


def distinct_pairs(tokenizer, records: Sequence[Dict[str, str]], max_length: int,
                   what: str = "pairs") -> List[Dict[str, str]]:
    r"""The records whose chosen and rejected responses differ once encoded as ``preference_rows`` encodes them.

    A pair whose two rows are the same tokens (cut to ``max_length``) carries no preference: its DPO or
    Bradley-Terry gradient is rounding noise, which Adam scales up into real updates while the loss reads log 2.
    The dropped ones are counted in a printed note.

    Args:
        tokenizer: the ``TextTokenizer`` of the rows.
        records: preference records (prompt, chosen, rejected).
        max_length: the row length the rows are cut to.
        what: the buffer's name in the note and the error.

    Returns:
        The kept records, in order.

    Raises:
        ValueError: when the buffer is empty or no pair is left.

    Examples:
        >>> from jax_irl.algorithms import pairs
        >>> from jax_irl.data.tokenizer import train_bpe
        >>> tok = train_bpe(["1 + 2 = 3", "2 + 2 = 4"], vocab_size=280)
        >>> kept = pairs.distinct_pairs(tok, [{"prompt": "1 +", "chosen": "2", "rejected": "3"},
        ...                                   {"prompt": "1 +", "chosen": "2", "rejected": "2"}], 16)
        note: 1 of 2 pairs have the same chosen and rejected response (as tokens, cut to max_length=16):
        dropped, they carry no preference
        >>> len(kept)
        1
    """
    if not records:
        raise ValueError(f"the {what} buffer is empty: no pair to train on")
    rows = preference_rows(tokenizer, records, max_length)
    tokens, mask = rows["tokens"], rows["mask"]
    same = np.all(tokens[0::2] == tokens[1::2], axis=1) & np.all(mask[0::2] == mask[1::2], axis=1)
    kept = [r for r, s in zip(records, same) if not s]
    if same.any():
        print(f"note: {int(same.sum())} of {len(records)} {what} have the same chosen and rejected response (as "
              f"tokens, cut to max_length={max_length}): dropped, they carry no preference")
    if not kept:
        raise ValueError(f"every one of the {len(records)} {what} has the same chosen and rejected response (as "
                         f"tokens, cut to max_length={max_length}): nothing to learn a preference from")
    return kept


def records_digest(records: Sequence[Dict[str, str]]) -> str:
    r"""A short digest of a buffer of records, part of a stage's fingerprint: a changed buffer never resumes a stale
    run.

    Args:
        records: JSON-serialisable records (e.g. preference pairs).

    Returns:
        16 hexadecimal characters of the SHA-256 of the records (keys sorted).

    Examples:
        >>> from jax_irl.algorithms import pairs
        >>> a = pairs.records_digest([{"prompt": "p", "chosen": "x", "rejected": "y"}])
        >>> len(a), a == pairs.records_digest([{"prompt": "p", "chosen": "y", "rejected": "x"}])
        (16, False)
    """
    return hashlib.sha256(json.dumps(list(records), sort_keys=True).encode()).hexdigest()[:16]


class SampleSettings(NamedTuple):
    tokenizer: object
    max_new_tokens: int
    gold: GoldFn
    temperature: float = 1.0
    uncertainty: Optional[GoldFn] = None  # Gamma(x, a) for pessimistic DPO (reward_models.uncertainty_gold)
    prompts_per_batch: Optional[int] = None  # the sampler's chunk of prompts (rollout.sample_rows); None: all at once


def sample_texts(model, prompts: rollout.Prompts, key, n: int, s: SampleSettings):
    r"""n samples of a model per prompt, decoded and scored by the gold reward.

    Args:
        model: a causal LM (``models.Transformer``).
        prompts: the ``rollout.Prompts`` (left-padded token rows, texts and references for the gold reward).
        key: the sampler's PRNG key.
        n: samples per prompt.
        s: the ``SampleSettings``: tokenizer, max_new_tokens, the gold reward, temperature and the sampler's
            prompt chunk.

    Returns:
        ``(texts, gold, rows)``: texts ``[P][n]``, gold rewards ``[P, n]`` (float64) and the sampler's rows
        (``rollout.sample_rows``: tokens, attention, mask, response, response_mask, log-probs; row p * n + j is
        sample j of prompt p).

    Raises:
        ValueError: when the gold reward returns a shape other than ``[P, n]``.

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
        >>> from jax_irl.algorithms import pairs
        >>> s = pairs.SampleSettings(tok, 4, pairs.per_sample(lambda text, ref: float(len(text))))
        >>> texts, gold, rows = pairs.sample_texts(model, prompts, jax.random.PRNGKey(0), 3, s)
        >>> len(texts), len(texts[0]), gold.shape, rows["response"].shape
        (2, 3, (2, 3), (6, 4))
    """
    rows = rollout.sample_rows(model, prompts.tokens, prompts.mask, key, max_new_tokens=s.max_new_tokens,
                               eos_id=s.tokenizer.eos_id, pad_id=s.tokenizer.pad_id, temperature=s.temperature,
                               num_samples=n, prompts_per_batch=s.prompts_per_batch)
    flat = [s.tokenizer.decode(r[m > 0]) for r, m in zip(rows["response"], rows["response_mask"])]
    texts = [flat[i * n:(i + 1) * n] for i in range(len(prompts.texts))]
    gold = np.asarray(s.gold(prompts.texts, prompts.references, texts), np.float64)
    if gold.shape != (len(texts), n):
        raise ValueError(f"the gold reward returned shape {gold.shape}; expected [P, n] = {(len(texts), n)}")
    return texts, gold, rows


def label_samples(model, prompts: rollout.Prompts, key, n: int, s: SampleSettings, oracle: OracleConfig,
                  rng: np.random.Generator) -> Dict[str, object]:
    r"""An offline set of preference pairs: n samples of a model per prompt (``sample_texts``), paired and labelled
    by the oracle (``make_pairs``).

    Args:
        model: the causal LM to sample (e.g. pi0).
        prompts: the ``rollout.Prompts``.
        key: the sampler's PRNG key.
        n: samples per prompt (>= 2).
        s: the ``SampleSettings`` (tokenizer, length, gold reward).
        oracle: the ``OracleConfig``.
        rng: a numpy generator for the oracle.

    Returns:
        ``{'records', 'counts'}``, JSON-ready (for ``stages.cached_json``).

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
        >>> from jax_irl.algorithms import pairs
        >>> s = pairs.SampleSettings(tok, 4, pairs.per_sample(lambda text, ref: float(len(text))))
        >>> made = pairs.label_samples(model, prompts, jax.random.PRNGKey(0), 4, s, pairs.OracleConfig(),
        ...                            np.random.default_rng(0))
        >>> sorted(made["counts"]), len(made["records"]) == made["counts"]["pairs"]
        (['identical', 'pairs', 'ties'], True)
    """
    texts, gold, _ = sample_texts(model, prompts, key, n, s)
    records, counts = make_pairs(prompts.texts, texts, gold, oracle, rng)
    return {"records": records, "counts": counts}


__all__ = ["GoldFn", "OracleConfig", "SampleSettings", "distinct_pairs", "label_samples", "make_pairs", "per_sample",
           "preference_rows", "records_digest", "sample_texts"]
