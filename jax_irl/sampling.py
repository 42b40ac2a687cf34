"""Jit-compiled autoregressive sampling with a KV cache, best-of-n, and statistical rejection sampling.

``generate`` prefills the prompts once, then decodes one token per step inside a ``lax.while_loop`` that stops
when every row has finished (EOS) or ``max_new_tokens`` is reached. Prompts are left-padded [B, P] with a mask,
so ragged prompt lengths share one batch. Same key, same output.

``best_of_n``, ``rejection_sample`` / ``rejection_accept`` (one step) and ``multi_step_rejection`` (a schedule,
fresh candidates each step) act on rewards of candidates [B, n]: they are the practical oracles for the Gibbs
policy pi0(a|x) exp(r(x,a)/eta) / Z(x) of KL-regularised preference learning; ``best_of_n_kl`` is best-of-n's
analytic KL from pi0.
"""

from __future__ import annotations

import functools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_irl import parallel


class SamplingSpec(NamedTuple):
    """How a method draws responses: the tokenizer's end and pad ids, the response length, the temperature, and
    the width prompts are left-padded to (None: the widest prompt). Methods whose config holds its own length
    and temperature (PPO, GRPO) read only the ids from it and refuse a spec whose length disagrees."""

    eos_id: int
    pad_id: int
    max_new_tokens: Optional[int] = None
    temperature: float = 1.0
    prompt_width: Optional[int] = None

    @classmethod
    def of(cls, tokenizer, **fields) -> "SamplingSpec":
        """The spec of ``tokenizer`` (its ``eos_id`` and ``pad_id``) with ``fields``."""
        return cls(int(tokenizer.eos_id), int(tokenizer.pad_id), **fields)

    def check_length(self, max_new_tokens: int, what: str) -> None:
        """Raise ValueError when this spec sets a response length other than ``what``'s ``max_new_tokens``."""
        if self.max_new_tokens is not None and self.max_new_tokens != max_new_tokens:
            raise ValueError(f"the sampling spec's max_new_tokens={self.max_new_tokens} disagrees with "
                             f"{what}.max_new_tokens={max_new_tokens}; leave the spec's unset")


