"""The RLSF recipe shared by the symbolic-feedback experiments (Jha et al. 2024): SFT, then PPO with a scalar
reward against PPO with a symbolic tool's token-level rewards, and the critic-free group methods (GRPO, Dr.
GRPO, DAPO, ...; ``algorithms.grpo``) with scalar and token-level credit, at the same optimizer steps and sampled
responses per iteration (not a config).

pi_sft is the shared base (``experiments.lm_base``) fine-tuned with MLE on the task's reference solutions. Each
reward variant (``symbolic.RewardSpec``) runs PPO (``algorithms.ppo``) from pi_sft, with pi_sft as the KL
reference, for every seed. The task supplies the tool (``tasks.tool``: it checks train and held-out prompts
alike); ``TASKS`` wires each task to a ``Judge`` (certificates -> per-sample metrics, 'success' first) and to what
the table and plots show besides success (add an entry to run a task of your own). Measured on the held-out prompts every
``eval_every`` iterations and at the end: each metric for the greedy response and for ``eval_samples`` samples
at temperature 1, and KL(pi || pi_sft) as the mean over the policy's own samples of sum_t (log pi - log pi_sft).
Results: results.json, results.md (mean +- standard error over seeds), PNG plots against PPO steps. The configs
(``experiments/configs/rlsf_*.py``) declare the task, the sizes and the arms that run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import nnx

from experiments import lm_base
from experiments.lm_base import SETTINGS_RESUMABLE
from jax_irl import metrics, rollout, sampling, stages, sweep, symbolic, tasks, train
from jax_irl.algorithms import grpo, ppo

RESUMABLE = SETTINGS_RESUMABLE + ("methods", "seeds", "variants", "group_arms")
VARIANTS = {"scalar": symbolic.RewardSpec("scalar"), "token": symbolic.RewardSpec("token")}
# Declared, run by name: the token arm on the scalar arm's scale (each response's token rewards sum to its mean
# token reward, in [-0.2, 0]), and the paper's rule as stated (0 on blamed tokens, 1 elsewhere, no outcome bonus),
# also length-normalised so that a long response is not paid for its length.
MORE_VARIANTS = {"token_mean": symbolic.RewardSpec("token", normalise="mean"),
                 "paper": symbolic.RewardSpec("token", low=0.0, high=1.0, bonus=0.0, normalise="mean")}


@dataclasses.dataclass(frozen=True)
class GroupArm:
    """A critic-free arm: ``method`` (a ``grpo.METHODS`` preset) with ``credit`` 'sequence' (the scalar outcome,
    1 if correct) or token-level 'add' / 'blame' (``losses.token_advantages``) from the tool's blamed tokens, each
    marked with ``penalty`` (``symbolic.group_reward_fn``)."""

    method: str = "grpo"
    credit: str = "sequence"
    penalty: float = -0.2

    def __post_init__(self):
        if self.method not in grpo.METHODS:
            raise ValueError(f"GroupArm.method must be one of {tuple(grpo.METHODS)}; got {self.method!r}")
        if self.credit not in ("sequence", "add", "blame"):
            raise ValueError(f"GroupArm.credit must be 'sequence', 'add' or 'blame'; got {self.credit!r}")
        if not (isinstance(self.penalty, (int, float)) and np.isfinite(self.penalty) and self.penalty < 0):
            raise ValueError(f"GroupArm.penalty must be a finite number < 0; got {self.penalty!r}")


GROUP_ARMS = {"grpo": GroupArm("grpo"), "grpo_token": GroupArm("grpo", "add"),
              "grpo_blame": GroupArm("grpo", "blame"), "dr_grpo": GroupArm("dr_grpo"),
              "dr_grpo_token": GroupArm("dr_grpo", "add"), "dapo": GroupArm("dapo"),
              "dapo_token": GroupArm("dapo", "add")}

# judge(certificates) -> {metric: [N] per sample}; 'success' must be one of them.
Judge = Callable[[Sequence[symbolic.Certificate]], Dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class RLSFConfig:
    task: tasks.TaskConfig
    base: lm_base.BaseConfig
    sft: stages.StageConfig
    ppo: ppo.PPOConfig
    grpo: grpo.GRPOConfig = grpo.GRPOConfig()  # the group arms' shared settings (each arm sets method, credit)
    variants: Dict[str, symbolic.RewardSpec] = dataclasses.field(default_factory=lambda: dict(VARIANTS,
                                                                                               **MORE_VARIANTS))
    group_arms: Dict[str, GroupArm] = dataclasses.field(default_factory=lambda: dict(GROUP_ARMS))
    methods: Tuple[str, ...] = tuple(VARIANTS)
    seeds: Tuple[int, ...] = (0, 1, 2)
    eval_every: int = 8  # PPO iterations between evaluations on the held-out prompts
    eval_samples: int = 2  # sampled responses per held-out prompt (temperature 1), besides the greedy one
    check_workers: Optional[int] = None  # parallel tool checks (sandboxed programs); None: the CPU count
    settings: stages.RunSettings = stages.RunSettings()


def arms(cfg: RLSFConfig) -> Dict[str, object]:
    """Every arm by name: the PPO reward variants (``symbolic.RewardSpec``) and the group arms (``GroupArm``)."""
    return sweep.merge_families(variants=cfg.variants, group_arms=cfg.group_arms)


def group_config(cfg: RLSFConfig, arm: GroupArm) -> grpo.GRPOConfig:
    """The arm's trainer config: the shared ``cfg.grpo`` with the arm's method and credit (the method's presets
    fill what ``cfg.grpo`` leaves None)."""
    return dataclasses.replace(cfg.grpo, method=arm.method, credit=arm.credit)


def validate(cfg: RLSFConfig) -> None:
    """Checks across fields, made by the driver before anything is written."""
    if cfg.task.name not in TASKS:
        raise ValueError(f"RLSF runs on a task with a symbolic tool wired in rlsf.TASKS {sorted(TASKS)}; task.name is "
                         f"{cfg.task.name!r}")
    sweep.check_selection(cfg.methods, arms(cfg))
    for name in cfg.methods:
        if name in cfg.group_arms:
            group_config(cfg, cfg.group_arms[name])  # the preset with the shared settings must be valid
    if not cfg.seeds or cfg.eval_samples < 1 or cfg.eval_every < 1:
        raise ValueError("seeds must name a seed; eval_samples and eval_every must be >= 1")


def evaluate(policy, reference, tok, prompts: np.ndarray, mask: np.ndarray, prompt_texts: Sequence[str], key, *,
             tool, judge: Judge, samples: int, max_new_tokens: int, vocab_chunk: Optional[int] = None,
             workers: Optional[int] = None) -> Dict[str, float]:
    """The judge's metrics for the greedy response ('<metric>') and for ``samples`` samples at temperature 1
    ('sampled_<metric>'), KL(pi || reference) on those samples ('kl', 'kl_se') and their mean length."""
    out = sampling.generate(policy, prompts, mask, key, max_new_tokens=max_new_tokens, greedy=True,
                            eos_ids=(tok.eos_id,), pad_id=tok.pad_id)
    ids, m = np.asarray(out.tokens), np.asarray(out.mask)
    greedy = judge(symbolic.check_all(tool, prompt_texts, [tok.decode(r[k > 0]) for r, k in zip(ids, m)],
                                      workers=workers))
    rows = rollout.sample_rows(policy, prompts, mask, jax.random.fold_in(key, 1), max_new_tokens=max_new_tokens,
                               eos_id=tok.eos_id, pad_id=tok.pad_id, num_samples=samples)
    texts = [tok.decode(r[k > 0]) for r, k in zip(rows["response"], rows["response_mask"])]
    sampled = judge(symbolic.check_all(tool, [p for p in prompt_texts for _ in range(samples)], texts,
                                       workers=workers))
    ref = rollout.score_rows(reference, rollout.LMScores(("log_probs",), vocab_chunk=vocab_chunk, per_row=True),
                             {k: rows[k] for k in ("tokens", "attention", "mask")})["log_probs"]
    kl = rows["model_log_probs"].sum(-1) - ref
    result = {name: float(np.mean(v)) for name, v in greedy.items()}
    result.update({f"sampled_{name}": float(np.mean(v)) for name, v in sampled.items()})
    result.update(kl=float(kl.mean()), kl_se=metrics.standard_error(kl.tolist()),
                  length=float(rows["response_mask"].sum(-1).mean()))
    return result


def _curve(folder: str) -> Dict[str, Dict[str, float]]:
    """step -> eval metrics, read back from the PPO stage's metrics.jsonl (exact after a resume)."""
    curve = {}
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "eval/success" in record:
                curve[str(record["step"])] = {k[5:]: v for k, v in record.items() if k.startswith("eval/")}
    return curve


