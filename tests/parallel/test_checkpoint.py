import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from jax_irl import checkpoint, losses, parallel, tracking, train
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(folder, *extra, wait=True):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, WORKER, "--dir", str(folder), *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _complete_steps(folder):
    path = os.path.join(folder, "checkpoints")
    return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _wait_for_checkpoint(folder, proc, at_least, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early: {proc.stderr.read()[-3000:]}")
        if any(s >= at_least for s in _complete_steps(folder)):
            return
        time.sleep(0.1)
    raise AssertionError("no checkpoint appeared in time")


def _final(folder):
    with np.load(os.path.join(folder, "final.npz")) as f:
        return {k: f[k] for k in f.files}


def _metrics(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # timings differ, nothing else


def _assert_same_run(a, b):
    fa, fb = _final(a), _final(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)  # bitwise
    assert _metrics(a) == _metrics(b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    _run(folder)
    return folder


@pytest.mark.slow
def test_a_grain_pipeline_saves_its_position_and_resumes_bitwise_after_sigkill(tmp_path):
    """A run killed with SIGKILL resumes to bitwise the params and metrics of one never interrupted. Its batches
    are read through a prefetching Grain iterator: each checkpoint holds the iterator's state (its next position,
    which equals the step here: one batch a step). (A plain batch function resumes in the SIGTERM test.)"""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(whole, "--grain")
    assert _complete_steps(whole) == [10, 12]  # every 2 steps, the last 2 kept
    proc = _run(killed, "--grain", "--sleep", "0.4", wait=False)
    _wait_for_checkpoint(killed, proc, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_complete_steps(killed))
    assert killed_at < 12
    for step in _complete_steps(killed):
        with open(killed / "checkpoints" / str(step) / "data" / "process_0-of-1.json") as f:
            assert json.load(f) == {"next_index": step}
    assert f"start {killed_at}" in _run(killed, "--grain")
    _assert_same_run(whole, killed)


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_stops(uninterrupted, tmp_path):
    proc = _run(tmp_path, "--sleep", "0.4", wait=False)
    _wait_for_checkpoint(tmp_path, proc, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    step = int(out.split("status preempted step ")[1].split()[0])
    assert step in _complete_steps(tmp_path)  # saved on the way out, even off the save schedule
    _run(tmp_path)
    _assert_same_run(uninterrupted, tmp_path)


def _trainer(devices, shape, hidden=32):
    cfg = TransformerConfig.for_family("llama", vocab_size=64, hidden_size=hidden, num_layers=1, num_heads=8,
                                       num_kv_heads=8, intermediate_size=48)

    def loss_fn(model, batch, rng):
        logits = model(batch["tokens"][:, :-1]).logits
        return losses.mle_loss(logits, batch["tokens"][:, 1:], np.ones((16, 9), np.float32))

    mesh = parallel.make_mesh(parallel.MeshConfig(*shape), devices)
    trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), loss_fn, train.OptimizerConfig(learning_rate=1e-2),
                            mesh)
    return trainer, {"model": cfg.__dict__}


def _batch(position):
    return {"tokens": np.random.default_rng(position).integers(0, 64, (16, 10)).astype(np.int32)}


def test_a_data_state_that_disagrees_with_the_checkpoint_is_refused(tmp_path):
    """Resuming a Grain pipeline whose saved iterator state says another position than the checkpoint's record
    is refused, naming both, and the checkpoint is left as it was."""
    from jax_irl.data import batching

    trainer, fp = _trainer(jax.devices()[:2], (2, 1, 1))
    rows = np.random.default_rng(0).integers(0, 64, (40, 10)).astype(np.int32)
    batches = batching.IndexSampler(40, 16, seed=5).batch_fn({"tokens": rows})
    ckpt = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2)
    state, position = train.resume_or_init(trainer, ckpt, seed=0)
    train.fit(trainer, state, batches, steps=2, start_position=position, checkpointer=ckpt, progress=False)
    ckpt.close()
    path = tmp_path / "2" / "data" / "process_0-of-1.json"
    assert json.loads(path.read_text()) == {"next_index": 2}
    path.write_text(json.dumps({"next_index": 5}))
    ckpt = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2)
    state, position = train.resume_or_init(trainer, ckpt, seed=0)
    assert position == 2
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match="its data iterator is at position 5 but its record says 2"):
        train.fit(trainer, state, batches, steps=4, start_position=position, checkpointer=ckpt, progress=False)
    ckpt.close()
    assert json.loads(path.read_text()) == {"next_index": 5} and sorted(os.listdir(tmp_path)) == before