class SampleOutput(NamedTuple):
    tokens: jax.Array  # [B * n, max_new_tokens] generated ids, pad_id after the end
    log_probs: jax.Array  # [B * n, max_new_tokens] log-prob of each token under the sampling distribution
    model_log_probs: jax.Array  # [B * n, max_new_tokens] log-prob under the model (temperature 1, no filtering)
    lengths: jax.Array  # [B * n] generated tokens per row, EOS included
    mask: jax.Array  # [B * n, max_new_tokens] 1 on generated tokens (EOS included)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, width: Optional[int] = None):
    r"""Left-pad ragged prompts into one batch, the layout ``generate`` reads.

    Args:
        prompts: token id lists, each with at least one token.
        pad_id: the id written before each shorter prompt.
        width: the padded width P; None: the longest prompt. A fixed width avoids recompiling for every batch.

    Returns:
        ``(tokens, mask)``: numpy int32 arrays ``[B, P]``, the mask 1 on prompt tokens.

    Examples:
        >>> from jax_irl import sampling
        >>> tokens, mask = sampling.left_pad([[5, 6, 7], [8]], pad_id=0)
        >>> tokens.tolist(), mask.tolist()
        ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if width is not None and width < longest:
        raise ValueError(f"width {width} is shorter than the longest prompt ({longest} tokens)")
    width = longest if width is None else width
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return tokens, mask


def filter_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> jax.Array:
    r"""The sampling distribution's logits: divided by the temperature, then top-k, then top-p (nucleus).

    Removed tokens get -inf; top-p keeps the most likely tokens whose preceding mass is below ``top_p`` (the most
    likely token always stays).

    Args:
        logits: ``[B, V]`` float.
        temperature: > 0.
        top_k: keep the k most likely tokens; None keeps all.
        top_p: keep the smallest set of most likely tokens whose mass reaches top_p; None or 1 keeps all.

    Returns:
        ``[B, V]`` float32 logits of the sampling distribution.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import sampling
        >>> sampling.filter_logits(jnp.log(jnp.array([[0.5, 0.3, 0.2]])), top_p=0.7)  # 0.5 + 0.3 reach 0.7
        Array([[-0.6931472, -1.2039728,       -inf]], dtype=float32)

    References:
        Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration" (nucleus sampling).
    """
    x = logits.astype(jnp.float32) / temperature
    if top_k is not None and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if top_p is not None and top_p < 1.0:
        order = jnp.argsort(-x, axis=-1)
        sorted_x = jnp.take_along_axis(x, order, -1)
        probs = jax.nn.softmax(sorted_x, -1)
        before = jnp.cumsum(probs, -1) - probs  # mass of strictly more likely tokens
        keep_sorted = before < top_p  # the most likely token always stays
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(x.shape[0])[:, None], order].set(keep_sorted)
        x = jnp.where(keep, x, -jnp.inf)
    return x


def _is_int(x) -> bool:
    """A Python or numpy integer (not a bool)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_model_fits(model, prompt_tokens, prompt_mask, max_new_tokens) -> None:
    """Prompt ids inside the vocabulary on real tokens, and (learned positions) a position table long enough."""
    cfg = model.cfg
    ids, m = np.asarray(prompt_tokens), np.asarray(prompt_mask) != 0
    bad = ((ids < 0) | (ids >= cfg.vocab_size)) & m
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"prompt_tokens hold ids outside [0, {cfg.vocab_size}) on real prompt tokens: "
                         f"prompt_tokens{list(where)} = {int(ids[where])} ({int(bad.sum())} such tokens)")
    if cfg.positions == "learned":
        needed = ids.shape[1] + int(max_new_tokens)
        if needed > cfg.max_position_embeddings:
            raise ValueError(f"prompts of width {ids.shape[1]} plus max_new_tokens={int(max_new_tokens)} needs "
                             f"positions up to {needed}, but the model's learned position table has "
                             f"{cfg.max_position_embeddings}")


