"""The compiled steps of each experiment config at its own settings, for ``jax_irl.aot`` (``tools/aot.py``).

``steps_for(cfg, model_cfg, mesh)`` returns, for an experiment config (IRL, GSHF, RLSF, ensembles), the steps its
run compiles, each with the shapes the run gives it: the train step of each stage (SFT / offline and online
IQLearn, DPO, the PPO update, the reward models' step), the scoring and reference passes, and the sampler's
prefill and decoding step. The model is abstract (``aot.abstract_model``); its shapes come from ``model_cfg``
(a ``models.presets`` preset), the compute dtype and remat policy from the config's ``base``.

Where a length depends on data (prompt widths), the paper-scale row length ``base.max_length`` is split as
prompt = max_length - max_new_tokens and response = max_new_tokens, the longest rows the run can make.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional

import jax.numpy as jnp
from flax import nnx

from jax_irl import aot, rollout
from jax_irl.algorithms import grpo, gshf, iqlearn, ppo, sft
from jax_irl.algorithms import reward_models as rm
from jax_irl.models import lora
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer


def _decoder(model_cfg: TransformerConfig, lora_cfg: Optional[lora.LoraConfig], rngs: nnx.Rngs) -> nnx.Module:
    """A decoder of ``model_cfg``, with the base config's LoRA adapters when its rank is above 0 (the run applies
    them to the base, so every later model has them)."""
    model = Transformer(model_cfg, rngs=rngs)
    return lora.apply(model, lora_cfg) if lora_cfg is not None and lora_cfg.enabled else model


def _policy(model_cfg: TransformerConfig, lora_cfg: Optional[lora.LoraConfig] = None) -> nnx.Module:
    return aot.abstract_model(lambda: _decoder(model_cfg, lora_cfg, nnx.Rngs(0)))


def _kind(cfg) -> str:
    names = type(cfg).__name__
    for key, kind in (("IRL", "irl"), ("GSHF", "gshf"), ("RLSF", "rlsf"), ("Ensembles", "ensembles")):
        if names.startswith(key):
            return kind
    raise ValueError(f"no compiled-step catalogue for a {names} (IRL, GSHF, RLSF and ensembles configs have one)")


def _split(max_length: int, max_new: int):
    """(prompt width, response width) of the longest rows a run of rows cut to ``max_length`` makes."""
    new = min(max_new, max_length - 1)
    return max_length - new, new


def _lm_scorer(vocab_chunk):
    return rollout.LMScores(("log_probs",), vocab_chunk=vocab_chunk, per_row=True)


def _ppo_steps(prefix: str, ppo_cfg: ppo.PPOConfig, policy_cfg: TransformerConfig, mesh, prompt: int,
               vocab_chunk, lora_cfg: Optional[lora.LoraConfig] = None) -> List[aot.Step]:
    """A PPO iteration's steps: the update on one minibatch, the rollout's scoring (policy log-probs and values;
    the reference's log-probs) and the sampler."""
    policy = _policy(policy_cfg, lora_cfg)
    actor = aot.abstract_model(lambda: ppo.ActorCritic(_decoder(policy_cfg, lora_cfg, nnx.Rngs(0)), ppo_cfg.critic,
                                                       rngs=nnx.Rngs(1)))
    rows = ppo_cfg.prompts_per_rollout * ppo_cfg.samples_per_prompt
    length = prompt + ppo_cfg.max_new_tokens
    mb = rows // ppo_cfg.minibatches
    t1 = length - 1
    f32 = jnp.float32
    batch = aot.lm_batch(mesh, mb, length, attention=True, extra={
        "old_log_probs": ((mb, t1), f32), "old_values": ((mb, t1), f32), "advantages": ((mb, t1), f32),
        "returns": ((mb, t1), f32), "reward": ((mb,), f32), "kl": ((mb,), f32)})
    critic_scale = 2.0 if ppo_cfg.critic == "separate" else 1.0
    steps = [aot.train_step(f"{prefix}ppo_update", actor, ppo.ppo_loss_fn(ppo_cfg, vocab_chunk,
                                                                          window=ppo_cfg.max_new_tokens),
                            ppo_cfg.optimizer, mesh, batch, policy_cfg, flops_scale=critic_scale,
                            note=f"critic={ppo_cfg.critic}, minibatch {mb} of {rows} rollout rows")]
    score_batch = aot.lm_batch(mesh, rows, length, attention=True)
    steps.append(aot.score_step(f"{prefix}rollout_score", actor, ppo.ActorCriticScores(vocab_chunk), mesh,
                                score_batch, policy_cfg, flops_scale=critic_scale, note="policy log-probs + values"))
    steps.append(aot.score_step(f"{prefix}reference_score", policy, rollout.LMScores(("log_probs",),
                                                                                     vocab_chunk=vocab_chunk),
                                mesh, score_batch, policy_cfg, note="pi_ref log-probs"))
    steps += aot.sampler_steps(policy, mesh, rows, prompt, ppo_cfg.max_new_tokens, policy_cfg, prefix=f"{prefix}rollout_",
                               note=f"{ppo_cfg.prompts_per_rollout} prompts x {ppo_cfg.samples_per_prompt}")
    return steps


def _grpo_update(name: str, grpo_cfg: grpo.GRPOConfig, policy_cfg: TransformerConfig, mesh, prompt: int,
                 vocab_chunk, lora_cfg: Optional[lora.LoraConfig] = None) -> aot.Step:
    """A group method's update on one minibatch: the policy alone (no critic, no value head), its log-probs on the
    responses' window, the reference's log-probs precomputed in the batch."""
    policy = _policy(policy_cfg, lora_cfg)
    rows, length = grpo_cfg.rows, prompt + grpo_cfg.max_new_tokens
    mb, t1, f32 = rows // grpo_cfg.minibatches, length - 1, jnp.float32
    extra = {"old_log_probs": ((mb, t1), f32), "advantages": ((mb, t1), f32), "reward": ((mb,), f32),
             "kl": ((mb,), f32)}
    if grpo_cfg.settings["kl_coef"] > 0:
        extra["ref_log_probs"] = ((mb, t1), f32)
    batch = aot.lm_batch(mesh, mb, length, attention=True, extra=extra)
    return aot.train_step(name, policy, grpo.grpo_loss_fn(grpo_cfg, vocab_chunk, window=grpo_cfg.max_new_tokens),
                          grpo_cfg.optimizer, mesh, batch, policy_cfg,
                          note=f"{grpo_cfg.method}, minibatch {mb} of {grpo_cfg.prompts_per_rollout} prompts x "
                               f"{grpo_cfg.group_size}")


def steps_for(cfg, model_cfg: TransformerConfig, mesh, *, rm_model_cfg: Optional[TransformerConfig] = None,
              only: Optional[Callable[[str], bool]] = None) -> List[aot.Step]:
    """The compiled steps of experiment config ``cfg`` with model shapes ``model_cfg`` on ``mesh`` (the reward
    models' backbone: ``rm_model_cfg``, default the same shapes). ``only(name)`` keeps some of them (the others
    are not even traced)."""
    kind = _kind(cfg)
    base = cfg.base
    model_cfg = dataclasses.replace(model_cfg, dtype=base.dtype, remat=getattr(base, "remat", model_cfg.remat))
    chunk = cfg.settings.vocab_chunk
    lora_cfg = getattr(base, "lora", None)
    keep = only or (lambda name: True)
    makers: Dict[str, Callable[[], List[aot.Step]]] = {}
    length = base.max_length

    if kind == "irl":
        ev = cfg.evaluation
        prompt, new = _split(length, ev.max_new_tokens)
        policy = _policy(model_cfg, lora_cfg)
        opt = cfg.finetune.optimizer
        b = cfg.finetune.batch_size
        online = next((m for m in cfg.variants.values() if m.kind == "online"), None)
        makers["iqlearn"] = lambda: [aot.train_step(
            "iqlearn", policy, iqlearn.make_loss_fn(iqlearn.Method("iqlearn", td_weight=0.1, gamma=0.9),
                                                    vocab_chunk=chunk), opt, mesh, aot.lm_batch(mesh, b, length),
            model_cfg, note="MLE and offline IQLearn (the same step; the TD term is elementwise)")]
        if online is not None:
            pp = online.policy_prompts
            extra = {"policy_tokens": ((pp, prompt + new), jnp.int32), "policy_attention": ((pp, prompt + new), jnp.int32),
                     "policy_mask": ((pp, prompt + new - 1), jnp.float32)}
            makers["iqlearn_online"] = lambda: [aot.train_step(
                "iqlearn_online", policy, iqlearn.make_loss_fn(online, vocab_chunk=chunk, policy_window=new), opt, mesh,
                aot.lm_batch(mesh, b, length, extra=extra), model_cfg,
                flops_scale=1.0 + pp * (prompt + new) / (b * length),
                note=f"+ {pp} policy samples per step")]
        rows = (ev.prompts_per_batch or cfg.task.eval_examples or 1) * ev.num_samples
        makers["eval_score"] = lambda: [aot.score_step("eval_score", policy, _lm_scorer(chunk), mesh,
                                                       aot.lm_batch(mesh, ev.rows_per_score or rows, prompt + new,
                                                                    attention=True), model_cfg)]
        makers["eval_sampler"] = lambda: aot.sampler_steps(policy, mesh, rows, prompt, new, model_cfg, prefix="eval_",
                                                           note=f"{rows // ev.num_samples} prompts x {ev.num_samples}")
        adversarial = [cfg.adversarial[m] for m in cfg.methods if m in getattr(cfg, "adversarial", {})]
        if adversarial:  # GAIL: the discriminator's step, the policy's group update and its rollout sampler
            adv = adversarial[0]
            db = adv.disc_stage.batch_size
            disc = aot.abstract_model(lambda: rm.build(rm.RMKind(), lambda r: _decoder(model_cfg, lora_cfg, r), 0))
            makers["gail_disc"] = lambda: [aot.train_step(
                "gail_disc", disc, rm.classify_loss_fn(rm.RMKind()), adv.disc_stage.optimizer, mesh,
                aot.lm_batch(mesh, 2 * db, length, attention=True), model_cfg,
                note=f"GAIL discriminator, {db} (data, policy) pairs", lm_head=False)]
            makers["gail_update"] = lambda: [_grpo_update("gail_update", adv.policy, model_cfg, mesh, prompt, chunk,
                                                          lora_cfg)]
            makers["gail_rollout_sampler"] = lambda: aot.sampler_steps(
                policy, mesh, adv.policy.rows, prompt, adv.policy.max_new_tokens, model_cfg, prefix="gail_rollout_",
                note=f"{adv.policy.prompts_per_rollout} prompts x {adv.policy.group_size}")
    elif kind == "gshf":
        prompt, new = _split(length, cfg.max_new_tokens)
        policy = _policy(model_cfg, lora_cfg)
        b = cfg.batch_pairs
        beta = cfg.betas[0] if cfg.betas else 0.1
        batch = aot.lm_batch(mesh, 2 * b, length, extra={"ref_logps": ((2 * b,), jnp.float32)})
        makers["dpo"] = lambda: [aot.train_step("dpo", policy, gshf.dpo_loss_fn(gshf.DPOConfig(beta), vocab_chunk=chunk),
                                                cfg.optimizer, mesh, batch, model_cfg, note=f"{b} pairs")]
        makers["reference_score"] = lambda: [aot.score_step("reference_score", policy, _lm_scorer(chunk), mesh,
                                                            aot.lm_batch(mesh, 64, length), model_cfg,
                                                            note="pi0 log-probs of the buffer, 64 rows a batch")]
        def at_once(m):  # (prompts, samples a prompt) in one sampler call: raft/rso sample the whole budget
            prompts = m.rounds * m.prompts_per_round if m.kind in gshf.REJECTION_KINDS else m.prompts_per_round
            return min(prompts, cfg.sample_prompts_per_batch or prompts), gshf.drawn_per_prompt(m)

        method = max((cfg.variants[m] for m in cfg.methods), key=lambda m: at_once(m)[0] * at_once(m)[1])
        prompts_at_once, per_prompt = at_once(method)
        rows = prompts_at_once * per_prompt
        makers["sampler"] = lambda: aot.sampler_steps(policy, mesh, rows, prompt, new, model_cfg,
                                                      note=f"{method.kind}: {prompts_at_once} prompts x "
                                                           f"{per_prompt} samples at once")
    elif kind == "rlsf":
        prompt, _ = _split(length, cfg.ppo.max_new_tokens)
        policy = _policy(model_cfg, lora_cfg)
        makers["sft"] = lambda: [aot.train_step("sft", policy, sft.loss_fn(vocab_chunk=chunk),
                                                cfg.sft.optimizer, mesh, aot.lm_batch(mesh, cfg.sft.batch_size, length),
                                                model_cfg)]
        makers["ppo"] = lambda: _ppo_steps("", cfg.ppo, model_cfg, mesh, prompt, chunk, lora_cfg)
        group_methods = sorted({cfg.group_arms[m].method for m in cfg.methods if m in cfg.group_arms})
        for method in group_methods:
            group_cfg = dataclasses.replace(cfg.grpo, method=method)
            gprompt, _ = _split(length, group_cfg.max_new_tokens)
            makers[f"{method}_update"] = (lambda group_cfg=group_cfg, gprompt=gprompt, method=method: [
                _grpo_update(f"{method}_update", group_cfg, model_cfg, mesh, gprompt, chunk, lora_cfg)])
    else:  # ensembles
        prompt, new = _split(length, cfg.ppo.max_new_tokens)
        rm_cfg = dataclasses.replace(rm_model_cfg or model_cfg, dtype=base.dtype, remat=model_cfg.remat)
        b = cfg.rm_stage.batch_size
        rm_batch = aot.lm_batch(mesh, 2 * b, length, attention=True)
        for name in cfg.methods:
            kind_cfg = cfg.variants[name]

            def make(name=name, kind_cfg=kind_cfg):
                model = aot.abstract_model(lambda: rm.build(kind_cfg, lambda r: _decoder(rm_cfg, lora_cfg, r), 0))
                return [aot.train_step(f"rm_{name}", model, rm.bt_loss_fn(kind_cfg), cfg.rm_stage.optimizer, mesh,
                                       rm_batch, rm_cfg, flops_scale=kind_cfg.heads if kind_cfg.kind == "ensemble" else 1,
                                       tx=rm.optimizer_for(kind_cfg, cfg.rm_stage.optimizer, cfg.rm_stage.steps),
                                       note=f"{kind_cfg.kind}, K={kind_cfg.heads}, {b} pairs", lm_head=False)]

            makers[f"rm_{name}"] = make
        makers["ppo"] = lambda: _ppo_steps("", cfg.ppo, model_cfg, mesh, prompt, chunk, lora_cfg)
        policy = _policy(model_cfg, lora_cfg)
        pool = cfg.task.eval_examples or 1
        at_once = min(pool, cfg.sample_prompts_per_batch or pool)
        rows = at_once * cfg.bon_samples
        makers["bon_sampler"] = lambda: aot.sampler_steps(
            policy, mesh, rows, prompt, new, model_cfg, prefix="bon_",
            note=f"best-of-n pool of {pool} prompts x {cfg.bon_samples}, {at_once} prompts at once")

    steps: List[aot.Step] = []
    for group, make in makers.items():
        if keep(group) or any(keep(n) for n in _names_of(group)):
            steps += [s for s in make() if keep(s.name) or keep(group)]
    return steps


def _names_of(group: str) -> List[str]:
    """The step names a group makes (to select one step of a group by name without building the others)."""
    if group.endswith("sampler"):
        prefix = group[: -len("sampler")]
        return [f"{prefix}prefill", f"{prefix}decode"]
    if group == "ppo":
        return ["ppo_update", "rollout_score", "reference_score", "rollout_prefill", "rollout_decode"]
    return [group]


__all__ = ["steps_for"]
