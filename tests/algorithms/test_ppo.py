"""PPO with per-token rewards: the KL-regularised optimum on a bandit, the reference kept under a large KL
coefficient, scalar == token path, the trainer's losses against float64 numpy references, the critic switch's
gradients, exact resume inside an iteration, and bad input."""

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses, parallel, rollout, sampling, stages, train
from jax_irl.algorithms import ppo
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer
from tests.losses import reference as ref_np

V = 8
R = np.array([0, 0.5, 0, 1.0, 0, -0.5, 0, 0], np.float32)  # a reward per token id
EOS, PAD = 7, 0


def _mesh():
    return parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])


def _policy(seed=0):
    cfg = TransformerConfig.for_family("llama", vocab_size=V, hidden_size=16, num_layers=1, num_heads=2,
                                       num_kv_heads=2, intermediate_size=32)
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def _probs(model):
    return np.asarray(jax.nn.softmax(model(jnp.asarray([[2]])).logits[0, -1].astype(jnp.float32)), np.float64)


def _bandit_reward(prompts, responses, mask):
    return R[responses[:, 0]], {"solved": (responses[:, 0] == 3).astype(float)}


def _token_reward(prompts, responses, mask):  # RLSF-style: each token judged on its own
    return np.where(mask > 0, R[responses], 0.0), {}


PROMPT = rollout.Prompts(np.array([[2]], np.int32), np.array([[1]], np.int32), ["p"])
PROMPTS3 = rollout.Prompts(np.array([[0, 2], [2, 4], [0, 6]], np.int32), np.array([[0, 1], [1, 1], [0, 1]], np.int32),
                       ["a", "b", "c"])


def _run(folder, cfg, reward_fn, prompts=PROMPT, critic="shared", seed=0):
    policy = _policy()
    reference = nnx.clone(policy)
    model = ppo.ActorCritic(policy, critic, rngs=nnx.Rngs(1))
    run = stages.Run(str(folder), _mesh(), stages.RunSettings(save_every=1000), fingerprint={"test": 1}, seed=seed,
                     progress=False)
    return ppo.train_ppo(run, model, reference, cfg, prompts, reward_fn, sampling.SamplingSpec(EOS, PAD))


