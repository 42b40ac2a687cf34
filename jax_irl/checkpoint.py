"""Orbax checkpoints that resume exactly: train state, data position and config, on any mesh.

A checkpoint holds the whole ``TrainState`` (params, optimizer state, step, PRNG key) and a JSON record with
the run's config fingerprint and the data iterator's position. Orbax writes each step into a temporary
directory and renames it only when complete, so a run killed mid-save never leaves a checkpoint that
``latest_step`` would load. Saves are asynchronous; the last N are kept.

Restoring takes an abstract target whose leaves carry the *new* shardings (``abstract_like``), so a run saved
on 8 devices restores on 4 or 1. A checkpoint written under another config or model raises an error that
lists the differences instead of loading part of it.

Nothing bad is saved and nothing damaged is loaded: ``save`` refuses a state with a non-finite value (naming
the leaves) and records two checksums of every leaf's bits in the checkpoint's JSON record; ``restore``
recomputes them, and a checkpoint that cannot be read or whose checksums differ (a flipped byte, a missing or
truncated file) is reported with what is wrong, and the newest intact older checkpoint is used instead (the
run says so). When no checkpoint is intact it raises ``CheckpointDamagedError``: never a silent fresh start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Dict, Optional, Tuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
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


class CheckpointDamagedError(RuntimeError):
    """No complete checkpoint of the folder could be read intact."""


class _Damaged(Exception):
    """One checkpoint could not be read intact (the message says why)."""


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_paths(tree) -> Dict[str, Any]:
    """'a/b/0' path -> leaf, for any pytree (dict keys, attribute names and sequence indices alike)."""
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _bits(x: jax.Array) -> jax.Array:
    """The leaf's raw bits as uint32 (flattened)."""
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32).ravel()
    if x.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
    return x.astype(jnp.uint32).ravel()


@jax.jit
def _checksums_and_finite(tree):
    """Per leaf: [checksum, weighted checksum, all finite] as uint32 [3]: a plain and a position-weighted sum of
    its bits (wrapping), and 1 when every value is finite."""

    def one(x):
        u = _bits(x)
        weights = (jnp.arange(u.shape[0], dtype=jnp.uint32) % jnp.uint32(65521)) + jnp.uint32(1)
        finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True)
        return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * weights, dtype=jnp.uint32),
                          finite.astype(jnp.uint32)])

    return jax.tree.map(one, tree)


