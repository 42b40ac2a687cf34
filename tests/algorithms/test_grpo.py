"""The critic-free group methods: the reward optimum and the KL-regularised optima on a one-token bandit, the
rollout's advantages against float64 recomputations, token-level credit on a toy task whose blamed token is known,
sampler and trainer log-probs, exact resume inside an iteration with dynamic sampling, and bad input."""

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses, parallel, rollout, sampling, stages, train
from jax_irl.algorithms import grpo
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer
from tests.losses import reference as ref_np

V = 8
R = np.array([0, 0.5, 0, 1.0, 0, -0.5, 0, 0], np.float32)  # a reward per token id
EOS, PAD, BAD = 7, 0, 5


def _mesh():
    return parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])


def _policy(seed=0):
    cfg = TransformerConfig.for_family("llama", vocab_size=V, hidden_size=16, num_layers=1, num_heads=2,
                                       num_kv_heads=2, intermediate_size=32)
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def _probs(model, prompt=(2,)):
    return np.asarray(jax.nn.softmax(model(jnp.asarray([prompt])).logits[0, -1].astype(jnp.float32)), np.float64)


def _bandit(prompts, responses, mask):
    return R[responses[:, 0]], None, {"solved": (responses[:, 0] == 3).astype(float)}


PROMPT = rollout.Prompts(np.array([[2]], np.int32), np.array([[1]], np.int32), ["p"])
PROMPTS3 = rollout.Prompts(np.array([[0, 2], [2, 4], [0, 6]], np.int32), np.array([[0, 1], [1, 1], [0, 1]], np.int32),
                       ["a", "b", "c"])


def _run(folder, cfg, reward_fn, prompts=PROMPT, reference=True, seed=0):
    policy = _policy()
    ref = nnx.clone(policy) if reference else None
    run = stages.Run(str(folder), _mesh(), stages.RunSettings(save_every=1000), fingerprint={"test": 1}, seed=seed,
                     progress=False)
    return grpo.train_grpo(run, policy, ref, cfg, prompts, reward_fn, sampling.SamplingSpec(EOS, PAD))


def _bandit_cfg(method, **kw):
    return grpo.GRPOConfig(method=method, prompts_per_rollout=1, group_size=64, max_new_tokens=1, **kw)


@pytest.mark.slow
def test_grpo_and_rloo_reach_the_reward_optimum_without_kl(tmp_path):
    for method in ("grpo", "rloo"):
        cfg = _bandit_cfg(method, iterations=40, kl_coef=0.0, optimizer=train.OptimizerConfig(learning_rate=2e-2))
        result, stats = _run(tmp_path / method, cfg, _bandit, reference=False)
        p = _probs(result.model)
        assert p[3] > 0.9, (method, p)
        assert stats[-1]["reward"] > 0.85 and stats[-1]["kl"] == 0.0  # no reference, no KL measured


@pytest.mark.slow
def test_the_kl_regularised_optima_of_a_kl_in_the_reward_and_a_k3_loss_term(tmp_path):
    """KL in the reward (RLOO, k1): REINFORCE on r - beta log(pi / pi_ref) ascends E[r] - beta KL(pi || pi_ref),
    whose optimum is pi* = pi_ref exp(r / beta) / Z. The k3 loss term (GRPO's) has gradient E_pi[(1 - pi_ref / pi)
    grad log pi] = grad KL(pi_ref || pi): with Dr. GRPO's advantage (r_i - group mean, (G - 1) / G of the policy
    gradient) the fixed point maximises (G - 1) / G E[r] - beta KL(pi_ref || pi), the forward KL."""
    p_ref = _probs(_policy())
    beta = 0.5
    star = p_ref * np.exp(R / beta)
    star /= star.sum()
    cfg = _bandit_cfg("rloo", iterations=60, kl_coef=beta, optimizer=train.OptimizerConfig(learning_rate=5e-3))
    result, _ = _run(tmp_path / "rloo", cfg, _bandit)
    p = _probs(result.model)
    assert 0.5 * np.abs(p - star).sum() < 0.06, (p, star)

    # The forward-KL optimum, by gradient ascent on the logits of an explicit softmax.
    c = 63 / 64

    def objective(theta):
        q = jax.nn.softmax(theta)
        return c * q @ R - beta * jnp.sum(p_ref * (jnp.log(p_ref) - jnp.log(q)))

    ascend = jax.jit(lambda theta: jax.lax.fori_loop(0, 3000, lambda _, t: t + 0.5 * jax.grad(objective)(t), theta))
    theta = ascend(jnp.log(jnp.asarray(p_ref, jnp.float32)))
    forward_star = np.asarray(jax.nn.softmax(theta), np.float64)
    assert 0.5 * np.abs(forward_star - star).sum() > 0.09  # the two optima differ: the test can tell them apart
    cfg = _bandit_cfg("dr_grpo", iterations=60, kl_coef=beta, kl_in="loss",
                      optimizer=train.OptimizerConfig(learning_rate=5e-3))
    result, _ = _run(tmp_path / "dr_grpo", cfg, _bandit)
    p = _probs(result.model)
    tv_forward, tv_reverse = 0.5 * np.abs(p - forward_star).sum(), 0.5 * np.abs(p - star).sum()
    assert tv_forward < 0.04 and tv_reverse > tv_forward + 0.05, (tv_forward, tv_reverse, p, forward_star, star)


