"""Supervised fine-tuning: maximum likelihood on the response tokens, the stage every recipe starts from.

    run = stages.Run.start(folder, stages.RunSettings(save_every=100), fingerprint={"task": ..., "base": ...})
    model = sft.finetune(run, base, StageConfig(steps=800, batch_size=32), encoded)
    loss_fn = sft.loss_fn(vocab_chunk=16384, window=rollout.loss_window(rows["mask"]))   # for stages.run_stage

It trains pi0 for GSHF and the reward-ensemble runs, pi_sft for RLSF, the built-in base models' pretraining, and
RAFT's fine-tuning on accepted samples. The loss is the mean negative log-likelihood of the masked target
tokens, computed from the soft-Q view of the logits (``losses.mle_loss_from_q``: log pi(a|s) = Q(s, a) - V(s)),
so it is exactly the MLE of the inverse-RL experiment (``iqlearn.Method("mle")`` is this loss) and shares its
vocabulary-chunked, windowed forward (``rollout.causal_lm``).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from jax_irl import losses, rollout, stages
from jax_irl.data import batching


def loss_fn(*, vocab_chunk: Optional[int] = None, window: Optional[int] = None,
            entropy_bonus: float = 0.0) -> Callable:
    r"""Supervised fine-tuning's loss: the mean negative log-likelihood of the target tokens where the mask is 1.

    $$
    L = -\frac{1}{\sum_t m_t} \sum_t m_t \log \pi(x_{t+1} | x_{\le t})
    \; [- \beta \, \bar{H}(\pi) \text{ with } \beta = \texttt{entropy\_bonus}]
    $$

    computed from the soft-Q view of the logits (``losses.mle_loss_from_q``: log pi(a|s) = Q(s, a) - V(s)), so it
    is exactly the inverse-RL experiment's MLE.

    Args:
        vocab_chunk: compute the unembedding from the hidden states in vocabulary chunks of this size, never
            building the ``[B, T, V]`` logits (equal to float rounding).
        window: compute the unembedding only on each row's last ``window`` target positions, the response span
            (``rollout.loss_window(mask)``); the loss is unchanged up to float rounding.
        entropy_bonus: beta >= 0 of an entropy bonus at the data states (``losses.mle_entropy_loss_from_q``), the
            inverse-RL experiment's control; it needs the (windowed) logits, so ``vocab_chunk`` is not used then.

    Returns:
        ``loss_fn(model, batch, rng) -> (loss, aux)`` for ``train.Trainer`` / ``stages.run_stage``. The batch holds
        tokens ``[B, T]`` (int32) and mask ``[B, T - 1]`` (1 on the target tokens); aux holds the loss's own
        metrics (``losses.mle_loss_from_q``).

    Examples:
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl.algorithms import sft
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> model = Transformer(presets.preset("tiny", vocab_size=32), rngs=nnx.Rngs(0))
        >>> batch = {"tokens": np.arange(8, dtype=np.int32)[None], "mask": np.ones((1, 7), np.float32)}
        >>> loss, aux = sft.loss_fn()(model, batch, None)
        >>> bool(abs(float(loss) - np.log(32)) < 0.5)   # near uniform at initialisation
        True
    """
    if not entropy_bonus >= 0:
        raise ValueError(f"entropy_bonus must be >= 0; got {entropy_bonus}")

    def loss(model, batch, rng):
        if entropy_bonus:
            out = rollout.causal_lm(model, batch["tokens"], mask=batch["mask"], window=window, need_logits=True)
            return losses.mle_entropy_loss_from_q(out.target_q, out.values, losses.token_entropies(out.logits),
                                                  out.mask, entropy_bonus=entropy_bonus)
        out = rollout.causal_lm(model, batch["tokens"], None, vocab_chunk=vocab_chunk, mask=batch["mask"],
                                window=window)
        return losses.mle_loss_from_q(out.target_q, out.values, out.mask)

    return loss


def first_examples(encoded: Dict[str, np.ndarray], count: Optional[int]) -> Dict[str, np.ndarray]:
    r"""The first ``count`` rows of every per-row array of encoded examples: the small-data ablation's training set.

    Args:
        encoded: rows from ``batching.encode_examples`` (tokens ``[N, T]``, mask ``[N, T - 1]``, prompt_lengths
            ``[N]``, and scalars such as the 'truncated' count, which are kept as they are).
        count: how many rows to keep (an int >= 1, at most N), or None for all of them.

    Returns:
        The same dict with every array of N rows cut to its first ``count`` rows.

    Raises:
        ValueError: when ``count`` is not an int >= 1 or exceeds the rows.

    Examples:
        >>> import numpy as np
        >>> from jax_irl.algorithms import sft
        >>> encoded = {"tokens": np.zeros((5, 4), np.int32), "mask": np.ones((5, 3)), "truncated": 0}
        >>> small = sft.first_examples(encoded, 2)
        >>> small["tokens"].shape, small["truncated"]
        ((2, 4), 0)
    """
    if count is None:
        return encoded
    rows = len(encoded["tokens"])
    if not (isinstance(count, (int, np.integer)) and count >= 1):
        raise ValueError(f"train_examples must be None (all) or an int >= 1; got {count!r}")
    if count > rows:
        raise ValueError(f"train_examples={count} exceeds the {rows} training examples")
    return {k: v[:count] if np.ndim(v) and len(v) == rows else v for k, v in encoded.items()}


def finetune(run: stages.Run, base, stage: stages.StageConfig, encoded: Dict[str, np.ndarray], *,
             train_examples: Optional[int] = None):
    r"""MLE fine-tuning of ``base`` as one resumable stage in ``run.folder``.

    Args:
        run: the stage's run: its folder (checkpoints/, metrics.jsonl, tensorboard/; a run with the same
            fingerprint resumes from its latest checkpoint), mesh, settings (checkpoint interval, ``vocab_chunk`` as
            in ``loss_fn``), fingerprint (what the stage depends on: data, base, ...; checked on resume) and seed
            (the batch order's: ``batching.IndexSampler``, a batch is a pure function of seed and step).
        base: the model to start from (not modified; the stage trains a copy of its state).
        stage: steps, batch size and optimizer; part of the checkpoint fingerprint.
        encoded: rows from ``batching.encode_examples``: tokens ``[N, T]`` and mask ``[N, T - 1]`` (1 on the
            responses).
        train_examples: train on only the first that many rows (for the same number of steps).

    Returns:
        The fine-tuned model.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl.algorithms import sft
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> import tempfile
        >>> from jax_irl import parallel, stages
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> run = stages.Run(tempfile.mkdtemp(), mesh, progress=False)
        >>> base = Transformer(presets.preset("tiny", vocab_size=16), rngs=nnx.Rngs(0))
        >>> encoded = {"tokens": np.tile(np.arange(8, dtype=np.int32), (4, 1)), "mask": np.ones((4, 7), np.float32)}
        >>> model = sft.finetune(run, base, stages.StageConfig(steps=5, batch_size=2), encoded)
        >>> float(sft.loss_fn()(model, encoded, None)[0]) < float(sft.loss_fn()(base, encoded, None)[0])
        True
    """
    encoded = first_examples(encoded, train_examples)
    sampler = batching.IndexSampler(len(encoded["tokens"]), stage.batch_size, seed=run.seed)
    loss = loss_fn(vocab_chunk=run.settings.vocab_chunk, window=rollout.loss_window(encoded["mask"]))
    result = run.stage(base, loss, stage, sampler.batch_fn({"tokens": encoded["tokens"], "mask": encoded["mask"]}))
    return result.model


__all__ = ["finetune", "first_examples", "loss_fn"]
