"""Reinforcement learning from symbolic feedback (Jha et al. 2024) on the Game of 24, CPU-sized: SFT, then PPO
with a scalar reward against PPO with the symbolic tool's token-level rewards, at the same steps and samples.

pi_sft is the shared base (``experiments.lm_base``: BPE + pretraining on the puzzles' prompts and unrelated
single calculations) fine-tuned with MLE on solver-written step solutions ('12 + 9 = 21' ...) of the training
puzzles. Each reward variant (``symbolic.RewardSpec``) runs PPO from pi_sft with pi_sft as the KL reference,
for every seed: 'scalar' pays 1 on the last token of a solved puzzle; 'token' pays the same and adds a penalty
on every token that the Game of 24 tool's certificate blames (a false step, a number not available, a wrong
final value, a line that is not a step). Measured on held-out puzzles: the success rate (greedy and sampled),
the fraction of true steps, and KL(pi || pi_sft) on the policy's own samples, every ``eval_every`` iterations.
Results: results.json, results.md (mean +- standard error over seeds), PNG plots of success and KL against
PPO steps.

    python -m experiments.run rlsf_game24 [seeds=(0,1,2)] [methods=(scalar,token)] [ppo.iterations=40]
        [variants.paper.kind=token variants.paper.low=0 variants.paper.high=1 variants.paper.bonus=0]
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from flax import nnx

from experiments import lm_base
from experiments.configs._shared import ModelSize
from jax_irl import metrics, parallel, rollout, sampling, sweep, symbolic, train
from jax_irl.algorithms import iqlearn, ppo
from jax_irl.data import tasks
from jax_irl.symbolic.game24 import Game24Tool

RESUMABLE = ("mesh", "distributed", "save_every", "methods", "seeds", "variants")

VARIANTS = {"scalar": symbolic.RewardSpec("scalar"), "token": symbolic.RewardSpec("token")}


@dataclasses.dataclass(frozen=True)
class RLSFConfig:
    task: tasks.TaskConfig = tasks.TaskConfig(name="game24", train_examples=1262, eval_examples=100)
    base: lm_base.BaseConfig = lm_base.BaseConfig(
        model=ModelSize(hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256),
        vocab_size=512, max_length=64, max_positions=128, calculation_rows=1500, calculations_per_row=6,
        pretrain=train.StageConfig(steps=500, batch_size=32, optimizer=train.OptimizerConfig(
            learning_rate=3e-3, schedule="cosine", warmup_steps=20, weight_decay=0.01)))
    sft: train.StageConfig = train.StageConfig(
        steps=600, batch_size=32, optimizer=train.OptimizerConfig(learning_rate=2e-3, schedule="cosine",
                                                                 warmup_steps=20, weight_decay=0.01))
    ppo: ppo.PPOConfig = ppo.PPOConfig(
        iterations=24, prompts_per_rollout=16, samples_per_prompt=4, max_new_tokens=36, epochs=2, minibatches=2,
        kl_coef=0.05, optimizer=train.OptimizerConfig(learning_rate=3e-5, max_grad_norm=1.0))
    variants: Dict[str, symbolic.RewardSpec] = dataclasses.field(default_factory=lambda: dict(VARIANTS))
    methods: Tuple[str, ...] = tuple(VARIANTS)
    seeds: Tuple[int, ...] = (0, 1, 2)
    eval_every: int = 6  # PPO iterations between evaluations on the held-out puzzles
    eval_samples: int = 2  # sampled responses per held-out puzzle (temperature 1), besides the greedy one
    vocab_chunk: Optional[int] = None
    mesh: parallel.MeshConfig = parallel.MeshConfig()
    distributed: parallel.DistributedConfig = parallel.DistributedConfig()
    save_every: int = 100


def config() -> RLSFConfig:
    return RLSFConfig()


def validate(cfg: RLSFConfig) -> None:
    sweep.check_selection(cfg.methods, cfg.variants)
    if not cfg.seeds or cfg.eval_samples < 1 or cfg.eval_every < 1:
        raise ValueError("seeds must name a seed; eval_samples and eval_every must be >= 1")
    if cfg.task.name != "game24":
        raise ValueError(f"rlsf_game24 checks answers with the Game of 24 tool; task.name must be 'game24', got "
                         f"{cfg.task.name!r}")


def evaluate(policy, reference, tok, prompts: np.ndarray, mask: np.ndarray, numbers, key, *, samples: int,
             max_new_tokens: int, vocab_chunk: Optional[int] = None) -> Dict[str, float]:
    """Greedy and sampled (temperature 1) success and true-step fraction on held-out puzzles, with KL(pi || ref)
    as the mean over the policy's own samples of sum_t (log pi - log ref), and its standard error."""
    tool = Game24Tool()

    def judge(texts, refs):
        certs = [symbolic.safe_check(tool, r, t) for t, r in zip(texts, refs)]
        solved = np.array([c.correct for c in certs], float)
        steps = np.array([float(dict(c.details).get("true_step_fraction", 0.0)) for c in certs])
        return solved, steps

    out = sampling.generate(policy, prompts, mask, key, max_new_tokens=max_new_tokens, greedy=True,
                            eos_ids=(tok.eos_id,), pad_id=tok.pad_id)
    ids, m = np.asarray(out.tokens), np.asarray(out.mask)
    greedy_solved, greedy_steps = judge([tok.decode(r[k > 0]) for r, k in zip(ids, m)], numbers)
    rows = rollout.sample_rows(policy, prompts, mask, jax.random.fold_in(key, 1), max_new_tokens=max_new_tokens,
                               eos_id=tok.eos_id, pad_id=tok.pad_id, num_samples=samples)
    texts = [tok.decode(r[k > 0]) for r, k in zip(rows["response"], rows["response_mask"])]
    solved, steps = judge(texts, [n for n in numbers for _ in range(samples)])
    ref = rollout.score_rows(reference, rollout.LMScores(("log_probs",), vocab_chunk=vocab_chunk, per_row=True),
                             {k: rows[k] for k in ("tokens", "attention", "mask")})["log_probs"]
    kl = rows["model_log_probs"].sum(-1) - ref
    return {"success": float(greedy_solved.mean()), "true_steps": float(greedy_steps.mean()),
            "sampled_success": float(solved.mean()), "sampled_true_steps": float(steps.mean()),
            "kl": float(kl.mean()), "kl_se": metrics.standard_error(kl.tolist()),
            "length": float(rows["response_mask"].sum(-1).mean())}