def _toy_reward(prompts, responses, mask):
    """Correct unless a response holds the bad token; the certificate blames exactly the bad tokens."""
    bad = (responses == BAD) & (mask > 0)
    return (~bad.any(-1)).astype(np.float64), np.where(bad, -0.2, 0.0), {"bad": bad.any(-1).astype(float)}


def _bad_logp(model, prompts):
    """Mean over prompts and positions 1..3 of log pi(BAD | prompt, a fixed good prefix)."""
    out = []
    for row in prompts.tokens:
        seq = list(row) + [1, 3, 1]
        logits = model(jnp.asarray([seq])).logits[0].astype(jnp.float32)
        out.append(float(jnp.mean(jax.nn.log_softmax(logits)[len(row) - 1:, BAD])))
    return float(np.mean(out))


@pytest.mark.slow
def test_token_level_credit_lowers_the_blamed_token_faster_than_the_scalar_credit(tmp_path):
    before = _bad_logp(_policy(), PROMPTS3)
    drops = {}
    for credit in ("sequence", "add", "blame"):
        cfg = grpo.GRPOConfig(method="grpo", credit=credit, iterations=6, prompts_per_rollout=3, group_size=8,
                              max_new_tokens=4, kl_coef=0.0, optimizer=train.OptimizerConfig(learning_rate=1e-2))
        result, stats = _run(tmp_path / credit, cfg, _toy_reward, prompts=PROMPTS3, reference=False)
        drops[credit] = before - _bad_logp(result.model, PROMPTS3)
    assert drops["sequence"] > 0, drops  # the scalar credit lowers it too, more slowly
    # 'add' moves a blamed token's advantage by the penalty (0.2, against group advantages of about 1): a little
    # faster; 'blame' puts a failed response's whole negative advantage on its blamed tokens: much faster.
    assert drops["add"] > drops["sequence"] and drops["blame"] > drops["sequence"] + 0.3, drops


def _made(cfg, reward_fn=_toy_reward, reference=None):
    policy = _policy()
    reference = _policy(seed=5) if reference is None else reference
    made = grpo.make_group_rollout(policy, reference, cfg, lambda attempt: PROMPTS3, reward_fn,
                                   jax.random.PRNGKey(0), eos_id=EOS, pad_id=PAD)
    return policy, reference, made


@pytest.mark.parametrize("method,credit", [("grpo", "sequence"), ("dr_grpo", "add"), ("rloo", "blame"),
                                           ("reinforce_pp", "add"), ("gspo", "sequence")])
