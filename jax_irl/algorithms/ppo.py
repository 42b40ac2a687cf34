"""PPO for language models with per-token rewards (Schulman et al. 2017; Ziegler et al. 2019 for the KL-shaped
reward and its adaptive coefficient; Jha et al. 2024, RLSF, for token-level rewards from symbolic tools).

One PPO iteration on a policy pi_theta with value function V_phi and a frozen reference pi_ref:

1. Rollout: B prompts (a pure function of (seed, iteration)), n responses each from the KV-cache sampler.
2. Rewards: any ``RewardFn`` returns either per-token rewards r [N, R] on the response tokens (symbolic
   certificates, RLSF) or one scalar per response [N], which is placed on its last token
   (``losses.place_sequence_reward``), so the scalar case is the special case of one code path.
3. Scores, computed once per rollout outside the train step: old log-probs log pi_old(a_t|s_t) and old values
   V_old(s_t) from the acting model, and reference log-probs log pi_ref(a_t|s_t) (no second model in the step).
4. KL-shaped rewards  r~_t = r_t - beta KL_t  with KL_t = k1 | k2 | k3 of (log pi_old - log pi_ref)
   (``losses.kl_shaped_rewards``); GAE(gamma, lambda) over the response tokens (``losses.gae``) gives
   advantages A_t and returns R_t = A_t + V_old(s_t); advantages are whitened over the rollout's tokens.
5. Update: ``epochs`` passes over the rollout in ``minibatches`` shuffled minibatches, each one optimizer step of
       L = L_clip(theta) + c_v L_V(phi) - c_H H(pi_theta)
   with L_clip = ``losses.ppo_policy_loss`` (ratio pi_theta / pi_old clipped to 1 +- eps) and L_V =
   ``losses.ppo_value_loss`` (values clipped around V_old).
6. Adaptive KL (Ziegler et al.): with a target KL per response, after each rollout
       beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * N / horizon).

Critic (``PPOConfig.critic``): 'shared' puts a value head on the policy's final hidden states (the value loss
trains the backbone too); 'detached' does the same on stop_gradient(hidden), so no value gradient reaches the
policy; 'separate' is a critic backbone of its own (initialised as a copy of the policy), with its own head.

Exact resume: every optimizer step is one position of ``train.fit`` (position p: iteration p // (epochs *
minibatches)); a rollout is drawn when its iteration starts and saved to ``rollouts/<i>.npz`` before any
update uses it, so a run stopped inside an iteration reloads the same rollout, the same minibatch order (a
function of (seed, iteration, epoch)) and the same adaptive coefficient, and ends with the same params.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_irl import losses, rollout, sampling, stages, train
from jax_irl.losses._common import masked_whiten
from jax_irl.models.heads import ValueHead

# reward_fn(prompt texts [N], response ids [N, R], response mask [N, R]) ->
#   (rewards: [N, R] per token or [N] per response, per-row stats: a dict of [N] arrays, e.g. {"solved": ...})
RewardFn = Callable[[Sequence[str], np.ndarray, np.ndarray], Tuple[np.ndarray, Dict[str, np.ndarray]]]
CRITICS = ("shared", "detached", "separate")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    iterations: int = 20
    prompts_per_rollout: int = 16
    samples_per_prompt: int = 4
    max_new_tokens: int = 32
    temperature: float = 1.0  # of the sampler; the ratio uses the policy's own (temperature 1) log-probs
    epochs: int = 2
    minibatches: int = 2
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.5
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    kl_target: Optional[float] = None  # adaptive coefficient: the target KL per response (None: fixed)
    kl_horizon: int = 10_000
    whiten_advantages: bool = True
    critic: str = "shared"
    optimizer: train.OptimizerConfig = train.OptimizerConfig(learning_rate=1e-5)

    def __post_init__(self):
        for name in ("iterations", "prompts_per_rollout", "samples_per_prompt", "max_new_tokens", "epochs",
                     "minibatches", "kl_horizon"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"PPOConfig.{name} must be an int >= 1; got {value!r}")
        for name, low, high in (("clip_eps", 0.0, None), ("value_clip_eps", 0.0, None), ("vf_coef", 0.0, None),
                                ("entropy_coef", 0.0, None), ("gamma", 0.0, 1.0), ("lam", 0.0, 1.0),
                                ("kl_coef", 0.0, None)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= low
                    and (high is None or value <= high)):
                raise ValueError(f"PPOConfig.{name} must be a finite number in [{low}, {high or 'inf'}]; "
                                 f"got {value!r}")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"PPOConfig.temperature must be > 0; got {self.temperature!r}")
        if self.kl_estimator not in losses.KL_ESTIMATORS:
            raise ValueError(f"PPOConfig.kl_estimator must be one of {losses.KL_ESTIMATORS}; got {self.kl_estimator!r}")
        if self.kl_target is not None and not self.kl_target > 0:
            raise ValueError(f"PPOConfig.kl_target must be None (fixed coefficient) or > 0; got {self.kl_target!r}")
        if self.critic not in CRITICS:
            raise ValueError(f"PPOConfig.critic must be one of {CRITICS}; got {self.critic!r}")
        rows = self.prompts_per_rollout * self.samples_per_prompt
        if rows % self.minibatches:
            raise ValueError(f"a rollout's {rows} rows (prompts_per_rollout x samples_per_prompt) do not split into "
                             f"{self.minibatches} equal minibatches")

    @property
    def rows(self) -> int:
        return self.prompts_per_rollout * self.samples_per_prompt

    @property
    def steps_per_iteration(self) -> int:
        return self.epochs * self.minibatches

    @property
    def steps(self) -> int:
        return self.iterations * self.steps_per_iteration


class ActorCritic(nnx.Module):
    """A causal-LM policy with a value function: a head on the policy's hidden states ('shared', 'detached') or
    on a critic backbone of its own ('separate'). ``values(tokens, attention, hidden, start)`` -> V(s_t) at
    tokens[:, t] on the positions of the policy's hidden states: [N, T-1] on the target grid, or [N, W] on a
    ``causal_lm`` window (its ``out.start``)."""

    def __init__(self, policy, critic: str = "shared", *, rngs: nnx.Rngs):
        if critic not in CRITICS:
            raise ValueError(f"critic must be one of {CRITICS}; got {critic!r}")
        self.policy = policy
        self.critic_kind = critic
        self.critic = nnx.clone(policy) if critic == "separate" else None
        self.value_head = ValueHead(policy.cfg.hidden_size, rngs=rngs)

    def values(self, tokens: jax.Array, attention: Optional[jax.Array], hidden: jax.Array,
               start: Optional[jax.Array] = None) -> jax.Array:
        if self.critic is not None:
            mask = None if attention is None else attention[:, :-1]
            window = None if start is None else (start, hidden.shape[1])
            hidden = self.critic(tokens[:, :-1], attention_mask=mask, compute_logits=False, window=window).hidden
        elif self.critic_kind == "detached":
            hidden = jax.lax.stop_gradient(hidden)
        return self.value_head(hidden)


@dataclasses.dataclass(frozen=True)
class ActorCriticScores:
    """Scorer (for ``rollout.score_rows``) of an ActorCritic's log-probs and values per token, 0 off the mask."""

    vocab_chunk: Optional[int] = None

    def __call__(self, model: ActorCritic, batch):
        out = rollout.causal_lm(model.policy, batch["tokens"], batch.get("attention"), vocab_chunk=self.vocab_chunk)
        on = batch["mask"] != 0
        values = model.values(batch["tokens"], batch.get("attention"), out.hidden)
        return {"log_probs": jnp.where(on, out.target_q - out.values, 0.0), "values": jnp.where(on, values, 0.0)}


