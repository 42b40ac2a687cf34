"""The lm_tiny recipe: a tiny Llama-style model trained with offline IQLearn on character-level addition
(``experiments.recipes.addition``) in one stage on the run's mesh, with Orbax checkpoints, evaluated by greedy exact
match on held-out problems. Results: results.json and results.md (one row)."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import nnx

from experiments.lm_base import ModelSize
from experiments.recipes import addition
from jax_irl import sampling, stages, train
from jax_irl.algorithms.iqlearn import Method, make_loss_fn
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class LMTinyConfig:
    model: ModelSize = ModelSize()
    train: stages.StageConfig = stages.StageConfig(
        steps=300, batch_size=64, optimizer=train.OptimizerConfig(learning_rate=3e-3, schedule="cosine",
                                                                 warmup_steps=20, weight_decay=0.01))
    settings: stages.RunSettings = stages.RunSettings()
    td_weight: float = 0.1
    gamma: float = 1.0
    seed: int = 0
    max_operand: int = 50
    train_problems: int = 4000
    eval_problems: int = 200


@dataclasses.dataclass(frozen=True)
class Batches:
    """The stage's batch_fn: the global batch at a data position is a pure function of (seed, position), so a
    resumed run sees the same batches; each process takes its share of the rows."""

    rows: np.ndarray
    mask: np.ndarray
    seed: int
    batch_size: int

    def __call__(self, position: int) -> dict:
        pick = np.random.default_rng((self.seed, position)).integers(0, len(self.rows), self.batch_size)
        mine = np.array_split(pick, jax.process_count())[jax.process_index()]
        return {"tokens": self.rows[mine], "mask": self.mask[mine]}


def exact_match(model, rows, prompt_len, answers) -> float:
    prompts = [list(r[:p]) for r, p in zip(rows, prompt_len)]
    tokens, mask = sampling.left_pad(prompts, pad_id=addition.PAD)
    out = sampling.generate(model, tokens, mask, jax.random.PRNGKey(0), max_new_tokens=4, greedy=True,
                            eos_ids=(addition.EOS,), pad_id=addition.PAD)
    generated = np.asarray(out.tokens)
    predicted = [addition.decode_answer(g, 0) for g in generated]
    return float(np.mean([p == a for p, a in zip(predicted, answers)]))


def run(cfg: LMTinyConfig, run_dir: str) -> dict:
    rng = np.random.default_rng(1234)
    rows, prompt_len, _ = addition.make_problems(rng, cfg.train_problems, cfg.max_operand)
    test_rows, test_pl, test_answers = addition.make_problems(rng, cfg.eval_problems, cfg.max_operand)
    mask = addition.response_mask(rows, prompt_len)

    model_cfg = TransformerConfig.for_family("llama", vocab_size=addition.VOCAB, max_position_embeddings=64,
                                             **dataclasses.asdict(cfg.model))
    depends = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("train", "settings")}
    run = stages.Run.start(run_dir, cfg.settings, fingerprint=depends, seed=cfg.seed, resumable_keys=("stage.steps",),
                           desc="lm_tiny", resume_hint=f"Run the same command with --run-dir {run_dir} to resume.")
    mesh = run.mesh

    result = run.stage(Transformer(model_cfg, rngs=nnx.Rngs(cfg.seed)),
                       make_loss_fn(Method("iqlearn", td_weight=cfg.td_weight, gamma=cfg.gamma)), cfg.train,
                       Batches(rows, mask, cfg.seed, cfg.train.batch_size))
    state = result.state
    accuracy = exact_match(result.model, test_rows, test_pl, test_answers)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        last = json.loads(f.readlines()[-1])
    results = {"status": "done", "steps": int(state.step), "final_loss": last["loss"], "final_nll": last["nll_loss"],
               "final_td": last["td_loss"], "test_exact_match": accuracy, "devices": jax.device_count(),
               "mesh": dict(mesh.shape)}
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = ("| steps | td_weight | final loss | nll | td | test exact match | mesh |\n|---|---|---|---|---|---|---|\n"
             f"| {results['steps']} | {cfg.td_weight:g} | {last['loss']:.4f} | {last['nll_loss']:.4f} | "
             f"{last['td_loss']:.4f} | {accuracy:.3f} | {dict(mesh.shape)} |\n")
    with open(os.path.join(run_dir, "results.md"), "w") as f:
        f.write(table)
    print(table)
    return results
