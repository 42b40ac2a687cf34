"""Stages: the schedule-length rule, run_stage's resume (exact after a preemption) and fingerprint, the writer."""

import dataclasses
import json
import math
import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from jax_irl import checkpoint, losses, parallel, stages, tracking, train
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer


def _model():
    cfg = TransformerConfig.for_family("llama", vocab_size=32, hidden_size=16, num_layers=1, num_heads=2,
                                       num_kv_heads=2, intermediate_size=32)
    return Transformer(cfg, rngs=nnx.Rngs(0))


def _loss_fn(model, batch, rng):
    return losses.mle_loss(model(batch["tokens"][:, :-1]).logits, batch["tokens"][:, 1:], batch["mask"])


def _batch(position):
    tokens = np.random.default_rng(position).integers(0, 32, (8, 6)).astype(np.int32)
    return {"tokens": tokens, "mask": np.ones((8, 5), np.float32)}


COSINE = train.OptimizerConfig(learning_rate=1e-2, schedule="cosine", warmup_steps=2)


def test_the_schedule_spans_the_stages_steps():
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    trainer = train.Trainer(_model(), _loss_fn, COSINE, mesh, total_steps=12)
    want = [1e-2 * s / 2 for s in range(2)] + [1e-2 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 10))
                                               for s in range(2, 12)]
    np.testing.assert_allclose([float(trainer.schedule(s)) for s in range(12)], want, rtol=1e-6, atol=1e-9)
    # lm_tiny's optimizer on a 1000-step stage: no step after 300 (its old fixed total_steps) trains at lr 0.
    lm_tiny = train.OptimizerConfig(learning_rate=3e-3, schedule="cosine", warmup_steps=20, weight_decay=0.01)
    long = train.learning_rate_schedule(lm_tiny, 1000)
    assert all(float(long(s)) > 0 for s in range(1, 1000)) and float(long(1000)) == pytest.approx(0.0, abs=1e-12)


def test_a_schedule_of_another_length_is_refused():
    with pytest.raises(ValueError, match="total_steps=300 but the stage trains 1000 steps"):
        stages.StageConfig(steps=1000, batch_size=8, optimizer=train.OptimizerConfig(schedule="cosine", total_steps=300))
    with pytest.raises(ValueError, match="warmup_steps=2 is longer than the stage's 1 steps"):
        stages.StageConfig(steps=1, batch_size=8, optimizer=COSINE)
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    with pytest.raises(ValueError, match="cosine schedule needs the stage's step count"):
        train.Trainer(_model(), _loss_fn, COSINE, mesh)
    trainer = train.Trainer(_model(), _loss_fn, COSINE, mesh, total_steps=10)
    with pytest.raises(ValueError, match="spans 10 steps but fit trains to step 12"):
        train.fit(trainer, trainer.init_state(0), _batch, steps=12, progress=False)
    for bad, match in ((dict(learning_rate=float("nan")), "learning_rate must be a finite"),
                       (dict(warmup_steps=-1), "warmup_steps must be >= 0"), (dict(total_steps=0), "total_steps")):
        with pytest.raises(ValueError, match=match):
            train.OptimizerConfig(**bad)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        stages.StageConfig(steps=3, batch_size=0)


STAGE = stages.StageConfig(steps=6, batch_size=8, optimizer=COSINE)


def _stage(folder, batch_fn=_batch, stage=STAGE):
    mesh = parallel.make_mesh(parallel.MeshConfig(2, 1, 1), jax.devices()[:2])
    run = stages.Run(str(folder), mesh, fingerprint={"data": "random"}, seed=3, desc="test", progress=False,
                     resume_hint="Resume with the same call.")
    return stages.run_stage(run, _model(), _loss_fn, stage, batch_fn)


def test_a_preempted_stage_resumes_to_the_uninterrupted_params(tmp_path):
    straight = _stage(tmp_path / "straight")

    def preempting(position):
        if position == 2 and not (tmp_path / "sent").exists():
            (tmp_path / "sent").touch()
            os.kill(os.getpid(), signal.SIGTERM)  # the stage saves at this step and stops
        return _batch(position)

    with pytest.raises(stages.StagePreempted, match="stopped at step 3 after saving. Resume with the same call."):
        _stage(tmp_path / "split", preempting)
    resumed = _stage(tmp_path / "split", preempting)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.state.params),
                 jax.device_get(resumed.state.params))
    with open(tmp_path / "split" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    with open(tmp_path / "straight" / "metrics.jsonl") as f:
        assert [json.loads(line)["loss"] for line in f] == [r["loss"] for r in rows]
    # The trained model is returned; the stage's own fields are part of its checkpoint's fingerprint.
    assert isinstance(resumed.model, Transformer)
    other = stages.StageConfig(steps=6, batch_size=8, optimizer=train.OptimizerConfig(learning_rate=5e-3))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="stage.optimizer.learning_rate"):
        _stage(tmp_path / "split", stage=other)


