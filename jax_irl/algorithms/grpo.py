"""Critic-free RL with verifiable rewards: GRPO, Dr. GRPO, DAPO, GSPO, RLOO and REINFORCE++ on the PPO floor.

One iteration on a policy pi_theta (a causal LM, no value head) with an optional frozen reference pi_ref:

1. Rollout: P prompts (a pure function of (seed, iteration)), G responses each from the KV-cache sampler.
   With dynamic sampling (DAPO), groups whose rewards are all equal are dropped and more prompts are drawn (up
   to ``max_refills`` times, each draw a pure function of (seed, iteration, attempt)); a batch still short of P
   informative groups is filled with dropped ones (advantage 0: no gradient), and the share is logged.
2. Rewards: a ``GroupRewardFn`` returns each response's outcome [N] and, optionally, per-token terms [N, R] from
   a verifier's certificate (``symbolic.group_reward_fn``: a penalty on the blamed tokens). Overlong responses
   (no EOS within ``max_new_tokens``) are either dropped from the loss ('filter') or, with DAPO's soft overlong
   punishment ('penalty'), lose up to ``overlong_penalty`` as their length enters the last ``overlong_buffer``
   tokens of the budget.
3. Scores, once per rollout: old log-probs from the scorer (``rollout.score_rows``; the same forward the train
   step runs) and reference log-probs when a KL term is used or a reference is given.
4. Advantages: the group statistic of each method (``losses.group_advantages``; REINFORCE++ whitens the
   return-to-go of the KL-shaped token reward over the batch instead) put on the response's tokens with the
   chosen credit (``losses.token_advantages``: 'sequence', or token-level 'add' / 'blame' from the certificate).
   The KL to the reference is either a loss term (k3, as GRPO) or subtracted from the reward (RLOO,
   REINFORCE++: ``kl_estimator`` summed over the response for the group methods, per token for REINFORCE++).
5. Update: ``epochs`` passes in ``minibatches`` shuffled minibatches of ``losses.group_policy_loss`` (the
   method's aggregation, ratio and clip range), minus ``entropy_coef`` times the entropy.

The method presets (``METHODS``) fill every setting left as None; any of them can be set by hand.

This module reuses ``ppo.PPORun`` for the rollouts' files, minibatch order and exact resume (a rollout is saved
to rollouts/<i>.npz before any update uses it; a run stopped inside an iteration reloads it) and ``stages.run_stage``
for the loop: no critic, no value head, and with kl_coef = 0 and no reference, no second model in memory.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_irl import losses, rollout, sampling, stages, train
from jax_irl.algorithms import ppo

# reward_fn(prompt texts [N], response ids [N, R], response mask [N, R]) ->
#   (outcomes [N], token terms [N, R] or None, per-row stats {name: [N]})
# A PPO reward function (two results: rewards [N] or [N, R], stats) is accepted too: [N, R] rewards are summed
# into the outcome.
GroupRewardFn = Callable[[Sequence[str], np.ndarray, np.ndarray], Tuple]
ADVANTAGES = losses.GROUP_ADVANTAGES + ("reinforce_pp",)
KL_PLACES = ("loss", "reward")
OVERLONG = ("none", "filter", "penalty")

METHODS: Dict[str, Dict] = {
    # Shao et al. 2024: std-normalised group advantage, per-response length normalisation, KL in the loss (0.04).
    "grpo": dict(advantage="grpo", aggregation="seq_mean_token_mean", ratio="token", clip_low=0.2, clip_high=0.2,
                 kl_coef=0.04, kl_in="loss", dynamic_sampling=False, overlong="none"),
    # Liu et al. 2025: no std, no length normalisation (a constant L = max_new_tokens), no KL.
    "dr_grpo": dict(advantage="dr_grpo", aggregation="seq_mean_token_sum_norm", ratio="token", clip_low=0.2,
                    clip_high=0.2, kl_coef=0.0, kl_in="loss", dynamic_sampling=False, overlong="none"),
    # Yu et al. 2025: clip-higher, token-mean, dynamic sampling, soft overlong punishment, no KL.
    "dapo": dict(advantage="grpo", aggregation="token_mean", ratio="token", clip_low=0.2, clip_high=0.28,
                 kl_coef=0.0, kl_in="loss", dynamic_sampling=True, overlong="penalty"),
    # Zheng et al. 2025: the sequence-level ratio, clipped per response in a narrow range, no KL.
    "gspo": dict(advantage="grpo", aggregation="seq_mean_token_mean", ratio="sequence", clip_low=3e-4,
                 clip_high=4e-4, kl_coef=0.0, kl_in="loss", dynamic_sampling=False, overlong="none"),
    # Ahmadian et al. 2024: leave-one-out baseline, KL in the reward.
    "rloo": dict(advantage="rloo", aggregation="seq_mean_token_mean", ratio="token", clip_low=0.2, clip_high=0.2,
                 kl_coef=0.05, kl_in="reward", dynamic_sampling=False, overlong="none"),
    # Hu 2025: batch-whitened return-to-go of the KL-shaped token reward, token-mean.
    "reinforce_pp": dict(advantage="reinforce_pp", aggregation="token_mean", ratio="token", clip_low=0.2,
                         clip_high=0.2, kl_coef=0.01, kl_in="reward", dynamic_sampling=False, overlong="none"),
}


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """A critic-free group method. ``method`` picks the preset (``METHODS``); every field left None takes the
    preset's value (``settings``)."""

    method: str = "grpo"
    iterations: int = 20
    prompts_per_rollout: int = 8
    group_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0  # of the sampler; the ratio uses the policy's own (temperature 1) log-probs
    epochs: int = 1
    minibatches: int = 1
    credit: str = "sequence"  # 'sequence' | 'add' | 'blame' (losses.token_advantages)
    entropy_coef: float = 0.0
    eps: float = 1e-6  # GRPO's std offset
    kl_estimator: str = "k1"  # of the KL in the reward (the loss term is k3)
    max_refills: int = 3  # dynamic sampling: extra prompt draws per iteration
    overlong_buffer: Optional[int] = None  # DAPO's L_cache; default max(1, max_new_tokens // 4)
    overlong_penalty: float = 1.0
    advantage: Optional[str] = None
    aggregation: Optional[str] = None
    ratio: Optional[str] = None
    clip_low: Optional[float] = None
    clip_high: Optional[float] = None
    kl_coef: Optional[float] = None
    kl_in: Optional[str] = None
    dynamic_sampling: Optional[bool] = None
    overlong: Optional[str] = None
    optimizer: train.OptimizerConfig = train.OptimizerConfig(learning_rate=1e-5)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"GRPOConfig.method must be one of {tuple(METHODS)}; got {self.method!r}")
        for name in ("iterations", "prompts_per_rollout", "max_new_tokens", "epochs", "minibatches"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"GRPOConfig.{name} must be an int >= 1; got {value!r}")
        if not (isinstance(self.group_size, int) and not isinstance(self.group_size, bool) and self.group_size >= 2):
            raise ValueError(f"GRPOConfig.group_size must be an int >= 2 (a group of one response has no baseline); "
                             f"got {self.group_size!r}")
        if not (isinstance(self.max_refills, int) and self.max_refills >= 0):
            raise ValueError(f"GRPOConfig.max_refills must be an int >= 0; got {self.max_refills!r}")
        s = self.settings
        for name, allowed in (("advantage", ADVANTAGES), ("aggregation", losses.GROUP_AGGREGATIONS),
                              ("ratio", losses.RATIOS), ("kl_in", KL_PLACES), ("overlong", OVERLONG),
                              ("credit", losses.CREDITS), ("kl_estimator", losses.KL_ESTIMATORS)):
            if s[name] not in allowed:
                raise ValueError(f"GRPOConfig.{name} must be one of {allowed}; got {s[name]!r}")
        for name in ("clip_low", "clip_high", "kl_coef", "entropy_coef", "overlong_penalty"):
            value = s[name]
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
                    and value >= 0):
                raise ValueError(f"GRPOConfig.{name} must be a finite number >= 0; got {value!r}")
        if s["clip_high"] < s["clip_low"]:
            raise ValueError(f"GRPOConfig.clip_high ({s['clip_high']:g}) must be >= clip_low ({s['clip_low']:g}): "
                             f"clip-higher widens the upper side of the clip range, never narrows it")
        if not (self.eps > 0 and np.isfinite(self.eps)):
            raise ValueError(f"GRPOConfig.eps must be > 0; got {self.eps!r}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"GRPOConfig.temperature must be > 0; got {self.temperature!r}")
        if not (isinstance(s["overlong_buffer"], int) and 1 <= s["overlong_buffer"] <= self.max_new_tokens):
            raise ValueError(f"GRPOConfig.overlong_buffer must be an int in [1, max_new_tokens={self.max_new_tokens}]"
                             f"; got {s['overlong_buffer']!r}")
        if s["advantage"] == "reinforce_pp" and s["credit"] == "blame":
            raise ValueError("GRPOConfig.credit='blame' needs a response-level advantage; REINFORCE++ has token "
                             "advantages (use credit='add': the terms join its token rewards)")
        if s["advantage"] == "reinforce_pp" and s["kl_in"] != "reward":
            raise ValueError("REINFORCE++ (advantage='reinforce_pp') takes the KL in the reward: set kl_in='reward'")
        if self.rows % self.minibatches:
            raise ValueError(f"a rollout's {self.rows} rows (prompts_per_rollout x group_size) do not split into "
                             f"{self.minibatches} equal minibatches")

    @property
    def settings(self) -> Dict:
        """Every setting with the method's presets filled in."""
        out = dict(METHODS[self.method])
        for name in out:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out.update(credit=self.credit, entropy_coef=self.entropy_coef, kl_estimator=self.kl_estimator,
                   overlong_penalty=self.overlong_penalty,
                   overlong_buffer=self.overlong_buffer if self.overlong_buffer is not None
                   else max(1, self.max_new_tokens // 4))
        return out

    # The interface ppo.PPORun reads.
    @property
    def rows(self) -> int:
        return self.prompts_per_rollout * self.group_size

    @property
    def samples_per_prompt(self) -> int:
        return self.group_size

    @property
    def steps_per_iteration(self) -> int:
        return self.epochs * self.minibatches

    @property
    def steps(self) -> int:
        return self.iterations * self.steps_per_iteration


def split_rewards(result, response_mask: np.ndarray):
    r"""A group reward function's result, checked and split into outcomes, token terms and stats.

    Args:
        result: ``(outcomes [N], token terms [N, R] or None, stats)``, or a PPO reward function's ``(rewards [N]
            or [N, R], stats)`` (``[N, R]`` rewards are summed into the outcome).
        response_mask: ``[N, R]`` 1 on each response's tokens.

    Returns:
        ``(outcomes [N] float64, terms [N, R] float64 (0 off the mask) or None, stats {name: [N] float64})``.

    Raises:
        ValueError: on a malformed result, wrong shapes, or non-finite outcomes or terms (the offending rows
            named; nothing is trained on them).

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import grpo
        >>> mask = np.array([[1, 1, 0], [1, 0, 0]])
        >>> outcomes, terms, stats = grpo.split_rewards((np.ones((2, 3)), {"solved": [1, 0]}), mask)
        >>> outcomes.tolist(), terms, stats["solved"].tolist()   # token rewards summed on the responses
        ([2.0, 1.0], None, [1.0, 0.0])
        >>> grpo.split_rewards((np.array([1.0, np.nan]), {}), mask)
        Traceback (most recent call last):
        ...
        ValueError: the reward function returned non-finite outcomes for 1 of 2 responses (rows [1]: [nan]);
        nothing was trained on them
    """
    response_mask = np.asarray(response_mask)
    n = response_mask.shape[0]
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise ValueError("a group reward function returns (outcomes [N], token terms [N, R] or None, stats) or "
                         f"(rewards [N] or [N, R], stats); got {type(result).__name__}")
    if len(result) == 2:
        rewards, stats = result
        terms = None
        rewards = np.asarray(rewards, np.float64)
        if rewards.ndim == 2:
            if rewards.shape != response_mask.shape:
                raise ValueError(f"token rewards must be [N, R] = {response_mask.shape} like the responses; got "
                                 f"{rewards.shape}")
            rewards = np.where(response_mask > 0, rewards, 0.0).sum(-1)
    else:
        rewards, terms, stats = result
        rewards = np.asarray(rewards, np.float64)
    if rewards.shape != (n,):
        raise ValueError(f"the reward function must return one outcome per response [N] = ({n},); got shape "
                         f"{rewards.shape}")
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        raise ValueError(f"the reward function returned non-finite outcomes for {bad.size} of {n} responses (rows "
                         f"{bad[:8].tolist()}{' ...' if bad.size > 8 else ''}: {rewards[bad[:3]].tolist()}); "
                         f"nothing was trained on them")
    if terms is not None:
        terms = np.asarray(terms, np.float64)
        if terms.shape != response_mask.shape:
            raise ValueError(f"token terms must be [N, R] = {response_mask.shape} like the responses; got "
                             f"{terms.shape}")
        bad = np.flatnonzero(~np.all(np.isfinite(np.where(response_mask > 0, terms, 0.0)), axis=1))
        if bad.size:
            raise ValueError(f"the reward function returned non-finite token terms in rows {bad[:8].tolist()}")
        terms = np.where(response_mask > 0, terms, 0.0)
    stats = dict(stats or {})
    for name, values in stats.items():
        values = np.asarray(values, np.float64)
        if values.shape != (n,):
            raise ValueError(f"the reward function's stat {name!r} must be one number per response [N]; got shape "
                             f"{values.shape}")
        stats[name] = values
    return rewards, terms, stats


def overlong(response: np.ndarray, response_mask: np.ndarray, eos_id: int, max_new_tokens: int,
             buffer: int) -> Tuple[np.ndarray, np.ndarray]:
    r"""DAPO's overlong handling (Yu et al. 2025): which responses ran out of room, and the soft overlong punishment

    $$
    p(L) = \mathrm{clip}\Big(\frac{(L_{\max} - L_{\mathrm{cache}}) - L}{L_{\mathrm{cache}}}, -1, 0\Big),
    $$

    0 up to max_new_tokens - buffer tokens, then falling linearly to -1 at max_new_tokens.

    Args:
        response: ``[N, R]`` response ids.
        response_mask: ``[N, R]`` 1 on each response's tokens.
        eos_id: the end-of-sequence id.
        max_new_tokens: L_max, the response budget.
        buffer: L_cache, the tokens over which the penalty grows.

    Returns:
        ``(truncated [N] bool: no EOS among the response's tokens, penalty [N] in [-1, 0])``.

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import grpo
        >>> truncated, penalty = grpo.overlong(np.array([[5, 1, 0, 0], [5, 5, 5, 5]]),
        ...                                    np.array([[1, 1, 0, 0], [1, 1, 1, 1]]), eos_id=1, max_new_tokens=4,
        ...                                    buffer=2)
        >>> truncated.tolist(), penalty.tolist()
        ([False, True], [0.0, -1.0])

    References:
        Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", 2025.
    """
    lengths = (np.asarray(response_mask) > 0).sum(-1)
    truncated = ~np.any((np.asarray(response) == eos_id) & (np.asarray(response_mask) > 0), axis=-1)
    start = max_new_tokens - buffer
    penalty = np.clip((start - lengths) / buffer, -1.0, 0.0)
    return truncated, penalty


def make_group_rollout(model, reference, cfg: GRPOConfig, draw_prompts: Callable[[int], rollout.Prompts],
                       reward_fn: GroupRewardFn, key, *, eos_id: int, pad_id: int,
                       vocab_chunk: Optional[int] = None, rows_per_score: Optional[int] = None) -> ppo.Rollout:
    r"""One rollout of a group method, steps 1-4 of the module docstring: G responses per prompt (with DAPO's dynamic
    sampling, degenerate groups dropped and refilled), rewards and overlong handling, one scoring pass for the old
    (and reference) log-probs, and the method's advantages on the response tokens.

    Args:
        model: the policy (a causal LM).
        reference: the frozen reference causal LM, or None (then the KL coefficient must be 0).
        cfg: the ``GRPOConfig`` (its ``settings``: advantage, credit, KL placement, overlong, dynamic sampling).
        draw_prompts: ``draw_prompts(attempt) -> rollout.Prompts``, the P prompts of each draw (attempt 0, then
            refills).
        reward_fn: ``reward_fn(prompt texts [N], response ids [N, R], response mask [N, R])`` returning
            ``(outcomes [N], token terms [N, R] or None, stats)`` or a PPO reward function's two results
            (``split_rewards``).
        key: the sampler's PRNG key (folded with the attempt).
        eos_id: the end-of-sequence id.
        pad_id: the padding id.
        vocab_chunk: the scoring passes' vocabulary chunk.
        rows_per_score: rows per scoring call.

    Returns:
        A ``ppo.Rollout``: rows (tokens, attention, mask, old_log_probs, advantages, reward, kl, ref_log_probs with
        a reference) and stats (reward, reward_std_in_group, degenerate_share, truncated_share, response_length,
        the KL estimates, sampler_logprob_gap_max / _mean, the reward function's stats, and their means over every
        response drawn).

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout, sampling
        >>> from jax_irl.algorithms import grpo
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> policy = Transformer(presets.preset("tiny", vocab_size=8), rngs=nnx.Rngs(0))
        >>> prompts = rollout.Prompts(np.array([[2, 3], [4, 5]]), np.ones((2, 2), np.int32), ["p", "q"])
        >>> reward_fn = lambda texts, response, mask: ((response[:, 0] == 3).astype(float), {})  # token 3 first
        >>> cfg = grpo.GRPOConfig("grpo", iterations=2, prompts_per_rollout=2, group_size=4, max_new_tokens=3)
        >>> out = grpo.make_group_rollout(policy, policy, cfg, lambda attempt: prompts, reward_fn,
        ...                               jax.random.PRNGKey(0), eos_id=7, pad_id=0)
        >>> out.rows["advantages"].shape, out.stats["sampler_logprob_gap_max"] < 1e-4
        ((8, 4), True)
    """
    s = cfg.settings
    p_count, g = cfg.prompts_per_rollout, cfg.group_size
    start = time.perf_counter()
    kept, spare, attempts, first_degenerate = [], [], 0, None
    reward_seconds = 0.0
    for attempt in range(1 + (cfg.max_refills if s["dynamic_sampling"] else 0)):
        attempts += 1
        prompts = draw_prompts(attempt)
        rows = rollout.sample_rows(model, np.asarray(prompts.tokens), np.asarray(prompts.mask),
                                   jax.random.fold_in(key, attempt), max_new_tokens=cfg.max_new_tokens, eos_id=eos_id,
                                   pad_id=pad_id, temperature=cfg.temperature, num_samples=g)
        texts = [t for t in prompts.texts for _ in range(g)]
        t0 = time.perf_counter()
        outcomes, terms, stats = split_rewards(reward_fn(texts, rows["response"], rows["response_mask"]),
                                               rows["response_mask"])
        reward_seconds += time.perf_counter() - t0
        truncated, soft = overlong(rows["response"], rows["response_mask"], eos_id, cfg.max_new_tokens,
                                   s["overlong_buffer"])
        shaped = outcomes + (s["overlong_penalty"] * soft if s["overlong"] == "penalty" else 0.0)
        degenerate = np.asarray(losses.degenerate_groups(jnp.asarray(shaped.reshape(p_count, g))))
        if first_degenerate is None:
            first_degenerate = float(degenerate.mean())
        for q in range(p_count):
            part = slice(q * g, (q + 1) * g)
            group = dict(rows={k: v[part] for k, v in rows.items() if k != "prompt_index"}, outcome=outcomes[part],
                         shaped=shaped[part], terms=None if terms is None else terms[part], truncated=truncated[part],
                         soft=soft[part],
                         stats={k: v[part] for k, v in stats.items()})
            (spare if (s["dynamic_sampling"] and degenerate[q]) else kept).append(group)
        if len(kept) >= p_count:
            break
    filled = max(0, p_count - len(kept))
    groups = (kept + spare)[:p_count]
    sampled = time.perf_counter()
    cat = lambda get: np.concatenate([get(x) for x in groups])  # noqa: E731
    rows = {k: cat(lambda x, k=k: x["rows"][k]) for k in groups[0]["rows"]}
    outcome, shaped, truncated = cat(lambda x: x["outcome"]), cat(lambda x: x["shaped"]), cat(lambda x: x["truncated"])
    penalised = cat(lambda x: x["soft"]) * (s["overlong_penalty"] if s["overlong"] == "penalty" else 0.0)
    terms = None if groups[0]["terms"] is None else cat(lambda x: x["terms"])
    stats = {k: cat(lambda x, k=k: x["stats"][k]) for k in groups[0]["stats"]}

    width = np.asarray(draw_prompts(0).tokens).shape[1]

    def on_grid(x):  # response-aligned [N, R] -> the target grid [N, T-1]
        grid = np.zeros(rows["mask"].shape, np.float32)
        grid[:, width - 1:] = x
        return grid

    mask = rows["mask"].copy()
    if s["overlong"] == "filter":
        mask[truncated] = 0.0
    scored = {"tokens": rows["tokens"], "attention": rows["attention"], "mask": rows["mask"]}
    own = rollout.score_rows(model, rollout.LMScores(("log_probs",), vocab_chunk=vocab_chunk), scored,
                             rows_per_batch=rows_per_score)["log_probs"]
    ref = None
    if reference is not None:
        ref = rollout.score_rows(reference, rollout.LMScores(("log_probs",), vocab_chunk=vocab_chunk), scored,
                                 rows_per_batch=rows_per_score)["log_probs"]
    elif s["kl_coef"] > 0:
        raise ValueError(f"kl_coef = {s['kl_coef']:g} needs a reference model (pass reference=, or set kl_coef=0)")
    m = rows["mask"]
    d = (np.asarray(own) - ref) * m if ref is not None else np.zeros_like(m)
    seq_kl = {"k1": d.sum(-1), "k2": (0.5 * d ** 2 * m).sum(-1), "k3": ((np.expm1(-d) + d) * m).sum(-1)}
    reward = shaped.copy()
    if s["advantage"] == "reinforce_pp":
        placed = np.asarray(losses.place_sequence_reward(jnp.asarray(shaped, jnp.float32), jnp.asarray(m)))
        if terms is not None and s["credit"] == "add":
            placed = placed + on_grid(terms)
        advantages = np.asarray(losses.reinforce_pp_advantages(
            jnp.asarray(placed), jnp.asarray(own), jnp.asarray(ref if ref is not None else own), jnp.asarray(mask),
            kl_coef=s["kl_coef"], estimator=s["kl_estimator"]))
        group_std = float(shaped.reshape(p_count, g).std(1, ddof=1).mean())
    else:
        if s["kl_in"] == "reward" and s["kl_coef"] > 0:
            reward = shaped - s["kl_coef"] * seq_kl[s["kl_estimator"]]
        grouped = jnp.asarray(reward.reshape(p_count, g), jnp.float32)
        adv = np.asarray(losses.group_advantages(grouped, s["advantage"], eps=cfg.eps)).reshape(-1)
        if s["credit"] != "sequence" and terms is None:
            raise ValueError(f"credit={s['credit']!r} needs token terms from the reward function (outcomes, terms, "
                             f"stats), e.g. symbolic.group_reward_fn; this one returned none")
        grid_terms = None if terms is None else jnp.asarray(on_grid(terms))
        advantages = np.asarray(losses.token_advantages(jnp.asarray(adv, jnp.float32), jnp.asarray(mask), grid_terms,
                                                        credit=s["credit"]))
        group_std = float(np.asarray(grouped).std(1, ddof=1).mean())
    done = time.perf_counter()
    batch = dict(tokens=rows["tokens"], attention=rows["attention"], mask=mask.astype(np.float32),
                 old_log_probs=np.asarray(own, np.float32), advantages=advantages.astype(np.float32),
                 reward=outcome.astype(np.float32), kl=seq_kl["k1"].astype(np.float32))
    if ref is not None:
        batch["ref_log_probs"] = np.asarray(ref, np.float32)
    gap = np.abs(rows["model_log_probs"] - np.asarray(own))[m > 0]
    lengths = rows["response_mask"].sum(-1)
    out = {"reward": float(outcome.mean()), "reward_std_in_group": group_std,
           "degenerate_share": first_degenerate, "degenerate_filled": filled / p_count, "draws": attempts,
           "truncated_share": float(truncated.mean()), "response_length": float(lengths.mean()),
           "overlong_penalised_share": float((penalised < 0).mean()), "overlong_penalty_mean": float(penalised.mean()),
           "kl": float(seq_kl["k1"].mean()), "kl_k2": float(seq_kl["k2"].mean()), "kl_k3": float(seq_kl["k3"].mean()),
           "kl_seq_k2": float((0.5 * seq_kl["k1"] ** 2).mean()),
           "sampler_logprob_gap_max": float(gap.max()) if gap.size else 0.0,
           "sampler_logprob_gap_mean": float(gap.mean()) if gap.size else 0.0,
           "rollout_tokens_per_s": float(lengths.sum() / max(sampled - start - reward_seconds, 1e-9)),
           "reward_seconds": reward_seconds, "score_seconds": float(done - sampled)}
    for name, values in stats.items():
        out[name] = float(values.mean())
    # Over every response drawn, dropped groups included: with dynamic sampling the kept groups are selected for
    # unequal rewards, so their means above are biased (towards 0.5 for a 0/1 outcome).
    drawn = kept + spare
    out["reward_drawn"] = float(np.concatenate([x["outcome"] for x in drawn]).mean())
    for name in stats:
        out[f"{name}_drawn"] = float(np.concatenate([x["stats"][name] for x in drawn]).mean())
    return ppo.Rollout(batch, out)


def grpo_loss_fn(cfg: GRPOConfig, vocab_chunk: Optional[int] = None, window: Optional[int] = None):
    r"""The group methods' update loss: ``losses.group_policy_loss`` with the method's ratio (per token, or GSPO's
    per sequence), clip range (DAPO's clip-higher), aggregation (sequence-mean, token-mean, or Dr. GRPO's constant
    normaliser) and, for GRPO, the k3 KL to the reference as a loss term; minus entropy_coef times the entropy.

    Args:
        cfg: the ``GRPOConfig``.
        vocab_chunk: the unembedding's vocabulary chunk, or None for full logits.
        window: the responses' span (``rollout.useful_window`` of max_new_tokens): the unembedding and the loss on
            that span only.

    Returns:
        ``loss_fn(model, batch, rng) -> (loss, aux)`` for ``train.Trainer`` on ``make_group_rollout``'s rows. aux:
        policy_loss, kl, clip fractions (low / high), approx_kl, ratio_mean, entropy (when the logits are at
        hand), and the minibatch's mean reward and rollout KL.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout, sampling
        >>> from jax_irl.algorithms import grpo
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> policy = Transformer(presets.preset("tiny", vocab_size=8), rngs=nnx.Rngs(0))
        >>> prompts = rollout.Prompts(np.array([[2, 3], [4, 5]]), np.ones((2, 2), np.int32), ["p", "q"])
        >>> reward_fn = lambda texts, response, mask: ((response[:, 0] == 3).astype(float), {})  # token 3 first
        >>> cfg = grpo.GRPOConfig("grpo", iterations=2, prompts_per_rollout=2, group_size=4, max_new_tokens=3)
        >>> rows = grpo.make_group_rollout(policy, policy, cfg, lambda attempt: prompts, reward_fn,
        ...                                jax.random.PRNGKey(0), eos_id=7, pad_id=0).rows
        >>> loss, aux = grpo.grpo_loss_fn(cfg)(policy, rows, None)
        >>> abs(float(aux["ratio_mean"]) - 1) < 1e-5, abs(float(aux["kl"])) < 1e-6   # the rollout's own policy
        (True, True)

    References:
        Shao et al., "DeepSeekMath" (GRPO), 2024. Liu et al., "Understanding R1-Zero-Like Training" (Dr. GRPO),
        2025. Yu et al., "DAPO", 2025. Zheng et al., "Group Sequence Policy Optimization", 2025.
    """
    s = cfg.settings
    need_logits = s["entropy_coef"] > 0 or not vocab_chunk
    kl_in_loss = s["kl_in"] == "loss" and s["kl_coef"] > 0

    def loss_fn(model, batch, rng):
        del rng
        out = rollout.causal_lm(model, batch["tokens"], batch["attention"], vocab_chunk=vocab_chunk,
                                need_logits=need_logits, mask=batch["mask"], window=window)
        mask = out.mask

        def on_window(x):
            return x if out.start is None else rollout.take_window(x, out.start, mask.shape[1])

        ref = on_window(batch["ref_log_probs"]) if "ref_log_probs" in batch else None
        loss, aux = losses.group_policy_loss(
            out.target_q - out.values, on_window(batch["old_log_probs"]), on_window(batch["advantages"]), mask,
            clip_low=s["clip_low"], clip_high=s["clip_high"], aggregation=s["aggregation"], ratio=s["ratio"],
            max_tokens=cfg.max_new_tokens, ref_logp=ref, kl_coef=s["kl_coef"] if kl_in_loss else 0.0)
        aux = {k: v for k, v in aux.items() if k != "losses"}
        aux.update(reward=jnp.mean(batch["reward"]), rollout_kl=jnp.mean(batch["kl"]))
        if out.logits is not None:
            logits = out.logits if s["entropy_coef"] > 0 else jax.lax.stop_gradient(out.logits)
            entropy = losses.masked_mean(losses.token_entropies(logits), mask)
            aux["entropy"] = entropy
            if s["entropy_coef"] > 0:
                loss = loss - s["entropy_coef"] * entropy
        return loss, aux

    return loss_fn


class GroupRun(ppo.PPORun):
    """The batches of a group-method run: ``ppo.PPORun``'s files, minibatches and resume, with the group rollout."""

    def draw(self, i: int, model) -> ppo.Rollout:
        p_count, total = self.cfg.prompts_per_rollout, len(self.prompts.tokens)

        def draw_prompts(attempt: int) -> rollout.Prompts:
            if attempt == 0:
                return self.prompts_of(self.sampler.indices(i))
            order = np.random.default_rng([self.seed, i, attempt]).permutation(total)[:p_count]
            return self.prompts_of(order)

        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), i)
        return make_group_rollout(model, self.reference, self.cfg, draw_prompts, self.reward_fn, key,
                                  eos_id=self.eos_id, pad_id=self.pad_id, vocab_chunk=self.vocab_chunk,
                                  rows_per_score=self.rows_per_score)


def train_grpo(run: stages.Run, model, reference, cfg: GRPOConfig, prompts: rollout.Prompts,
               reward_fn: GroupRewardFn, tokens: sampling.SamplingSpec, *,
               hooks: Sequence[train.Every] = ()) -> Tuple[stages.StageResult, list]:
    r"""A critic-free group method (GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++) on a causal LM for
    ``cfg.iterations`` iterations as one resumable stage in ``run.folder``.

    The run writes checkpoints/, metrics.jsonl (every optimizer step: loss, policy_loss, kl, clip_fraction_low /
    _high, approx_kl, ratio_mean, entropy, reward) and rollouts/ (per iteration: the stats of
    ``make_group_rollout``). It resumes exactly, as PPO does (``ppo``'s module docstring): no critic, no value head,
    and with kl_coef 0 and no reference, no second model in memory.

    Args:
        run: the run (folder, mesh, settings, seed of the rollouts); its fingerprint gains ``cfg`` and its settings
            under 'grpo'.
        model: the policy to train.
        reference: the frozen reference causal LM, or None when the KL coefficient is 0.
        cfg: the ``GRPOConfig``.
        prompts: the training ``rollout.Prompts``.
        reward_fn: the group reward function (``make_group_rollout``).
        tokens: the ``sampling.SamplingSpec`` (eos and pad ids).
        hooks: ``train.Every`` hooks on the optimizer steps' schedule.

    Returns:
        ``(StageResult, stats)``: the trained model, state and trainer, and per-iteration rollout stats.

    Raises:
        ValueError: when the method's KL coefficient is > 0 and no reference is given.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout, sampling
        >>> from jax_irl.algorithms import grpo
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> policy = Transformer(presets.preset("tiny", vocab_size=8), rngs=nnx.Rngs(0))
        >>> prompts = rollout.Prompts(np.array([[2, 3], [4, 5]]), np.ones((2, 2), np.int32), ["p", "q"])
        >>> reward_fn = lambda texts, response, mask: ((response[:, 0] == 3).astype(float), {})  # token 3 first
        >>> cfg = grpo.GRPOConfig("grpo", iterations=2, prompts_per_rollout=2, group_size=4, max_new_tokens=3)
        >>> import tempfile
        >>> from jax_irl import parallel, stages
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> run = stages.Run(tempfile.mkdtemp(), mesh, progress=False)
        >>> result, stats = grpo.train_grpo(run, policy, policy, cfg, prompts, reward_fn, sampling.SamplingSpec(7, 0))
        >>> len(stats), int(result.state.step), {"reward", "degenerate_share", "kl"} <= set(stats[0])
        (2, 2, True)
    """
    stage = stages.StageConfig(steps=cfg.steps, batch_size=cfg.rows // cfg.minibatches, optimizer=cfg.optimizer)
    batches = GroupRun(run, reference, cfg, prompts, reward_fn, tokens)
    if cfg.settings["kl_coef"] > 0 and reference is None:
        raise ValueError(f"GRPOConfig(method={cfg.method!r}) has kl_coef = {cfg.settings['kl_coef']:g}: pass a "
                         f"reference model, or set kl_coef=0")
    window = rollout.useful_window(cfg.max_new_tokens, prompts.tokens.shape[1] + cfg.max_new_tokens - 1)
    config = dict(dataclasses.asdict(cfg), settings=cfg.settings)
    result = run.sub(depends={"grpo": config}).stage(model, grpo_loss_fn(cfg, run.settings.vocab_chunk, window), stage,
                                        train.ModelBatches(batches.batch_fn), hooks=hooks)
    return result, batches.all_stats()