COLUMNS = (sweep.Column("success", "success (greedy)"), sweep.Column("sampled_success", "success (T=1)"),
           sweep.Column("true_steps", "true steps (greedy)"), sweep.Column("kl", "KL(pi ‖ pi_sft)"),
           sweep.Column("train_reward", "train reward (last 4 rollouts)"),
           sweep.Column("rollout_tokens_per_s", "rollout tok/s", 0), sweep.Column("update_tokens_per_s",
                                                                                   "update tok/s", 0))


def _curve(folder: str) -> Dict[str, Dict[str, float]]:
    """step -> eval metrics, read back from the PPO stage's metrics.jsonl (exact after a resume)."""
    curve = {}
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "eval/success" in record:
                curve[str(record["step"])] = {k[5:]: v for k, v in record.items() if k.startswith("eval/")}
    return curve


def run(cfg: RLSFConfig, run_dir: str) -> dict:
    validate(cfg)
    data = tasks.load(cfg.task)
    enc = lm_base.encode(cfg.base, data, lm_base.tokenizer(cfg.base, data, run_dir))
    tok, mesh = enc.tokenizer, parallel.make_mesh(cfg.mesh)
    base = lm_base.base_model(cfg.base, cfg.task, tok, data.train_prompts, mesh, run_dir, save_every=cfg.save_every,
                              vocab_chunk=cfg.vocab_chunk)
    depends = {"task": cfg.task, "base": cfg.base, "sft": cfg.sft, "vocab_chunk": cfg.vocab_chunk}
    pi_sft = iqlearn.finetune(
        iqlearn.Method("mle"), base, cfg.sft, mesh, enc.train, os.path.join(run_dir, "sft"), seed=0,
        fingerprint=depends, save_every=cfg.save_every, prompt_width=enc.prompt_width,
        max_new_tokens=cfg.ppo.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id, vocab_chunk=cfg.vocab_chunk,
        desc="pi_sft", resume_hint=f"Resume with --run-dir {run_dir}")
    train_tokens, train_mask = rollout.prompt_rows(enc.train["tokens"], enc.train["prompt_lengths"], tok.pad_id,
                                                   enc.prompt_width)
    prompts = ppo.Prompts(train_tokens, train_mask, list(data.train_prompts))
    eval_key = jax.random.PRNGKey(7)

    def measure(policy):
        return evaluate(policy, pi_sft, tok, enc.eval_prompts, enc.eval_prompt_mask, data.eval_references, eval_key,
                        samples=cfg.eval_samples, max_new_tokens=cfg.ppo.max_new_tokens, vocab_chunk=cfg.vocab_chunk)

    sft_path = os.path.join(run_dir, "sft", "eval.json")
    if os.path.exists(sft_path):
        with open(sft_path) as f:
            sft_eval = json.load(f)
    else:
        sft_eval = measure(pi_sft)
        if jax.process_index() == 0:
            with open(sft_path, "w") as f:
                json.dump(sft_eval, f)
    tool = Game24Tool()
    steps_per_eval = cfg.eval_every * cfg.ppo.steps_per_iteration

    def run_one(name, spec, seed, folder):
        policy = nnx.clone(pi_sft)
        model = ppo.ActorCritic(policy, cfg.ppo.critic, rngs=nnx.Rngs(seed))
        result, stats = ppo.train_ppo(
            folder, model, pi_sft, cfg.ppo, mesh, prompts, symbolic.reward_fn(tool, tok, spec), seed=seed,
            eos_id=tok.eos_id, pad_id=tok.pad_id, fingerprint=dict(depends, variant=spec), save_every=cfg.save_every,
            vocab_chunk=cfg.vocab_chunk, eval_fn=lambda m, step: measure(m.policy), eval_every=steps_per_eval,
            desc=f"ppo {name} seed {seed}", resume_hint=f"Resume with --run-dir {run_dir}")
        final = measure(result.model.policy)
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            update_speed = [json.loads(line).get("tokens_per_s", np.nan) for line in f]
        final.update(train_reward=float(np.mean([s["reward"] for s in stats[-4:]])),
                     train_correct=float(np.mean([s["correct"] for s in stats[-4:]])),
                     rollout_tokens_per_s=float(np.median([s["rollout_tokens_per_s"] for s in stats])),
                     update_tokens_per_s=float(np.nanmedian(update_speed)))
        curve = dict(_curve(folder), **{"0": sft_eval})
        iterations = {str(s["iteration"]): {k: v for k, v in s.items() if k != "iteration"} for s in stats}
        return {"final": final, "curve": curve, "rollouts": iterations}

    variants = {name: cfg.variants[name] for name in cfg.methods}
    per_run = sweep.run_sweep(run_dir, variants, cfg.seeds, run_one,
                              fingerprint=dict(depends, ppo=cfg.ppo, eval_every=cfg.eval_every,
                                               eval_samples=cfg.eval_samples))
    finals = {name: {s: r["final"] for s, r in seeds.items()} for name, seeds in per_run.items()}
    finals["sft"] = {0: dict(sft_eval, train_reward=float("nan"), rollout_tokens_per_s=float("nan"),
                             update_tokens_per_s=float("nan"))}
    curves = sweep.summarise({n: {s: r["curve"] for s, r in seeds.items()} for n, seeds in per_run.items()})
    rollouts = sweep.summarise({n: {s: r["rollouts"] for s, r in seeds.items()} for n, seeds in per_run.items()})
    summary = sweep.report(
        run_dir, finals, COLUMNS, variant_label="reward",
        note=f"Held-out puzzles: {len(data.eval_prompts)}; greedy success and true-step fraction, sampled success "
             f"({cfg.eval_samples} samples per puzzle at temperature 1); KL is the mean summed log-ratio of the "
             f"policy's own samples against pi_sft. 'sft' is pi_sft itself (one model, no seeds). Train reward: "
             f"the mean summed reward of the last 4 rollouts (the two kinds pay on different scales).",
        curves=curves, rollouts=rollouts)
    sweep.plot_over_groups(curves, ys=(sweep.Column("success", "held-out success (greedy)"),
                                       sweep.Column("sampled_success", "held-out success (T=1)"),
                                       sweep.Column("kl", "KL(pi ‖ pi_sft)")),
                           x_label="PPO step", path=os.path.join(run_dir, "success_kl_vs_steps.png"))
    sweep.plot_over_groups(rollouts, ys=(sweep.Column("correct", "train rollouts solved"),
                                         sweep.Column("true_step_fraction", "true steps in rollouts"),
                                         sweep.Column("kl", "rollout KL")),
                           x_label="PPO iteration", path=os.path.join(run_dir, "rollouts.png"))
    return summary