def state_checksums(tree) -> Tuple[Dict[str, list], list]:
    """(path -> [checksum, weighted checksum], paths of the leaves holding NaN or inf)."""
    out = jax.device_get(_checksums_and_finite(tree))
    sums, bad = {}, []
    for key, (a, b, finite) in leaf_paths(out).items():
        sums[key] = [int(a), int(b)]
        if not finite:
            bad.append(key)
    return sums, bad


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
        # Handlers named up front, so that a new process can read a checkpoint's metadata before restoring it.
        # "data": a Grain iterator's state (``batching.Batches.iterator``), in checkpoints of runs that read one.
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_position: Any = None, force: bool = False,
             data_iterator: Any = None) -> bool:
        """Start saving (asynchronously) if ``step`` is a save step or ``force``. Returns whether it saved.
        ``data_iterator``: a Grain iterator whose state (taken now, before it moves on) is saved as the "data"
        item through Grain's Orbax handler, for ``restore_data``.

        A state holding NaN or inf anywhere (params, optimizer state) is never saved: FloatingPointError names
        the leaves, and the folder keeps its last checkpoint."""
        if not (force or self.manager.should_save(int(step))):
            return False
        checksums, bad = state_checksums(state)
        if bad:
            latest = self.latest_step()
            raise FloatingPointError(
                f"step {step}: the state to save holds NaN or inf in {', '.join(bad[:4])}"
                f"{f' and {len(bad) - 4} more leaves' if len(bad) > 4 else ''}; it was not saved "
                + (f"(the last checkpoint, step {latest}, is intact)" if latest is not None else
                   "(there is no earlier checkpoint)"))
        record = {"fingerprint": self.fingerprint, "data_position": data_position, "step": int(step),
                  "checksums": checksums}
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_IteratorState(data_iterator.get_state()))
        return self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def has_data(self, step: int) -> bool:
        """Whether checkpoint ``step`` holds a data iterator's state."""
        return os.path.isdir(os.path.join(self.directory, str(int(step)), "data"))

    def restore_data(self, step: int, iterator) -> Any:
        """Set ``iterator`` (a Grain ``DatasetIterator``) to the state saved with checkpoint ``step``; returns it.
        A checkpoint without one is refused, naming the step."""
        if not self.has_data(step):
            raise FileNotFoundError(f"checkpoint {self.directory} step {step} holds no data iterator state")
        return self.manager.restore(int(step), args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(iterator))).data

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

    def _restore_step(self, abstract_state, step: int):
        """(state, meta) of one step; CheckpointMismatchError for another config or model, _Damaged for a
        checkpoint that cannot be read intact."""
        try:
            meta = self.check_fingerprint(step)
        except CheckpointMismatchError:
            raise
        except Exception as err:  # a missing, truncated or unreadable record
            raise _Damaged(f"its JSON record cannot be read ({type(err).__name__}: {err})") from err
        try:
            saved = leaf_paths(self.manager.item_metadata(step)["state"].tree)
        except Exception as err:
            raise _Damaged(f"its state metadata cannot be read ({type(err).__name__}: {err})") from err
        wanted = leaf_paths(abstract_state)
        differences = [f"{k}: checkpoint {tuple(saved[k].shape) if k in saved else '<missing>'}, this run "
                       f"{tuple(wanted[k].shape) if k in wanted else '<missing>'}"
                       for k in sorted(set(saved) | set(wanted))
                       if k not in saved or k not in wanted or tuple(saved[k].shape) != tuple(wanted[k].shape)]
        if differences:
            raise CheckpointMismatchError(f"checkpoint {self.directory} step {step} does not fit this model's state "
                                          f"(shapes or structure differ):\n  " + "\n  ".join(differences[:8]))
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state))).state
        except Exception as err:
            raise _Damaged(f"its arrays cannot be read ({type(err).__name__}: {str(err)[:300]})") from err
        if "checksums" in meta:
            sums, _ = state_checksums(state)
            wrong = [k for k, v in meta["checksums"].items() if sums.get(k) != v]
            if wrong:
                raise _Damaged(f"the checksums of {', '.join(wrong[:4])}"
                               f"{f' and {len(wrong) - 4} more leaves' if len(wrong) > 4 else ''} differ from "
                               f"those recorded when it was saved (the data files were changed or damaged)")
        return state, meta

    def restore(self, abstract_state, step: Optional[int] = None):
        """(state, data_position, step) from the given step (default: the newest intact one) onto
        abstract_state's shardings. A damaged latest checkpoint is reported and the next older one used."""
        steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        damaged, damaged_steps = [], []
        for candidate in steps:
            try:
                state, meta = self._restore_step(abstract_state, candidate)
            except _Damaged as err:
                damaged.append(f"step {candidate}: {err}")
                damaged_steps.append(candidate)
                continue
            if damaged:
                # The damaged newer steps go aside (kept for inspection), so that training past them can save those
                # steps again instead of failing on a step that already exists.
                moved = self._set_aside(damaged_steps) if step is None else []
                print(f"warning: {self.directory}: skipped damaged checkpoints and resumed from step {candidate}:\n  "
                      + "\n  ".join(damaged)
                      + (f"\n  moved aside to {', '.join(moved)}" if moved else ""), flush=True)
            return state, meta["data_position"], candidate
        raise CheckpointDamagedError(f"no intact checkpoint in {self.directory} (nothing was loaded; move the folder "
                                     f"away to start afresh):\n  " + "\n  ".join(damaged))

    def _set_aside(self, steps) -> list:
        """Move the folders of ``steps`` out of the checkpoint folder into ``<folder>.damaged/`` (named
        ``<step>-<time>``); returns the new paths. Process 0 moves them; every process then re-reads the folder."""
        moved = []
        if jax.process_index() == 0:
            aside = self.directory.rstrip(os.sep) + ".damaged"
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                source = os.path.join(self.directory, str(step))
                if not os.path.exists(source):
                    continue
                target = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                n = 1
                while os.path.exists(target):
                    target = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
                    n += 1
                os.replace(source, target)
                moved.append(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jax_irl checkpoint set-aside {self.directory}")
        self.manager.reload()
        return moved

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


class _IteratorState:
    """A Grain iterator's state taken at save time, in the form Grain's Orbax handler writes (bytes of JSON):
    an asynchronous save then records the position it was asked to, not where the iterator has moved since."""

    def __init__(self, state: Dict[str, Any]):
        self.state = json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self.state


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
