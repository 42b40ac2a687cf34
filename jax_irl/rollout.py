"""Rollouts: prompt rows, rows sampled from a model, and per-token scores of rows, shared by every method.

The layer between the model/sampler/losses and ``algorithms/``. Its row layout is the one every loss takes:

    tokens    [N, T]      a left-padded prompt of width P, then the response (right-padded)
    attention [N, T]      1 on real tokens
    mask      [N, T - 1]  the target mask: mask[:, t] = 1 when tokens[:, t + 1] is a counted (response) token

so position t of every per-token array holds the model's output at tokens[:, t] that predicts tokens[:, t + 1].

- ``causal_lm`` is the one causal-LM forward: the shift, the attention slice, and (Q(s_t, a_t), V(s_t)) from
  full logits or, with ``vocab_chunk``, from hidden states in vocabulary chunks without building the [N, T, V]
  logits (``losses.chunked_soft_q_stats``; equal to the full path to float rounding). Log-probs are
  (Q - V) / tau, so every method's log-probs, implied rewards and values come from the same two numbers.
- ``prompt_rows`` / ``sample_rows`` turn example rows into prompts and prompts into sampled rows, with the
  sampling policy's and the model's per-token log-probs on the target grid (PPO's old log-probs).
- ``score_rows`` runs any hashable scorer ``scorer(model, batch) -> dict of per-row arrays`` over rows in padded
  batches of one compiled shape; ``LMScores`` is the built-in one (log-probs, Q, V, implied rewards, entropy,
  per token or summed per row), and ``RewardScores`` scores rows with a (multi-head) reward model. Reference
  log-probs, IQLearn's extracted rewards and evaluation all use them.
- ``sample_and_evaluate`` samples n responses per prompt at several temperatures, decodes them, scores them
  with a task's ``score_fn(text, reference)`` and with an ``LMScores``, and returns everything per temperature.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_irl import losses, parallel, sampling
from jax_irl.models.transformer import take_rows, window_rows


class LMOutputs(NamedTuple):
    target_q: jax.Array  # [N, T-1] float32: Q(s_t, a_t), the logit (/ tau) of the next token
    values: jax.Array  # [N, T-1] float32: V(s_t) = tau * logsumexp(logits_t / tau)
    logits: Optional[jax.Array]  # [N, T-1, V] (None on the vocabulary-chunked path)
    hidden: jax.Array  # [N, T-1, D] final hidden states; [N, W, D] with a window (the window's positions only)
    mask: Optional[jax.Array] = None  # the target mask the outputs line up with (windowed with a window)
    start: Optional[jax.Array] = None  # [N] int32: the window's first target position per row (None: no window)


def loss_window(mask, multiple: int = 8, min_saving: float = 0.1) -> Optional[int]:
    r"""The window width ``causal_lm`` needs for rows with this target mask.

    The longest span from a row's first to its last counted target, rounded up to ``multiple`` (fewer distinct
    compiled shapes). Compute it over a whole dataset once: every batch drawn from it then fits.

    Args:
        mask: ``[N, T-1]`` target mask (numpy), nonzero on counted targets.
        multiple: round the width up to a multiple of this (>= 1).
        min_saving: return None where the window would save less than this share of the T - 1 positions.

    Returns:
        The width W, or None (no window: the full path is as cheap).

    Examples:
        >>> import numpy as np
        >>> from jax_irl import rollout
        >>> mask = np.zeros((2, 64)); mask[0, 40:50] = 1; mask[1, 30:35] = 1
        >>> rollout.loss_window(mask)  # the longest span, 10, rounded up to 16
        16
    """
    m = np.asarray(mask) > 0
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"mask must have shape [N, T-1] with T > 1; got {m.shape}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1; got {multiple}")
    counted = m.any(1)
    t = np.arange(m.shape[1])
    span = (np.max(np.where(m, t, -1), 1) - np.argmax(m, 1) + 1)[counted]
    return useful_window(-(-int(span.max() if span.size else 1) // multiple) * multiple, m.shape[1], min_saving)


def useful_window(width: int, targets: int, min_saving: float = 0.1) -> Optional[int]:
    r"""A window width, or None where it would save less than ``min_saving`` of the target positions.

    Args:
        width: the window's width W.
        targets: the rows' target positions, T - 1.
        min_saving: the least share of positions a window must save.

    Returns:
        ``width``, or None.

    Examples:
        >>> from jax_irl import rollout
        >>> rollout.useful_window(16, 64), rollout.useful_window(60, 64)
        (16, None)
    """
    return width if width <= (1.0 - min_saving) * targets else None


def take_window(x: jax.Array, start: jax.Array, width: int) -> jax.Array:
    r"""Each row's window of positions: row n's positions start[n] .. start[n] + width - 1.

    The same positions as the model's ``window``; positions past T - 1 repeat the last one (``causal_lm`` masks
    them out).

    Args:
        x: ``[N, T, ...]``.
        start: ``[N]`` int, each row's first position.
        width: W.

    Returns:
        ``[N, W, ...]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import rollout
        >>> rollout.take_window(jnp.arange(10).reshape(2, 5), jnp.array([1, 3]), 3)
        Array([[1, 2, 3],
               [8, 9, 9]], dtype=int32)
    """
    return take_rows(x, window_rows(start, width, x.shape[1]))


def causal_lm(model, tokens: jax.Array, attention: Optional[jax.Array] = None, *, vocab_chunk: Optional[int] = None,
              temperature: float = 1.0, need_logits: bool = False, mask: Optional[jax.Array] = None,
              window: Optional[int] = None) -> LMOutputs:
    r"""The causal-LM forward of rows: inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``; every loss and scorer
    goes through it.

    With ``vocab_chunk`` (and not ``need_logits``) the pair (Q, V) comes from the hidden states and
    ``model.unembedding()`` in chunks of that many vocabulary columns, never building ``[N, T-1, V]`` logits. With
    ``window`` (a static width W, e.g. ``loss_window`` of the dataset's masks) and the target ``mask``, the last
    transformer block after its keys and values, the unembedding, the softmax statistics and their gradients run
    only on each row's W target positions from its first counted one (start[n] = the first t with mask[n, t] > 0).
    Every quantity at a counted position equals the unwindowed one, and so does any loss over counted positions
    and their successors (IQLearn's V(s_{t+1})). W must cover each row's span (``loss_window`` does).

    Args:
        model: a ``models.transformer.Transformer``.
        tokens: ``[N, T]`` ids.
        attention: optional ``[N, T]`` attention mask (1 on real tokens).
        vocab_chunk: vocabulary columns per chunk of the chunked soft-Q statistics; None: full logits.
        temperature: tau > 0 of Q and V.
        need_logits: build the logits even with ``vocab_chunk`` (an entropy needs them).
        mask: ``[N, T-1]`` target mask; required with ``window``.
        window: the static window width W, or None.

    Returns:
        ``LMOutputs(target_q, values, logits, hidden, mask, start)``: ``[N, T-1]`` arrays (``[N, W]`` with a
        window, whose ``mask`` and ``start`` line them up with the rows), logits ``[N, T-1 or W, V]`` or None,
        hidden ``[N, T-1 or W, D]``.

    Examples:
        >>> import jax, numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
        >>> tokens = np.random.default_rng(0).integers(0, 32, (2, 12))
        >>> mask = np.zeros((2, 11), np.float32); mask[:, 6:] = 1
        >>> full = rollout.causal_lm(model, tokens)
        >>> windowed = rollout.causal_lm(model, tokens, mask=mask, window=5)
        >>> windowed.target_q.shape, bool(np.allclose(windowed.values, full.values[:, 6:], atol=1e-5))
        ((2, 5), True)
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    attn = None if attention is None else attention[:, :-1]
    if window is not None:
        if mask is None:
            raise ValueError("window needs the target mask (mask=[N, T-1]) to place each row's window")
        if window < 1:
            raise ValueError(f"window must be >= 1; got {window}")
        width = min(int(window), targets.shape[1])
        start = jnp.argmax(mask > 0, axis=1).astype(jnp.int32)
        hidden_w = model(inputs, attention_mask=attn, compute_logits=False, window=(start, width)).hidden
        inside = (start[:, None] + jnp.arange(width)[None]) < targets.shape[1]
        targets_w = take_window(targets, start, width)
        mask_w = jnp.where(inside, take_window(mask, start, width), 0).astype(mask.dtype)
        if vocab_chunk and not need_logits:
            q, v = losses.chunked_soft_q_stats(hidden_w, model.unembedding(), targets_w, chunk_size=vocab_chunk,
                                               temperature=temperature)
            return LMOutputs(q, v, None, hidden_w, mask_w, start)
        logits = model.logits(hidden_w)
        q, v = losses.soft_q_stats(logits, targets_w, temperature)
        return LMOutputs(q, v, logits, hidden_w, mask_w, start)
    if vocab_chunk and not need_logits:
        hidden = model(inputs, attention_mask=attn, compute_logits=False).hidden
        q, v = losses.chunked_soft_q_stats(hidden, model.unembedding(), targets, chunk_size=vocab_chunk,
                                           temperature=temperature)
        return LMOutputs(q, v, None, hidden, mask)
    out = model(inputs, attention_mask=attn)
    q, v = losses.soft_q_stats(out.logits, targets, temperature)
    return LMOutputs(q, v, out.logits, out.hidden, mask)


def prompt_rows(tokens: np.ndarray, prompt_lengths: np.ndarray, pad_id: int, width: int):
    r"""Left-padded prompts for sampling, from right-padded example rows whose first tokens are the prompt.

    Args:
        tokens: ``[B, T]`` example rows (prompt, then response, then padding).
        prompt_lengths: ``[B]`` each row's prompt length.
        pad_id: the padding id.
        width: the padded width W of the prompts.

    Returns:
        ``(prompts, mask)``, numpy ``[B, W]`` (``sampling.left_pad``).

    Examples:
        >>> import numpy as np
        >>> from jax_irl import rollout
        >>> prompts, mask = rollout.prompt_rows(np.array([[5, 6, 7, 8], [9, 10, 11, 0]]), np.array([2, 1]), 0, 3)
        >>> prompts.tolist()
        [[0, 5, 6], [0, 0, 9]]
    """
    if len(tokens) != len(prompt_lengths):
        raise ValueError(f"tokens has {len(tokens)} rows but prompt_lengths has {len(prompt_lengths)}")
    return sampling.left_pad([list(row[:n]) for row, n in zip(tokens, prompt_lengths)], pad_id=pad_id, width=width)


def sample_rows(model, prompts: np.ndarray, prompt_mask: np.ndarray, key, *, max_new_tokens: int, eos_id: int,
                pad_id: int, temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                num_samples: int = 1, greedy: bool = False,
                prompts_per_batch: Optional[int] = None) -> Dict[str, np.ndarray]:
    r"""Responses sampled from the model, as training rows: n per prompt, rows b * n + j.

    Greedy decoding is deterministic, so its n rows per prompt are one decoded row repeated. ``prompts_per_batch``
    samples the prompts in chunks of that many, chunk c with key ``fold_in(key, c)``, so the sampler's KV cache
    holds prompts_per_batch x n rows, not all of them.

    Args:
        model: a ``models.transformer.Transformer``.
        prompts: ``[B, P]`` left-padded prompt ids.
        prompt_mask: ``[B, P]``.
        key: a PRNG key.
        max_new_tokens: the response budget N.
        eos_id: the id that ends a response.
        pad_id: the padding id.
        temperature: > 0.
        top_k: optional top-k filter.
        top_p: optional nucleus filter.
        num_samples: n, responses per prompt.
        greedy: argmax decoding.
        prompts_per_batch: the sampler's chunk of prompts; None: all at once.

    Returns:
        A dict of numpy arrays: ``tokens`` and ``attention`` ``[B*n, P+N]``; ``mask`` ``[B*n, P+N-1]`` (the
        response's targets); ``sample_log_probs`` and ``model_log_probs`` ``[B*n, P+N-1]`` (each response token's
        log-prob under the sampling distribution and under the model, on the target grid, 0 elsewhere);
        ``response`` and ``response_mask`` ``[B*n, N]``; ``prompt_index`` ``[B*n]``.

    Examples:
        >>> import jax, numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
        >>> prompts, mask = np.array([[0, 1, 2], [3, 4, 5]]), np.ones((2, 3), np.int32)
        >>> rows = rollout.sample_rows(model, prompts, mask, jax.random.PRNGKey(0), max_new_tokens=4, eos_id=31,
        ...                            pad_id=0, num_samples=3)
        >>> rows["tokens"].shape, rows["mask"].shape, rows["prompt_index"].tolist()
        ((6, 7), (6, 6), [0, 0, 0, 1, 1, 1])
    """
    if prompts_per_batch is not None:
        if not (isinstance(prompts_per_batch, int) and prompts_per_batch >= 1):
            raise ValueError(f"prompts_per_batch must be an int >= 1 or None; got {prompts_per_batch!r}")
        if prompts_per_batch < len(prompts):
            parts = [sample_rows(model, prompts[i:i + prompts_per_batch], prompt_mask[i:i + prompts_per_batch],
                                 jax.random.fold_in(key, c), max_new_tokens=max_new_tokens, eos_id=eos_id,
                                 pad_id=pad_id, temperature=temperature, top_k=top_k, top_p=top_p,
                                 num_samples=num_samples, greedy=greedy)
                     for c, i in enumerate(range(0, len(prompts), prompts_per_batch))]
            out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "prompt_index"}
            out["prompt_index"] = np.repeat(np.arange(len(prompts)), num_samples)
            return out
    if greedy and num_samples > 1:
        one = sample_rows(model, prompts, prompt_mask, key, max_new_tokens=max_new_tokens, eos_id=eos_id,
                          pad_id=pad_id, temperature=temperature, top_k=top_k, top_p=top_p, greedy=True)
        return {k: np.repeat(v, num_samples, 0) for k, v in one.items()}
    out = sampling.generate(model, prompts, prompt_mask, key, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p, eos_ids=(eos_id,), pad_id=pad_id, num_samples=num_samples,
                            greedy=greedy)
    gen, gen_mask = np.asarray(out.tokens), np.asarray(out.mask)
    rows = np.concatenate([np.repeat(prompts, num_samples, 0), gen], 1).astype(np.int32)
    attention = np.concatenate([np.repeat(prompt_mask, num_samples, 0), gen_mask], 1).astype(np.int32)
    width = prompts.shape[1]

    def on_targets(x, dtype):  # target t predicts rows[t + 1]: the response starts at target width - 1
        grid = np.zeros((rows.shape[0], rows.shape[1] - 1), dtype)
        grid[:, width - 1:] = x
        return grid

    return {"tokens": rows, "attention": attention, "mask": on_targets(gen_mask, np.float32),
            "sample_log_probs": on_targets(np.asarray(out.log_probs) * gen_mask, np.float32),
            "model_log_probs": on_targets(np.asarray(out.model_log_probs) * gen_mask, np.float32),
            "response": gen, "response_mask": gen_mask,
            "prompt_index": np.repeat(np.arange(len(prompts)), num_samples)}


# --- scoring ------------------------------------------------------------------------------------------------

QUANTITIES = ("log_probs", "target_q", "values", "implied_rewards", "entropy")


@dataclasses.dataclass(frozen=True)
class LMScores:
    """A scorer of rows under a causal LM (hashable: one compiled function per distinct scorer).

    quantities: any of
      log_probs        log pi(a_t|s_t) = (Q - V) / tau
      target_q         Q(s_t, a_t)
      values           V(s_t)
      implied_rewards  r_t = Q(s_t, a_t) - gamma V(s_{t+1}), V := 0 after the last counted token (needs 'mask')
      entropy          -sum_a pi(a|s_t) log pi(a|s_t) (needs the full logits, even with vocab_chunk)
    Each is [N, T-1] per token, 0 where the batch's 'mask' is 0 (when there is one); with ``per_row`` each is
    summed over the row's counted tokens instead ([N]), and 'num_tokens' [N] is added."""

    quantities: Tuple[str, ...] = ("log_probs",)
    gamma: float = 1.0
    temperature: float = 1.0
    vocab_chunk: Optional[int] = None
    per_row: bool = False

    def __post_init__(self):
        unknown = [q for q in self.quantities if q not in QUANTITIES]
        if unknown or not self.quantities:
            raise ValueError(f"quantities must be a non-empty subset of {QUANTITIES}; got {self.quantities}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0; got {self.temperature}")
        if self.vocab_chunk is not None and self.vocab_chunk < 1:
            raise ValueError(f"vocab_chunk must be None or >= 1; got {self.vocab_chunk}")

    def __call__(self, model, batch: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
        tokens, mask = batch["tokens"], batch.get("mask")
        if ("implied_rewards" in self.quantities or self.per_row) and mask is None:
            raise ValueError("implied_rewards and per_row scores need the rows' target 'mask' [N, T-1]")
        out = causal_lm(model, tokens, batch.get("attention"), vocab_chunk=self.vocab_chunk,
                        temperature=self.temperature, need_logits="entropy" in self.quantities)
        q, v, tau = out.target_q, out.values, self.temperature
        per_token = {}
        for name in self.quantities:
            if name == "log_probs":
                per_token[name] = (q - v) / tau
            elif name == "target_q":
                per_token[name] = q
            elif name == "values":
                per_token[name] = v
            elif name == "implied_rewards":
                per_token[name] = losses.implied_rewards_from_q(q, v, mask, self.gamma)
            else:
                per_token[name] = losses.token_entropies(out.logits, tau)
        if mask is not None:
            m = mask.astype(jnp.float32)
            per_token = {k: jnp.where(m != 0, x, 0.0) for k, x in per_token.items()}
        if not self.per_row:
            return per_token
        sums = {k: jnp.sum(x, -1) for k, x in per_token.items()}
        sums["num_tokens"] = jnp.sum(mask.astype(jnp.float32), -1)
        return sums


@dataclasses.dataclass(frozen=True)
class RewardScores:
    """A scorer of rows under a reward model (``models.heads.RewardModel``, K heads over prompt + response):
    'rewards' [N, K] per head and 'reward' [N] aggregated over the heads with ``losses.aggregate_rewards``
    ('mean', 'min', 'uwo' or 'lcb'; coef for the last two). Needs the rows' 'attention'."""

    aggregation: str = "mean"
    coef: Optional[float] = None

    def __post_init__(self):
        losses.aggregate_rewards(jnp.zeros((1, 2)), self.aggregation, coef=self.coef)  # checks both fields

    def __call__(self, model, batch: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
        if "attention" not in batch:
            raise ValueError("reward-model scores need the rows' 'attention' [N, T] (the last counted token is read)")
        rewards = model(batch["tokens"], batch["attention"])
        return {"rewards": rewards, "reward": losses.aggregate_rewards(rewards, self.aggregation, coef=self.coef)}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _score_batch(scorer, graphdef, state, batch):
    return parallel.replicate_under_mesh(scorer(nnx.merge(graphdef, state), batch))


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    r"""Rows padded with copies of the last row up to a multiple of ``multiple`` (one compiled shape).

    Args:
        x: ``[N, ...]``.
        multiple: the row multiple.

    Returns:
        ``[ceil(N / multiple) * multiple, ...]``.

    Examples:
        >>> import numpy as np
        >>> from jax_irl import rollout
        >>> rollout.pad_rows(np.array([1, 2, 3]), 2).tolist()
        [1, 2, 3, 3]
    """
    extra = -len(x) % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, 0)]) if extra else x