def _check_args(prompt_tokens, prompt_mask, max_new_tokens, temperature, top_k, top_p, num_samples):
    if prompt_tokens.ndim != 2 or prompt_mask.shape != prompt_tokens.shape:
        raise ValueError(f"prompt_tokens and prompt_mask must both have shape [B, P]; got {prompt_tokens.shape} "
                         f"and {prompt_mask.shape}")
    m = np.asarray(prompt_mask)
    if not m[:, -1].all() or (np.diff(m, axis=1) < 0).any():
        raise ValueError("prompts must be left-padded: each prompt_mask row is 0s then 1s ending in a 1 "
                         "(use sampling.left_pad)")
    if not (_is_int(max_new_tokens) and max_new_tokens > 0):
        raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy=True for argmax decoding); got {temperature}")
    if top_k is not None and not (_is_int(top_k) and top_k > 0):
        raise ValueError(f"top_k must be a positive int or None; got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
    if not (_is_int(num_samples) and num_samples > 0):
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")


def generate(model, prompt_tokens, prompt_mask, key, *, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
             eos_ids: Optional[Sequence[int]] = None, pad_id: int = 0, num_samples: int = 1) -> SampleOutput:
    r"""Sample continuations of left-padded prompts from a jax_irl ``Transformer``, with a KV cache.

    The prompts are prefilled once; then one token per step is decoded inside a ``lax.while_loop`` that stops when
    every row has ended (EOS) or ``max_new_tokens`` is reached. Compiles once per shape and option set; the same
    key gives the same output. Runs under the model's mesh when its params are sharded.

    Args:
        model: a ``models.transformer.Transformer``.
        prompt_tokens: ``[B, P]`` left-padded ids (``left_pad``).
        prompt_mask: ``[B, P]``, 1 on prompt tokens.
        key: a PRNG key.
        max_new_tokens: the response budget N, a positive int.
        temperature: > 0.
        top_k: optional top-k filter.
        top_p: optional nucleus filter in (0, 1].
        greedy: take the argmax (its sampling log-probs are 0).
        eos_ids: the ids that end a response; default the model config's.
        pad_id: written after a response's end.
        num_samples: continuations per prompt; rows b * num_samples + j.

    Returns:
        ``SampleOutput``: ``tokens``, ``log_probs`` (under the sampling distribution), ``model_log_probs`` (under
        the model at temperature 1, unfiltered) and ``mask`` (1 on generated tokens, EOS included), each
        ``[B * n, N]``, and ``lengths`` ``[B * n]``.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> from jax_irl import sampling
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> tokens, mask = sampling.left_pad([[1, 2, 3], [4]])
        >>> out = sampling.generate(Transformer(cfg, rngs=nnx.Rngs(0)), tokens, mask, jax.random.PRNGKey(0),
        ...                         max_new_tokens=5, num_samples=2)
        >>> out.tokens.shape, out.lengths.shape
        ((4, 5), (4,))
    """
    prompt_tokens, prompt_mask = jnp.asarray(prompt_tokens), jnp.asarray(prompt_mask)
    _check_args(prompt_tokens, prompt_mask, max_new_tokens, temperature, top_k, top_p, num_samples)
    _check_model_fits(model, prompt_tokens, prompt_mask, max_new_tokens)
    max_new_tokens, num_samples = int(max_new_tokens), int(num_samples)
    top_k = None if top_k is None else int(top_k)
    eos = tuple(model.cfg.eos_token_ids if eos_ids is None else eos_ids)
    graphdef, state = nnx.split(model)
    with parallel.mesh_context(state):
        return _generate(graphdef, state, prompt_tokens, prompt_mask, key, max_new=max_new_tokens,
                         temperature=float(temperature), top_k=top_k, top_p=top_p, greedy=bool(greedy), eos=eos,
                         pad_id=int(pad_id), n=num_samples)


def first_argmax(x: jax.Array) -> jax.Array:
    r"""The index of the first maximum over the last axis, as ``jnp.argmax``, by two plain reductions.

    A max, then a min over the indices that reach it: XLA:CPU vectorises these, while its argmax is a variadic
    reduce, five times slower on a ``[8, 8192]`` row of logits.

    Args:
        x: ``[..., V]``.

    Returns:
        ``[...]`` int32, equal to ``jnp.argmax(x, -1)`` (ties to the first index).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import sampling
        >>> sampling.first_argmax(jnp.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]))
        Array([1, 0], dtype=int32)
    """
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    top = jnp.max(x, -1, keepdims=True)
    return jnp.min(jnp.where(x == top, iota, x.shape[-1]), -1).astype(jnp.int32)


def _at(x: jax.Array, tok: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, tok[:, None], -1)[:, 0]


class _DecodeCarry(NamedTuple):
    """The decoding loop's state after ``step`` tokens have been picked; the last one is not yet in the cache."""

    step: jax.Array  # int32 []: tokens picked so far (>= 1)
    done: jax.Array  # bool [R]: the row has emitted EOS
    last: jax.Array  # int32 [R]: the token picked last, to be fed to the model next
    last_live: jax.Array  # bool [R]: that token is a real one (its row had not ended before it)
    cache: dict  # the KV cache
    positions: jax.Array  # int32 [R]: the position id of ``last``
    tokens: jax.Array  # int32 [R, max_new]
    log_probs: jax.Array  # float32 [R, max_new]: under the sampling distribution
    model_log_probs: jax.Array  # float32 [R, max_new]: under the model
    key: jax.Array


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "temperature", "top_k", "top_p", "greedy", "eos",
                                             "pad_id", "n"))