def ppo_loss_fn(cfg: PPOConfig, vocab_chunk: Optional[int] = None, window: Optional[int] = None):
    r"""PPO's update loss on a rollout's rows (Schulman et al. 2017):

    $$
    L = L^{\mathrm{clip}}(\theta) + c_v L^V(\phi) - c_H \bar{H}(\pi_\theta),
    $$

    with the clipped policy loss ``losses.ppo_policy_loss`` (the ratio pi_theta / pi_old clipped to 1 +- eps)
    and the clipped value loss ``losses.ppo_value_loss`` (values clipped around V_old).

    Args:
        cfg: the ``PPOConfig`` (clip_eps, value_clip_eps, vf_coef, entropy_coef).
        vocab_chunk: the unembedding's vocabulary chunk, or None for full logits (the entropy needs them).
        window: the responses' span (``train_ppo`` passes ``rollout.useful_window`` of max_new_tokens): the
            unembedding, the policy and value losses on that span only; the losses are unchanged up to float
            rounding.

    Returns:
        ``loss_fn(model, batch, rng) -> (loss, aux)`` for ``train.Trainer`` on an ``ActorCritic``. The batch holds
        the rollout rows (tokens, attention, mask) and, on the target grid ``[N, T - 1]``, old_log_probs,
        old_values, advantages, returns; per row ``[N]``: reward, kl. aux: policy_loss, value_loss, clip_fraction,
        approx_kl, value_clip_fraction, explained_variance, value_error, reward, kl, entropy (with logits).

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout, sampling
        >>> from jax_irl.algorithms import ppo
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> policy = Transformer(presets.preset("tiny", vocab_size=8), rngs=nnx.Rngs(0))
        >>> model = ppo.ActorCritic(policy, "shared", rngs=nnx.Rngs(1))
        >>> prompts = rollout.Prompts(np.array([[2, 3]]), np.ones((1, 2), np.int32), ["p"])
        >>> reward_fn = lambda texts, response, mask: ((response[:, 0] == 3).astype(float), {})  # token 3 first
        >>> cfg = ppo.PPOConfig(iterations=2, prompts_per_rollout=1, samples_per_prompt=4, max_new_tokens=3)
        >>> rows = ppo.make_rollout(model, policy, cfg, prompts, reward_fn, jax.random.PRNGKey(0), 0.05, eos_id=7,
        ...                         pad_id=0).rows
        >>> loss, aux = ppo.ppo_loss_fn(cfg)(model, rows, None)
        >>> float(aux["clip_fraction"]), abs(float(aux["approx_kl"])) < 1e-6   # the rollout's own policy: ratio 1
        (0.0, True)

    References:
        Schulman et al., "Proximal Policy Optimization Algorithms", 2017.
    """
    need_logits = cfg.entropy_coef > 0 or not vocab_chunk

    def loss_fn(model: ActorCritic, batch, rng):
        del rng
        tokens, attention = batch["tokens"], batch["attention"]
        out = rollout.causal_lm(model.policy, tokens, attention, vocab_chunk=vocab_chunk, need_logits=need_logits,
                                mask=batch["mask"], window=window)
        mask = out.mask

        def on_window(x):  # a target-grid array of the batch, lined up with the outputs
            return x if out.start is None else rollout.take_window(x, out.start, mask.shape[1])

        logp = out.target_q - out.values
        policy_loss, paux = losses.ppo_policy_loss(logp, on_window(batch["old_log_probs"]),
                                                   on_window(batch["advantages"]), mask, clip_eps=cfg.clip_eps)
        values = model.values(tokens, attention, out.hidden, out.start)
        returns = on_window(batch["returns"])
        value_loss, vaux = losses.ppo_value_loss(values, on_window(batch["old_values"]), returns, mask,
                                                 clip_eps=cfg.value_clip_eps)
        aux = {"policy_loss": policy_loss, "value_loss": value_loss, "clip_fraction": paux["clip_fraction"],
               "approx_kl": paux["approx_kl"], "value_clip_fraction": vaux["clip_fraction"],
               "explained_variance": vaux["explained_variance"],
               "value_error": losses.masked_mean((values - returns) ** 2, mask),
               "reward": jnp.mean(batch["reward"]), "kl": jnp.mean(batch["kl"])}
        loss = policy_loss + cfg.vf_coef * value_loss
        if out.logits is not None:
            # With no entropy bonus the entropy is a metric only: no gradient through it (0 * its gradient would
            # still be computed, a softmax pass over [N, W, V] each way, and would carry a NaN).
            logits = out.logits if cfg.entropy_coef > 0 else jax.lax.stop_gradient(out.logits)
            entropy = losses.masked_mean(losses.token_entropies(logits), mask)
            aux["entropy"] = entropy
            if cfg.entropy_coef > 0:
                loss = loss - cfg.entropy_coef * entropy
        return loss, aux

    return loss_fn