@pytest.mark.slow
def test_bandit_reaches_the_kl_regularised_optimum_and_a_large_coefficient_keeps_the_reference(tmp_path):
    """One-token responses: the optimum of E[r] - beta KL(pi || pi_ref) is pi* = pi_ref exp(r / beta) / Z."""
    p_ref = _probs(_policy())
    beta = 0.5
    star = p_ref * np.exp(R / beta)
    star /= star.sum()
    kl_star = float(np.sum(star * np.log(star / p_ref)))
    cfg = ppo.PPOConfig(iterations=60, prompts_per_rollout=1, samples_per_prompt=64, max_new_tokens=1, kl_coef=beta,
                        lam=1.0, optimizer=train.OptimizerConfig(learning_rate=5e-3))
    result, stats = _run(tmp_path / "a", cfg, _bandit_reward)
    p = _probs(result.model.policy)
    kl = float(np.sum(p * np.log(p / p_ref)))
    assert 0.5 * np.abs(p - star).sum() < 0.06, (p, star)
    assert abs(kl - kl_star) < 0.12, (kl, kl_star)
    assert p @ R > p_ref @ R + 0.3
    assert len(stats) == 60 and stats[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollout is pi_ref's
    assert np.mean([s["solved"] for s in stats[-10:]]) > 2 * stats[0]["solved"]
    big = ppo.PPOConfig(iterations=30, prompts_per_rollout=1, samples_per_prompt=64, max_new_tokens=1, kl_coef=100.0,
                        lam=1.0, optimizer=train.OptimizerConfig(learning_rate=1e-2))
    result, _ = _run(tmp_path / "b", big, _bandit_reward)
    p = _probs(result.model.policy)
    assert 0.5 * np.abs(p - p_ref).sum() < 0.03 and float(np.sum(p * np.log(p / p_ref))) < 0.005


@pytest.mark.slow
def test_token_rewards_raise_the_good_tokens_over_longer_responses(tmp_path):
    cfg = ppo.PPOConfig(iterations=15, prompts_per_rollout=3, samples_per_prompt=16, max_new_tokens=4, kl_coef=0.05,
                        optimizer=train.OptimizerConfig(learning_rate=1e-2))
    _, stats = _run(tmp_path, cfg, _token_reward, prompts=PROMPTS3)
    assert np.mean([s["reward"] for s in stats[-3:]]) > stats[0]["reward"] + 0.5


def test_a_scalar_reward_on_the_last_token_is_the_same_update_as_the_scalar_path(tmp_path):
    def scalar(prompts, responses, mask):
        return (responses * mask).sum(-1) % 3 / 2.0, {}

    def as_tokens(prompts, responses, mask):
        values, _ = scalar(prompts, responses, mask)
        last = mask.sum(-1) - 1
        out = np.zeros(mask.shape, np.float32)
        out[np.arange(len(mask)), last] = values
        return out, {}

    cfg = ppo.PPOConfig(iterations=2, prompts_per_rollout=3, samples_per_prompt=4, max_new_tokens=4, epochs=1,
                        minibatches=2, optimizer=train.OptimizerConfig(learning_rate=1e-2))
    a, _ = _run(tmp_path / "scalar", cfg, scalar, prompts=PROMPTS3)
    b, _ = _run(tmp_path / "tokens", cfg, as_tokens, prompts=PROMPTS3)
    for x, y in zip(jax.tree.leaves(nnx.state(a.model)), jax.tree.leaves(nnx.state(b.model))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    lengths = {int(n) for n in np.load(tmp_path / "scalar" / "rollouts" / "00000.npz")["mask"].sum(-1)}
    assert len(lengths) > 1  # EOS ended some responses early: the last token is not always the last column


def _rollout(critic="shared", cfg=None):
    cfg = cfg or ppo.PPOConfig(prompts_per_rollout=3, samples_per_prompt=4, max_new_tokens=5, gamma=0.9, lam=0.8,
                               kl_coef=0.3, kl_estimator="k3", critic=critic)
    policy = _policy()
    reference = _policy(seed=5)  # another model, so that KL and the reference terms are not 0
    model = ppo.ActorCritic(policy, critic, rngs=nnx.Rngs(1))
    # Non-zero value-head weights, so that the values and their gradients are not trivially 0.
    model.value_head.kernel[...] = jax.random.normal(jax.random.PRNGKey(3), model.value_head.kernel.shape)
    made = ppo.make_rollout(model, reference, cfg, PROMPTS3, _token_reward, jax.random.PRNGKey(0), cfg.kl_coef,
                            eos_id=EOS, pad_id=PAD)
    return model, reference, cfg, made


def test_rollout_advantages_and_losses_match_float64_references():
    model, reference, cfg, made = _rollout()
    rows = made.rows
    tokens, mask = rows["tokens"], rows["mask"]
    logits = np.asarray(model.policy(jnp.asarray(tokens[:, :-1]), attention_mask=jnp.asarray(rows["attention"][:, :-1])).logits,
                        np.float64)
    logp = np.take_along_axis(logits - np.log(np.exp(logits).sum(-1, keepdims=True)), tokens[:, 1:, None], -1)[..., 0]
    ref_logits = np.asarray(reference(jnp.asarray(tokens[:, :-1]),
                                      attention_mask=jnp.asarray(rows["attention"][:, :-1])).logits, np.float64)
    ref_logp = np.take_along_axis(ref_logits - np.log(np.exp(ref_logits).sum(-1, keepdims=True)),
                                  tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(rows["old_log_probs"], logp * mask, atol=2e-5)
    # Rewards on the target grid from the token rewards, KL-shaped with k3, then GAE, then whitening.
    width = PROMPTS3.tokens.shape[1]
    sampled = tokens[:, width:]
    grid = np.zeros(mask.shape)
    grid[:, width - 1:] = np.where(mask[:, width - 1:] > 0, R[sampled], 0.0)
    d = logp - ref_logp
    shaped = np.where(mask > 0, grid - cfg.kl_coef * (np.expm1(-d) + d), 0.0)
    adv, ret = ref_np.gae(shaped, rows["old_values"].astype(np.float64), mask, cfg.gamma, cfg.lam)
    on = mask > 0
    white = np.where(on, (adv - adv[on].mean()) / (adv[on].std() + 1e-8), 0.0)
    np.testing.assert_allclose(rows["advantages"], white, atol=2e-4)
    np.testing.assert_allclose(rows["returns"], np.where(on, ret, 0.0), atol=2e-4)
    np.testing.assert_allclose(rows["reward"], grid.sum(-1), atol=1e-6)
    np.testing.assert_allclose(rows["kl"], (d * mask).sum(-1), atol=2e-4)
    seq = (d * mask).sum(-1)  # the logged KLs: per-response sums of token k1/k2, and k2 of the response's log-ratio
    np.testing.assert_allclose(made.stats["kl"], seq.mean(), atol=2e-4)
    np.testing.assert_allclose(made.stats["kl_k2"], (0.5 * d ** 2 * mask).sum(-1).mean(), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(made.stats["kl_seq_k2"], (0.5 * seq ** 2).mean(), rtol=1e-3, atol=1e-5)
    # The trainer's loss on a perturbed policy against the float64 reference losses on the same batch.
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    moved = nnx.clone(model)
    moved.policy.embed[...] = moved.policy.embed[...] * 1.3
    loss, aux = ppo.ppo_loss_fn(cfg)(moved, batch, None)
    new_logits = np.asarray(moved.policy(jnp.asarray(tokens[:, :-1]),
                                         attention_mask=jnp.asarray(rows["attention"][:, :-1])).logits, np.float64)
    new_logp = np.take_along_axis(new_logits - np.log(np.exp(new_logits).sum(-1, keepdims=True)),
                                  tokens[:, 1:, None], -1)[..., 0]
    values = np.asarray(moved.values(jnp.asarray(tokens), jnp.asarray(rows["attention"]),
                                     moved.policy(jnp.asarray(tokens[:, :-1]),
                                                  attention_mask=jnp.asarray(rows["attention"][:, :-1])).hidden),
                        np.float64)
    want_p = ref_np.ppo_policy_loss(new_logp, rows["old_log_probs"], rows["advantages"], mask, cfg.clip_eps)
    want_v = ref_np.ppo_value_loss(values, rows["old_values"], rows["returns"], mask, cfg.value_clip_eps)
    assert float(aux["policy_loss"]) == pytest.approx(want_p, abs=2e-5)
    assert float(aux["value_loss"]) == pytest.approx(want_v, abs=2e-5)
    assert float(loss) == pytest.approx(want_p + cfg.vf_coef * want_v, abs=3e-5)
    assert float(aux["reward"]) == pytest.approx(rows["reward"].mean(), abs=1e-6)
    # The same losses with the unembedding on the responses only (train_ppo's window: max_new_tokens).
    _, aux_w = ppo.ppo_loss_fn(cfg, window=tokens.shape[1] - PROMPTS3.tokens.shape[1])(moved, batch, None)
    for key in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "explained_variance", "value_error"):
        assert float(aux_w[key]) == pytest.approx(float(aux[key]), abs=2e-5), key
    assert made.stats["sampler_logprob_gap"] < 1e-4  # the sampler's log-probs are the scorer's


@pytest.mark.parametrize("critic", ["shared", "detached", "separate"])
def test_the_value_loss_reaches_the_policy_only_with_a_shared_critic(critic):
    model, _, cfg, made = _rollout(critic)
    batch = {k: jnp.asarray(v) for k, v in made.rows.items()}

    def value_loss(m):
        out = rollout.causal_lm(m.policy, batch["tokens"], batch["attention"])
        values = m.values(batch["tokens"], batch["attention"], out.hidden)
        return jnp.sum((values - batch["returns"]) ** 2 * batch["mask"])

    grads = nnx.grad(value_loss)(model)
    policy_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(nnx.state(grads.policy)))
    head_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(nnx.state(grads.value_head)))
    assert head_norm > 0
    assert (policy_norm > 0) == (critic == "shared"), policy_norm
    if critic == "separate":
        assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(nnx.state(grads.critic))) > 0
    # train_ppo's loss on the responses' window (the last block, the unembedding and, for this critic, the values
    # on the window only) equals the full path's, and so do its gradients.
    window = batch["tokens"].shape[1] - PROMPTS3.tokens.shape[1]
    full_fn, win_fn = ppo.ppo_loss_fn(cfg), ppo.ppo_loss_fn(cfg, window=window)
    assert float(win_fn(model, batch, None)[0]) == pytest.approx(float(full_fn(model, batch, None)[0]), abs=2e-5)
    g_full = nnx.grad(lambda m: full_fn(m, batch, None)[0])(model)
    g_win = nnx.grad(lambda m: win_fn(m, batch, None)[0])(model)
    for a, b in zip(jax.tree.leaves(nnx.state(g_win)), jax.tree.leaves(nnx.state(g_full))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_the_entropy_is_a_metric_at_coefficient_zero_and_a_bonus_above_it():
    """aux['entropy'] is the masked mean token entropy of the policy at every coefficient; going from 0 to c > 0
    moves the loss and its gradient by exactly -c times the entropy and the entropy's gradient."""
    model, _, cfg, made = _rollout("shared")
    batch = {k: jnp.asarray(v) for k, v in made.rows.items()}
    out = rollout.causal_lm(model.policy, batch["tokens"], batch["attention"])
    want = float(losses.masked_mean(losses.token_entropies(out.logits), batch["mask"]))
    grads = {}
    for coef in (0.0, 0.5):
        fn = ppo.ppo_loss_fn(dataclasses.replace(cfg, entropy_coef=coef))
        loss, aux = fn(model, batch, None)
        assert float(aux["entropy"]) == pytest.approx(want, rel=1e-5)
        grads[coef] = nnx.grad(lambda m: fn(m, batch, None)[0])(model)
    assert float(loss) == pytest.approx(float(ppo.ppo_loss_fn(cfg)(model, batch, None)[0]) - 0.5 * want, abs=1e-5)

    def entropy(m):
        o = rollout.causal_lm(m.policy, batch["tokens"], batch["attention"])
        return losses.masked_mean(losses.token_entropies(o.logits), batch["mask"])

    g_entropy = nnx.grad(entropy)(model)
    leaves = [jax.tree.leaves(nnx.state(g)) for g in (grads[0.0], grads[0.5], g_entropy)]
    assert max(float(jnp.abs(e).max()) for e in leaves[2]) > 1e-4  # the entropy does depend on the policy
    for g0, g5, ge in zip(*leaves):
        np.testing.assert_allclose(np.asarray(g5), np.asarray(g0 - 0.5 * ge), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_run_stopped_inside_an_iteration_resumes_to_the_same_params(tmp_path, monkeypatch):
    cfg = ppo.PPOConfig(iterations=3, prompts_per_rollout=3, samples_per_prompt=4, max_new_tokens=4, epochs=2,
                        minibatches=2, kl_target=0.5, kl_horizon=100, optimizer=train.OptimizerConfig(
                            learning_rate=1e-2, schedule="cosine"))
    calls = []

    def counted(prompts, responses, mask):
        calls.append(len(prompts))
        return _token_reward(prompts, responses, mask)

    whole, whole_stats = _run(tmp_path / "whole", cfg, counted, prompts=PROMPTS3)
    assert len(calls) == 3
    original = ppo.PPORun.minibatch_indices

    def preempting(self, i, epoch, minibatch):
        if (i, epoch, minibatch) == (1, 0, 1) and not os.path.exists(tmp_path / "stopped"):
            open(tmp_path / "stopped", "w").close()
            os.kill(os.getpid(), signal.SIGTERM)  # the step at position 5 runs, saves, and the run stops
        return original(self, i, epoch, minibatch)

    monkeypatch.setattr(ppo.PPORun, "minibatch_indices", preempting)
    calls.clear()
    with pytest.raises(stages.StagePreempted, match="stopped at step 6"):
        _run(tmp_path / "split", cfg, counted, prompts=PROMPTS3)
    split, split_stats = _run(tmp_path / "split", cfg, counted, prompts=PROMPTS3)
    assert len(calls) == 3  # iteration 1's rollout was reloaded from disk, not drawn again
    for x, y in zip(jax.tree.leaves(nnx.state(whole.model)), jax.tree.leaves(nnx.state(split.model))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    timing = ("rollout_tokens_per_s", "reward_seconds", "score_seconds")
    strip = lambda stats: [{k: v for k, v in s.items() if k not in timing} for s in stats]  # noqa: E731
    assert strip(whole_stats) == strip(split_stats)
    assert [s["kl_coef"] for s in whole_stats][0] == 0.05 and len({s["kl_coef"] for s in whole_stats}) == 3


def test_adaptive_kl_coefficient_by_hand():
    cfg = ppo.PPOConfig(prompts_per_rollout=16, samples_per_prompt=4, kl_target=1.0, kl_horizon=100)
    assert ppo.next_kl_coef(cfg, 0.1, 2.0) == pytest.approx(0.1 * (1 + 0.2 * 64 / 100))
    assert ppo.next_kl_coef(cfg, 0.1, 0.9) == pytest.approx(0.1 * (1 - 0.1 * 64 / 100))
    assert ppo.next_kl_coef(ppo.PPOConfig(), 0.1, 5.0) == 0.1  # fixed without a target
    # Its reach over a run: 150 iterations of 64 responses at the default horizon of 10,000 samples move the
    # coefficient by at most 1.00128 ** 150 = 1.211x; and each step at the clip does reach that factor.
    slow = ppo.PPOConfig(prompts_per_rollout=16, samples_per_prompt=4, iterations=150, kl_target=1.0)
    assert ppo.kl_coef_reach(slow) == pytest.approx(1.00128 ** 150) and ppo.kl_coef_reach(slow) < 1.22
    coef = 0.1
    for _ in range(150):
        coef = ppo.next_kl_coef(slow, coef, 10.0)
    assert coef / 0.1 == pytest.approx(ppo.kl_coef_reach(slow))
    assert ppo.kl_coef_reach(ppo.PPOConfig()) == 1.0


def test_bad_configs_and_rewards_are_refused_by_name(tmp_path):
    for bad, match in ((dict(epochs=0), "PPOConfig.epochs"), (dict(gamma=1.5), "PPOConfig.gamma"),
                       (dict(kl_coef=float("nan")), "PPOConfig.kl_coef"), (dict(kl_estimator="k9"), "kl_estimator"),
                       (dict(critic="twin"), "PPOConfig.critic"), (dict(kl_target=0.0), "kl_target"),
                       (dict(prompts_per_rollout=3, samples_per_prompt=1, minibatches=2), "equal minibatches"),
                       (dict(temperature=0.0), "temperature")):
        with pytest.raises(ValueError, match=match):
            ppo.PPOConfig(**bad)
    mask = np.ones((2, 3), np.int32)
    with pytest.raises(ValueError, match=r"token rewards must be \[N, R\]"):
        ppo.place_rewards(np.zeros((2, 4)), mask)
    with pytest.raises(ValueError, match="scalar rewards"):
        ppo.place_rewards(np.zeros(3), mask)
    with pytest.raises(ValueError, match="non-finite rewards"):
        ppo.place_rewards(np.array([1.0, np.nan]), mask)
    np.testing.assert_array_equal(ppo.place_rewards(np.array([1.0, 2.0]), np.array([[1, 1, 0], [1, 0, 0]])),
                                  [[0, 1, 0], [2, 0, 0]])
    cfg = ppo.PPOConfig(iterations=1, prompts_per_rollout=4, samples_per_prompt=2)
    with pytest.raises(ValueError, match="3 prompts for prompts_per_rollout=4"):
        _run(tmp_path, cfg, _token_reward, prompts=PROMPTS3)
    with pytest.raises(ValueError, match="one number per response"):
        ppo.make_rollout(ppo.ActorCritic(_policy(), rngs=nnx.Rngs(0)), _policy(), ppo.PPOConfig(
                prompts_per_rollout=3, samples_per_prompt=2, max_new_tokens=2), PROMPTS3,
                lambda p, r, m: (np.zeros(len(p)), {"bad": np.zeros(2)}), jax.random.PRNGKey(0), 0.1, eos_id=EOS,
                pad_id=PAD)


def test_a_sampling_spec_whose_length_disagrees_with_the_config_is_refused(tmp_path):
    cfg = ppo.PPOConfig(iterations=1, prompts_per_rollout=1, samples_per_prompt=2, max_new_tokens=3, minibatches=1)
    run = stages.Run(str(tmp_path), _mesh(), progress=False)
    model = ppo.ActorCritic(_policy(), rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="max_new_tokens=5 disagrees with PPOConfig.max_new_tokens=3"):
        ppo.train_ppo(run, model, _policy(), cfg, PROMPT, _bandit_reward, sampling.SamplingSpec(EOS, PAD, 5))
    assert not os.path.exists(tmp_path / "checkpoints")  # refused before anything was written
    spec = sampling.SamplingSpec.of(type("Tok", (), {"eos_id": 7, "pad_id": 0})(), max_new_tokens=3)
    assert spec == sampling.SamplingSpec(7, 0, 3) and spec.temperature == 1.0 and spec.prompt_width is None
