"""GAIL for language models: on a one-token task whose expert always answers 'd', the policy (starting near
uniform) moves to the expert's answer through the discriminator's reward alone; the discriminator's reward is
the loss module's function of its logits; a second call resumes from the saved stages without training; bad
input is refused by name."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses, parallel, rollout, sampling, stages, train
from jax_irl.algorithms import gail, grpo
from jax_irl.algorithms import reward_models as rm
from jax_irl.data import batching
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

CHARS = "abcdefgh"
PAD, EOS, BOS = 0, 1, 2
V = 3 + len(CHARS)


class _Chars:
    """A character tokenizer: pad 0, eos 1, bos 2, then one id per letter."""

    pad_id, eos_id, bos_id = PAD, EOS, BOS

    def encode(self, text):
        return [3 + CHARS.index(c) for c in text]

    def decode(self, ids):
        return "".join(CHARS[int(i) - 3] for i in ids if int(i) >= 3)


TOK = _Chars()
N = 16  # training examples: prompt 'a', the expert's answer 'd'
TEXTS = gail.Texts(["a"] * N, ["d"] * N)
SPEC = sampling.SamplingSpec(EOS, PAD, max_new_tokens=1, prompt_width=2)


def _encoded():
    enc = batching.encode_examples(TOK, list(TEXTS.prompts), list(TEXTS.responses), max_length=5)
    return {k: enc[k] for k in ("tokens", "mask", "prompt_lengths")}


def _model():
    cfg = TransformerConfig.for_family("llama", vocab_size=V, hidden_size=16, num_layers=1, num_heads=2,
                                       num_kv_heads=2, intermediate_size=32, max_position_embeddings=16)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def _run(folder, seed=0):
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    return stages.Run(str(folder), mesh, stages.RunSettings(save_every=1000), fingerprint={"test": 1}, seed=seed,
                      progress=False)


# A start near uniform (one MLE step at a tiny learning rate), so that what moves the policy is GAIL's reward.
MLE = stages.StageConfig(steps=1, batch_size=8, optimizer=train.OptimizerConfig(learning_rate=1e-6))
CFG = gail.GAILConfig(
    rounds=3, disc_prompts=N,
    policy=grpo.GRPOConfig(method="grpo", iterations=8, prompts_per_rollout=1, group_size=16, max_new_tokens=1,
                           kl_coef=0.0, optimizer=train.OptimizerConfig(learning_rate=2e-2)),
    disc_stage=stages.StageConfig(steps=15, batch_size=8, optimizer=train.OptimizerConfig(learning_rate=1e-2)))


def _p_expert(model):
    logits = model(jnp.asarray([[BOS, 3]])).logits[0, -1]  # after '<bos> a'
    return float(jax.nn.softmax(logits.astype(jnp.float32))[3 + CHARS.index("d")])


@pytest.mark.slow
def test_gail_moves_a_near_uniform_policy_to_the_experts_answer_and_resumes(tmp_path):
    start = _p_expert(_model())
    result = gail.finetune(_run(tmp_path), CFG, _model(), MLE, _encoded(), TEXTS, TOK, SPEC)
    assert start < 0.2 and _p_expert(result.model) > 0.8, (start, _p_expert(result.model))
    first = result.rounds[0]
    assert first["pairs"] == N and first["disc_data_accuracy"] + first["disc_policy_accuracy"] > 1.5  # it tells
    assert result.rounds[-1]["policy_reward"] > first["policy_reward"]  # the policy earns more of its reward
    for r in range(CFG.rounds):
        assert os.path.exists(tmp_path / f"round_{r}" / "disc_pairs.json")
    # a second call finds every stage finished: the same params, nothing trained again
    again = gail.finetune(_run(tmp_path), CFG, _model(), MLE, _encoded(), TEXTS, TOK, SPEC)
    for a, b in zip(jax.tree.leaves(nnx.state(result.model)), jax.tree.leaves(nnx.state(again.model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert again.rounds == result.rounds


def test_the_discriminator_reward_is_the_loss_modules_function_of_its_logits():
    disc = rm.build(gail.DISCRIMINATOR, lambda r: _model(), seed=3)
    ids = np.array([[3 + CHARS.index("d")], [3 + CHARS.index("b")]], np.int32)
    for kind in losses.DISCRIMINATOR_REWARDS:
        reward, stats = gail.DiscriminatorReward(disc, TOK, kind, 6)(["a", "a"], ids, np.ones_like(ids))
        rows = rm.text_rows(TOK, ["a", "a"], ["d", "b"], 6)
        logits = np.asarray(disc(jnp.asarray(rows["tokens"]), jnp.asarray(rows["attention"])))[:, 0]
        np.testing.assert_allclose(stats["disc_logit"], logits, rtol=1e-5)
        np.testing.assert_allclose(reward, losses.discriminator_reward(jnp.asarray(logits), kind), rtol=1e-5)
        np.testing.assert_allclose(stats["disc_d"], 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_a_classifying_fit_separates_data_from_policy(tmp_path):
    """reward_models.fit_pairs(objective='classify'): data answers 'd' score > 0, policy answers < 0."""
    records = [{"prompt": "a", "chosen": "d", "rejected": c} for c in "abcefgh"] * 2
    disc = rm.fit_pairs(_run(tmp_path), rm.build(gail.DISCRIMINATOR, lambda r: _model(), seed=0),
                        gail.DISCRIMINATOR, records, TOK,
                        stages.StageConfig(steps=30, batch_size=7, optimizer=train.OptimizerConfig(learning_rate=1e-2)),
                        max_length=6, objective="classify")
    rows = rm.text_rows(TOK, ["a"] * 8, list("dabcefgh"), 6)
    logits = np.asarray(rollout.score_rows(disc, rollout.RewardScores("mean"),
                                           {k: rows[k] for k in ("tokens", "attention")})["reward"])
    assert logits[0] > 0 and (logits[1:] < 0).all(), logits
    with pytest.raises(ValueError, match=r"objective must be one of \('bradley_terry', 'classify'\); got 'gan'"):
        rm.fit_pairs(_run(tmp_path / "x"), disc, gail.DISCRIMINATOR, records, TOK, MLE, max_length=6,
                     objective="gan")


def test_bad_configs_and_inputs_are_refused_by_name(tmp_path):
    for field, value, match in (("rounds", 0, "GAILConfig.rounds must be an int >= 1"),
                                ("reward", "airl", r"GAILConfig.reward must be one of \('logit', 'gail', 'log_d'\)"),
                                ("mle_steps", -1, "GAILConfig.mle_steps must be an int >= 0"),
                                ("gamma", 0.0, r"GAILConfig.gamma must be in \(0, 1\]"),
                                ("train_examples", 0, "GAILConfig.train_examples must be None")):
        with pytest.raises(ValueError, match=match):
            gail.GAILConfig(**{field: value})
    run = _run(tmp_path)
    with pytest.raises(ValueError, match="GAIL samples from the policy: pass a sampling spec with max_new_tokens"):
        gail.finetune(run, CFG, _model(), MLE, _encoded(), TEXTS, TOK, sampling.SamplingSpec(EOS, PAD))
    with pytest.raises(ValueError, match=r"texts must hold one prompt and response per encoded row \(16\)"):
        gail.finetune(run, CFG, _model(), MLE, _encoded(), gail.Texts(["a"], ["d"]), TOK, SPEC)
    with pytest.raises(ValueError, match=r"disc_prompts \(64\) .* need as many training examples; there are 16"):
        gail.finetune(run, gail.GAILConfig(policy=CFG.policy), _model(), MLE, _encoded(), TEXTS, TOK, SPEC)
    with pytest.raises(ValueError, match="max_new_tokens=1 disagrees with GAILConfig.policy.max_new_tokens=48"):
        gail.finetune(run, gail.GAILConfig(disc_prompts=4), _model(), MLE, _encoded(), TEXTS, TOK, SPEC)
    assert not os.listdir(tmp_path)  # refused before anything was written