def program_judge(certificates) -> Dict[str, np.ndarray]:
    """Program tools: 'success' (passes every test) and 'compiles' (a program that compiles: not empty or
    malformed, no syntax or compiler error)."""
    return {"success": np.array([c.correct for c in certificates], float),
            "compiles": np.array([c.tool != "" and dict(c.details).get("stage") not in ("compile", "input")
                                  for c in certificates], float)}


def steps_judge(certificates) -> Dict[str, np.ndarray]:
    """The Game of 24: 'success' and the fraction of true steps."""
    return {"success": np.array([c.correct for c in certificates], float),
            "true_steps": np.array([float(dict(c.details).get("true_step_fraction", 0.0)) for c in certificates])}



@dataclasses.dataclass(frozen=True)
class TaskReport:
    """How RLSF reads a task's certificates: ``judge`` turns them into per-sample metrics ('success' first);
    ``secondary`` = (metric, header): the judge's second metric for the table and plots; ``rollout_stat``: the
    reward function's per-response stat plotted over iterations; ``what``: the held-out set in words."""

    judge: Judge
    secondary: Tuple[str, str]
    rollout_stat: str
    what: str


# The tasks RLSF runs on, by ``TaskConfig.name`` (each has a tool: ``tasks.tool``).
TASKS: Dict[str, TaskReport] = {
    "game24": TaskReport(steps_judge, ("true_steps", "true steps"), "true_step_fraction", "puzzles"),
    "pseudocode": TaskReport(program_judge, ("compiles", "compiles"), "wrong_token_fraction",
                             "pseudo-code specifications"),
    "spoc": TaskReport(program_judge, ("compiles", "compiles"), "wrong_token_fraction", "SPoC programs"),
}


