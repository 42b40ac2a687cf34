"""Stages: the resumable units an experiment is made of, the run context they share, and the cached results
between them.

    settings = RunSettings(mesh=MeshConfig(fsdp=4), save_every=100, vocab_chunk=8192)
    run = Run.start("runs/x", settings, fingerprint={"task": ..., "base": ...}, seed=0)
    stage = StageConfig(steps=1000, batch_size=64, optimizer=OptimizerConfig(learning_rate=1e-5))
    result = run.sub("sft", desc="sft").stage(model, loss_fn, stage, batch_fn)
    pairs = run.cached("pairs.json", lambda: label_pairs(...))

``RunSettings`` is how a run executes, not what it computes (mesh, multi-host set-up, checkpoint interval and
count, vocabulary chunking, scoring batch): one field of every experiment config. A ``Run`` is a folder, those
settings, the mesh built from them, the fingerprint of what the run depends on and its seed; ``sub(name,
**depends)`` is the run of a part of it (a stage, a method, a seed) in a subfolder with more dependencies.

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
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from jax_irl import parallel
from jax_irl.checkpoint import Checkpointer
from jax_irl.train import Every, ModelBatches, OptimizerConfig, Trainer, TrainState, fit, resume_or_init, schedule_length


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


def _optional_count(name: str, value) -> None:
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"RunSettings.{name} must be None or an int >= 1; got {value!r}")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How a run executes, not what it computes: one field (``settings``) of every experiment config.

    ``mesh`` and ``distributed`` place the run on devices and hosts; ``save_every`` and ``keep`` are every stage's
    checkpoint interval (steps) and how many checkpoints it keeps; ``vocab_chunk`` computes losses and scores from
    hidden states in vocabulary chunks of that many entries (no [B, T, V] logits; None: whole); ``rows_per_score``
    is the batch of the scoring passes (reference log-probs, rollout scores; None: the whole set at once);
    ``keep_rollouts`` is how many RL iterations keep their rollout rows on disk (None: all). Only ``vocab_chunk``
    can change a result (float rounding), so it is part of the stages' fingerprint; the others may change when a
    run resumes (``RESUMABLE``).
    """

    mesh: parallel.MeshConfig = parallel.MeshConfig()
    distributed: parallel.DistributedConfig = parallel.DistributedConfig()
    save_every: int = 100
    keep: int = 2
    vocab_chunk: Optional[int] = None
    rows_per_score: Optional[int] = None
    keep_rollouts: Optional[int] = 4

    RESUMABLE = ("mesh", "distributed", "save_every", "keep", "rows_per_score", "keep_rollouts")

    def __post_init__(self):
        for name in ("save_every", "keep"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"RunSettings.{name} must be an int >= 1; got {value!r}")
        for name in ("vocab_chunk", "rows_per_score", "keep_rollouts"):
            _optional_count(name, getattr(self, name))


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """The context every stage of a run shares: its folder, settings, mesh, fingerprint and seed.

    ``fingerprint`` is what the run's stages depend on (data, model, method, seed), checked when a stage resumes;
    ``resumable_keys`` are the dotted fingerprint paths that may change then (such as 'stage.steps'). ``desc``
    names the run in progress bars and messages; ``resume_hint`` ends the message of a preempted stage.
    """

    folder: str
    mesh: Mesh
    settings: RunSettings = RunSettings()
    fingerprint: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0
    resumable_keys: Tuple[str, ...] = ()
    desc: str = "train"
    resume_hint: str = ""
    progress: bool = True

    @classmethod
    def start(cls, folder: str, settings: RunSettings, **fields) -> "Run":
        """A run in ``folder`` on the mesh ``settings.mesh`` makes of the devices (``parallel.make_mesh``); other
        fields as the constructor's. The resume hint defaults to resuming with ``--run-dir folder``."""
        fields.setdefault("resume_hint", f"Resume with --run-dir {folder}")
        return cls(folder, parallel.make_mesh(settings.mesh), settings, **fields)

    def path(self, *parts: str) -> str:
        """A path inside the run's folder."""
        return os.path.join(self.folder, *parts)

    def sub(self, name: str = "", *, depends: Optional[Mapping[str, Any]] = None, desc: Optional[str] = None,
            seed: Optional[int] = None) -> "Run":
        """The run of a part of this one: in the subfolder ``name`` (the same folder for ''), with the entries of
        ``depends`` added to the fingerprint, and its own ``desc`` and ``seed`` when given."""
        return dataclasses.replace(self, folder=self.path(name) if name else self.folder,
                                   fingerprint={**self.fingerprint, **(depends or {})},
                                   desc=self.desc if desc is None else desc, seed=self.seed if seed is None else seed)

    def cached(self, name: str, make: Callable[[], Any]) -> Any:
        """``cached_json`` of the file ``name`` in the run's folder."""
        return cached_json(self.path(name), make)

    def stage(self, model: nnx.Module, loss_fn: Callable, stage: StageConfig, batch_fn: Callable[..., Dict[str, Any]],
              *, hooks: Sequence[Every] = (), tx: Optional[optax.GradientTransformation] = None) -> StageResult:
        """``run_stage`` in this run."""
        return run_stage(self, model, loss_fn, stage, batch_fn, hooks=hooks, tx=tx)