def score_rows(model, scorer: Callable, rows: Dict[str, np.ndarray], *,
               rows_per_batch: Optional[int] = None) -> Dict[str, np.ndarray]:
    r"""Run a scorer over rows in padded batches of one compiled shape: the one door for every per-row quantity.

    The last batch is padded with copies of the last row, so the scorer compiles once; runs under the model's
    mesh when its params are sharded.

    Args:
        model: the model the scorer reads (a causal LM for ``LMScores``, a reward model for ``RewardScores``).
        scorer: ``scorer(model, batch) -> {name: [n, ...]}``, hashable and compared by value (a frozen dataclass
            such as ``LMScores``, or a module-level function): a static argument of the compiled function.
        rows: a dict of arrays with one common, non-zero leading axis N.
        rows_per_batch: rows per batch; None: all at once.

    Returns:
        The scorer's arrays concatenated over the batches, ``[N, ...]`` (numpy).

    Examples:
        >>> import jax, numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
        >>> tokens = np.random.default_rng(0).integers(0, 32, (5, 8))
        >>> mask = np.ones((5, 7), np.float32)
        >>> scores = rollout.score_rows(model, rollout.LMScores(("log_probs",), per_row=True),
        ...                             {"tokens": tokens, "mask": mask}, rows_per_batch=2)
        >>> scores["log_probs"].shape, scores["num_tokens"].tolist()
        ((5,), [7.0, 7.0, 7.0, 7.0, 7.0])
    """
    if not rows:
        raise ValueError("rows is empty: pass at least 'tokens'")
    sizes = {k: len(v) for k, v in rows.items()}
    n = next(iter(sizes.values()))
    if len(set(sizes.values())) != 1 or n == 0:
        raise ValueError(f"rows need one common, non-zero number of rows; got {sizes}")
    if rows_per_batch is not None and rows_per_batch < 1:
        raise ValueError(f"rows_per_batch must be None or >= 1; got {rows_per_batch}")
    size = min(rows_per_batch or n, n)
    padded = {k: pad_rows(np.asarray(v), size) for k, v in rows.items()}
    graphdef, state = nnx.split(model)
    parts = []
    with parallel.mesh_context(state):
        for i in range(0, len(next(iter(padded.values()))), size):
            out = _score_batch(scorer, graphdef, state, {k: jnp.asarray(v[i:i + size]) for k, v in padded.items()})
            parts.append(jax.device_get(out))
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


