"""Trackers: where a training loop's per-step metrics go.

    with tracking.use_trackers(("tensorboard", "wandb"), config={"lr": 1e-5}):   # the driver: tracker=...
        stages.run_stage(...)            # every fit inside logs to metrics.jsonl, TensorBoard and W&B (offline)

A tracker has ``log(step, record)`` and ``close()`` (the ``Tracker`` protocol); ``train.fit`` logs each step's
record (loss, the loss's metrics, tokens/s, what its hooks return) to the tracker it is given, or to
``open_tracker(log_dir, first_step)``: every run folder gets ``metrics.jsonl`` (the record that resume and the
experiments' tables read), plus the trackers selected by ``use_trackers`` (default: TensorBoard):

- ``tensorboard``: TensorBoard event files in ``log_dir/tensorboard`` (tensorboardX).
- ``wandb``: a Weights & Biases run in ``log_dir/wandb``, in offline mode unless ``WANDB_MODE`` says otherwise
  (sync it later with ``wandb sync``); its id is derived from the folder, so a resumed stage continues its run.
- ``mlflow``: an MLflow run in a local file store, ``log_dir/mlruns`` (browse it with
  ``mlflow ui --backend-store-uri log_dir/mlruns``); a resumed stage continues its run (found by the folder's tag).
  MLflow keeps the file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set: the
  tracker sets it to true for the process when it is unset.

Both need the ``tracking`` extra (``pip install -e .[tracking]``: wandb and mlflow-skinny).

Only process 0 writes. A resumed run opens its trackers at the step it restarts from: metrics.jsonl and
TensorBoard drop the records of later steps (a resumed run logs them again), so each step is logged once;
W&B keeps the steps it had and ignores the repeated ones; MLflow keeps every value it was sent (a step logged
before and after a restart appears twice in its history).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Protocol, Sequence

import jax

NAMES = ("tensorboard", "wandb", "mlflow")


class Tracker(Protocol):
    def log(self, step: int, record: Dict[str, float]) -> None: ...

    def close(self) -> None: ...


class MetricsWriter:
    """Per-step records to ``log_dir/metrics.jsonl`` and, with ``tensorboard``, TensorBoard
    (``log_dir/tensorboard``), from process 0.

    Opening it for a run that restarts at step ``first_step`` drops the records of later steps (a resumed run
    logs them again), so metrics.jsonl always holds each step once."""

    def __init__(self, log_dir: str, first_step: int = 0, tensorboard: bool = True):
        self.path = os.path.join(log_dir, "metrics.jsonl")
        self.active = jax.process_index() == 0
        self.board = None
        if self.active:
            os.makedirs(log_dir, exist_ok=True)
            self._truncate(first_step)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.board = SummaryWriter(os.path.join(log_dir, "tensorboard"), purge_step=first_step + 1)

    def _truncate(self, last_step: int) -> None:
        """Keep the records of steps <= last_step. A torn last line (a kill mid-write) is dropped with a note; a
        damaged line elsewhere is an error naming the file and line."""
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.strip()]
        kept = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if number == len(lines):
                    print(f"note: {self.path}: dropped a torn last line (a run stopped while writing it)")
                    continue
                raise ValueError(f"{self.path}:{number}: not a metrics record ({line[:80]!r}); fix or remove the "
                                 f"line to resume") from None
            if step <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
        with open(self.path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(self.path + ".tmp", self.path)

    def log(self, step: int, record: Dict[str, float]) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        if self.board is not None:
            for key, value in record.items():
                self.board.add_scalar(key, value, step)

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
            self.board = None


class WandbTracker:
    """A Weights & Biases run in ``log_dir/wandb`` (offline unless ``WANDB_MODE`` is set), from process 0.

    The run's id is a digest of the folder's absolute path, so reopening the folder (a resumed stage) continues
    the same run (``resume='allow'``); ``config`` is the run's config (the experiment's resolved settings)."""

    def __init__(self, log_dir: str, config: Optional[Dict[str, Any]] = None, project: Optional[str] = None):
        self.run = None
        if jax.process_index() != 0:
            return
        try:
            import wandb
        except ImportError:
            raise ImportError("the 'wandb' tracker needs the wandb package: pip install -e '.[tracking]'") from None
        os.makedirs(log_dir, exist_ok=True)
        folder = os.path.abspath(log_dir)
        run_id = hashlib.sha256(folder.encode()).hexdigest()[:16]
        self.run = wandb.init(dir=log_dir, id=run_id, resume="allow", mode=os.environ.get("WANDB_MODE", "offline"),
                              project=project or os.environ.get("WANDB_PROJECT", "jax_irl"),
                              name=os.path.basename(folder), config=config or {}, reinit="create_new")

    def log(self, step: int, record: Dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(dict(record), step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MlflowTracker:
    """An MLflow run in the local file store ``log_dir/mlruns`` (experiment ``jax_irl``), from process 0.

    The run carries the folder's absolute path as the tag ``jax_irl.folder``; reopening the folder (a resumed
    stage) finds that run and logs on into it. ``config`` goes in as the run's params (flattened, dotted keys;
    values cut to MLflow's 6000 characters)."""

    TAG = "jax_irl.folder"

    def __init__(self, log_dir: str, config: Optional[Dict[str, Any]] = None):
        self.client = self.run_id = None
        if jax.process_index() != 0:
            return
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError("the 'mlflow' tracker needs mlflow: pip install -e '.[tracking]'") from None
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        folder = os.path.abspath(log_dir)
        os.makedirs(folder, exist_ok=True)
        self.client = MlflowClient(tracking_uri="file:" + os.path.join(folder, "mlruns"))
        experiment = self.client.get_experiment_by_name("jax_irl")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("jax_irl")
        quoted = folder.replace("'", "\\'")
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{self.TAG}` = '{quoted}'")
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=os.path.basename(folder), tags={self.TAG: folder})
            self.run_id = run.info.run_id
            for key, value in _flatten(config or {}).items():
                self.client.log_param(self.run_id, key, str(value)[:6000])

    def log(self, step: int, record: Dict[str, float]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), stamp, step)
                                                    for key, value in record.items()])

    def close(self) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id)
            self.client = None


def _flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Trackers:
    """Several trackers as one: ``log`` and ``close`` go to each in turn."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers: List[Tracker] = list(trackers)

    def log(self, step: int, record: Dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log(step, record)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


class _Selection:
    def __init__(self, names: Sequence[str], config: Optional[Dict[str, Any]]):
        self.names, self.config = tuple(names), config


_SELECTED: contextvars.ContextVar = contextvars.ContextVar("jax_irl_trackers", default=_Selection(("tensorboard",),
                                                                                                   None))


def parse(spec) -> tuple:
    """Tracker names from 'tensorboard,wandb' or a sequence; unknown, repeated or no names are refused."""
    names = tuple(n.strip() for n in spec.split(",")) if isinstance(spec, str) else tuple(spec)
    unknown = [n for n in names if n not in NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"trackers must be distinct names from {NAMES} (e.g. 'tensorboard,wandb'); got {spec!r}")
    return names


@contextlib.contextmanager
def use_trackers(names, config: Optional[Dict[str, Any]] = None) -> Iterator[tuple]:
    """Within the block, every ``open_tracker`` (every ``train.fit`` with a log folder) logs to ``names``
    (besides metrics.jsonl); ``config`` goes to the trackers that keep one (W&B)."""
    token = _SELECTED.set(_Selection(parse(names), config))
    try:
        yield _SELECTED.get().names
    finally:
        _SELECTED.reset(token)


def selected() -> tuple:
    """The tracker names in effect (``use_trackers``; default ('tensorboard',))."""
    return _SELECTED.get().names


def open_tracker(log_dir: str, first_step: int = 0) -> Tracker:
    """metrics.jsonl in ``log_dir`` plus the selected trackers, opened for a run that restarts at
    ``first_step``."""
    selection = _SELECTED.get()
    trackers: List[Tracker] = [MetricsWriter(log_dir, first_step, tensorboard="tensorboard" in selection.names)]
    if "wandb" in selection.names:
        trackers.append(WandbTracker(log_dir, config=selection.config))
    if "mlflow" in selection.names:
        trackers.append(MlflowTracker(log_dir, config=selection.config))
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)


__all__ = ["MetricsWriter", "MlflowTracker", "NAMES", "Tracker", "Trackers", "WandbTracker", "open_tracker", "parse", "selected",
           "use_trackers"]