def _generate(graphdef, state, prompt_tokens, prompt_mask, key, *, max_new, temperature, top_k, top_p, greedy, eos,
              pad_id, n):
    model = nnx.merge(graphdef, state)
    tokens = jnp.repeat(prompt_tokens, n, axis=0)
    mask = jnp.repeat(prompt_mask, n, axis=0).astype(jnp.int32)
    rows, width = tokens.shape
    positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
    cache = model.init_cache(rows, width + max_new)
    # The prefill needs the logits of the last prompt position only: no [R, P, V] unembedding.
    out = model(tokens, attention_mask=mask, positions=positions, cache=cache, cache_index=0, compute_logits=False)
    first_logits = model.logits(out.hidden[:, -1])
    eos_arr = jnp.asarray(eos if eos else (-1,), jnp.int32)

    def pick(logits, step_key):
        # Log-probs of the picked token only, as logit - logsumexp: no [R, V] log_softmax per step.
        logits32 = logits.astype(jnp.float32)
        model_lse = jax.nn.logsumexp(logits32, -1)
        if greedy:
            tok = first_argmax(logits)
            return tok, jnp.zeros(tok.shape, jnp.float32), _at(logits32, tok) - model_lse
        filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        tok = jax.random.categorical(step_key, filtered, -1).astype(jnp.int32)
        return tok, _at(filtered, tok) - jax.nn.logsumexp(filtered, -1), _at(logits32, tok) - model_lse

    def record(c, logits, key, step, done):
        """Pick token ``step`` from ``logits`` and write it (pad_id and zero log-probs once a row has ended)."""
        key, step_key = jax.random.split(key)
        tok, lp, mlp = pick(logits, step_key)
        live = ~done
        tok = jnp.where(live, tok, pad_id)
        return dict(step=step + 1, done=done | jnp.isin(tok, eos_arr), last=tok, last_live=live,
                    tokens=c["tokens"].at[:, step].set(tok),
                    log_probs=c["log_probs"].at[:, step].set(jnp.where(live, lp, 0.0)),
                    model_log_probs=c["model_log_probs"].at[:, step].set(jnp.where(live, mlp, 0.0)), key=key)

    def cond(c: _DecodeCarry):
        return (c.step < max_new) & ~jnp.all(c.done)

    def body(c: _DecodeCarry) -> _DecodeCarry:
        # Feed the last picked token (slot width + step - 1), then pick the next one from its logits: the loop
        # carries a token, not a [R, V] row of logits, and the last token picked is never fed.
        res = model(c.last[:, None], attention_mask=c.last_live[:, None].astype(jnp.int32),
                    positions=c.positions[:, None], cache=c.cache, cache_index=width + c.step - 1)
        picked = record(c._asdict(), res.logits[:, -1], c.key, c.step, c.done)
        return _DecodeCarry(cache=res.cache, positions=c.positions + 1, **picked)

    empty = dict(tokens=jnp.full((rows, max_new), pad_id, jnp.int32), log_probs=jnp.zeros((rows, max_new), jnp.float32),
                 model_log_probs=jnp.zeros((rows, max_new), jnp.float32))
    first = record(empty, first_logits, key, jnp.int32(0), jnp.zeros(rows, bool))
    init = _DecodeCarry(cache=out.cache, positions=positions[:, -1] + 1, **first)
    final = jax.lax.while_loop(cond, body, init)
    is_eos = jnp.isin(final.tokens, eos_arr)
    # A token is generated if no EOS came strictly before it; rows stop at max_new regardless.
    eos_before = jnp.cumsum(is_eos, -1) - is_eos
    gen_mask = (eos_before == 0) & (jnp.arange(max_new)[None] < final.step)
    return parallel.replicate_under_mesh(SampleOutput(
        final.tokens, final.log_probs, final.model_log_probs, jnp.sum(gen_mask, -1).astype(jnp.int32),
        gen_mask.astype(jnp.int32)))