# --- sampling and evaluating ---------------------------------------------------------------------------------


class Evaluated(NamedTuple):
    """One temperature's samples: n per prompt, rows b * n + j."""

    texts: list  # [B*n] decoded responses
    scores: np.ndarray  # [B*n] the task's score_fn(text, reference)
    row_scores: Dict[str, np.ndarray]  # the LMScores (per_row) of each sample: summed quantities and num_tokens
    rows: Dict[str, np.ndarray]  # the sampled rows (sample_rows' fields)


def sample_and_evaluate(model, tokenizer, prompts: np.ndarray, prompt_mask: np.ndarray, references: Sequence,
                        key, *, temperatures: Sequence[float], num_samples: int, max_new_tokens: int,
                        score_fn: Callable[[str, object], float], scorer: Optional[LMScores] = None,
                        prompts_per_batch: Optional[int] = None,
                        rows_per_score: Optional[int] = None) -> Dict[str, Evaluated]:
    r"""Sample responses at several temperatures, decode them, and score them with a task's metric and an ``LMScores``.

    For each temperature (key "0.5", "1", ...; 0 is greedy, its rows identical), ``num_samples`` responses per
    prompt. Prompts are sampled ``prompts_per_batch`` at a time (the last batch padded with copies, whose rows are
    dropped), batch i of temperature k drawing with fold_in(split(key)_k, i); the samples are scored
    ``rows_per_score`` rows at a time.

    Args:
        model: a ``models.transformer.Transformer``.
        tokenizer: with ``eos_id``, ``pad_id`` and ``decode``.
        prompts: ``[B, P]`` left-padded prompt ids.
        prompt_mask: ``[B, P]``.
        references: B references, one per prompt, for ``score_fn``.
        key: a PRNG key.
        temperatures: the temperatures (0: greedy).
        num_samples: n, responses per prompt.
        max_new_tokens: the response budget.
        score_fn: ``score_fn(text, reference) -> float``, the task's metric.
        scorer: an ``LMScores`` with ``per_row=True``; default: the summed log-probs.
        prompts_per_batch: prompts sampled at a time; None: all.
        rows_per_score: rows scored at a time; None: one prompt batch's rows.

    Returns:
        ``{temperature key: Evaluated(texts, scores, row_scores, rows)}``, rows b * n + j.

    Examples:
        >>> import jax, numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
        >>> class Tok:
        ...     eos_id, pad_id = 31, 0
        ...     def decode(self, ids):
        ...         return " ".join(map(str, ids))
        >>> prompts, mask = np.array([[1, 2], [3, 4]]), np.ones((2, 2), np.int32)
        >>> out = rollout.sample_and_evaluate(model, Tok(), prompts, mask, ["a", "b"], jax.random.PRNGKey(0),
        ...                                   temperatures=(0, 1.0), num_samples=2, max_new_tokens=3,
        ...                                   score_fn=lambda text, ref: float(len(text) > 0))
        >>> sorted(out), len(out["1"].texts), out["0"].texts[0] == out["0"].texts[1]
        (['0', '1'], 4, True)
    """
    if len(prompts) != len(references) or not len(prompts):
        raise ValueError(f"need one reference per prompt and at least one prompt; got {len(prompts)} prompts and "
                         f"{len(references)} references")
    scorer = scorer or LMScores(("log_probs",), per_row=True)
    if not scorer.per_row:
        raise ValueError("sample_and_evaluate's scorer must have per_row=True (one number per sample)")
    n = len(prompts)
    size = prompts_per_batch or n
    padded_prompts, padded_mask = pad_rows(prompts, size), pad_rows(prompt_mask, size)
    results = {}
    for temperature in temperatures:
        key, sub = jax.random.split(key)
        batches = [sample_rows(model, padded_prompts[i:i + size], padded_mask[i:i + size], jax.random.fold_in(sub, b),
                               max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                               temperature=temperature or 1.0, num_samples=num_samples, greedy=temperature == 0)
                   for b, i in enumerate(range(0, len(padded_prompts), size))]
        # Every batch has the same row width; the rows of padding prompts are dropped.
        rows = {k: np.concatenate([batch[k] for batch in batches])[: n * num_samples] for k in batches[0]}
        rows["prompt_index"] = np.repeat(np.arange(n), num_samples)
        texts = [tokenizer.decode(r[m > 0]) for r, m in zip(rows["response"], rows["response_mask"])]
        refs = [r for r in references for _ in range(num_samples)]
        scores = np.array([score_fn(t, r) for t, r in zip(texts, refs)], float)
        row_scores = score_rows(model, scorer, {k: rows[k] for k in ("tokens", "attention", "mask")},
                                rows_per_batch=rows_per_score or size * num_samples)
        results[f"{temperature:g}"] = Evaluated(texts, scores, row_scores, rows)
    return results