def test_rollout_advantages_match_float64_recomputations(method, credit):
    cfg = grpo.GRPOConfig(method=method, credit=credit, prompts_per_rollout=3, group_size=4, max_new_tokens=5,
                          kl_coef=0.3)
    policy, reference, made = _made(cfg)
    rows, s = made.rows, cfg.settings
    tokens, mask = rows["tokens"], rows["mask"]

    def logp_of(model):
        logits = np.asarray(model(jnp.asarray(tokens[:, :-1]), attention_mask=jnp.asarray(rows["attention"][:, :-1])
                                  ).logits, np.float64)
        return np.take_along_axis(logits - np.log(np.exp(logits).sum(-1, keepdims=True)), tokens[:, 1:, None],
                                  -1)[..., 0] * mask

    logp, ref_logp = logp_of(policy), logp_of(reference)
    np.testing.assert_allclose(rows["old_log_probs"], logp, atol=2e-5)
    np.testing.assert_allclose(rows["ref_log_probs"], ref_logp, atol=2e-5)
    width = PROMPTS3.tokens.shape[1]
    response, rmask = tokens[:, width:], mask[:, width - 1:]
    outcome, terms, _ = _toy_reward(None, response, rmask)
    grid_terms = np.zeros(mask.shape)
    grid_terms[:, width - 1:] = terms
    np.testing.assert_allclose(rows["reward"], outcome)
    if method == "reinforce_pp":
        placed = np.zeros(mask.shape)
        last = np.array([np.flatnonzero(m)[-1] for m in mask])
        placed[np.arange(len(mask)), last] = outcome
        want = ref_np.reinforce_pp_advantages(placed + grid_terms, logp, ref_logp, mask, 0.3, "k1", 1.0)
    else:
        r = outcome - (0.3 * ((logp - ref_logp) * mask).sum(-1) if s["kl_in"] == "reward" else 0.0)
        adv = ref_np.group_advantages(r.reshape(3, 4), s["advantage"]).reshape(-1)
        want = ref_np.token_advantages(adv, mask, grid_terms, credit)
    np.testing.assert_allclose(rows["advantages"], want, atol=2e-4)
    # The first update sees ratio 1: the train step's log-probs at the sampling params are the scorer's (the
    # responses' window against the full forward: float rounding only), and nothing is clipped.
    window = rollout.useful_window(cfg.max_new_tokens, tokens.shape[1] - 1)
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    _, aux = jax.jit(lambda b: grpo.grpo_loss_fn(cfg, window=window)(policy, b, None))(batch)
    assert abs(float(aux["ratio_mean"]) - 1.0) < 1e-5 and float(aux["clip_fraction"]) == 0.0
    assert float(aux["approx_kl"]) < 1e-9
    # The sampler's own log-probs (the KV-cache decoding path) against the scorer's (the training path).
    assert made.stats["sampler_logprob_gap_max"] < 1e-4
    assert 0.0 <= made.stats["sampler_logprob_gap_mean"] <= made.stats["sampler_logprob_gap_max"]


def test_the_loss_fn_is_the_group_policy_loss_of_the_new_log_probs():
    cfg = grpo.GRPOConfig(method="dapo", prompts_per_rollout=3, group_size=4, max_new_tokens=5, kl_coef=0.2,
                          entropy_coef=0.1)
    policy, _, made = _made(cfg)
    rows = made.rows
    moved = nnx.clone(policy)
    moved.embed[...] = moved.embed[...] * 1.3
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    loss, aux = grpo.grpo_loss_fn(cfg)(moved, batch, None)
    out = rollout.causal_lm(moved, batch["tokens"], batch["attention"])
    lp = jnp.take_along_axis(jax.nn.log_softmax(out.logits), batch["tokens"][:, 1:, None], -1)[..., 0]
    s = cfg.settings
    want = ref_np.group_policy_loss(np.asarray(lp, np.float64), rows["old_log_probs"], rows["advantages"],
                                    rows["mask"], s["clip_low"], s["clip_high"], s["aggregation"], s["ratio"],
                                    ref_logp=rows["ref_log_probs"], kl_coef=0.2)
    entropy = float(losses.masked_mean(losses.token_entropies(out.logits), batch["mask"]))
    assert float(loss) == pytest.approx(want - 0.1 * entropy, abs=3e-5)
    assert float(aux["entropy"]) == pytest.approx(entropy, rel=1e-5)