@dataclasses.dataclass(frozen=True)
class Measure:
    """``evaluate`` on the held-out prompts against pi_sft, with one key: called on a policy, and as a
    ``train.Every`` hook on a trainer's model (``on_policy``) or an actor-critic (``on_actor_critic``)."""

    cfg: RLSFConfig
    prep: lm_base.Prepared
    tool: object
    judge: Judge
    key: jax.Array

    def __call__(self, policy) -> Dict[str, float]:
        enc, data = self.prep.encoded, self.prep.data
        return evaluate(policy, self.prep.pi0, self.prep.tokenizer, enc.eval_prompts, enc.eval_prompt_mask,
                        data.eval_prompts, self.key, tool=self.tool, judge=self.judge, samples=self.cfg.eval_samples,
                        max_new_tokens=self.cfg.ppo.max_new_tokens, vocab_chunk=self.cfg.settings.vocab_chunk,
                        workers=self.cfg.check_workers)

    def on_policy(self, model, step: int) -> Dict[str, float]:
        return self(model)

    def on_actor_critic(self, model, step: int) -> Dict[str, float]:
        return self(model.policy)


@dataclasses.dataclass(frozen=True)
class ArmRunner:
    """``sweep.run_sweep``'s run_one: one arm (a PPO reward spec, or a group arm's ``grpo.GRPOConfig``) and seed from
    pi_sft, evaluated every ``eval_every`` iterations and at the end."""

    cfg: RLSFConfig
    prep: lm_base.Prepared
    run_dir: str
    tool: object
    measure: Measure
    sft_eval: Dict[str, float]
    prompts: rollout.Prompts

    def __call__(self, name: str, spec, seed: int, folder: str) -> dict:
        cfg, prep, pi_sft = self.cfg, self.prep, self.prep.pi0
        where, tok = os.path.relpath(folder, self.run_dir), prep.tokenizer
        if isinstance(spec, grpo.GRPOConfig):
            arm = cfg.group_arms[name]
            run = prep.run.sub(where, desc=f"{name} seed {seed}", seed=seed, depends={"variant": spec, "arm": arm})
            result, stats = grpo.train_grpo(
                run, nnx.clone(pi_sft), pi_sft, spec, self.prompts,
                symbolic.group_reward_fn(self.tool, tok, penalty=arm.penalty, workers=cfg.check_workers), prep.spec,
                hooks=[train.Every(cfg.eval_every * spec.steps_per_iteration, self.measure.on_policy)])
            final, rows_per_draw = self.measure(result.model), spec.rows
            final["kl_coef"] = float(spec.settings["kl_coef"])
        else:
            model = ppo.ActorCritic(nnx.clone(pi_sft), cfg.ppo.critic, rngs=nnx.Rngs(seed))
            run = prep.run.sub(where, desc=f"ppo {name} seed {seed}", seed=seed, depends={"variant": spec})
            result, stats = ppo.train_ppo(
                run, model, pi_sft, cfg.ppo, self.prompts,
                symbolic.reward_fn(self.tool, tok, spec, workers=cfg.check_workers), prep.spec,
                hooks=[train.Every(cfg.eval_every * cfg.ppo.steps_per_iteration, self.measure.on_actor_critic)])
            final, rows_per_draw = self.measure(result.model.policy), cfg.ppo.rows
            final["kl_coef"] = float(stats[-1]["kl_coef"])  # the last rollout's (adaptive with ppo.kl_target)
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            update_speed = [json.loads(line).get("tokens_per_s", np.nan) for line in f]
        last = stats[-4:]
        final.update(train_reward=float(np.mean([s["reward"] for s in last])),
                     train_success=float(np.mean([s.get("correct_drawn", s["correct"]) for s in last])),
                     responses=float(sum(s.get("draws", 1) * rows_per_draw for s in stats)),
                     rollout_tokens_per_s=float(np.median([s["rollout_tokens_per_s"] for s in stats])),
                     update_tokens_per_s=float(np.nanmedian(update_speed)))
        iterations = {str(s["iteration"]): {k: v for k, v in s.items() if k != "iteration"} for s in stats}
        return {"final": final, "curve": dict(_curve(folder), **{"0": self.sft_eval}), "rollouts": iterations}


