"""Preference learning as Gibbs sampling (Xiong et al. 2023/24, "Gibbs Sampling from Human Feedback" /
"Iterative Preference Learning from Human Feedback"): offline DPO, rejection sampling and the online loop.

KL-regularised RLHF asks for  max_pi E_{x, a~pi}[r(x, a)] - eta KL(pi(.|x) || pi0(.|x)),  whose solution is the
Gibbs policy

    pi*(a|x) = pi0(a|x) exp(r(x, a) / eta) / Z(x).

The paper's oracles for it, as built here:

- DPO (``dpo_loss_fn``): with beta = eta, the policy's implied reward beta log(pi/pi0) is fitted to preference
  pairs by Bradley-Terry, so pi -> pi* as the pairs cover the responses. Reference log-probs are computed once
  per buffer (``reference_logps``) and the step never holds pi0. The pessimistic variant subtracts a per-pair
  margin c * (Gamma_rejected - Gamma_chosen) built from a K-head reward model's disagreement (see
  ``losses.preference``).
- Rejection sampling (``sampling.multi_step_rejection``): candidates a_1..a_n ~ pi0 are accepted with
  probability exp((r_j - max_k r_k) / eta); accepted samples follow pi* as n grows. The multi-step schedule
  eta_1 > ... > eta_N = eta goes pi0 -> pi0 e^{r/eta_1} -> ... -> pi*, each step thinning FRESH samples of the
  previous step's sampler with probability exp((r - max r) (1/eta_k - 1/eta_{k-1})), so each step rejects less
  (n ** N candidates of pi0 per prompt). Two baselines train on the accepted samples: RAFT (kind 'raft', Dong et
  al. 2023) fine-tunes pi0 on them with MLE; RSO (kind 'rso', Liu et al. 2023, "Statistical Rejection Sampling
  Improves Preference Optimization") pairs them up, labels each pair with the oracle, and trains DPO (sigmoid or
  hinge loss) against pi0 on those pairs.
- The online iterative loop (``run_method`` with kind 'online'): T rounds; each draws m prompts, a response
  from the main agent (the current policy: exploitation) and one from the enhancer (best-of-n or rejection
  sampling from the current policy under the oracle's reward: exploration), labels the pair with the
  preference oracle, appends it to the buffer, and retrains with DPO against the fixed pi0 on the whole
  buffer, from pi0 (the paper) or warm-started from the last iterate (the authors' later recipe). 'hybrid'
  starts from an offline set of half the label budget and runs half the rounds; 'offline_dpo' labels the whole
  budget on pi0's own samples at once. A user's own preference file (``Context.offline_records``, read with
  ``data.jsonl.read_jsonl(path, "preference")``) replaces that offline set.

The preference oracle (``pairs.OracleConfig``) labels by a gold reward r*: deterministically (higher r* wins; ties
are skipped) or by Bradley-Terry, P(a_1 > a_2) = sigmoid((r*_1 - r*_2) / temperature). Pairs are records
{"prompt", "chosen", "rejected"} (the JSONL preference format, ``data.jsonl``), so a user's own preference
file trains the same way. Every round is a pure function of (seed, round) and the previous round's params, and
its pairs, checkpoint and evaluation live in its own folder: a run killed in any round resumes to the same
result.

Measured (``evaluate_policy``): the gold reward of the policy's samples, KL(pi || pi0) as the mean over the
policy's own samples of sum_t (log pi - log pi0) with its standard error, and the win rate against pi0's
samples under the gold reward (ties count one half).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_irl import losses, rollout, sampling, stages, train
from jax_irl.algorithms import pairs, sft
from jax_irl.data import batching, jsonl


# --- DPO on a buffer of pairs --------------------------------------------------------------------------------


def reference_logps(pi0, rows: Dict[str, np.ndarray], *, vocab_chunk: Optional[int] = None,
                    rows_per_batch: Optional[int] = 64) -> np.ndarray:
    r"""The reference policy's log-likelihood of each row's response, computed once per buffer so that the DPO step
    never holds pi0:

    $$
    \log \pi_0(y \mid x) = \sum_t m_t \log \pi_0(y_t \mid x, y_{<t}).
    $$

    Args:
        pi0: the reference causal LM.
        rows: ``pairs.preference_rows``' rows: tokens ``[2N, T]``, mask ``[2N, T - 1]``.
        vocab_chunk: the unembedding's vocabulary chunk (``rollout.causal_lm``), or None for full logits.
        rows_per_batch: rows per scoring call (``rollout.score_rows``).

    Returns:
        ``[2N]`` float32 log-probabilities.

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
        >>> from jax_irl.algorithms import gshf, pairs
        >>> records = [{"prompt": "1 + 2 =", "chosen": "3", "rejected": "4"},
        ...            {"prompt": "2 + 2 =", "chosen": "4", "rejected": "3 3"}]
        >>> rows = pairs.preference_rows(tok, records, 12)
        >>> ref = gshf.reference_logps(model, rows)
        >>> ref.shape, bool((ref < 0).all())
        ((4,), True)
    """
    scorer = rollout.LMScores(("log_probs",), vocab_chunk=vocab_chunk, per_row=True)
    scores = rollout.score_rows(pi0, scorer, {"tokens": rows["tokens"], "mask": rows["mask"]},
                                rows_per_batch=rows_per_batch)
    return scores["log_probs"].astype(np.float32)


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1  # the KL strength eta of the Gibbs target
    loss_type: str = "sigmoid"  # sigmoid | robust | ipo | hinge (losses.dpo_loss)
    label_smoothing: float = 0.0
    nll_weight: float = 0.0  # + nll_weight * the chosen responses' per-token NLL (RPO, Pang et al. 2024); 0: DPO

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0; got {self.beta}")
        if self.loss_type not in losses.DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {losses.DPO_LOSS_TYPES}; got {self.loss_type!r}")
        if self.nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0; got {self.nll_weight}")


def dpo_loss_fn(cfg: DPOConfig, vocab_chunk: Optional[int] = None, window: Optional[int] = None):
    r"""DPO's loss on a buffer of pairs (Rafailov et al. 2023), with beta the KL strength eta of the Gibbs target:

    $$
    L = -\log \sigma\Big(\beta \log \frac{\pi(y^+|x)}{\pi_0(y^+|x)} - \beta \log \frac{\pi(y^-|x)}{\pi_0(y^-|x)}
    - \text{margin}\Big) \; [+ \, w \, \mathrm{NLL}(y^+)],
    $$

    or the robust, IPO (on length-averaged log-probs) and hinge forms (``losses.dpo_loss``). The margin is
    pessimistic DPO's c (Gamma_rejected - Gamma_chosen); the NLL term with ``cfg.nll_weight`` is RPO's, which keeps
    DPO from lowering the chosen responses' likelihood along with the rejected ones'.

    Args:
        cfg: the ``DPOConfig`` (beta, loss_type, label_smoothing, nll_weight).
        vocab_chunk: the unembedding's vocabulary chunk, or None for full logits.
        window: ``rollout.loss_window`` of the rows' masks: the unembedding on the responses' span only.

    Returns:
        ``loss_fn(model, batch, rng) -> (loss, aux)`` for ``train.Trainer``. The batch holds tokens ``[2B, T]``
        (chosen, rejected interleaved), mask ``[2B, T - 1]``, ref_logps ``[2B]`` (``reference_logps``) and, for
        pessimistic DPO, margin ``[2B]`` (each pair's margin on both of its rows, so that every field shards over
        the batch axes alike; the chosen rows' is read). aux adds chosen_nll, chosen_logps and rejected_logps to
        ``losses.dpo_loss``'s.

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
        >>> from jax_irl.algorithms import gshf, pairs
        >>> records = [{"prompt": "1 + 2 =", "chosen": "3", "rejected": "4"},
        ...            {"prompt": "2 + 2 =", "chosen": "4", "rejected": "3 3"}]
        >>> rows = pairs.preference_rows(tok, records, 12)
        >>> batch = dict(rows, ref_logps=gshf.reference_logps(model, rows))
        >>> loss, aux = gshf.dpo_loss_fn(gshf.DPOConfig(beta=0.1))(model, batch, None)
        >>> round(float(loss), 4)   # the policy is pi0: log 2
        0.6931

    References:
        Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model", 2023.
        Pang et al., "Iterative Reasoning Preference Optimization", 2024 (the NLL term).
    """

    def loss_fn(model, batch, rng):
        out = rollout.causal_lm(model, batch["tokens"], vocab_chunk=vocab_chunk, mask=batch["mask"], window=window)
        mask = out.mask.astype(jnp.float32)
        logp = jnp.sum(jnp.where(mask != 0, out.target_q - out.values, 0.0), -1)
        count = jnp.maximum(jnp.sum(mask, -1), 1.0)
        ref = batch["ref_logps"]
        if cfg.loss_type == "ipo":
            logp_used, ref = logp / count, ref / count
        else:
            logp_used = logp
        loss, aux = losses.dpo_loss(logp_used[0::2], logp_used[1::2], ref[0::2], ref[1::2], beta=cfg.beta,
                                    loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
                                    margin=batch["margin"][0::2] if "margin" in batch else None)
        nll = jnp.mean(-logp[0::2] / count[0::2])
        aux = dict(aux, chosen_nll=nll, chosen_logps=jnp.mean(logp[0::2]), rejected_logps=jnp.mean(logp[1::2]))
        return (loss + cfg.nll_weight * nll if cfg.nll_weight else loss), aux

    return loss_fn


def pair_batch_fn(rows: Dict[str, np.ndarray], ref_logps: np.ndarray, batch_pairs: int, seed: int,
                  margin: Optional[np.ndarray] = None) -> batching.Batches:
    r"""The batches of a DPO stage: whole pairs, a pure function of (seed, position).

    Args:
        rows: ``pairs.preference_rows``' rows (tokens ``[2N, T]``, mask ``[2N, T - 1]``; chosen at 2i).
        ref_logps: ``[2N]`` reference log-probs (``reference_logps``).
        batch_pairs: pairs per batch (at most N are used).
        seed: the batch order's seed (``batching.IndexSampler`` over the pairs).
        margin: ``[N]`` per-pair margins of pessimistic DPO, put on both rows of each pair; or None.

    Returns:
        A ``batching.Batches``: ``batch_fn(position)`` gives ``2 * batch_pairs`` rows with pairs kept together.

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
        >>> from jax_irl.algorithms import gshf, pairs
        >>> records = [{"prompt": "1 + 2 =", "chosen": "3", "rejected": "4"},
        ...            {"prompt": "2 + 2 =", "chosen": "4", "rejected": "3 3"}]
        >>> rows = pairs.preference_rows(tok, records, 12)
        >>> batches = gshf.pair_batch_fn(rows, np.zeros(4, np.float32), batch_pairs=1, seed=0, margin=[0.5, 1.0])
        >>> batch = batches(0)
        >>> batch["tokens"].shape[0], bool(batch["margin"][0] == batch["margin"][1])
        (2, True)
    """
    num_pairs = len(rows["tokens"]) // 2
    sampler = batching.IndexSampler(num_pairs, min(batch_pairs, num_pairs), seed=seed)
    per_pair = {} if margin is None else {"margin": np.asarray(margin, np.float32)}
    return batching.Batches(sampler, {"tokens": rows["tokens"], "mask": rows["mask"], "ref_logps": ref_logps},
                            rows_per_example=2, per_example=per_pair)


def stage_for(num_items: int, batch_size: int, epochs: float, optimizer: train.OptimizerConfig,
              multiple: int = 1) -> stages.StageConfig:
    r"""A training stage sized by epochs over a buffer.

    Args:
        num_items: items in the buffer (pairs, or samples for RAFT).
        batch_size: the largest batch; a smaller buffer is taken whole.
        epochs: passes over the buffer (> 0).
        optimizer: the stage's ``OptimizerConfig``.
        multiple: the batch is cut down to a multiple of this (the items a mesh's data-parallel axes need).

    Returns:
        A ``stages.StageConfig`` of ceil(epochs * num_items / batch) steps (at least 1) at batch
        min(batch_size, num_items) cut to ``multiple``.

    Raises:
        ValueError: when the items cannot fill one batch of ``multiple``.

    Examples:
        >>> from jax_irl import train
        >>> from jax_irl.algorithms import gshf
        >>> stage = gshf.stage_for(100, 16, 2.0, train.OptimizerConfig(), multiple=3)
        >>> stage.steps, stage.batch_size
        (14, 15)
    """
    batch = min(batch_size, num_items) // multiple * multiple
    if batch < 1:
        raise ValueError(f"{num_items} items cannot fill one batch of a multiple of {multiple} (the mesh's "
                         f"data-parallel size): label more pairs or use fewer data-parallel devices")
    return stages.StageConfig(steps=max(1, math.ceil(epochs * num_items / batch)), batch_size=batch,
                              optimizer=optimizer)


# --- measuring -----------------------------------------------------------------------------------------------


def evaluate_policy(policy, pi0, prompts: rollout.Prompts, key, s: pairs.SampleSettings, num_samples: int,
                    pi0_gold: np.ndarray, vocab_chunk: Optional[int] = None) -> Dict[str, float]:
    r"""A GSHF policy's measures on held-out prompts: gold reward, KL(pi || pi0) and win rate against pi0.

    The KL is the k1 estimate on the policy's own samples, sum_t log pi - log pi0, with its standard error; the
    win rate pairs sample j of the policy with sample j of pi0 (ties count one half). Sampling with pi0's key makes
    the comparison paired: a policy equal to pi0 draws the same samples and scores exactly 1/2.

    Args:
        policy: the trained causal LM.
        pi0: the reference causal LM.
        prompts: the held-out ``rollout.Prompts``.
        key: the sampler's key (pi0's samples ``pi0_gold`` should be drawn with the same).
        s: the ``pairs.SampleSettings`` (tokenizer, length, gold reward).
        num_samples: samples per prompt.
        pi0_gold: ``[P, num_samples]`` gold rewards of pi0's samples (``pairs.sample_texts``).
        vocab_chunk: the unembedding's vocabulary chunk for pi0's scoring pass.

    Returns:
        {'gold', 'gold_se', 'pi0_gold', 'kl', 'kl_se', 'win_rate', 'length'} (floats).

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
        >>> from jax_irl.algorithms import gshf, pairs
        >>> s = pairs.SampleSettings(tok, 4, pairs.per_sample(lambda text, ref: float(len(text))))
        >>> key = jax.random.PRNGKey(0)
        >>> pi0_gold = pairs.sample_texts(model, prompts, key, 2, s)[1]
        >>> out = gshf.evaluate_policy(model, model, prompts, key, s, 2, pi0_gold)
        >>> out["win_rate"], abs(out["kl"]) < 1e-5
        (0.5, True)
    """
    _, gold, rows = pairs.sample_texts(policy, prompts, key, num_samples, s)
    # log pi of each sampled token comes with the samples (the sampler's model log-probs: temperature 1, no
    # filtering); only pi0 needs a forward pass.
    log_pi = rows["model_log_probs"].astype(np.float64).sum(-1)
    scorer = rollout.LMScores(("log_probs",), vocab_chunk=vocab_chunk, per_row=True)
    scored = {k: rows[k] for k in ("tokens", "attention", "mask")}
    log_pi0 = rollout.score_rows(pi0, scorer, scored)["log_probs"].astype(np.float64)
    kl = log_pi - log_pi0
    wins = np.where(gold > pi0_gold, 1.0, np.where(gold == pi0_gold, 0.5, 0.0))
    def se(x):
        return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")

    return {"gold": float(gold.mean()), "gold_se": se(gold.mean(1)), "pi0_gold": float(np.mean(pi0_gold)),
            "kl": float(kl.mean()), "kl_se": se(kl), "win_rate": float(wins.mean()),
            "length": float(rows["response_mask"].sum(1).mean())}


# --- the methods ---------------------------------------------------------------------------------------------

KINDS = ("offline_dpo", "raft", "rso", "online", "hybrid")
REJECTION_KINDS = ("raft", "rso")


@dataclasses.dataclass(frozen=True)
class GSHFMethod:
    kind: str = "online"  # offline_dpo | raft | rso | online | hybrid
    beta: float = 0.1  # KL strength eta: DPO's beta, rejection sampling's final eta
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    rounds: int = 4  # T; the label budget of every kind is rounds * prompts_per_round pairs
    prompts_per_round: int = 32  # m
    enhancer: str = "best_of_n"  # online/hybrid exploration: best_of_n | rejection (under the oracle's reward)
    candidates: int = 4  # n: the enhancer's samples; offline sets' candidates per prompt; raft/rso's pool a step
    warm_start: bool = False  # retrain each round from pi0 (False, the paper) or from the last iterate
    rs_schedule: Tuple[float, ...] = ()  # raft/rso: etas above beta for the multi-step sampler (decreasing)
    epochs: float = 2.0  # passes over the buffer (or the accepted set) per training stage
    nll_weight: float = 0.0  # RPO's NLL term on the chosen responses (0: plain DPO, the paper's oracle)
    pessimism: float = 0.0  # c of pessimistic DPO's margin c * (Gamma_rejected - Gamma_chosen); needs uncertainty

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {self.kind!r}")
        DPOConfig(self.beta, self.loss_type, self.label_smoothing, nll_weight=self.nll_weight)
        if self.rounds < 1 or self.prompts_per_round < 1 or self.candidates < 2:
            raise ValueError(f"need rounds >= 1, prompts_per_round >= 1 and candidates >= 2; got {self.rounds}, "
                             f"{self.prompts_per_round}, {self.candidates}")
        if self.kind == "hybrid" and self.rounds < 2:
            raise ValueError("hybrid needs rounds >= 2 (half offline, half online)")
        if self.enhancer not in ("best_of_n", "rejection"):
            raise ValueError(f"enhancer must be 'best_of_n' or 'rejection'; got {self.enhancer!r}")
        if any(e <= self.beta for e in self.rs_schedule) or list(self.rs_schedule) != sorted(self.rs_schedule,
                                                                                              reverse=True):
            raise ValueError(f"rs_schedule must decrease and stay above beta={self.beta}; got {self.rs_schedule}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be > 0; got {self.epochs}")
        if self.pessimism < 0 or (self.pessimism and self.kind == "raft"):
            raise ValueError(f"pessimism must be >= 0, and applies to the DPO kinds; got {self.pessimism} with "
                             f"{self.kind!r}")


class Context(NamedTuple):
    """What every method of a run shares."""

    pi0: object
    train_prompts: rollout.Prompts
    eval_prompts: rollout.Prompts
    settings: pairs.SampleSettings
    oracle: pairs.OracleConfig
    optimizer: train.OptimizerConfig
    batch_pairs: int
    max_length: int
    eval_samples: int
    offline_records: Optional[List[Dict[str, str]]] = None  # a user's preference pairs: the offline set instead


def drawn_per_prompt(method: GSHFMethod) -> int:
    r"""Samples of the sampling policy one of a method's sampler calls draws per prompt.

    Args:
        method: the ``GSHFMethod``.

    Returns:
        For RAFT and RSO, candidates ** steps (the multi-step rejection sampler draws fresh pools at every step,
        ``len(rs_schedule) + 1`` steps); for the others, the candidates (the online main agent's one sample is a
        call of its own).

    Examples:
        >>> from jax_irl.algorithms import gshf
        >>> gshf.drawn_per_prompt(gshf.GSHFMethod("raft", rs_schedule=(3.0,), candidates=4))
        16
        >>> gshf.drawn_per_prompt(gshf.GSHFMethod("online", candidates=4))
        4
    """
    if method.kind in REJECTION_KINDS:
        return method.candidates ** (len(method.rs_schedule) + 1)
    return method.candidates


def _round_prompts(ctx: Context, seed: int, round_index: int, count: int) -> rollout.Prompts:
    rng = np.random.default_rng((seed, round_index))
    return ctx.train_prompts.take(rng.choice(len(ctx.train_prompts.texts), count, replace=False))


def _pairs_from(model, ctx: Context, method: GSHFMethod, prompts: rollout.Prompts, seed: int, round_index: int,
                online: bool):
    """One round's labelled pairs. Online: main agent (1 sample) against the enhancer (best of n, or a
    rejection-sampled one) from ``model``; offline: the oracle's pair rule over n samples of ``model``."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), round_index)
    rng = np.random.default_rng((seed, round_index, 1))
    texts, gold, _ = pairs.sample_texts(model, prompts, jax.random.fold_in(key, 0), method.candidates, ctx.settings)
    if online:
        main, main_gold, _ = pairs.sample_texts(model, prompts, jax.random.fold_in(key, 1), 1, ctx.settings)
        if method.enhancer == "best_of_n":
            pick = np.argmax(gold, 1)
        else:
            accept, _ = sampling.rejection_accept(jax.random.fold_in(key, 2), gold, method.beta)
            pick = np.array([rng.choice(np.flatnonzero(a)) for a in accept])
        texts = [[m[0], ts[j]] for m, ts, j in zip(main, texts, pick)]
        gold = np.stack([main_gold[:, 0], gold[np.arange(len(pick)), pick]], 1)
    records, counts = pairs.make_pairs(prompts.texts, texts, gold, ctx.oracle, rng)
    _add_uncertainty(ctx, method, records)
    return {"records": records, "counts": counts}