class Prompts(NamedTuple):
    """A prompt set as left-padded token rows (for sampling) and as text (for reward functions, records and the
    preference oracle): what PPO, GRPO, GSHF and the reward-ensemble runs sample from."""

    tokens: np.ndarray  # [P, W] left-padded prompt ids (``prompt_rows``)
    mask: np.ndarray  # [P, W] 1 on the prompt's tokens
    texts: Sequence[str]  # [P] the prompts as text
    references: Optional[Sequence[str]] = None  # [P] a reference response per prompt (gold rewards), or None

    def take(self, idx) -> "Prompts":
        """The prompts at ``idx`` (an int array or sequence), in that order."""
        idx = np.asarray(idx, np.int64)
        return Prompts(self.tokens[idx], self.mask[idx], [self.texts[i] for i in idx],
                       None if self.references is None else [self.references[i] for i in idx])

    def check(self) -> None:
        """Raise ValueError unless tokens and mask have one shape [P, W] and texts (and references) P entries."""
        tokens, mask = np.asarray(self.tokens), np.asarray(self.mask)
        sizes = [len(self.texts)] + ([] if self.references is None else [len(self.references)])
        if tokens.ndim != 2 or mask.shape != tokens.shape or any(n != len(tokens) for n in sizes):
            refs = "" if self.references is None else f", {len(self.references)} references"
            raise ValueError(f"prompts: {len(tokens)} token rows of shape {tokens.shape}, {len(self.texts)} texts"
                             f"{refs} and a mask of {mask.shape}; they must agree ([P, W], P, P)")


