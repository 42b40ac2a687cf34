"""Trackers: metrics.jsonl + TensorBoard by default, W&B (offline) when selected, read back from what the real
libraries wrote; the hooks and trackers of fit; bad tracker names."""

import glob
import json
import os
import re
import struct
import time

import jax
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses, parallel, tracking, train
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """W&B stays offline and keeps its settings and cache in the test's folder (never $HOME, never the network)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _mlflow_history(log_dir):
    """{step: {metric: value}} of the one MLflow run in log_dir/mlruns, through MLflow's own client; and the run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="file:" + os.path.join(os.path.abspath(log_dir), "mlruns"))
    runs = client.search_runs([client.get_experiment_by_name("jax_irl").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    rows = {}
    for key in runs[0].data.metrics:
        for metric in client.get_metric_history(runs[0].info.run_id, key):
            rows.setdefault(metric.step, {}).setdefault(key, []).append(metric.value)
    return rows, runs[0]


def _wandb_history(log_dir, steps=None, wait_s=60.0):
    """The history rows of every offline run in log_dir/wandb, parsed from W&B's own transaction log (its
    records framed in 32 KiB blocks as LevelDB's log format does, each a wandb_internal_pb2.Record).

    wandb-core writes the log in its own process and may still be flushing it when ``run.finish()`` has
    returned (seen on a loaded machine): with ``steps``, read again until those steps are there or ``wait_s``
    has passed."""
    deadline = time.monotonic() + wait_s
    while True:
        rows = _read_wandb_history(log_dir)
        if steps is None or sorted(rows) == list(steps) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def _read_wandb_history(log_dir):
    from wandb.proto import wandb_internal_pb2

    rows = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "wandb", "offline-run-*", "run-*.wandb"))):
        data = open(path, "rb").read()
        assert data[:4] == b":W&B"
        pos, block, pending = 7, 32768, b""
        while pos + 7 <= len(data):
            left = block - pos % block
            length, kind = struct.unpack("<HB", data[pos + 4:pos + 7]) if left >= 7 else (0, 0)
            if left < 7 or (length == 0 and kind == 0):
                pos += left
                continue
            pending += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                pending = b""
                if record.WhichOneof("record_type") == "history":
                    item = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                            for i in record.history.item}
                    rows[int(item["_step"])] = {k: v for k, v in item.items() if not k.startswith("_")}
    return rows


def _trainer():
    cfg = TransformerConfig.for_family("llama", vocab_size=23, hidden_size=16, num_layers=1, num_heads=2,
                                       num_kv_heads=1, intermediate_size=32, max_position_embeddings=16)
    model = Transformer(cfg, rngs=nnx.Rngs(0))

    def loss_fn(model, batch, rng):
        logits = model(batch["tokens"][:, :-1]).logits
        return losses.mle_loss(logits, batch["tokens"][:, 1:], batch["mask"])

    mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
    return train.Trainer(model, loss_fn, train.OptimizerConfig(learning_rate=1e-2), mesh)


def _batch(position):
    rng = np.random.default_rng(position)
    return {"tokens": rng.integers(1, 23, (4, 9)).astype(np.int32), "mask": np.ones((4, 8), np.float32)}


