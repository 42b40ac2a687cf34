"""Adversarial imitation (GAIL; Ho & Ermon 2016) for language models, the third family of Wulfmeier et al.'s
comparison beside MLE and IQLearn.

A discriminator D(x, y) = sigmoid(logit(x, y)) tells the data's (prompt, response) pairs from the policy's; the
policy is trained on a reward read off its logit (``losses.discriminator_reward``) with the critic-free group
floor (``grpo.train_grpo``: G responses a prompt, group-relative advantages, so a per-prompt offset of the
discriminator cancels). Each run:

1. **starts from MLE**: the base fine-tuned on the data (``sft.finetune``), which is also the KL reference;
2. then for ``rounds`` rounds: (a) the current policy answers ``disc_prompts`` training prompts once each; each
   answer is paired with the data's response to the same prompt (``pairs`` records: chosen = data, rejected =
   policy; cached in the round's folder); (b) the discriminator, a reward model on a copy of the MLE model's
   backbone with one head, trains on those pairs (with ``replay``, on every round's pairs so far) by binary
   cross-entropy (``reward_models.fit_pairs(objective='classify')``), continuing from the previous round's;
   (c) the policy runs ``policy.iterations`` GRPO iterations on the discriminator's reward, with the KL to the
   MLE model (``policy.kl_coef``) and an entropy bonus (``policy.entropy_coef``) as stabilisers; (d) with
   ``mle_steps`` > 0, that many MLE steps on the data follow (the MLE term on the data, alternated).

Every stage is a sub-run with its own checkpoints, so a killed run resumes where it stopped, and every sample
is drawn with a key derived from (seed, round).

References:
  Ho & Ermon, "Generative Adversarial Imitation Learning", NeurIPS 2016.
  Wulfmeier et al., "Imitating Language via Scalable Inverse Reinforcement Learning", 2024.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, List, NamedTuple, Optional, Sequence

import jax
import numpy as np
from flax import nnx

from jax_irl import losses, rollout, sampling, stages, train
from jax_irl.algorithms import grpo, pairs, sft
from jax_irl.algorithms import reward_models as rm

DISCRIMINATOR = rm.RMKind()  # one head: a classifier


@dataclasses.dataclass(frozen=True)
class GAILConfig:
    """One GAIL variant. ``policy`` is the group method of each round's policy update (its ``iterations`` per
    round); ``gamma`` is used only to extract implied rewards in evaluation, as for the other families."""

    rounds: int = 3
    policy: grpo.GRPOConfig = grpo.GRPOConfig(
        method="grpo", iterations=4, prompts_per_rollout=8, group_size=4, max_new_tokens=48, kl_coef=0.05,
        entropy_coef=0.0, optimizer=train.OptimizerConfig(learning_rate=1e-4, max_grad_norm=1.0))
    reward: str = "logit"  # losses.DISCRIMINATOR_REWARDS
    disc_prompts: int = 64  # training prompts a round: one policy answer each, against the data's response
    disc_stage: stages.StageConfig = stages.StageConfig(steps=20, batch_size=16, optimizer=train.OptimizerConfig(
        learning_rate=3e-4, schedule="cosine", warmup_steps=2, weight_decay=0.01))
    replay: bool = True  # the discriminator trains on every round's pairs so far, not only this round's
    mle_steps: int = 0  # MLE steps on the data after each round's policy update (0: none)
    mle_batch: int = 32
    gamma: float = 0.9
    train_examples: Optional[int] = None  # train on only the first n training examples

    def __post_init__(self):
        for name in ("rounds", "disc_prompts", "mle_batch"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"GAILConfig.{name} must be an int >= 1; got {value!r}")
        if not (isinstance(self.mle_steps, int) and self.mle_steps >= 0):
            raise ValueError(f"GAILConfig.mle_steps must be an int >= 0; got {self.mle_steps!r}")
        if self.reward not in losses.DISCRIMINATOR_REWARDS:
            raise ValueError(f"GAILConfig.reward must be one of {losses.DISCRIMINATOR_REWARDS}; got {self.reward!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"GAILConfig.gamma must be in (0, 1]; got {self.gamma!r}")
        if self.train_examples is not None and self.train_examples < 1:
            raise ValueError(f"GAILConfig.train_examples must be None (all) or >= 1; got {self.train_examples!r}")


class Texts(NamedTuple):
    """The data as text, row for row with the encoded rows: prompts and their responses."""

    prompts: Sequence[str]
    responses: Sequence[str]


@dataclasses.dataclass(frozen=True)
class DiscriminatorReward:
    """``grpo.train_grpo``'s reward function: each response's reward from the discriminator's logit on (prompt,
    response) (``losses.discriminator_reward``), with the logit and D as stats."""

    discriminator: nnx.Module
    tokenizer: object
    kind: str
    max_length: int

    def __call__(self, prompts: Sequence[str], response_ids: np.ndarray, response_mask: np.ndarray):
        texts = [self.tokenizer.decode(r[m > 0]) for r, m in zip(response_ids, response_mask)]
        rows = rm.text_rows(self.tokenizer, prompts, texts, self.max_length)
        logits = rollout.score_rows(self.discriminator, rollout.RewardScores("mean"),
                                    {k: rows[k] for k in ("tokens", "attention")}, rows_per_batch=64)["reward"]
        logits = np.asarray(logits, np.float64)
        reward = np.asarray(losses.discriminator_reward(jax.numpy.asarray(logits), self.kind), np.float64)
        return reward, {"disc_logit": logits, "disc_d": 1.0 / (1.0 + np.exp(-logits))}


def draw_pairs(policy, prompts: rollout.Prompts, texts: Texts, count: int, key, spec: sampling.SamplingSpec,
               tokenizer) -> dict:
    r"""One round of GAIL's discriminator data: the policy's answer to ``count`` training prompts, each paired with
    the data's response to the same prompt.

    Args:
        policy: the current policy (a causal LM).
        prompts: the training ``rollout.Prompts`` (row for row with ``texts``).
        texts: the data as ``Texts`` (prompts and responses).
        count: how many prompts (a random permutation's first ``count``, drawn with ``key``).
        key: the PRNG key of the prompts' draw and the samples.
        spec: the ``sampling.SamplingSpec`` (eos, pad, max_new_tokens).
        tokenizer: the ``TextTokenizer`` that decodes the answers.

    Returns:
        ``{"records": [{"prompt", "chosen": the data's response, "rejected": the policy's}], "identical": how many
        answers were the data's response itself}``.

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
        >>> from jax_irl import sampling
        >>> from jax_irl.algorithms import gail, grpo
        >>> data = gail.Texts(texts, ["3", "4"])
        >>> spec = sampling.SamplingSpec(tok.eos_id, tok.pad_id, max_new_tokens=4, prompt_width=6)
        >>> drawn = gail.draw_pairs(model, prompts, data, 2, jax.random.PRNGKey(0), spec, tok)
        >>> len(drawn["records"]), sorted(drawn["records"][0])
        (2, ['chosen', 'prompt', 'rejected'])
    """
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), len(prompts.tokens)))[:count]
    chosen = prompts.take(order)
    rows = rollout.sample_rows(policy, chosen.tokens, chosen.mask, jax.random.fold_in(key, 1),
                               max_new_tokens=spec.max_new_tokens, eos_id=spec.eos_id, pad_id=spec.pad_id)
    answers = [tokenizer.decode(r[m > 0]) for r, m in zip(rows["response"], rows["response_mask"])]
    records = [{"prompt": texts.prompts[i], "chosen": texts.responses[i], "rejected": a}
               for i, a in zip(order.tolist(), answers)]
    return {"records": records, "identical": sum(r["chosen"].strip() == r["rejected"].strip() for r in records)}


class GAILResult(NamedTuple):
    model: nnx.Module  # the final policy
    # per round: 'pairs' (the discriminator's buffer), 'identical' (answers that were the data's own),
    # 'disc_data_accuracy' / 'disc_policy_accuracy' (on this round's pairs, which it has just trained on), and
    # the mean 'policy_reward' and 'policy_kl' of the round's GRPO rollouts
    rounds: List[Dict[str, float]]


def finetune(run: stages.Run, cfg: GAILConfig, base: nnx.Module, stage: stages.StageConfig,
             encoded: Dict[str, np.ndarray], texts: Texts, tokenizer, spec: sampling.SamplingSpec) -> GAILResult:
    r"""GAIL for a language model (Ho & Ermon 2016), as in the module docstring: MLE first, then ``cfg.rounds``
    rounds of (policy answers, discriminator training, GRPO on the discriminator's reward, optional MLE steps),
    every stage a resumable sub-run of ``run``.

    Args:
        run: the run (folder, mesh, settings, seed); sub-runs mle/, round_<r>/{disc,policy,mle}/.
        cfg: the ``GAILConfig`` (rounds, policy's group method, reward form, discriminator prompts and stage,
            replay, MLE steps).
        base: the model to start from.
        stage: the first MLE stage (its optimizer is also the later MLE steps').
        encoded: the encoded rows (tokens, mask, prompt_lengths).
        texts: the same rows as ``Texts``.
        tokenizer: the ``TextTokenizer``.
        spec: the ``sampling.SamplingSpec``: eos and pad ids, ``prompt_width`` and ``max_new_tokens`` (of the
            discriminator's policy samples; must agree with ``cfg.policy``).

    Returns:
        A ``GAILResult``: the final policy and per-round stats (pairs, identical, disc_data_accuracy,
        disc_policy_accuracy, policy_reward, policy_kl).

    Raises:
        ValueError: on a spec without length or width, texts that do not match the rows, or fewer training rows
            than the discriminator's or the policy's prompts.

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
        >>> from jax_irl import sampling
        >>> from jax_irl.algorithms import gail, grpo
        >>> data = gail.Texts(texts, ["3", "4"])
        >>> spec = sampling.SamplingSpec(tok.eos_id, tok.pad_id, max_new_tokens=4, prompt_width=6)
        >>> import tempfile
        >>> from jax_irl import parallel, stages
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> run = stages.Run(tempfile.mkdtemp(), mesh, progress=False)
        >>> policy = grpo.GRPOConfig("grpo", iterations=1, prompts_per_rollout=2, group_size=2, max_new_tokens=4)
        >>> cfg = gail.GAILConfig(rounds=1, policy=policy, disc_prompts=2,
        ...                       disc_stage=stages.StageConfig(steps=2, batch_size=2))
        >>> out = gail.finetune(run, cfg, model, stages.StageConfig(steps=2, batch_size=2), enc, data, tok, spec)
        >>> len(out.rounds), sorted(out.rounds[0])[:2]
        (1, ['disc_data_accuracy', 'disc_policy_accuracy'])

    References:
        Ho & Ermon, "Generative Adversarial Imitation Learning", NeurIPS 2016.
    """
    if spec.max_new_tokens is None or spec.prompt_width is None:
        raise ValueError(f"GAIL samples from the policy: pass a sampling spec with max_new_tokens and prompt_width; "
                         f"got {spec!r}")
    if len(texts.prompts) != len(encoded["tokens"]) or len(texts.responses) != len(encoded["tokens"]):
        raise ValueError(f"texts must hold one prompt and response per encoded row ({len(encoded['tokens'])}); got "
                         f"{len(texts.prompts)} prompts and {len(texts.responses)} responses")
    spec.check_length(cfg.policy.max_new_tokens, "GAILConfig.policy")
    encoded = sft.first_examples(encoded, cfg.train_examples)
    n = len(encoded["tokens"])
    texts = Texts(list(texts.prompts)[:n], list(texts.responses)[:n])
    if cfg.disc_prompts > n or cfg.policy.prompts_per_rollout > n:
        raise ValueError(f"GAILConfig.disc_prompts ({cfg.disc_prompts}) and policy.prompts_per_rollout "
                         f"({cfg.policy.prompts_per_rollout}) need as many training examples; there are {n}")
    policy = sft.finetune(run.sub("mle", desc=f"{run.desc} mle"), base, stage, encoded)
    reference = nnx.clone(policy)
    tokens, mask = rollout.prompt_rows(encoded["tokens"], encoded["prompt_lengths"], spec.pad_id, spec.prompt_width)
    prompts = rollout.Prompts(tokens, mask, list(texts.prompts))
    max_length = spec.prompt_width + 2 * spec.max_new_tokens + 2  # (bos, eos; the data's responses may run longer)
    discriminator = rm.build(DISCRIMINATOR, functools.partial(rm.copy_of, reference), seed=run.seed)
    buffer, rounds = [], []
    for r in range(cfg.rounds):
        here = run.sub(f"round_{r}")
        drawn = here.cached("disc_pairs.json", functools.partial(
            draw_pairs, policy, prompts, texts, cfg.disc_prompts,
            jax.random.fold_in(jax.random.PRNGKey(run.seed), 1000 + r), spec, tokenizer))
        buffer = buffer + drawn["records"] if cfg.replay else drawn["records"]
        if any(x["chosen"].strip() != x["rejected"].strip() for x in buffer):
            discriminator = rm.fit_pairs(here.sub("disc", desc=f"{run.desc} round {r} discriminator"),
                                         discriminator, DISCRIMINATOR, buffer, tokenizer, cfg.disc_stage,
                                         max_length=max_length, objective="classify")
        # else every answer was the data's own: nothing to tell apart, the discriminator stays as it was
        held = rm.pair_rows(pairs.preference_rows(tokenizer, drawn["records"], max_length))
        logits = rollout.score_rows(discriminator, rollout.RewardScores("mean"),
                                    {k: held[k] for k in ("tokens", "attention")}, rows_per_batch=64)["reward"]
        result, stats = grpo.train_grpo(
            here.sub("policy", desc=f"{run.desc} round {r} policy"), policy, reference, cfg.policy, prompts,
            DiscriminatorReward(discriminator, tokenizer, cfg.reward, max_length), spec)
        policy = result.model
        if cfg.mle_steps:
            mle = stages.StageConfig(steps=cfg.mle_steps, batch_size=min(cfg.mle_batch, n), optimizer=stage.optimizer)
            policy = sft.finetune(here.sub("mle", desc=f"{run.desc} round {r} mle"), policy, mle, encoded)
        rounds.append({"pairs": float(len(buffer)), "identical": float(drawn["identical"]),
                       "disc_data_accuracy": float(np.mean(logits[0::2] > 0)),
                       "disc_policy_accuracy": float(np.mean(logits[1::2] < 0)),
                       "policy_reward": float(np.mean([s["reward"] for s in stats])),
                       "policy_kl": float(np.mean([s["kl"] for s in stats]))})
    return GAILResult(policy, rounds)



__all__ = ["DISCRIMINATOR", "DiscriminatorReward", "GAILConfig", "GAILResult", "Texts", "draw_pairs", "finetune"]