def report(cfg: RLSFConfig, run_dir: str, per_run: Dict[str, Dict[int, dict]], sft_eval: Dict[str, float],
           how: TaskReport, held_out: int) -> dict:
    """results.json, results.md (every arm and pi_sft itself) and the plots against steps and iterations."""
    finals = {name: {s: r["final"] for s, r in seeds.items()} for name, seeds in per_run.items()}
    finals["sft"] = {0: dict(sft_eval, kl_coef=float("nan"), train_reward=float("nan"), train_success=float("nan"),
                             responses=float("nan"), rollout_tokens_per_s=float("nan"),
                             update_tokens_per_s=float("nan"))}
    metric, header = how.secondary
    columns = (sweep.Column("success", "success (greedy)"), sweep.Column("sampled_success", "success (T=1)"),
               sweep.Column(metric, f"{header} (greedy)"), sweep.Column("kl", "KL(pi ‖ pi_sft)"),
               sweep.Column("kl_coef", "KL coefficient (last rollout)", 4),
               sweep.Column("train_success", "train success (last 4 rollouts)"),
               sweep.Column("responses", "responses sampled", 0),
               sweep.Column("rollout_tokens_per_s", "rollout tok/s", 0),
               sweep.Column("update_tokens_per_s", "update tok/s", 0))
    curves = sweep.summarise({n: {s: r["curve"] for s, r in seeds.items()} for n, seeds in per_run.items()})
    rollouts = sweep.summarise({n: {s: r["rollouts"] for s, r in seeds.items()} for n, seeds in per_run.items()})
    summary = sweep.report(
        run_dir, finals, columns, variant_label="arm",
        note=f"Held-out: {held_out} {how.what}; greedy metrics, and success over {cfg.eval_samples} "
             f"samples per prompt at temperature 1. KL is the mean summed log-ratio of the policy's own samples "
             f"against pi_sft. 'sft' is pi_sft itself (one model, no seeds). Train success: the solved fraction of "
             f"the last 4 rollouts. KL coefficient: the last rollout's (PPO's adaptive controller moves it towards "
             f"ppo.kl_target; a group arm's is fixed). PPO arms are named by their reward (scalar, token, "
             f"token_mean, paper); the others by their group method, "
             f"with '_token' for the certificate's token-level credit added to the group advantage and '_blame' for "
             f"a failed response's advantage moved onto its blamed tokens. Responses sampled: over the whole run "
             f"(DAPO's dynamic sampling draws more).",
        curves=curves, rollouts=rollouts)
    sweep.plot_over_groups(curves, ys=(sweep.Column("success", "held-out success (greedy)"),
                                       sweep.Column("sampled_success", "held-out success (T=1)"),
                                       sweep.Column("kl", "KL(pi ‖ pi_sft)")),
                           x_label="optimizer step", path=os.path.join(run_dir, "success_kl_vs_steps.png"))
    # A tool's own stat appears only once some certificate carries it (e.g. a Game of 24 answer in step form).
    stat_everywhere = all(how.rollout_stat in it for tree in rollouts.values() for it in tree.values())
    ys = [sweep.Column("correct", "train rollouts solved"), sweep.Column("kl", "rollout KL")]
    if stat_everywhere:
        ys.insert(1, sweep.Column(how.rollout_stat, how.rollout_stat.replace("_", " ")))
    sweep.plot_over_groups(rollouts, ys=ys, x_label="iteration", path=os.path.join(run_dir, "rollouts.png"))
    return summary