def place_rewards(rewards: np.ndarray, response_mask: np.ndarray) -> np.ndarray:
    r"""A reward function's output as per-token rewards on the response tokens.

    Args:
        rewards: ``[N, R]`` per-token rewards (kept, 0 off the mask), or ``[N]`` one per response, placed on its
            last token (``losses.place_sequence_reward``: the scalar case is one path with the token case).
        response_mask: ``[N, R]`` 1 on each response's tokens.

    Returns:
        ``[N, R]`` float32 rewards, 0 off the mask.

    Raises:
        ValueError: on a shape that fits neither form, or non-finite rewards on response tokens.

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import ppo
        >>> ppo.place_rewards(np.array([1.0, 2.0]), np.array([[1, 1, 0], [1, 0, 0]])).tolist()
        [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]]
    """
    rewards, response_mask = np.asarray(rewards, np.float32), np.asarray(response_mask)
    if rewards.ndim == 1:
        if rewards.shape[0] != response_mask.shape[0]:
            raise ValueError(f"scalar rewards [N] = {rewards.shape} for {response_mask.shape[0]} responses")
        rewards = np.asarray(losses.place_sequence_reward(jnp.asarray(rewards), jnp.asarray(response_mask)))
    elif rewards.shape != response_mask.shape:
        raise ValueError(f"token rewards must be [N, R] = {response_mask.shape} like the responses; got "
                         f"{rewards.shape}")
    if not np.all(np.isfinite(rewards[response_mask > 0])):
        raise ValueError("the reward function returned non-finite rewards on response tokens")
    return np.where(response_mask > 0, rewards, 0.0).astype(np.float32)