def best_of_n(rewards: jax.Array) -> jax.Array:
    r"""The index of the highest-reward candidate of each prompt.

    Its KL from pi0 is at most log n - (n - 1) / n (``best_of_n_kl``).

    Args:
        rewards: ``[B, n]`` rewards of n candidates per prompt.

    Returns:
        ``[B]`` indices in [0, n).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import sampling
        >>> sampling.best_of_n(jnp.array([[0.1, 0.9, 0.3], [2.0, 1.0, 0.0]]))
        Array([1, 0], dtype=int32)

    References:
        Nakano et al. 2021 (WebGPT); Stiennon et al. 2020.
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape [B, n]; got {rewards.shape}")
    return jnp.argmax(rewards, axis=-1)


def best_of_n_kl(n):
    r"""The usual analytic figure for KL(best-of-n || pi0): log n - (n - 1) / n.

    It is exact only when the n samples' rewards are distinct almost surely (a continuous reward); in general it
    is an upper bound on the true KL, loose when rewards tie or the response space is small
    (``reward_models.bon_kl`` measures it over a pool).

    Args:
        n: an int >= 1, or an array of them.

    Returns:
        A float, or an array of n's shape.

    Examples:
        >>> from jax_irl import sampling
        >>> sampling.best_of_n_kl(1), round(sampling.best_of_n_kl(4), 4)
        (0.0, 0.6363)

    References:
        Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy".
    """
    values = np.asarray(n, np.float64)
    if np.any(~(values >= 1)):
        raise ValueError(f"n must be >= 1; got {n}")
    kl = np.log(values) - (values - 1) / values
    return float(kl) if kl.ndim == 0 else kl


def rejection_sample(key: jax.Array, rewards: jax.Array, eta: float) -> jax.Array:
    r"""Statistical rejection sampling towards pi0 exp(r / eta): an accept mask over candidates drawn from pi0.

    Each candidate is accepted independently with probability exp((r_j - max_k r_k) / eta), so the best of each
    prompt is always accepted.

    Args:
        key: a PRNG key.
        rewards: ``[B, n]`` rewards of n candidates per prompt.
        eta: the KL strength, > 0.

    Returns:
        ``[B, n]`` bool accept mask.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jax_irl import sampling
        >>> sampling.rejection_sample(jax.random.PRNGKey(0), jnp.array([[0.0, -100.0, 1.0]]), eta=0.5)
        Array([[False, False,  True]], dtype=bool)

    References:
        Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization".
    """
    if rewards.ndim != 2:
        raise ValueError(f"rewards must have shape [B, n]; got {rewards.shape}")
    if not eta > 0:
        raise ValueError(f"eta must be > 0; got {eta}")
    r = rewards.astype(jnp.float32)
    accept_prob = jnp.exp((r - jnp.max(r, -1, keepdims=True)) / eta)
    return jax.random.uniform(key, r.shape) < accept_prob


def rejection_accept(key: jax.Array, rewards, eta: float) -> Tuple[np.ndarray, float]:
    r"""One step of statistical rejection sampling of candidates drawn from pi0 towards pi0 exp(r / eta) / Z.

    Each candidate is accepted with probability exp((r - max_k r_k) / eta), so the best of each prompt always
    survives. For a schedule use ``multi_step_rejection``: thinning the same candidates again with eta_1 > ... >
    eta_N accepts each with the product of the steps' probabilities, whose exponents telescope to exactly this one
    step.

    Args:
        key: a PRNG key.
        rewards: ``[B, n]`` rewards (array-like).
        eta: the KL strength, > 0.

    Returns:
        ``(accept, rate)``: the ``[B, n]`` numpy bool accept mask and the acceptance rate.

    Examples:
        >>> import jax
        >>> from jax_irl import sampling
        >>> accept, rate = sampling.rejection_accept(jax.random.PRNGKey(0), [[0.0, 0.0]], eta=1.0)
        >>> accept.tolist(), rate  # equal rewards: every candidate is the best
        ([[True, True]], 1.0)

    References:
        Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization".
    """
    if not eta > 0:
        raise ValueError(f"eta must be > 0; got {eta}")
    r = jnp.asarray(rewards, jnp.float32)
    if r.ndim != 2:
        raise ValueError(f"rewards must have shape [B, n]; got {r.shape}")
    accept = np.asarray(rejection_sample(key, r, float(eta)))
    return accept, float(accept.mean())


class MultiStepRejection(NamedTuple):
    index: np.ndarray  # [B, n] the last step's pool: indices into each prompt's C candidates from pi0
    accept: np.ndarray  # [B, n] bool: accepted by the last step (samples of pi0 exp(r / eta_N) / Z)
    rates: List[float]  # each step's acceptance rate: accepted / candidates entering it


def multi_step_rejection(key: jax.Array, rewards, etas: Sequence[float], pool: int, *,
                         bound=None) -> MultiStepRejection:
    r"""Multi-step rejection sampling pi0 -> pi0 e^{r/eta_1} -> ... -> pi0 e^{r/eta_N} over fresh candidates.

    With a decreasing schedule eta_1 > ... > eta_N (eta_0 = infinity), step k splits the samples of step k - 1
    into disjoint groups of ``pool`` and accepts each with probability

        exp((r - M) (1 / eta_k - 1 / eta_{k-1}))

    and, except at the last step, keeps one accepted sample per group chosen uniformly: a fresh sample of
    pi0 exp(r / eta_k) / Z made from candidates no other sample of step k has seen. M is ``bound`` (an upper bound
    of r: every step is then exact rejection sampling, and a group that accepts nothing leaves no sample) or, with
    ``bound=None``, the highest reward in each group (statistical rejection sampling: every group keeps its best,
    and the target is reached as ``pool`` grows). Each step accepts more than the single step to eta_N would; a
    schedule that re-thinned one pool would give exactly the one-step distribution.

    Args:
        key: a PRNG key.
        rewards: ``[B, C]`` rewards of C = pool ** N candidates drawn independently from pi0 per prompt
            (N = len(etas)); finite.
        etas: the decreasing schedule eta_1 > ... > eta_N, each > 0.
        pool: the group size, an int >= 1.
        bound: optional upper bound of the rewards, a scalar or ``[B]``.

    Returns:
        ``MultiStepRejection(index, accept, rates)``: the last step's pool as indices ``[B, pool]`` into each
        prompt's C candidates, its accept mask ``[B, pool]``, and each step's acceptance rate.

    Examples:
        >>> import jax, numpy as np
        >>> from jax_irl import sampling
        >>> rewards = np.random.default_rng(0).normal(size=(2, 16))
        >>> out = sampling.multi_step_rejection(jax.random.PRNGKey(0), rewards, etas=(3.0, 1.0), pool=4)
        >>> out.index.shape, out.accept.shape, len(out.rates)
        ((2, 4), (2, 4), 2)

    References:
        Xiong et al. 2023, "Gibbs Sampling from Human Feedback"; Liu et al. 2023, "Statistical Rejection Sampling
        Improves Preference Optimization".
    """
    etas = tuple(float(e) for e in etas)
    if not etas or any(not e > 0 for e in etas):
        raise ValueError(f"etas must be a non-empty sequence of values > 0; got {etas}")
    if any(b >= a for a, b in zip(etas, etas[1:])):
        raise ValueError(f"a multi-step schedule must decrease (eta_1 > ... > eta_N); got {etas}")
    if not (isinstance(pool, (int, np.integer)) and pool >= 1):
        raise ValueError(f"pool must be an int >= 1; got {pool!r}")
    r = np.asarray(rewards, np.float64)
    if r.ndim != 2 or r.shape[1] != pool ** len(etas):
        raise ValueError(f"rewards must have shape [B, pool ** steps] = [B, {pool ** len(etas)}] (pool {pool}, "
                         f"{len(etas)} steps); got {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite")
    batch = r.shape[0]
    if bound is not None:
        bound = np.broadcast_to(np.asarray(bound, np.float64).reshape(-1, 1), (batch, 1))
        if np.any(r > bound):
            raise ValueError("bound must be at least every candidate's reward (an upper bound of r)")
    index = np.broadcast_to(np.arange(r.shape[1]), r.shape).copy()
    valid = np.ones(r.shape, bool)
    rates, previous = [], 0.0
    for k, eta in enumerate(etas):
        groups = index.shape[1] // pool
        ri = np.take_along_axis(r, index, 1).reshape(batch, groups, pool)
        live = valid.reshape(batch, groups, pool)
        top = (np.max(np.where(live, ri, -np.inf), -1, keepdims=True) if bound is None
               else bound.reshape(batch, 1, 1))
        with np.errstate(invalid="ignore"):  # a group with no live sample: -inf - -inf, masked below
            prob = np.where(live, np.exp(np.minimum((ri - top) * (1.0 / eta - previous), 0.0)), 0.0)
        u = np.asarray(jax.random.uniform(jax.random.fold_in(key, 2 * k), ri.shape), np.float64)
        accept = live & (u < prob)
        rates.append(float(accept.sum() / max(live.sum(), 1)))
        previous = 1.0 / eta
        if k == len(etas) - 1:
            break
        tie = np.asarray(jax.random.uniform(jax.random.fold_in(key, 2 * k + 1), ri.shape), np.float64)
        pick = np.argmax(np.where(accept, tie, -1.0), -1)  # one accepted per group, uniformly
        index = np.take_along_axis(index.reshape(batch, groups, pool), pick[..., None], -1)[..., 0]
        valid = accept.any(-1)
    return MultiStepRejection(index.reshape(batch, pool), accept.reshape(batch, pool), rates)


def select_samples(output: SampleOutput, indices: jax.Array, num_samples: int) -> SampleOutput:
    r"""Pick one sample per prompt from ``generate``'s output.

    Args:
        output: a ``SampleOutput`` of B * num_samples rows.
        indices: ``[B]`` in [0, num_samples), the sample to keep per prompt.
        num_samples: n, the samples per prompt in ``output``.

    Returns:
        A ``SampleOutput`` of B rows.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import sampling
        >>> out = sampling.SampleOutput(*(jnp.arange(4)[:, None] for _ in range(5)))  # rows 0..3: 2 prompts x 2
        >>> sampling.select_samples(out, jnp.array([1, 0]), num_samples=2).tokens[:, 0]
        Array([1, 2], dtype=int32)
    """
    rows = jnp.arange(indices.shape[0]) * num_samples + indices
    return SampleOutput(*(x[rows] for x in output))


def best_of_n_samples(output: SampleOutput, score_fn, num_samples: int):
    r"""Score every sample and keep the best of each prompt.

    Args:
        output: a ``SampleOutput`` of B * num_samples rows.
        score_fn: ``score_fn(output) -> [B * n]`` scores.
        num_samples: n, the samples per prompt.

    Returns:
        ``(selected, scores)``: the selected ``SampleOutput`` with B rows, and the scores ``[B, n]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import sampling
        >>> out = sampling.SampleOutput(*(jnp.arange(4)[:, None] for _ in range(5)))
        >>> best, scores = sampling.best_of_n_samples(out, lambda o: -o.tokens[:, 0], num_samples=2)
        >>> best.tokens[:, 0], scores.shape
        (Array([0, 2], dtype=int32), (2, 2))
    """
    scores = jnp.asarray(score_fn(output)).reshape(-1, num_samples)
    return select_samples(output, best_of_n(scores), num_samples), scores