def run(cfg: RLSFConfig, run_dir: str) -> dict:
    """The recipe for ``cfg`` in ``run_dir``: pi_sft, its own evaluation, every arm and seed, the report."""
    validate(cfg)
    how, tool = TASKS[cfg.task.name], tasks.tool(cfg.task)
    prep = lm_base.prepare(cfg, run_dir, sft_stage=cfg.sft, sft_desc="pi_sft", depends={"sft": cfg.sft})
    enc, tok = prep.encoded, prep.tokenizer
    train_tokens, train_mask = rollout.prompt_rows(enc.train["tokens"], enc.train["prompt_lengths"], tok.pad_id,
                                                   enc.prompt_width)
    measure = Measure(cfg, prep, tool, how.judge, jax.random.PRNGKey(7))
    sft_eval = stages.cached_json(os.path.join(run_dir, "sft", "eval.json"), functools.partial(measure, prep.pi0))
    every = arms(cfg)
    variants = {name: (group_config(cfg, every[name]) if name in cfg.group_arms else every[name])
                for name in cfg.methods}
    runner = ArmRunner(cfg, prep, run_dir, tool, measure, sft_eval,
                       rollout.Prompts(train_tokens, train_mask, list(prep.data.train_prompts)))
    per_run = sweep.run_sweep(run_dir, variants, cfg.seeds, runner,
                              fingerprint=dict(prep.run.fingerprint, ppo=cfg.ppo, eval_every=cfg.eval_every,
                                               eval_samples=cfg.eval_samples))
    return report(cfg, run_dir, per_run, sft_eval, how, len(prep.data.eval_prompts))