def _add_uncertainty(ctx: Context, method: GSHFMethod, records: List[Dict[str, str]]) -> None:
    """Pessimistic DPO: each record gets the oracle's uncertainty of its chosen and rejected response."""
    if method.pessimism and records:
        if ctx.settings.uncertainty is None:
            raise ValueError("pessimistic DPO needs the oracle's uncertainty (pairs.SampleSettings.uncertainty, e.g. "
                             "reward_models.reward_model_uncertainty of a K-head reward model)")
        u = ctx.settings.uncertainty([r["prompt"] for r in records], [""] * len(records),
                                     [[r["chosen"], r["rejected"]] for r in records])
        for record, (u_chosen, u_rejected) in zip(records, np.asarray(u, np.float64)):
            record.update(chosen_uncertainty=float(u_chosen), rejected_uncertainty=float(u_rejected))


def _pair_multiple(mesh) -> int:
    """Pairs per batch must make 2 * pairs rows divisible by the mesh's data x fsdp size."""
    rows = int(mesh.shape["data"] * mesh.shape["fsdp"])
    return rows // math.gcd(rows, 2)


def _train_dpo(init, ctx: Context, method: GSHFMethod, buffer, run: stages.Run):
    """DPO from ``init`` on the pair buffer as a stage of ``run`` (its fingerprint gains the buffer's digest)."""
    vocab_chunk = run.settings.vocab_chunk
    buffer = pairs.distinct_pairs(ctx.settings.tokenizer, buffer, ctx.max_length, what="preference pairs")
    rows = pairs.preference_rows(ctx.settings.tokenizer, buffer, ctx.max_length)
    ref = reference_logps(ctx.pi0, rows, vocab_chunk=vocab_chunk)
    stage = stage_for(len(buffer), ctx.batch_pairs, method.epochs, ctx.optimizer, _pair_multiple(run.mesh))
    cfg = DPOConfig(method.beta, method.loss_type, method.label_smoothing, nll_weight=method.nll_weight)
    margin = None
    if method.pessimism:  # c * (Gamma_rejected - Gamma_chosen): see losses.preference on the sign
        margin = method.pessimism * np.array([r["rejected_uncertainty"] - r["chosen_uncertainty"] for r in buffer])
    run = run.sub(desc=f"{os.path.basename(os.path.dirname(run.folder))} dpo ({len(buffer)} pairs)",
                  depends={"buffer": pairs.records_digest(buffer), "pairs": len(buffer)})
    result = run.stage(init, dpo_loss_fn(cfg, vocab_chunk, rollout.loss_window(rows["mask"])), stage,
                       pair_batch_fn(rows, ref, stage.batch_size, run.seed, margin))
    return result.model


