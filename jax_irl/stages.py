"""Stages: the resumable units an experiment is made of, and the cached results between them.

    stage = StageConfig(steps=1000, batch_size=64, optimizer=OptimizerConfig(learning_rate=1e-5))
    result = run_stage(folder, model, loss_fn, stage, mesh, batch_fn, seed=0, fingerprint={...}, save_every=100)
    pairs = cached_json(os.path.join(folder, "pairs.json"), lambda: label_pairs(...))

``run_stage`` is one resumable stage: ``train.Trainer`` + ``checkpoint.Checkpointer`` with the stage's
fingerprint + resume + ``train.fit``, raising ``StagePreempted`` when stopped early (SIGTERM) after saving; it
can run in a loop of stages (online rounds, PPO iterations), each in its own folder. The learning-rate schedule
always spans the stage's steps. ``cached_json`` keeps a step of a recipe that is not training (labelled pairs,
a sample pool, an evaluation) so that a resumed run reuses it instead of redoing it.

Layering: this module sits on ``train`` and ``checkpoint``; the algorithms and the experiments use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from jax_irl.checkpoint import Checkpointer
from jax_irl.train import Every, OptimizerConfig, Trainer, TrainState, fit, resume_or_init, schedule_length


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One training stage: how many steps, on what batch size, with which optimizer. Its fields are part of the
    stage's checkpoint fingerprint (``run_stage``)."""

    steps: int
    batch_size: int
    optimizer: OptimizerConfig = OptimizerConfig()

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps must be an int >= 1; got {self.steps!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1; got {self.batch_size!r}")
        schedule_length(self.optimizer, self.steps)  # a schedule that cannot span the steps is refused now


class StagePreempted(SystemExit):
    """A stage stopped early (SIGTERM) after saving; the message says how to resume."""


class StageResult(NamedTuple):
    model: nnx.Module  # the trained model
    state: TrainState
    trainer: Trainer


def run_stage(folder: str, model: nnx.Module, loss_fn: Callable, stage: StageConfig, mesh: Mesh,
              batch_fn: Callable[..., Dict[str, Any]], *, seed: int, fingerprint: Dict[str, Any],
              save_every: int, keep: int = 2, resumable_keys: Tuple[str, ...] = (), batch_needs_model: bool = False,
              desc: str = "train", resume_hint: str = "", progress: bool = True, hooks: Sequence[Every] = (),
              tx: Optional[optax.GradientTransformation] = None) -> StageResult:
    """Train ``model`` with ``loss_fn`` for ``stage.steps`` steps in ``folder`` (checkpoints/, metrics.jsonl,
    tensorboard/), resuming from the folder's latest checkpoint when there is one.

    The checkpoint fingerprint is ``fingerprint`` (what the stage depends on: data, model, method, seed) plus
    the stage's own fields under 'stage', so a changed stage or dependency is refused on resume
    (``resumable_keys``, dotted paths such as 'stage.steps', may change). ``batch_fn`` and ``batch_needs_model``
    are ``fit``'s; the data position starts at 0 (a loop of stages gives each its own folder, and its batch_fn
    may fold a round index into the keys it draws). ``hooks`` are ``fit``'s (``train.Every``: evaluations on a
    schedule). Raises ``StagePreempted`` (a SystemExit whose message ends with ``resume_hint``) when stopped by
    SIGTERM after saving. ``tx`` replaces the optimizer built from ``stage.optimizer`` (``Trainer``).
    """
    trainer = Trainer(model, loss_fn, stage.optimizer, mesh, total_steps=stage.steps, tx=tx)
    full = dict(fingerprint, stage=dataclasses.asdict(stage))
    with Checkpointer(os.path.join(folder, "checkpoints"), fingerprint=full, save_every=save_every, keep=keep,
                      resumable_keys=resumable_keys) as ckpt:
        state, position = resume_or_init(trainer, ckpt, seed=seed)
        if int(state.step):
            print(f"{desc}: resumed from step {int(state.step)}")
            # The restored step's record: after a fallback past a damaged checkpoint it is not the latest one.
            saved_steps = ckpt.check_fingerprint(int(state.step))["fingerprint"].get("stage", {}).get("steps")
            if saved_steps not in (None, stage.steps) and stage.optimizer.schedule != "constant":
                print(f"{desc}: the stage now trains {stage.steps} steps (it was {saved_steps}); its "
                      f"{stage.optimizer.schedule} learning-rate schedule now spans {stage.steps} steps, continuing "
                      f"from step {int(state.step)} at {float(trainer.schedule(int(state.step))):.3g}")
        state, status = fit(trainer, state, batch_fn, steps=stage.steps, start_position=position, checkpointer=ckpt,
                            log_dir=folder, batch_needs_model=batch_needs_model, desc=desc, progress=progress,
                            hooks=hooks)
    if status != "done":
        raise StagePreempted(f"{desc}: stopped at step {int(state.step)} after saving. {resume_hint}".strip())
    return StageResult(trainer.model(state), state, trainer)


def cached_json(path: str, make: Callable[[], Any]) -> Any:
    """The JSON at ``path``, or ``make()`` written there atomically (by process 0) and returned: a step of a recipe
    (labelled pairs, a sample pool, an evaluation) that a resumed run reuses instead of redoing.

    Beside the file goes ``<path>.sha256``, its bytes' SHA-256; a file that no longer matches it (edited by hand,
    damaged) or that is not JSON is refused with a ValueError naming the file, never reused silently. A file
    without a checksum (written before checksums were kept) is read as it is."""
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = f.read()
        if os.path.exists(path + ".sha256"):
            with open(path + ".sha256") as f:
                expected = f.read().strip()
            if hashlib.sha256(data).hexdigest() != expected:
                raise ValueError(f"{path} does not match its checksum {path}.sha256 (it was edited or damaged after "
                                 f"it was written); remove both files to recompute it")
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); remove it (and {path}.sha256) to recompute "
                             f"it") from None
    value = make()
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        data = json.dumps(value).encode("utf-8")
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        with open(path + ".sha256.tmp", "w") as f:
            f.write(hashlib.sha256(data).hexdigest() + "\n")
        os.replace(path + ".sha256.tmp", path + ".sha256")
        os.replace(path + ".tmp", path)
    return value


__all__ = ["StageConfig", "StagePreempted", "StageResult", "cached_json", "run_stage"]