def reference_log_probs(model: nnx.Module, tokens: jax.Array, attention_mask: Optional[jax.Array] = None,
                        batch_size: Optional[int] = None, vocab_chunk: Optional[int] = None) -> jax.Array:
    r"""Per-token log-probs of ``tokens[:, 1:]`` under a frozen (reference) model, computed once outside the step.

    The train step then needs no second model in memory: put the result in the batch (e.g. summed over the
    response for DPO's reference log-probs). Runs through ``score_rows`` in padded chunks of one compiled shape.

    Args:
        model: the frozen reference, a ``models.transformer.Transformer``.
        tokens: ``[B, T]`` ids.
        attention_mask: optional ``[B, T]``.
        batch_size: rows per chunk; None: all at once.
        vocab_chunk: vocabulary columns per chunk (from hidden states, no full logits); None: full logits.

    Returns:
        ``[B, T-1]`` float32.

    Examples:
        >>> import jax, numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> model = Transformer(cfg, rngs=nnx.Rngs(0))
        >>> from jax_irl import losses
        >>> tokens = np.random.default_rng(0).integers(0, 32, (3, 6))
        >>> ref = rollout.reference_log_probs(model, tokens, batch_size=2)
        >>> direct = losses.token_log_probs(model(tokens[:, :-1]).logits, tokens[:, 1:])
        >>> ref.shape, bool(np.allclose(ref, direct, atol=1e-5))
        ((3, 5), True)
    """
    rows = {"tokens": np.asarray(tokens)}
    if attention_mask is not None:
        rows["attention"] = np.asarray(attention_mask)
    scores = score_rows(model, LMScores(("log_probs",), vocab_chunk=vocab_chunk), rows, rows_per_batch=batch_size)
    return jnp.asarray(scores["log_probs"])