def test_restore_onto_a_different_mesh_and_continue(tmp_path):
    trainer, fp = _trainer(jax.devices(), (2, 2, 2))
    ckpt = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=3)
    state, _ = train.fit(trainer, trainer.init_state(0), _batch, steps=3, checkpointer=ckpt, progress=False)
    saved = jax.device_get(state.params)
    _, expected = trainer.step(state, parallel.global_batch(_batch(3), trainer.mesh))
    for devices, shape in ((jax.devices()[:4], (1, 1, 4)), (jax.devices()[:4], (2, 2, 1)), (jax.devices()[:1],
                                                                                              (1, 1, 1))):
        other, fp2 = _trainer(devices, shape)
        ckpt2 = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp2, save_every=3)
        restored, position = train.resume_or_init(other, ckpt2, seed=5)
        assert position == 3 and int(restored.step) == 3
        jax.tree.map(np.testing.assert_array_equal, saved, jax.device_get(restored.params))
        assert len(restored.params["embed"].get_value().sharding.device_set) == len(devices)
        _, metrics = other.step(restored, parallel.global_batch(_batch(3), other.mesh))
        np.testing.assert_allclose(float(metrics["loss"]), float(expected["loss"]), atol=1e-5)
        ckpt2.close()
    ckpt.close()


def test_checkpoint_from_another_config_or_model_is_refused(tmp_path):
    trainer, fp = _trainer(jax.devices()[:1], (1, 1, 1))
    ckpt = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=1)
    train.fit(trainer, trainer.init_state(0), _batch, steps=1, checkpointer=ckpt, progress=False)
    bigger, fp_big = _trainer(jax.devices()[:1], (1, 1, 1), hidden=48)
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"model.hidden_size: checkpoint has 32, this run has 48"):
        train.resume_or_init(bigger, checkpoint.Checkpointer(str(tmp_path), fingerprint=fp_big, save_every=1), 0)
    # Same fingerprint but a model whose shapes differ (a forged or stale fingerprint): still refused.
    with pytest.raises(checkpoint.CheckpointMismatchError, match="does not fit"):
        train.resume_or_init(bigger, checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=1), 0)


def test_a_half_written_checkpoint_is_never_loaded(tmp_path):
    trainer, fp = _trainer(jax.devices()[:1], (1, 1, 1))
    ckpt = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2)
    train.fit(trainer, trainer.init_state(0), _batch, steps=2, checkpointer=ckpt, progress=False)
    # What a save killed midway leaves behind: a temporary step directory that was never renamed.
    shutil.copytree(tmp_path / "2", tmp_path / "4.orbax-checkpoint-tmp-1234")
    fresh = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2)
    assert fresh.latest_step() == 2
    state, position = train.resume_or_init(trainer, fresh, 0)
    assert int(state.step) == 2 and position == 2
    ckpt.close()
    fresh.close()


def test_nan_loss_stops_before_saving(tmp_path):
    trainer, fp = _trainer(jax.devices()[:1], (1, 1, 1))
    ckpt = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=1)
    state, _ = train.fit(trainer, trainer.init_state(0), _batch, steps=1, checkpointer=ckpt, progress=False)
    bad = lambda position: {"tokens": np.full((16, 10), 64, np.int32)}  # out-of-range ids -> NaN under jit
    with pytest.raises(FloatingPointError, match="step 2"):
        train.fit(trainer, state, bad, steps=3, start_position=1, checkpointer=ckpt, progress=False)
    assert ckpt.latest_step() == 1
    ckpt.close()


def test_eval_hook_and_metrics_log(tmp_path):
    trainer, _ = _trainer(jax.devices()[:2], (2, 1, 1))
    seen = []

    def eval_fn(model, step):
        seen.append(step)
        logits = model(np.asarray(_batch(999)["tokens"][:, :-1])).logits
        return {"mean_logit": float(np.mean(np.asarray(logits)))}

    steps = []
    train.fit(trainer, trainer.init_state(0), _batch, steps=4, log_dir=str(tmp_path), progress=False,
              hooks=[train.Every(2, eval_fn), train.Every(3, lambda m, step: steps.append(step), prefix="x/")])
    assert seen == [2, 4] and steps == [3]  # a hook returning None logs nothing
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert ["eval/mean_logit" in r for r in rows] == [False, True, False, True]
    assert not any(k.startswith("x/") for r in rows for k in r)
    for bad, match in ((train.Every(0, eval_fn), "steps must be an int >= 1"), (train.Every(2, 3), "callable"),
                       (eval_fn, "hooks must be train.Every")):
        with pytest.raises(ValueError, match=match):
            train.fit(trainer, trainer.init_state(0), _batch, steps=1, hooks=[bad], progress=False)
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)