def test_dynamic_sampling_refills_with_informative_groups_and_overlong_rules():
    calls = []

    def reward(prompts, responses, mask):  # the first draw: every group all-equal; later draws informative
        out = np.zeros(len(prompts)) if not calls else (responses[:, 0] % 2).astype(float)
        calls.append(out)
        return out, None, {"correct": out}

    cfg = grpo.GRPOConfig(method="dapo", prompts_per_rollout=3, group_size=4, max_new_tokens=3, max_refills=2,
                          overlong="none")
    _, _, made = _made(cfg, reward)
    assert made.stats["degenerate_share"] == 1.0 and made.stats["draws"] >= 2
    if made.stats["degenerate_filled"] == 0.0:
        grouped = made.rows["reward"].reshape(3, 4)
        assert not np.any(np.all(grouped == grouped[:, :1], axis=1))
    # The kept groups' stats, and every drawn response's (the dropped all-zero first draw included).
    assert made.stats["correct"] == pytest.approx(float(made.rows["reward"].mean()))
    drawn = np.concatenate(calls)
    assert len(drawn) == 12 * made.stats["draws"]
    assert made.stats["correct_drawn"] == pytest.approx(float(drawn.mean()))
    assert made.stats["reward_drawn"] == pytest.approx(float(drawn.mean()))
    assert made.stats["correct_drawn"] < made.stats["correct"]  # 12 zeros of the first draw count here only
    # Overlong: DAPO's soft punishment by hand, and the filter's mask.
    response = np.array([[1, 1, 1, 1], [1, EOS, PAD, PAD], [1, 1, 1, EOS]])
    rmask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    truncated, penalty = grpo.overlong(response, rmask, EOS, max_new_tokens=4, buffer=2)
    np.testing.assert_array_equal(truncated, [True, False, False])
    np.testing.assert_allclose(penalty, [-1.0, 0.0, -1.0])  # length 4 of budget 4: -1; length 2 <= 4 - 2: 0
    _, penalty3 = grpo.overlong(response[:, :3], rmask[:, :3], EOS, max_new_tokens=4, buffer=2)
    np.testing.assert_allclose(penalty3, [-0.5, 0.0, -0.5])
    # The penalty's reach is logged: the share of responses it touched and its mean, from each response's length.
    cfg = grpo.GRPOConfig(method="dapo", prompts_per_rollout=3, group_size=4, max_new_tokens=4, overlong_buffer=2,
                          dynamic_sampling=False)
    _, _, made = _made(cfg, lambda p, r, m: (np.zeros(len(p)), None, {}))
    length = made.rows["mask"].sum(-1)
    assert made.stats["response_length"] == pytest.approx(float(length.mean()))
    assert 0 < made.stats["overlong_penalised_share"] == pytest.approx(float((length > 2).mean()))
    assert made.stats["overlong_penalty_mean"] == pytest.approx(float(-np.clip((length - 2) / 2, 0, 1).mean()))
    cfg = grpo.GRPOConfig(method="grpo", prompts_per_rollout=3, group_size=4, max_new_tokens=2, overlong="filter",
                          kl_coef=0.0)
    _, _, made = _made(cfg, lambda p, r, m: (np.arange(len(p)) % 2 * 1.0, None, {}))
    truncated = made.stats["truncated_share"]
    assert truncated > 0  # two tokens rarely reach EOS
    dropped = made.rows["mask"].sum(-1) == 0
    assert dropped.mean() == pytest.approx(truncated)