def run_method(method: GSHFMethod, ctx: Context, run: stages.Run) -> dict:
    r"""One (method, seed) run of preference learning as Gibbs sampling (module docstring): offline DPO, RAFT, RSO,
    online iterative DPO or hybrid, with every round's pairs, training and evaluation kept in
    ``run.folder/round_<t>/`` and reused on resume.

    Args:
        method: the ``GSHFMethod`` (kind, beta, rounds, prompts_per_round, candidates, enhancer, warm start,
            rejection schedule, epochs, pessimism).
        ctx: the ``Context`` every method of a run shares: pi0, training and held-out prompts, sample settings
            (tokenizer, length, gold reward, uncertainty), oracle, optimizer, pairs per batch, row length,
            samples per held-out prompt, and optionally a user's offline pairs.
        run: the run (folder, mesh, settings, seed); the stages' fingerprint is ``run.fingerprint`` with the
            method, the seed and the round.

    Returns:
        {'final': the last policy's measures (``evaluate_policy``) with 'labels', 'skipped' and 'budget' (and the
        acceptance rates of RAFT / RSO), 'rounds': {round: measures}}.

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
        >>> import tempfile
        >>> from jax_irl import parallel, stages
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> run = stages.Run(tempfile.mkdtemp(), mesh, progress=False)
        >>> from jax_irl import train
        >>> from jax_irl.algorithms import gshf, pairs
        >>> s = pairs.SampleSettings(tok, 4, pairs.per_sample(lambda text, ref: float(len(text))))
        >>> ctx = gshf.Context(model, prompts, prompts, s, pairs.OracleConfig(temperature=1.0),
        ...                    train.OptimizerConfig(learning_rate=1e-3), batch_pairs=2, max_length=12, eval_samples=2)
        >>> method = gshf.GSHFMethod("offline_dpo", beta=0.5, rounds=1, prompts_per_round=2, candidates=2)
        >>> out = gshf.run_method(method, ctx, run)
        >>> sorted(out["rounds"]), out["final"]["budget"], 0 <= out["final"]["win_rate"] <= 1
        (['0'], 2.0, True)
    """
    seed, folder = run.seed, run.folder
    # pi0 and every policy sample the eval prompts with the same key (common random numbers): a policy equal to
    # pi0 draws the same samples, so its win rate is exactly 1/2 and the comparison is paired.
    eval_key = jax.random.PRNGKey(20_000 + seed)
    pi0_gold = np.asarray(stages.cached_json(os.path.join(folder, "pi0_eval_gold.json"), lambda: pairs.sample_texts(
        ctx.pi0, ctx.eval_prompts, eval_key, ctx.eval_samples, ctx.settings)[1].tolist()))

    def measure(policy, where: str) -> Dict[str, float]:
        return stages.cached_json(os.path.join(where, "eval.json"), lambda: evaluate_policy(
            policy, ctx.pi0, ctx.eval_prompts, eval_key, ctx.settings, ctx.eval_samples,
            pi0_gold, run.settings.vocab_chunk))

    budget = method.rounds * method.prompts_per_round
    run = run.sub(depends={"method": method, "seed": seed})
    if method.kind in REJECTION_KINDS:
        return _rejection(method, ctx, run, budget, measure)
    offline_rounds = {"offline_dpo": method.rounds, "hybrid": method.rounds // 2, "online": 0}[method.kind]
    buffer, rounds, skipped = [], {}, 0
    policy = ctx.pi0
    if offline_rounds:
        where = os.path.join(folder, "round_0")
        if ctx.offline_records is not None:  # the user's own preference file replaces the labelled pi0 samples
            made = {"records": list(ctx.offline_records),
                    "counts": {"pairs": len(ctx.offline_records), "identical": 0, "ties": 0}}
        else:
            made = stages.cached_json(os.path.join(where, "pairs.json"), lambda: _pairs_from(
                ctx.pi0, ctx, method, _round_prompts(ctx, seed, 0, offline_rounds * method.prompts_per_round), seed,
                0, online=False))
        buffer += made["records"]
        skipped += made["counts"]["identical"] + made["counts"]["ties"]
        policy = _train_dpo(ctx.pi0, ctx, method, buffer, run.sub("round_0/train", depends={"round": 0}))
        rounds["0"] = measure(policy, where)
    for t in range(1 if offline_rounds else 0, method.rounds - offline_rounds + (1 if offline_rounds else 0)):
        where = os.path.join(folder, f"round_{t}")
        current = policy
        made = stages.cached_json(os.path.join(where, "pairs.json"), lambda: _pairs_from(
            current, ctx, method, _round_prompts(ctx, seed, t, method.prompts_per_round), seed, t, online=True))
        buffer += made["records"]
        skipped += made["counts"]["identical"] + made["counts"]["ties"]
        init = policy if method.warm_start else ctx.pi0
        policy = _train_dpo(init, ctx, method, buffer, run.sub(f"round_{t}/train", depends={"round": t}))
        rounds[str(t)] = measure(policy, where)
    final = dict(rounds[max(rounds, key=int)], labels=float(len(buffer)), skipped=float(skipped),
                 budget=float(budget))
    if jax.process_index() == 0:
        jsonl.write_jsonl(os.path.join(folder, "buffer.jsonl"), buffer)
    return {"final": final, "rounds": rounds}


def _rejection(method: GSHFMethod, ctx: Context, run: stages.Run, budget: int, measure):
    """The rejection-sampling baselines: n ** N samples of pi0 per prompt for the label budget's prompts
    (N = len(rs_schedule) + 1 steps), rejection-sampled towards pi0 exp(r*/beta) with fresh candidates each step;
    then RAFT fine-tunes pi0 (MLE) on the accepted samples, or RSO trains DPO on pairs of them."""
    seed, where = run.seed, run.path("round_0")
    prompts = _round_prompts(ctx, seed, 0, budget)
    etas = method.rs_schedule + (method.beta,)
    drawn = drawn_per_prompt(method)

    def accepted():
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
        texts, gold, _ = pairs.sample_texts(ctx.pi0, prompts, jax.random.fold_in(key, 0), drawn, ctx.settings)
        out = sampling.multi_step_rejection(jax.random.fold_in(key, 3), gold, etas, method.candidates)
        keep = [[(texts[p][j], float(gold[p, j])) for j, ok in zip(index, accept) if ok]
                for p, (index, accept) in enumerate(zip(out.index, out.accept))]
        return {"prompts": list(prompts.texts), "accepted": keep, "rates": out.rates}

    made = stages.cached_json(os.path.join(where, "accepted.json"), accepted)
    total = sum(len(a) for a in made["accepted"])
    train_run = run.sub("round_0/train", depends={"accepted": pairs.records_digest(made["accepted"])})
    if method.kind == "rso":
        made_pairs = stages.cached_json(os.path.join(where, "pairs.json"), lambda: _rso_pairs(
            ctx, method, made, np.random.default_rng((seed, 0, 2))))
        policy = _train_dpo(ctx.pi0, ctx, method, made_pairs["records"], train_run)
        extra = {"pairs": float(len(made_pairs["records"])),
                 "skipped": float(made_pairs["counts"]["identical"] + made_pairs["counts"]["ties"])}
    else:
        records = [{"prompt": p, "response": t} for p, kept in zip(made["prompts"], made["accepted"])
                   for t, _ in kept]
        tok = ctx.settings.tokenizer
        encoded = batching.encode_examples(tok, [r["prompt"] for r in records], [r["response"] for r in records],
                                           ctx.max_length)
        rows = batching.trim_padding({"tokens": encoded["tokens"], "mask": encoded["mask"]}, tok.pad_id)
        stage = stage_for(len(records), 2 * ctx.batch_pairs, method.epochs, ctx.optimizer,
                          int(run.mesh.shape["data"] * run.mesh.shape["fsdp"]))
        sampler = batching.IndexSampler(len(records), stage.batch_size, seed=seed)
        loss = sft.loss_fn(vocab_chunk=run.settings.vocab_chunk, window=rollout.loss_window(rows["mask"]))
        policy = train_run.sub(desc=f"{os.path.basename(run.folder)} raft ({len(records)} samples)").stage(
            ctx.pi0, loss, stage, sampler.batch_fn(rows)).model
        extra = {"skipped": 0.0}
    final = dict(measure(policy, where), labels=float(budget * drawn), budget=float(budget),
                 accept_rate=float(total / (budget * method.candidates)), **extra)
    for k, rate in enumerate(made["rates"]):
        final[f"accept_rate_step{k + 1}"] = float(rate)
    return {"final": final, "rounds": {"0": final}}


def _rso_pairs(ctx: Context, method: GSHFMethod, made: dict, rng: np.random.Generator) -> dict:
    """RSO's pairs: each prompt's accepted samples in a random order, taken two at a time (disjoint pairs),
    labelled by the oracle. A prompt with one accepted sample gives none."""
    prompts, candidates, gold = [], [], []
    for prompt, kept in zip(made["prompts"], made["accepted"]):
        order = rng.permutation(len(kept))
        for a, b in zip(order[0::2], order[1::2]):
            prompts.append(prompt)
            candidates.append([kept[a][0], kept[b][0]])
            gold.append([kept[a][1], kept[b][1]])
    if not prompts:
        raise ValueError(f"RSO: no prompt kept two samples after rejection sampling at beta={method.beta} (pool "
                         f"{method.candidates}): raise candidates or beta to have pairs to train on")
    records, counts = pairs.make_pairs(prompts, candidates, np.asarray(gold), ctx.oracle, rng)
    _add_uncertainty(ctx, method, records)
    return {"records": records, "counts": counts}