def test_a_state_holding_nan_never_reaches_disk(tmp_path):
    """The loss is finite but its gradient is NaN (a where whose untaken branch is NaN): the update makes the
    params NaN, and the save of that step is refused, naming the leaves; nothing is written."""
    cfg = TransformerConfig.for_family("llama", vocab_size=64, hidden_size=32, num_layers=1, num_heads=8,
                                       num_kv_heads=8, intermediate_size=48)

    def loss_fn(model, batch, rng):
        loss, aux = losses.mle_loss(model(batch["tokens"][:, :-1]).logits, batch["tokens"][:, 1:],
                                    np.ones((16, 9), np.float32))
        w = model.final_norm.weight[...]
        return loss + jax.numpy.sum(jax.numpy.where(w < -1e9, jax.numpy.sqrt(-w), 0.0)), aux

    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), loss_fn, train.OptimizerConfig(learning_rate=1e-2,
                                                                                                max_grad_norm=None),
                            mesh)
    ckpt = checkpoint.Checkpointer(str(tmp_path), fingerprint={"x": 1}, save_every=1)
    with pytest.raises(FloatingPointError, match=r"step 1: the state to save holds NaN or inf in .*final_norm.*"
                                                 r"it was not saved \(there is no earlier checkpoint\)"):
        train.fit(trainer, trainer.init_state(0), _batch, steps=2, checkpointer=ckpt, progress=False)
    ckpt.close()
    assert checkpoint.Checkpointer(str(tmp_path), fingerprint={"x": 1}, save_every=1).latest_step() is None


def _saved_at_2_and_4(tmp_path):
    trainer, fp = _trainer(jax.devices()[:1], (1, 1, 1))
    ckpt = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2, keep=3)
    state, _ = train.fit(trainer, trainer.init_state(0), _batch, steps=2, checkpointer=ckpt, progress=False)
    at_2 = jax.device_get(state.params)
    train.fit(trainer, state, _batch, steps=4, start_position=2, checkpointer=ckpt, progress=False)
    ckpt.close()
    return trainer, fp, at_2


@pytest.mark.parametrize("damage", ["checksums", "meta_deleted", "meta_truncated", "state_deleted", "data_bytes"])
def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_used(tmp_path, capsys, damage):
    trainer, fp, at_2 = _saved_at_2_and_4(tmp_path)
    step4 = tmp_path / "4"
    if damage == "checksums":  # what silently changed data looks like: the recorded checksums no longer match
        meta = step4 / "meta" / "metadata"
        record = json.loads(meta.read_text())
        key = next(k for k in record["checksums"] if "embed" in k)
        record["checksums"][key][0] += 1
        meta.write_text(json.dumps(record))
    elif damage == "meta_deleted":
        shutil.rmtree(step4 / "meta")
    elif damage == "meta_truncated":
        meta = step4 / "meta" / "metadata"
        meta.write_text(meta.read_text()[:40])
    elif damage == "state_deleted":
        shutil.rmtree(step4 / "state")
    else:  # random bytes over the middle of the largest data file
        files = [p for p in (step4 / "state").rglob("*") if p.is_file()]
        big = max(files, key=lambda p: p.stat().st_size)
        data = bytearray(big.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
        big.write_bytes(bytes(data))
    fresh = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2, keep=3)
    state, position = train.resume_or_init(trainer, fresh, 0)
    out = capsys.readouterr().out
    assert int(state.step) == 2 and position == 2
    assert "skipped damaged checkpoints and resumed from step 2" in out and "step 4:" in out
    jax.tree.map(np.testing.assert_array_equal, at_2, jax.device_get(state.params))
    # the damaged step is kept aside, named in the warning, and training past it saves step 4 again
    aside = list((tmp_path.parent / (tmp_path.name + ".damaged")).iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("4-") and str(aside[0]) in out
    state, status = train.fit(trainer, state, _batch, steps=4, start_position=position, checkpointer=fresh,
                              progress=False)
    assert status == "done" and fresh.latest_step() == 4
    fresh.close()
    again = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2, keep=3)
    resumed, position = train.resume_or_init(trainer, again, 0)
    assert int(resumed.step) == 4 and position == 4 and "damaged" not in capsys.readouterr().out
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), jax.device_get(resumed.params))
    again.close()


def test_no_intact_checkpoint_is_an_error_never_a_fresh_start(tmp_path):
    trainer, fp, _ = _saved_at_2_and_4(tmp_path)
    steps = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2, keep=3).all_steps()
    assert 2 in steps and 4 in steps
    for step in steps:
        shutil.rmtree(tmp_path / str(step) / "state")
    fresh = checkpoint.Checkpointer(str(tmp_path), fingerprint=fp, save_every=2, keep=3)
    with pytest.raises(checkpoint.CheckpointDamagedError, match=r"no intact checkpoint(.|\n)*step 4: its state "
                                                                r"metadata cannot be read(.|\n)*step 2:"):
        train.resume_or_init(trainer, fresh, 0)
    fresh.close()


def test_a_torn_last_metrics_line_is_dropped_and_a_damaged_one_named(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    tracking.MetricsWriter(str(tmp_path), first_step=2).close()
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n'
    assert "dropped a torn last line" in capsys.readouterr().out
    path.write_text('{"step": 1, "loss": 1.0}\ngarbage\n{"step": 2, "loss": 2.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record"):
        tracking.MetricsWriter(str(tmp_path), first_step=2)