def test_metrics_writer_drops_steps_after_a_restart(tmp_path):
    writer = tracking.MetricsWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.log(step, {"loss": float(step)})
    writer.close()
    again = tracking.MetricsWriter(str(tmp_path), first_step=2)
    again.log(3, {"loss": 30.0})
    again.close()
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line) for line in f] == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0},
                                                    {"step": 3, "loss": 30.0}]
    assert any(p.startswith("events.out.tfevents") for p in os.listdir(tmp_path / "tensorboard"))


def test_run_settings_refuse_what_no_run_could_use():
    for bad, match in ((dict(save_every=0), "save_every must be an int >= 1"), (dict(keep=0), "keep must be"),
                       (dict(vocab_chunk=0), "vocab_chunk must be None or an int >= 1"),
                       (dict(rows_per_score=-4), "rows_per_score"), (dict(keep_rollouts=True), "keep_rollouts"),
                       (dict(save_every=2.5), "save_every")):
        with pytest.raises(ValueError, match=match):
            stages.RunSettings(**bad)
    assert set(stages.RunSettings.RESUMABLE) < {f.name for f in dataclasses.fields(stages.RunSettings)}
    assert "vocab_chunk" not in stages.RunSettings.RESUMABLE  # it changes float results: part of the fingerprint


def test_a_sub_run_adds_to_its_fingerprint_and_a_changed_dependency_is_refused(tmp_path):
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    root = stages.Run(str(tmp_path), mesh, stages.RunSettings(save_every=2, keep=1), fingerprint={"data": 1}, seed=5,
                      progress=False)
    part = root.sub("a/b", depends={"method": "x"}, desc="part")
    assert part.folder == os.path.join(str(tmp_path), "a", "b") and part.seed == 5 and part.desc == "part"
    assert part.fingerprint == {"data": 1, "method": "x"} and root.fingerprint == {"data": 1}  # the parent unchanged
    assert root.sub(seed=7).folder == root.folder and root.sub(seed=7).seed == 7
    stage = stages.StageConfig(steps=4, batch_size=8, optimizer=train.OptimizerConfig(learning_rate=1e-2))
    part.stage(_model(), _loss_fn, stage, _batch)
    with checkpoint.Checkpointer(os.path.join(part.folder, "checkpoints"), save_every=2,
                                 fingerprint=dict(part.fingerprint, stage=dataclasses.asdict(stage))) as ckpt:
        saved = ckpt.check_fingerprint(4)["fingerprint"]
        assert ckpt.all_steps() == [4]  # keep=1
    assert saved["method"] == "x" and saved["data"] == 1 and saved["stage"]["steps"] == 4
    with pytest.raises(checkpoint.CheckpointMismatchError, match="method"):
        root.sub("a/b", depends={"method": "y"}).stage(_model(), _loss_fn, stage, _batch)
    # cached: made once in the run's folder, then reused
    calls = []
    assert part.cached("x.json", lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    assert part.cached("x.json", lambda: calls.append(1) or {"v": 2}) == {"v": 1} and calls == [1]
    assert os.path.exists(os.path.join(part.folder, "x.json"))


def test_model_batches_get_the_current_model(tmp_path):
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    seen = []

    def batch_fn(position, model):
        seen.append(float(np.asarray(model.embed[...]).sum()))
        return _batch(position)

    stage = stages.StageConfig(steps=3, batch_size=8, optimizer=train.OptimizerConfig(learning_rate=1e-2))
    stages.Run(str(tmp_path), mesh, progress=False).stage(_model(), _loss_fn, stage, train.ModelBatches(batch_fn))
    assert len(seen) == 3 and len(set(seen)) == 3  # each step's batch saw that step's (updated) model
    with pytest.raises(ValueError, match="ModelBatches needs a callable"):
        train.ModelBatches(3)
