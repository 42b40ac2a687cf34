"""Inverse-RL fine-tuning (Wulfmeier et al. 2024): MLE, offline IQLearn and online IQLearn, and their evaluation.

A ``Method`` is a typed variant: ``kind`` 'mle', 'iqlearn' (offline) or 'online' (the policy's own samples
mixed into IQLearn's value term with weight ``alpha``), with ``td_weight``, ``gamma`` and, for online,
``alpha``, ``policy_prompts`` (prompts sampled per step) and ``chi2`` (the chi^2 term on data, or on the
data/policy mixture as in the original IQ-Learn) as fields; for the paper's controls, ``entropy_bonus`` (MLE
with an entropy bonus, ``losses.mle_entropy_loss``) and ``train_examples`` (train on the first n examples
only). ``make_loss_fn`` turns it into a ``loss_fn(model, batch, rng)`` for ``train.Trainer`` (kind 'mle' is
``sft.loss_fn``, supervised fine-tuning's); ``online_batch_fn``
adds the policy samples to the data batches; ``finetune`` runs the method as one resumable stage; ``evaluate``
samples n responses per prompt at each temperature and reports task score, diversity (Self-BLEU, distinct-n,
entropy) and how well the model's extracted rewards (summed implied rewards of its own samples) rank good above
bad samples (Spearman, and its within- and across-prompt parts); ``reward_pair_accuracy`` scores them on given
(correct, wrong) pairs.
The losses and their derivation are in ``losses.imitation``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import jax
import numpy as np

from jax_irl import losses, metrics, rollout, sampling, stages, train
from jax_irl.algorithms import sft
from jax_irl.data import batching

KINDS = ("mle", "iqlearn", "online")


@dataclasses.dataclass(frozen=True)
class Method:
    kind: str = "mle"  # mle | iqlearn | online
    td_weight: float = 0.0  # lambda of the chi^2 (TD) regulariser; 0 with kind 'iqlearn' is exactly MLE
    gamma: float = 1.0  # discount of the implied rewards (also used to extract rewards in evaluation)
    alpha: float = 0.1  # online: weight of the policy's states in the value term (the paper's 0.1)
    policy_prompts: int = 8  # online: prompts sampled from the current policy per training step
    chi2: str = "data"  # online: the chi^2 term on data states, or on the data/policy 'mixture' (Garg et al.)
    entropy_bonus: float = 0.0  # mle: MLE minus this times the policy's mean entropy at data states (a control)
    train_examples: Optional[int] = None  # train on only the first n training examples (the small-data ablation)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method kind must be one of {KINDS}; got {self.kind!r}")
        if not self.td_weight >= 0:
            raise ValueError(f"td_weight must be >= 0; got {self.td_weight}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1]; got {self.gamma}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha}")
        if self.policy_prompts < 1:
            raise ValueError(f"policy_prompts must be >= 1; got {self.policy_prompts}")
        if self.chi2 not in losses.CHI2_SUPPORTS:
            raise ValueError(f"chi2 must be one of {losses.CHI2_SUPPORTS}; got {self.chi2!r}")
        if not self.entropy_bonus >= 0:
            raise ValueError(f"entropy_bonus must be >= 0; got {self.entropy_bonus}")
        if self.entropy_bonus and self.kind != "mle":
            raise ValueError(f"entropy_bonus is the MLE control (kind 'mle'); got kind {self.kind!r}")
        if self.train_examples is not None and self.train_examples < 1:
            raise ValueError(f"train_examples must be None (all) or >= 1; got {self.train_examples}")


def make_loss_fn(method: Method, *, vocab_chunk: Optional[int] = None, window: Optional[int] = None,
                 policy_window: Optional[int] = None):
    r"""The loss of an inverse-RL method on token-level soft-Q values (Wulfmeier et al. 2024): MLE, offline IQLearn
    (MLE plus a chi^2 temporal-difference regulariser, ``losses.iqlearn_loss_from_q``) or online IQLearn (the
    policy's own states in the value term, ``losses.iqlearn_online_loss_from_q``).

    (Q(s, a), V(s)) come from ``rollout.causal_lm``: the logits are Q and V = logsumexp Q, so log pi = Q - V.

    Args:
        method: the ``Method`` (kind, td_weight, gamma, alpha, chi2, entropy_bonus).
        vocab_chunk: compute Q and V from the hidden states in vocabulary chunks of this size, never building the
            ``[B, T, V]`` logits (equal to float rounding).
        window: the unembedding on the data rows' response span only (``rollout.loss_window``); the losses, which
            count only masked positions and their successors, are unchanged up to float rounding.
        policy_window: the same for the policy samples (e.g. max_new_tokens).

    Returns:
        ``loss_fn(model, batch, rng) -> (loss, aux)`` for ``train.Trainer``. The batch holds tokens ``[B, T]`` and
        mask ``[B, T - 1]``; online batches also policy_tokens ``[B', T']``, policy_attention ``[B', T']`` and
        policy_mask ``[B', T' - 1]`` (``online_batch_fn``). Kind 'mle' is ``sft.loss_fn``.

    Examples:
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl.algorithms import iqlearn
        >>> from jax_irl.data import batching
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> model = Transformer(presets.preset("tiny", vocab_size=16), rngs=nnx.Rngs(0))
        >>> encoded = {"tokens": np.tile(np.arange(1, 9, dtype=np.int32), (4, 1)),
        ...            "mask": np.tile(np.float32([0, 0, 1, 1, 1, 1, 1]), (4, 1)), "prompt_lengths": np.full(4, 3)}
        >>> batch = {k: encoded[k] for k in ("tokens", "mask")}
        >>> mle, _ = iqlearn.make_loss_fn(iqlearn.Method("mle"))(model, batch, None)
        >>> iq, _ = iqlearn.make_loss_fn(iqlearn.Method("iqlearn", td_weight=0.0))(model, batch, None)
        >>> abs(float(mle) - float(iq)) < 1e-5   # IQLearn without its TD term is MLE
        True

    References:
        Wulfmeier et al., "Imitating Language via Scalable Inverse Reinforcement Learning", 2024.
        Garg et al., "IQ-Learn: Inverse soft-Q Learning for Imitation", NeurIPS 2021.
    """

    def soft_q(model, tokens, mask, attention=None, width=None):
        out = rollout.causal_lm(model, tokens, attention, vocab_chunk=vocab_chunk, mask=mask, window=width)
        return out.target_q, out.values, out.mask

    if method.kind == "mle":  # supervised fine-tuning's own loss (with the entropy-bonus control)
        return sft.loss_fn(vocab_chunk=vocab_chunk, window=window, entropy_bonus=method.entropy_bonus)

    def loss_fn(model, batch, rng):
        target_q, values, mask = soft_q(model, batch["tokens"], batch["mask"], width=window)
        if method.kind == "iqlearn":
            return losses.iqlearn_loss_from_q(target_q, values, mask, gamma=method.gamma,
                                              td_weight=method.td_weight)
        policy_q, policy_values, policy_mask = soft_q(model, batch["policy_tokens"], batch["policy_mask"],
                                                      batch["policy_attention"], policy_window)
        return losses.iqlearn_online_loss_from_q(target_q, values, mask, policy_values, policy_mask,
                                                 alpha=method.alpha, gamma=method.gamma, td_weight=method.td_weight,
                                                 chi2=method.chi2, policy_target_q=policy_q)

    return loss_fn


def online_batch_fn(method: Method, sampler: batching.IndexSampler, encoded: Dict[str, np.ndarray], *, seed: int,
                    prompt_width: int, max_new_tokens: int, eos_id: int, pad_id: int) -> Callable:
    r"""The batches of online IQLearn: each data batch plus responses sampled from the current model.

    Args:
        method: the ``Method`` (its ``policy_prompts``: how many of the batch's prompts the policy answers).
        sampler: the data's ``batching.IndexSampler``.
        encoded: the encoded rows (tokens, mask, prompt_lengths).
        seed: the samples' seed: position p draws with fold_in(PRNGKey(seed), p), so a resumed run draws the same.
        prompt_width: the width the prompts are left-padded to.
        max_new_tokens: the policy samples' length.
        eos_id: the end-of-sequence id.
        pad_id: the padding id.

    Returns:
        ``batch_fn(position, model)`` for ``train.fit`` (wrapped in ``train.ModelBatches``): tokens, mask,
        policy_tokens, policy_attention and policy_mask.

    Examples:
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl.algorithms import iqlearn
        >>> from jax_irl.data import batching
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> model = Transformer(presets.preset("tiny", vocab_size=16), rngs=nnx.Rngs(0))
        >>> encoded = {"tokens": np.tile(np.arange(1, 9, dtype=np.int32), (4, 1)),
        ...            "mask": np.tile(np.float32([0, 0, 1, 1, 1, 1, 1]), (4, 1)), "prompt_lengths": np.full(4, 3)}
        >>> sampler = batching.IndexSampler(4, 2, seed=0)
        >>> batch_fn = iqlearn.online_batch_fn(iqlearn.Method("online", policy_prompts=1), sampler, encoded, seed=0,
        ...                                    prompt_width=4, max_new_tokens=3, eos_id=15, pad_id=0)
        >>> batch = batch_fn(0, model)
        >>> batch["tokens"].shape, batch["policy_tokens"].shape, batch["policy_mask"].shape
        ((2, 8), (1, 7), (1, 6))
    """
    data_fn = sampler.batch_fn({"tokens": encoded["tokens"], "mask": encoded["mask"]})

    def batch_fn(position, model):
        batch = data_fn(position)
        idx = sampler.local_indices(position)[: method.policy_prompts]
        prompts, pmask = rollout.prompt_rows(encoded["tokens"][idx], encoded["prompt_lengths"][idx], pad_id,
                                             prompt_width)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), position)
        s = rollout.sample_rows(model, prompts, pmask, key, max_new_tokens=max_new_tokens, eos_id=eos_id,
                                pad_id=pad_id)
        batch.update(policy_tokens=s["tokens"], policy_attention=s["attention"], policy_mask=s["mask"])
        return batch

    return batch_fn


def finetune(run: stages.Run, method: Method, base, stage: stages.StageConfig, encoded: Dict[str, np.ndarray],
             spec: Optional[sampling.SamplingSpec] = None):
    r"""An inverse-RL method as one resumable stage from ``base`` (``stages.run_stage``).

    Args:
        run: the stage's run (folder, mesh, settings, fingerprint, seed of the batch order and the policy samples).
        method: the ``Method``; with ``method.train_examples`` only the first that many rows are trained on (for
            the same number of steps).
        base: the model to start from (not modified).
        stage: steps, batch size and optimizer.
        encoded: rows from ``batching.encode_examples`` (tokens, mask, prompt_lengths).
        spec: online methods only: the ``sampling.SamplingSpec`` of the policy samples (eos and pad ids,
            ``max_new_tokens`` and the ``prompt_width`` prompts are padded to).

    Returns:
        The fine-tuned model.

    Raises:
        ValueError: for an online method without a spec that sets max_new_tokens and prompt_width.

    Examples:
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl.algorithms import iqlearn
        >>> from jax_irl.data import batching
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> model = Transformer(presets.preset("tiny", vocab_size=16), rngs=nnx.Rngs(0))
        >>> encoded = {"tokens": np.tile(np.arange(1, 9, dtype=np.int32), (4, 1)),
        ...            "mask": np.tile(np.float32([0, 0, 1, 1, 1, 1, 1]), (4, 1)), "prompt_lengths": np.full(4, 3)}
        >>> import jax
        >>> from jax_irl import sampling
        >>> import tempfile
        >>> from jax_irl import parallel, stages
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> run = stages.Run(tempfile.mkdtemp(), mesh, progress=False)
        >>> method = iqlearn.Method("online", td_weight=0.1, policy_prompts=1)
        >>> tuned = iqlearn.finetune(run, method, model, stages.StageConfig(steps=2, batch_size=2), encoded,
        ...                          sampling.SamplingSpec(15, 0, max_new_tokens=3, prompt_width=4))
        >>> type(tuned).__name__
        'Transformer'
    """
    encoded = sft.first_examples(encoded, method.train_examples)
    sampler = batching.IndexSampler(len(encoded["tokens"]), stage.batch_size, seed=run.seed)
    online = method.kind == "online"
    if online:
        if spec is None or spec.max_new_tokens is None or spec.prompt_width is None:
            raise ValueError(f"online IQLearn samples from the policy: pass a sampling spec with max_new_tokens and "
                             f"prompt_width; got {spec!r}")
        batch_fn = train.ModelBatches(online_batch_fn(method, sampler, encoded, seed=run.seed,
                                                      prompt_width=spec.prompt_width,
                                                      max_new_tokens=spec.max_new_tokens, eos_id=spec.eos_id,
                                                      pad_id=spec.pad_id))
    else:
        batch_fn = sampler.batch_fn({"tokens": encoded["tokens"], "mask": encoded["mask"]})
    loss_fn = make_loss_fn(method, vocab_chunk=run.settings.vocab_chunk, window=rollout.loss_window(encoded["mask"]),
                           policy_window=spec.max_new_tokens if online else None)
    return run.stage(base, loss_fn, stage, batch_fn).model


def evaluate(model, tokenizer, prompts: np.ndarray, prompt_mask: np.ndarray, references: Sequence[str], key, *,
             temperatures: Sequence[float], num_samples: int, max_new_tokens: int, gamma: float,
             correct_fn: Callable[[str, str], float] = metrics.answers_match, prompts_per_batch: Optional[int] = None,
             rows_per_score: Optional[int] = None,
             expert_support: Optional[Sequence[Sequence[str]]] = None) -> Dict[str, Dict[str, float]]:
    r"""The inverse-RL evaluation of a model: samples n responses per prompt at each temperature, and reports task
    score, diversity and how well the model's extracted rewards rank its own samples.

    Args:
        model: the causal LM.
        tokenizer: its ``TextTokenizer``.
        prompts: ``[P, W]`` left-padded prompt ids.
        prompt_mask: ``[P, W]`` 1 on the prompt tokens.
        references: ``[P]`` reference answers for ``correct_fn``.
        key: the sampler's PRNG key.
        temperatures: the sampling temperatures.
        num_samples: samples per prompt.
        max_new_tokens: the samples' length.
        gamma: the discount of the extracted reward (summed implied rewards, ``losses.implied_rewards``).
        correct_fn: ``correct_fn(text, reference) -> score`` (default: the final answers match).
        prompts_per_batch: the sampler's chunk of prompts (``rollout.sample_and_evaluate``).
        rows_per_score: rows per scoring call.
        expert_support: per prompt, the texts an expert writes uniformly at random: adds 'expert_tv',
            'expert_coverage' and 'expert_valid' (``metrics.expert_match``).

    Returns:
        ``{temperature key ("0.5", "1", ...): metrics}``: accuracy, self_bleu, distinct_1, distinct_2, entropy
        (per generated token),
        mean_reward, reward_correlation (Spearman of extracted reward against score), reward_within and
        reward_across (its within- and across-prompt parts).

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
        >>> from jax_irl.algorithms import iqlearn
        >>> out = iqlearn.evaluate(model, tok, tokens, mask, ["3", "4"], jax.random.PRNGKey(0), temperatures=(1.0,),
        ...                        num_samples=2, max_new_tokens=4, gamma=0.9)
        >>> list(out), sorted(out["1"])[:4], 0 <= out["1"]["accuracy"] <= 1
        (['1'], ['accuracy', 'distinct_1', 'distinct_2', 'entropy'], True)
    """
    scorer = rollout.LMScores(("implied_rewards", "entropy"), gamma=gamma, per_row=True)
    evaluated = rollout.sample_and_evaluate(model, tokenizer, prompts, prompt_mask, references, key,
                                            temperatures=temperatures, num_samples=num_samples,
                                            max_new_tokens=max_new_tokens, score_fn=lambda t, r: float(correct_fn(t, r)),
                                            scorer=scorer, prompts_per_batch=prompts_per_batch,
                                            rows_per_score=rows_per_score)
    results = {}
    for temperature, ev in evaluated.items():
        rewards, counts = ev.row_scores["implied_rewards"], ev.row_scores["num_tokens"]
        grouped: List[List[str]] = [ev.texts[i:i + num_samples] for i in range(0, len(ev.texts), num_samples)]
        split = (metrics.correlation_split(rewards, ev.scores, np.repeat(np.arange(len(grouped)), num_samples))
                 if np.all(np.isfinite(rewards)) else {"within": float("nan"), "across": float("nan")})
        results[temperature] = {
            "accuracy": float(ev.scores.mean()),
            "self_bleu": metrics.self_bleu(grouped) if num_samples > 1 else float("nan"),
            "distinct_1": metrics.distinct_n(grouped, 1),
            "distinct_2": metrics.distinct_n(grouped, 2),
            "entropy": float(np.sum(ev.row_scores["entropy"], dtype=np.float64) / max(float(np.sum(counts)), 1.0)),
            "reward_correlation": metrics.spearman(rewards, ev.scores),
            "reward_within": split["within"],  # Pearson, within prompts: does the reward rank a prompt's samples?
            "reward_across": split["across"],  # Pearson of prompt means: does it tell easy prompts from hard?
            "mean_reward": float(np.mean(rewards)),
        }
        if expert_support is not None:
            match = metrics.expert_match(grouped, expert_support)
            results[temperature].update({f"expert_{k}": v for k, v in match.items()})
    return results


def reward_pair_accuracy(model, tokenizer, prompts: Sequence[str], good: Sequence[str], bad: Sequence[str], *,
                         gamma: float, max_length: int, rows_per_score: Optional[int] = None) -> float:
    r"""How often a model's extracted reward (its summed implied rewards at ``gamma``, as ``evaluate`` scores
    samples) ranks the good response of a pair above the bad one.

    Args:
        model: the causal LM.
        tokenizer: its ``TextTokenizer``.
        prompts: ``[N]`` prompt texts.
        good: ``[N]`` good responses (e.g. correct solutions).
        bad: ``[N]`` bad responses to the same prompts (e.g. ``data.arithmetic.wrong_solution``).
        gamma: the discount of the implied rewards.
        max_length: the scored rows' length.
        rows_per_score: rows per scoring call.

    Returns:
        The share of pairs ranked right, ties counting one half.

    Raises:
        ValueError: when the three lists are empty or of different lengths.

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
        >>> from jax_irl.algorithms import iqlearn
        >>> acc = iqlearn.reward_pair_accuracy(model, tok, texts, ["3", "4"], ["4", "3"], gamma=1.0, max_length=12)
        >>> acc in (0.0, 0.5, 1.0)
        True
    """
    if not (len(prompts) == len(good) == len(bad)) or not prompts:
        raise ValueError(f"need as many prompts, good and bad responses (> 0); got {len(prompts)}, {len(good)}, "
                         f"{len(bad)}")
    enc = batching.encode_examples(tokenizer, list(prompts) * 2, list(good) + list(bad), max_length)
    rows = batching.trim_padding({"tokens": enc["tokens"], "mask": enc["mask"]}, tokenizer.pad_id)
    scores = rollout.score_rows(model, rollout.LMScores(("implied_rewards",), gamma=gamma, per_row=True), rows,
                                rows_per_batch=rows_per_score)["implied_rewards"]
    return metrics.pair_ranking_accuracy(scores[:len(prompts)], scores[len(prompts):])