class Rollout(NamedTuple):
    rows: Dict[str, np.ndarray]  # the training batch fields, [N, ...]
    stats: Dict[str, float]  # rollout-level metrics (reward, kl, kl_coef, response length, reward-fn stats)


def make_rollout(model: ActorCritic, reference, cfg: PPOConfig, prompts: rollout.Prompts, reward_fn: RewardFn, key,
                 kl_coef: float, *, eos_id: int, pad_id: int, vocab_chunk: Optional[int] = None,
                 rows_per_score: Optional[int] = None) -> Rollout:
    r"""One PPO rollout, steps 1-4 of the module docstring: sample, reward, score once, shape the rewards with the KL
    to the reference, and compute GAE advantages and returns.

    Args:
        model: the ``ActorCritic`` (its policy samples; its log-probs and values are the old ones).
        reference: the frozen reference causal LM.
        cfg: the ``PPOConfig`` (samples_per_prompt, max_new_tokens, temperature, kl_estimator, gamma, lam,
            whiten_advantages).
        prompts: the rollout's ``rollout.Prompts`` (all of them, ``cfg.samples_per_prompt`` responses each).
        reward_fn: ``reward_fn(prompt texts [N], response ids [N, R], response mask [N, R]) -> (rewards [N, R] or
            [N], stats {name: [N]})``.
        key: the sampler's PRNG key.
        kl_coef: beta of the KL-shaped reward r_t - beta KL_t.
        eos_id: the end-of-sequence id.
        pad_id: the padding id.
        vocab_chunk: the scoring passes' vocabulary chunk.
        rows_per_score: rows per scoring call (``rollout.score_rows``).

    Returns:
        A ``Rollout``: rows (the training batch, ``ppo_loss_fn``'s fields) and stats (reward, kl with k2, k3 and
        the sequence-level k2, kl_coef, response_length, sampler_logprob_gap, timings, and the reward function's
        stats as means).

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout, sampling
        >>> from jax_irl.algorithms import ppo
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> policy = Transformer(presets.preset("tiny", vocab_size=8), rngs=nnx.Rngs(0))
        >>> model = ppo.ActorCritic(policy, "shared", rngs=nnx.Rngs(1))
        >>> prompts = rollout.Prompts(np.array([[2, 3]]), np.ones((1, 2), np.int32), ["p"])
        >>> reward_fn = lambda texts, response, mask: ((response[:, 0] == 3).astype(float), {})  # token 3 first
        >>> cfg = ppo.PPOConfig(iterations=2, prompts_per_rollout=1, samples_per_prompt=4, max_new_tokens=3)
        >>> out = ppo.make_rollout(model, policy, cfg, prompts, reward_fn, jax.random.PRNGKey(0), 0.05, eos_id=7,
        ...                        pad_id=0)
        >>> out.rows["advantages"].shape, abs(out.stats["kl"]) < 1e-5   # 4 rows of 2 + 3 - 1 targets; pi = pi_ref
        ((4, 4), True)
    """
    import time
    start = time.perf_counter()
    n = cfg.samples_per_prompt
    rows = rollout.sample_rows(model.policy, np.asarray(prompts.tokens), np.asarray(prompts.mask), key,
                               max_new_tokens=cfg.max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                               temperature=cfg.temperature, num_samples=n)
    sampled = time.perf_counter()
    row_texts = [t for t in prompts.texts for _ in range(n)]
    raw, reward_stats = reward_fn(row_texts, rows["response"], rows["response_mask"])
    token_rewards = place_rewards(raw, rows["response_mask"])
    rewarded = time.perf_counter()
    width = prompts.tokens.shape[1]
    grid = np.zeros(rows["mask"].shape, np.float32)
    grid[:, width - 1:] = token_rewards
    scored_rows = {k: rows[k] for k in ("tokens", "attention", "mask")}
    own = rollout.score_rows(model, ActorCriticScores(vocab_chunk), scored_rows, rows_per_batch=rows_per_score)
    ref = rollout.score_rows(reference, rollout.LMScores(("log_probs",), vocab_chunk=vocab_chunk), scored_rows,
                             rows_per_batch=rows_per_score)["log_probs"]
    mask = jnp.asarray(rows["mask"])
    old_lp, old_v = jnp.asarray(own["log_probs"]), jnp.asarray(own["values"])
    shaped = losses.kl_shaped_rewards(jnp.asarray(grid), old_lp, jnp.asarray(ref), mask, kl_coef=kl_coef,
                                      estimator=cfg.kl_estimator)
    advantages, returns = losses.gae(shaped, old_v, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    m = rows["mask"]
    d = (np.asarray(own["log_probs"]) - ref) * m
    kl_k1 = d.sum(-1)
    kl_k2 = (0.5 * d ** 2 * m).sum(-1)
    kl_k3 = ((np.expm1(-d) + d) * m).sum(-1)
    lengths = rows["response_mask"].sum(-1)
    done = time.perf_counter()
    batch = dict(scored_rows, old_log_probs=np.asarray(old_lp, np.float32), old_values=np.asarray(old_v, np.float32),
                 advantages=np.asarray(advantages, np.float32), returns=np.asarray(returns, np.float32),
                 reward=token_rewards.sum(-1).astype(np.float32), kl=kl_k1.astype(np.float32))
    gap = np.abs(rows["model_log_probs"] - np.asarray(own["log_probs"]))[m > 0]
    stats = {"reward": float(token_rewards.sum(-1).mean()), "kl": float(kl_k1.mean()), "kl_k2": float(kl_k2.mean()), "kl_k3": float(kl_k3.mean()),
             # Coste et al.'s KL axis: k2 of the whole response's log-ratio, 0.5 (sum_t d_t)^2, not a sum of
             # per-token k2
             "kl_seq_k2": float((0.5 * kl_k1 ** 2).mean()), "kl_coef": float(kl_coef), "response_length": float(lengths.mean()),
             "sampler_logprob_gap": float(gap.max()) if gap.size else 0.0,
             "rollout_tokens_per_s": float(lengths.sum() / max(sampled - start, 1e-9)),
             "reward_seconds": float(rewarded - sampled), "score_seconds": float(done - rewarded)}
    for name, values in (reward_stats or {}).items():
        values = np.asarray(values, np.float64)
        if values.shape != (len(lengths),):
            raise ValueError(f"the reward function's stat {name!r} must be one number per response [N]; got "
                             f"shape {values.shape}")
        stats[name] = float(values.mean())
    return Rollout(batch, stats)


def next_kl_coef(cfg: PPOConfig, coef: float, observed_kl: float) -> float:
    r"""Ziegler et al.'s adaptive KL controller, applied after each rollout:

    $$
    \beta \leftarrow \beta \, \big(1 + \mathrm{clip}(\mathrm{KL} / \mathrm{target} - 1, -0.2, 0.2)
    \, N / \mathrm{horizon}\big),
    $$

    N the rollout's responses.

    Args:
        cfg: the ``PPOConfig`` (kl_target: None keeps the coefficient fixed; kl_horizon; rows).
        coef: the current coefficient beta.
        observed_kl: the rollout's mean KL per response.

    Returns:
        The next coefficient.

    Examples:
        >>> from jax_irl.algorithms import ppo
        >>> cfg = ppo.PPOConfig(kl_target=1.0, kl_horizon=64, prompts_per_rollout=16, samples_per_prompt=4)
        >>> round(ppo.next_kl_coef(cfg, 0.1, observed_kl=3.0), 6)   # the error is clipped to +0.2
        0.12

    References:
        Ziegler et al., "Fine-Tuning Language Models from Human Preferences", 2019.
    """
    if cfg.kl_target is None:
        return coef
    error = float(np.clip(observed_kl / cfg.kl_target - 1.0, -0.2, 0.2))
    return coef * (1.0 + error * cfg.rows / cfg.kl_horizon)


def kl_coef_reach(cfg: PPOConfig) -> float:
    r"""The most the adaptive controller can move the KL coefficient over a whole run: each iteration multiplies it
    by at most 1 + 0.2 rows / kl_horizon.

    Args:
        cfg: the ``PPOConfig``.

    Returns:
        The factor ``(1 + 0.2 rows / kl_horizon) ** iterations`` (1 when the coefficient is fixed).

    Examples:
        >>> from jax_irl.algorithms import ppo
        >>> round(ppo.kl_coef_reach(ppo.PPOConfig(kl_target=1.0, iterations=150, prompts_per_rollout=16,
        ...                                        samples_per_prompt=4)), 2)   # the default horizon barely acts
        1.21
    """
    if cfg.kl_target is None:
        return 1.0
    return (1.0 + 0.2 * cfg.rows / cfg.kl_horizon) ** cfg.iterations


class PPORun:
    """The batches of a PPO run in ``folder``: ``batch_fn(position, model)`` for ``train.fit`` draws (or reloads)
    the rollout of the position's iteration and returns its minibatch. Rollout stats go to rollouts/<i>.json,
    rows to rollouts/<i>.npz (the last ``keep_rollouts`` are kept; None keeps all)."""

    def __init__(self, run: stages.Run, reference, cfg: PPOConfig, prompts: rollout.Prompts, reward_fn: RewardFn,
                 tokens: sampling.SamplingSpec):
        if len(prompts.tokens) < cfg.prompts_per_rollout:
            raise ValueError(f"{len(prompts.tokens)} prompts for prompts_per_rollout={cfg.prompts_per_rollout}")
        prompts.check()
        tokens.check_length(cfg.max_new_tokens, type(cfg).__name__)
        self.dir = run.path("rollouts")
        self.reference, self.cfg, self.prompts, self.reward_fn = reference, cfg, prompts, reward_fn
        self.seed, self.eos_id, self.pad_id = run.seed, tokens.eos_id, tokens.pad_id
        settings = run.settings
        self.vocab_chunk, self.rows_per_score, self.keep = (settings.vocab_chunk, settings.rows_per_score,
                                                            settings.keep_rollouts)
        from jax_irl.data.batching import IndexSampler
        self.sampler = IndexSampler(len(prompts.tokens), cfg.prompts_per_rollout, seed=run.seed)
        self._cache: Dict[int, Dict[str, np.ndarray]] = {}

    def _paths(self, i: int) -> Tuple[str, str]:
        return os.path.join(self.dir, f"{i:05d}.npz"), os.path.join(self.dir, f"{i:05d}.json")

    def stats(self, i: int) -> Dict[str, float]:
        with open(self._paths(i)[1]) as f:
            return json.load(f)

    def all_stats(self):
        out, i = [], 0
        while os.path.exists(self._paths(i)[1]):
            out.append(dict(self.stats(i), iteration=i))
            i += 1
        return out

    def prompts_of(self, idx) -> rollout.Prompts:
        return self.prompts.take(idx)

    def draw(self, i: int, model) -> Rollout:
        """The rollout of iteration i, a pure function of (seed, i) and the model (subclasses change the method)."""
        coef = self.cfg.kl_coef if i == 0 else next_kl_coef(self.cfg, self.stats(i - 1)["kl_coef"],
                                                             self.stats(i - 1)["kl"])
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), i)
        return make_rollout(model, self.reference, self.cfg, self.prompts_of(self.sampler.indices(i)),
                            self.reward_fn, key, coef, eos_id=self.eos_id, pad_id=self.pad_id,
                            vocab_chunk=self.vocab_chunk, rows_per_score=self.rows_per_score)

    def rows(self, i: int, model, at_start: bool) -> Dict[str, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        npz, meta = self._paths(i)
        if os.path.exists(npz) and os.path.exists(meta):
            with np.load(npz) as f:
                rows = {k: f[k] for k in f.files}
        elif not at_start:
            raise FileNotFoundError(f"{npz}: the rollout of iteration {i} is missing, but the run resumes "
                                    f"inside that iteration; it cannot be redrawn from the policy that drew it "
                                    f"(restore an earlier checkpoint or start the run again)")
        else:
            made = self.draw(i, model)
            rows = made.rows
            if jax.process_index() == 0:
                os.makedirs(self.dir, exist_ok=True)
                np.savez(npz + ".tmp.npz", **rows)
                os.replace(npz + ".tmp.npz", npz)
                with open(meta + ".tmp", "w") as f:
                    json.dump(made.stats, f)
                os.replace(meta + ".tmp", meta)
                if self.keep is not None and i - self.keep >= 0 and os.path.exists(self._paths(i - self.keep)[0]):
                    os.remove(self._paths(i - self.keep)[0])
        self._cache = {i: rows}
        return rows

    def minibatch_indices(self, i: int, epoch: int, minibatch: int) -> np.ndarray:
        size = self.cfg.rows // self.cfg.minibatches
        order = np.random.default_rng([self.seed, i, epoch]).permutation(self.cfg.rows)
        chosen = order[minibatch * size:(minibatch + 1) * size]
        count = jax.process_count()
        if size % count:
            raise ValueError(f"a minibatch of {size} rows does not split over {count} processes")
        return chosen.reshape(count, -1)[jax.process_index()]

    def batch_fn(self, position: int, model: ActorCritic) -> Dict[str, np.ndarray]:
        i, j = divmod(position, self.cfg.steps_per_iteration)
        epoch, minibatch = divmod(j, self.cfg.minibatches)
        rows = self.rows(i, model, at_start=(j == 0))
        idx = self.minibatch_indices(i, epoch, minibatch)
        return {k: v[idx] for k, v in rows.items()}


def train_ppo(run: stages.Run, model: ActorCritic, reference, cfg: PPOConfig, prompts: rollout.Prompts,
              reward_fn: RewardFn, tokens: sampling.SamplingSpec, *,
              hooks: Sequence[train.Every] = ()) -> Tuple[stages.StageResult, list]:
    r"""PPO on an ``ActorCritic`` for ``cfg.iterations`` iterations as one resumable stage in ``run.folder``.

    The run writes checkpoints/, metrics.jsonl (every optimizer step: loss, policy_loss, value_loss,
    clip_fraction, approx_kl, entropy, value_error, explained_variance, and the minibatch's reward and KL) and
    rollouts/ (per iteration: the stats; the last ``run.settings.keep_rollouts`` iterations keep their rows).
    A rollout is saved before any update uses it, so a run stopped inside an iteration resumes exactly (module
    docstring).

    Args:
        run: the run (folder, mesh, settings, seed of the rollouts); its fingerprint gains ``cfg`` under 'ppo'.
        model: the ``ActorCritic`` to train.
        reference: the frozen reference causal LM of the KL term.
        cfg: the ``PPOConfig``.
        prompts: the training ``rollout.Prompts`` (each iteration takes ``cfg.prompts_per_rollout``, a pure
            function of (seed, iteration)).
        reward_fn: the reward function (``make_rollout``).
        tokens: the ``sampling.SamplingSpec`` (eos and pad ids; a length that disagrees with ``cfg`` is refused).
        hooks: ``train.Every`` hooks on the optimizer steps' schedule.

    Returns:
        ``(StageResult, stats)``: the trained model, state and trainer, and per-iteration rollout stats.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import rollout, sampling
        >>> from jax_irl.algorithms import ppo
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> policy = Transformer(presets.preset("tiny", vocab_size=8), rngs=nnx.Rngs(0))
        >>> model = ppo.ActorCritic(policy, "shared", rngs=nnx.Rngs(1))
        >>> prompts = rollout.Prompts(np.array([[2, 3]]), np.ones((1, 2), np.int32), ["p"])
        >>> reward_fn = lambda texts, response, mask: ((response[:, 0] == 3).astype(float), {})  # token 3 first
        >>> cfg = ppo.PPOConfig(iterations=2, prompts_per_rollout=1, samples_per_prompt=4, max_new_tokens=3)
        >>> import tempfile
        >>> from jax_irl import parallel, stages
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> run = stages.Run(tempfile.mkdtemp(), mesh, progress=False)
        >>> result, stats = ppo.train_ppo(run, model, policy, cfg, prompts, reward_fn, sampling.SamplingSpec(7, 0))
        >>> len(stats), int(result.state.step)   # 2 iterations of 2 epochs x 2 minibatches
        (2, 8)
    """
    stage = stages.StageConfig(steps=cfg.steps, batch_size=cfg.rows // cfg.minibatches, optimizer=cfg.optimizer)
    if cfg.kl_target is not None and kl_coef_reach(cfg) < 2.0:
        print(f"note: the adaptive KL coefficient can move at most {kl_coef_reach(cfg):.2f}x over {cfg.iterations} "
              f"iterations of {cfg.rows} responses at kl_horizon={cfg.kl_horizon}, so kl_target={cfg.kl_target:g} "
              f"barely acts; a kl_horizon of about {max(1, int(0.2 * cfg.rows * cfg.iterations / 2.3))} lets it move "
              f"10x")
    batches = PPORun(run, reference, cfg, prompts, reward_fn, tokens)
    window = rollout.useful_window(cfg.max_new_tokens, prompts.tokens.shape[1] + cfg.max_new_tokens - 1)
    result = run.sub(depends={"ppo": dataclasses.asdict(cfg)}).stage(
        model, ppo_loss_fn(cfg, run.settings.vocab_chunk, window), stage, train.ModelBatches(batches.batch_fn),
        hooks=hooks)
    return result, batches.all_stats()