def run_stage(run: Run, model: nnx.Module, loss_fn: Callable, stage: StageConfig,
              batch_fn: Callable[..., Dict[str, Any]], *, hooks: Sequence[Every] = (),
              tx: Optional[optax.GradientTransformation] = None) -> StageResult:
    """Train ``model`` with ``loss_fn`` for ``stage.steps`` steps in ``run.folder`` (checkpoints/, metrics.jsonl,
    tensorboard/) on ``run.mesh``, resuming from the folder's latest checkpoint when there is one.

    The checkpoint fingerprint is ``run.fingerprint`` (what the stage depends on: data, model, method, seed) plus
    the stage's own fields under 'stage', so a changed stage or dependency is refused on resume
    (``run.resumable_keys``, dotted paths such as 'stage.steps', may change); checkpoints every
    ``run.settings.save_every`` steps, ``run.settings.keep`` of them kept. ``batch_fn`` is ``fit``'s (a
    ``train.ModelBatches`` when its batches need the current model); the data position starts at 0 (a loop of
    stages gives each its own folder, and its batch_fn may fold a round index into the keys it draws);
    ``run.seed`` seeds the step's randomness. ``hooks`` are ``fit``'s (``train.Every``: evaluations on a
    schedule). Raises ``StagePreempted`` (a SystemExit whose message ends with ``run.resume_hint``) when stopped by
    SIGTERM after saving. ``tx`` replaces the optimizer built from ``stage.optimizer`` (``Trainer``).
    """
    desc, settings = run.desc, run.settings
    trainer = Trainer(model, loss_fn, stage.optimizer, run.mesh, total_steps=stage.steps, tx=tx)
    full = dict(run.fingerprint, stage=dataclasses.asdict(stage))
    with Checkpointer(run.path("checkpoints"), fingerprint=full, save_every=settings.save_every, keep=settings.keep,
                      resumable_keys=run.resumable_keys) as ckpt:
        state, position = resume_or_init(trainer, ckpt, seed=run.seed)
        if int(state.step):
            print(f"{desc}: resumed from step {int(state.step)}")
            # The restored step's record: after a fallback past a damaged checkpoint it is not the latest one.
            saved_steps = ckpt.check_fingerprint(int(state.step))["fingerprint"].get("stage", {}).get("steps")
            if saved_steps not in (None, stage.steps) and stage.optimizer.schedule != "constant":
                print(f"{desc}: the stage now trains {stage.steps} steps (it was {saved_steps}); its "
                      f"{stage.optimizer.schedule} learning-rate schedule now spans {stage.steps} steps, continuing "
                      f"from step {int(state.step)} at {float(trainer.schedule(int(state.step))):.3g}")
        state, status = fit(trainer, state, batch_fn, steps=stage.steps, start_position=position, checkpointer=ckpt,
                            log_dir=run.folder, desc=desc, progress=run.progress, hooks=hooks)
    if status != "done":
        raise StagePreempted(f"{desc}: stopped at step {int(state.step)} after saving. {run.resume_hint}".strip())
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


__all__ = ["Run", "RunSettings", "StageConfig", "StagePreempted", "StageResult", "cached_json", "run_stage"]
