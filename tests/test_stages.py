"""Stages: the schedule-length rule, run_stage's resume (exact after a preemption) and fingerprint, the writer."""

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
    return stages.run_stage(str(folder), _model(), _loss_fn, stage, mesh, batch_fn, seed=3,
                            fingerprint={"data": "random"}, save_every=100, desc="test", progress=False,
                            resume_hint="Resume with the same call.")


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