def _jsonl(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_default_is_jsonl_and_tensorboard():
    assert tracking.selected() == ("tensorboard",)


def test_fit_logs_to_wandb_offline_the_same_records_as_metrics_jsonl(tmp_path):
    trainer = _trainer()
    folder = str(tmp_path / "run")
    with tracking.use_trackers("wandb", config={"lr": 1e-2}) as names:
        assert names == ("wandb",) and tracking.selected() == ("wandb",)
        train.fit(trainer, trainer.init_state(0), _batch, steps=3, log_dir=folder, progress=False,
                  hooks=[train.Every(2, lambda model, step: {"twice": 2.0 * step})])
    assert tracking.selected() == ("tensorboard",)  # the selection ends with the block
    jsonl = _jsonl(folder)
    history = _wandb_history(folder, steps=[1, 2, 3])
    assert sorted(history) == [1, 2, 3] == [r["step"] for r in jsonl]
    for record in jsonl:
        got = history[record["step"]]
        assert got["loss"] == pytest.approx(record["loss"], rel=1e-12)
        assert set(got) == set(record) - {"step"}
    assert history[2]["eval/twice"] == 4.0 and "eval/twice" not in history[1]
    assert not os.path.exists(os.path.join(folder, "tensorboard"))  # not selected


def test_a_resumed_stage_continues_its_wandb_run_and_metrics(tmp_path):
    trainer = _trainer()
    folder = str(tmp_path / "run")
    with tracking.use_trackers(("tensorboard", "wandb")):
        state, _ = train.fit(trainer, trainer.init_state(0), _batch, steps=2, log_dir=folder, progress=False)
        train.fit(trainer, state, _batch, steps=4, start_position=2, log_dir=folder, progress=False)
    runs = glob.glob(os.path.join(folder, "wandb", "offline-run-*"))
    # offline-run-<date>_<time>-<run id>, and W&B appends -1, -2 ... when a resume starts within the same second
    ids = {re.match(r"offline-run-\d{8}_\d{6}-([0-9a-z]+)(-\d+)?$", os.path.basename(r)).group(1) for r in runs}
    assert len(runs) == 2 and len(ids) == 1  # one run id for both stages: the folder's
    assert [r["step"] for r in _jsonl(folder)] == [1, 2, 3, 4]
    assert sorted(_wandb_history(folder, steps=[1, 2, 3, 4])) == [1, 2, 3, 4]
    assert glob.glob(os.path.join(folder, "tensorboard", "events.out.tfevents.*"))


def test_a_tracker_passed_in_gets_every_record_and_stays_open():
    class Recorder:
        def __init__(self):
            self.rows, self.closed = [], False

        def log(self, step, record):
            self.rows.append((step, dict(record)))

        def close(self):
            self.closed = True

    trainer, recorder = _trainer(), Recorder()
    train.fit(trainer, trainer.init_state(0), _batch, steps=2, tracker=recorder, progress=False)
    assert [s for s, _ in recorder.rows] == [1, 2] and not recorder.closed
    assert all(np.isfinite(r["loss"]) for _, r in recorder.rows)
    both = tracking.Trackers([recorder, Recorder()])
    both.log(7, {"x": 1.0})
    both.close()
    assert recorder.rows[-1] == (7, {"x": 1.0}) and recorder.closed and both.trackers[1].closed


def test_bad_tracker_names_are_refused():
    for spec in ("neptune", "", "tensorboard,tensorboard", ("wandb", "nope")):
        with pytest.raises(ValueError, match="trackers must be distinct names"):
            tracking.parse(spec)
    assert tracking.parse("tensorboard, wandb") == ("tensorboard", "wandb")


def test_the_driver_selects_trackers_from_the_command_line(tmp_path, capsys):
    from experiments import run

    folder = str(tmp_path / "run")
    assert run.main(["lm_tiny", "train.steps=3", "train.optimizer.warmup_steps=1", "tracker=wandb",
                     "--run-dir", folder]) == 0
    history = _wandb_history(folder, steps=[1, 2, 3])
    assert sorted(history) == [1, 2, 3]
    assert [history[r["step"]]["loss"] for r in _jsonl(folder)] == pytest.approx([r["loss"] for r in _jsonl(folder)])
    assert not os.path.exists(os.path.join(folder, "tensorboard"))
    assert "tracker" not in json.load(open(os.path.join(folder, "config.json")))  # not part of the config
    assert run.main(["lm_tiny", "tracker=neptune", "--run-dir", str(tmp_path / "other")]) == 2
    assert "tracker=neptune: trackers must be distinct names from ('tensorboard', 'wandb', 'mlflow')" in \
        capsys.readouterr().err
    assert not os.path.exists(tmp_path / "other")


def test_fit_logs_to_mlflow_in_a_local_file_store_and_a_resume_continues_the_run(tmp_path):
    trainer = _trainer()
    folder = str(tmp_path / "run")
    with tracking.use_trackers("tensorboard,mlflow", config={"lr": 1e-2, "model": {"layers": 1}}):
        state, _ = train.fit(trainer, trainer.init_state(0), _batch, steps=2, log_dir=folder, progress=False,
                             hooks=[train.Every(2, lambda model, step: {"twice": 2.0 * step})])
        train.fit(trainer, state, _batch, steps=3, start_position=2, log_dir=folder, progress=False)
    rows, run = _mlflow_history(folder)
    jsonl = _jsonl(folder)
    assert sorted(rows) == [1, 2, 3] == [r["step"] for r in jsonl]
    for record in jsonl:
        assert set(rows[record["step"]]) == set(record) - {"step"}
        assert rows[record["step"]]["loss"] == [pytest.approx(record["loss"], rel=1e-12)]
    assert rows[2]["eval/twice"] == [4.0]
    assert run.data.params == {"lr": "0.01", "model.layers": "1"} and run.info.status == "FINISHED"
    assert run.data.tags[tracking.MlflowTracker.TAG] == os.path.abspath(folder)
    assert glob.glob(os.path.join(folder, "tensorboard", "events.out.tfevents.*"))
