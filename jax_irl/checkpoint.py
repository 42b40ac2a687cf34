"""Orbax checkpoints that resume exactly: train state, data position and config, on any mesh.

A checkpoint holds the whole ``TrainState`` (params, optimizer state, step, PRNG key) and a JSON record with
the run's config fingerprint and the data iterator's position. Orbax writes each step into a temporary
directory and renames it only when complete, so a run killed mid-save never leaves a checkpoint that
``latest_step`` would load. Saves are asynchronous; the last N are kept.

Restoring takes an abstract target whose leaves carry the *new* shardings (``abstract_like``), so a run saved
on 8 devices restores on 4 or 1. A checkpoint written under another config or model raises an error that
lists the differences instead of loading part of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp


def abstract_like(tree) -> Any:
    """ShapeDtypeStructs carrying each leaf's sharding: the restore target for a state on its mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _diff(saved: dict, current: dict, prefix: str = "") -> list:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint has {a!r}, this run has {b!r}")
    return out


def jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"a fingerprint holds {type(value).__name__}, which is not JSON-serialisable")


def _drop(tree: dict, dotted_keys) -> dict:
    """tree without the entries at the given dotted paths ('steps', 'stage.steps')."""
    out = dict(tree)
    for key in dotted_keys:
        head, _, rest = key.partition(".")
        if rest and isinstance(out.get(head), dict):
            out[head] = _drop(out[head], [rest])
        elif not rest:
            out.pop(head, None)
    return out


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a run with another config or model."""


class Checkpointer:
    """Save every ``save_every`` steps (and when forced), keep the last ``keep``, resume from the latest.

    fingerprint: a JSON-serialisable dict (the run's config) that a checkpoint must match to be restored;
    keys listed in ``resumable_keys`` (top-level names, or dotted paths into nested dicts such as 'stage.steps')
    may differ (e.g. the total number of steps, the mesh shape).
    """

    def __init__(self, directory: str, *, fingerprint: Dict[str, Any], save_every: int, keep: int = 3,
                 async_save: bool = True, resumable_keys: Tuple[str, ...] = ()):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1; got {save_every}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1; got {keep}")
        self.directory = os.path.abspath(directory)
        # Normalised as JSON would (tuples -> lists; dataclasses -> dicts of their fields).
        self.fingerprint = json.loads(json.dumps(fingerprint, default=jsonable))
        self.resumable_keys = resumable_keys
        options = ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_position: Any = None, force: bool = False) -> bool:
        """Start saving (asynchronously) if ``step`` is a save step or ``force``. Returns whether it saved."""
        record = {"fingerprint": self.fingerprint, "data_position": data_position, "step": int(step)}
        return self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                    meta=ocp.args.JsonSave(record)), force=force)

    def check_fingerprint(self, step: int) -> dict:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        saved = _drop(meta["fingerprint"], self.resumable_keys)
        current = _drop(self.fingerprint, self.resumable_keys)
        problems = _diff(saved, current)
        if problems:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory} step {step} was written under another config or model:\n  "
                + "\n  ".join(problems))
        return meta

    def restore(self, abstract_state, step: Optional[int] = None):
        """(state, data_position, step) from the given step (default: latest) onto abstract_state's shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        meta = self.check_fingerprint(step)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointMismatchError(f"checkpoint {self.directory} step {step} does not fit this model's state "
                                          f"(shapes or structure differ): {err}") from err
        return restored.state, meta["data_position"], step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class PreemptionFlag:
    """Set when SIGTERM arrives, so the loop can save and stop at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)
        return False