@pytest.mark.slow
def test_a_run_stopped_inside_an_iteration_resumes_to_the_same_params(tmp_path, monkeypatch):
    cfg = grpo.GRPOConfig(method="dapo", iterations=3, prompts_per_rollout=3, group_size=4, max_new_tokens=4,
                          epochs=2, minibatches=2, credit="add", optimizer=train.OptimizerConfig(
                              learning_rate=1e-2, schedule="cosine"))
    calls = []

    def counted(prompts, responses, mask):
        calls.append(len(prompts))
        return _toy_reward(prompts, responses, mask)

    whole, whole_stats = _run(tmp_path / "whole", cfg, counted, prompts=PROMPTS3, reference=False)
    drawn = len(calls)
    original = grpo.GroupRun.minibatch_indices

    def preempting(self, i, epoch, minibatch):
        if (i, epoch, minibatch) == (1, 0, 1) and not os.path.exists(tmp_path / "stopped"):
            open(tmp_path / "stopped", "w").close()
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, i, epoch, minibatch)

    monkeypatch.setattr(grpo.GroupRun, "minibatch_indices", preempting)
    calls.clear()
    with pytest.raises(stages.StagePreempted, match="stopped at step 6"):
        _run(tmp_path / "split", cfg, counted, prompts=PROMPTS3, reference=False)
    split, split_stats = _run(tmp_path / "split", cfg, counted, prompts=PROMPTS3, reference=False)
    assert len(calls) == drawn  # iteration 1's rollout was reloaded from disk, not drawn again
    for x, y in zip(jax.tree.leaves(nnx.state(whole.model)), jax.tree.leaves(nnx.state(split.model))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    timing = ("rollout_tokens_per_s", "reward_seconds", "score_seconds")
    strip = lambda stats: [{k: v for k, v in s.items() if k not in timing} for s in stats]  # noqa: E731
    assert strip(whole_stats) == strip(split_stats)
    metrics = [line for line in open(tmp_path / "whole" / "metrics.jsonl")]
    assert len(metrics) >= cfg.steps and "clip_fraction_high" in metrics[-1]


def test_bad_configs_and_rewards_are_refused_by_name(tmp_path):
    for bad, match in ((dict(group_size=1), "group_size must be an int >= 2"),
                       (dict(clip_low=0.3, clip_high=0.2), "clip_high .* must be >= clip_low"),
                       (dict(method="ppo"), "GRPOConfig.method"), (dict(aggregation="sum"), "aggregation"),
                       (dict(kl_coef=float("nan")), "kl_coef"), (dict(credit="all"), "credit"),
                       (dict(method="reinforce_pp", credit="blame"), "credit='blame'"),
                       (dict(overlong_buffer=0), "overlong_buffer"), (dict(epochs=0), "epochs"),
                       (dict(prompts_per_rollout=3, group_size=3, minibatches=2), "equal minibatches")):
        with pytest.raises(ValueError, match=match):
            grpo.GRPOConfig(**bad)
    assert grpo.GRPOConfig(method="dapo").settings["clip_high"] == 0.28
    assert grpo.GRPOConfig(method="dapo", clip_high=0.3).settings["clip_high"] == 0.3
    mask = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"non-finite outcomes for 1 of 2 responses \(rows \[1\]"):
        grpo.split_rewards((np.array([1.0, np.nan]), None, {}), mask)
    with pytest.raises(ValueError, match=r"one outcome per response \[N\] = \(2,\)"):
        grpo.split_rewards((np.zeros(3), None, {}), mask)
    with pytest.raises(ValueError, match=r"token terms must be \[N, R\]"):
        grpo.split_rewards((np.zeros(2), np.zeros((2, 4)), {}), mask)
    with pytest.raises(ValueError, match="stat 'x' must be one number per response"):
        grpo.split_rewards((np.zeros(2), None, {"x": np.zeros(3)}), mask)
    np.testing.assert_array_equal(grpo.split_rewards((np.ones((2, 3)), {}), mask)[0], [3.0, 3.0])  # PPO-style
    # A NaN reward stops the run before anything is saved: no rollout file, no checkpoint.
    cfg = grpo.GRPOConfig(iterations=1, prompts_per_rollout=3, group_size=2, max_new_tokens=2, kl_coef=0.0)
    with pytest.raises(ValueError, match="non-finite outcomes"):
        _run(tmp_path / "nan", cfg, lambda p, r, m: (np.full(len(p), np.nan), None, {}), prompts=PROMPTS3,
             reference=False)
    assert not os.path.exists(tmp_path / "nan" / "rollouts" / "00000.npz")
    with pytest.raises(ValueError, match="needs token terms"):
        _made(dataclasses.replace(cfg, credit="add"), lambda p, r, m: (np.zeros(len(p)), None, {}))
    with pytest.raises(ValueError, match="pass a reference model"):
        _run(tmp_path / "noref", dataclasses.replace(cfg, kl_coef=0.1), _toy_reward, prompts=PROMPTS3,
             reference=False)
