"""bf16 compute (float32 params, optimizer state, norms, softmax and loss) as a training mode: the same loss curve
as float32 on the built-in arithmetic task, within what bf16 rounding explains."""

import jax
import numpy as np
import pytest
from flax import nnx

from jax_irl import parallel, rollout, tasks, train
from jax_irl.algorithms import iqlearn
from jax_irl.data import batching
from jax_irl.data.tokenizer import train_bpe
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer


@pytest.mark.slow
def test_bf16_training_follows_the_float32_loss_curve():
    data = tasks.load(tasks.TaskConfig(name="arithmetic", train_examples=512, eval_examples=8))
    tok = train_bpe([p + r for p, r in zip(data.train_prompts, data.train_responses)], vocab_size=256)
    enc = batching.encode_examples(tok, data.train_prompts, data.train_responses, 96)
    rows = batching.trim_padding({"tokens": enc["tokens"], "mask": enc["mask"]}, tok.pad_id)
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    opt = train.OptimizerConfig(learning_rate=3e-3, schedule="cosine", warmup_steps=10)
    loss_fn = iqlearn.make_loss_fn(iqlearn.Method("mle"), window=rollout.loss_window(rows["mask"]))
    curves = {}
    for dtype, seed in (("float32", 0), ("bfloat16", 0), ("float32", 1), ("float32", 2)):
        sampler = batching.IndexSampler(len(rows["tokens"]), 32, seed=seed)
        cfg = TransformerConfig.for_family("llama", vocab_size=tok.vocab_size, hidden_size=64, num_layers=2,
                                           num_heads=4, num_kv_heads=2, intermediate_size=128,
                                           max_position_embeddings=128, dtype=dtype)
        trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), loss_fn, opt, mesh, total_steps=120)
        state = trainer.init_state(0)
        losses = []
        for position in range(120):
            state, metrics = trainer.step(state, parallel.global_batch(sampler.batch_fn(rows)(position), mesh))
            losses.append(float(metrics["loss"]))
        curves[dtype, seed] = np.array(losses)
        assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))  # master weights stay fp32
    f32, bf16 = curves["float32", 0], curves["bfloat16", 0]
    assert f32[-10:].mean() < 0.5 * f32[:5].mean()  # it learned

    def gap(a, b):  # the largest relative gap between the means of 10-step windows
        return np.abs(a.reshape(12, 10).mean(1) / b.reshape(12, 10).mean(1) - 1).max()

    # Within noise: bf16 departs from float32 by no more than float32 does from itself under the other batch orders
    # (the same data and init), and by under 6% anywhere (measured 2026-12-06: bf16 4.2-4.9% across runs, against
    # 4.2% and 7.8% for the two other orders; a third gave 4.2%).
    noise = max(gap(curves["float32", k], f32) for k in (1, 2))
    assert gap(bf16, f32) < max(noise, 0.005) and gap(bf16, f32) < 0.06, (gap(bf16, f32), noise)
    # ... and not the same numbers (the mode is really on).
    assert np.abs(bf16 - f32).max() > 1e-4
