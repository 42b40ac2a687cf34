"""Training-step speed and memory: jax_irl against hand-written PyTorch eager, side by side in one process.

Workload W1 (the benchmark's): a Llama-style model (vocab 8192, hidden 256, 4 layers, 8 heads / 4 KV
heads, intermediate 688), fp32, 16 rows x 256 tokens with the loss on the last 128 tokens of each row (SFT and
IQLearn), DPO on 8 pairs of such rows; AdamW (lr 1e-5, no weight decay) with gradient clipping at norm 1 on
both sides. ``--size W2`` is a larger one (hidden 512, 8 layers, intermediate 1376).

Sides (each one compiled step or one eager step):
- jax_irl: ``train.Trainer`` with the library's own loss functions, as the experiments run them:
  SFT (``sft.loss_fn(window=...)``: the unembedding only on the loss span), the same
  with full logits (the path without the window, to show what it buys), the same in bf16 compute (float32
  params, optimizer state, norms, softmax and loss), IQLearn (td 0.1, gamma 0.99), DPO with
  reference log-probs precomputed (``gshf.dpo_loss_fn``), the reference log-probs' own cost per batch
  (``rollout.reference_log_probs``, which is compiled once), and one PPO minibatch update (``ppo.ppo_loss_fn``
  with a shared-critic value head, the responses being the last 128 tokens; on request the same with a critic
  backbone of its own, 'separate', as verl and OpenRLHF run PPO), and one GRPO minibatch update of
  the same rows as 2 prompts x G = 8 responses (``grpo.grpo_loss_fn``, the GRPO preset: group advantages,
  sequence-mean aggregation, k3 KL term on precomputed reference log-probs; no critic, no value head);
- PyTorch: transformers' ``LlamaForCausalLM`` (sdpa attention) with ``torch.optim.AdamW`` in eager mode, the
  loss written by hand on the full logits (``model(x).logits``, the usual idiom), and DPO with the reference
  model's forward inside the step (no_grad), as hand-written DPO loops do, and the same PPO update by hand;
- TRL (when installed; an optional extra, never a test dependency): ``SFTTrainer`` and ``DPOTrainer`` on the
  same model and rows, each step the trainer's own ``training_step`` plus clipping and AdamW (``trl_side``).

Timing: one warm-up call per side (compilation for JAX: its time is reported), then --steps rounds in which
every side runs one step in turn (interleaved, so that load on the machine hits every side alike; the order
rotates by one side per round, since the first side of a round was seen to run slower); the median and the
range. Memory: every side again in a fresh child process of its own (no other side loaded), the peak resident
set size during --mem-steps steps after warm-up (``VmHWM``, reset through /proc/self/clear_refs before the
steps) minus the resident size right after the imports, i.e. model, optimizer state and the step's working set
as the allocator holds them. The allocator in use is named in the header (glibc's malloc unless jemalloc or
tcmalloc is preloaded). Prints one markdown table. Run it on a quiet machine.

    .venv/bin/python tools/bench_train.py [--size W1|W2] [--steps 10] [--mem-steps 3] [--no-memory]

``--input`` measures the input pipeline instead: ``train.fit`` on the jax_irl SFT step reading a
``batching.Batches`` (a Grain pipeline over a pre-encoded corpus of --corpus-rows rows, 16 a batch) without
prefetch and with 2 batches prefetched on a host thread, interleaved in rounds of --fit-steps steps; it prints
the host time to build one batch (the Grain map: gather this process's rows), the wall time per step of each
side, and the difference, which is the host time that prefetch hides.

    .venv/bin/python tools/bench_train.py --input [--size W1] [--steps 10] [--fit-steps 5] [--corpus-rows 4096]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = {"W1": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4, intermediate_size=688),
         "W2": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1376)}
VOCAB, ROWS, LENGTH, LOSS_TOKENS = 8192, 16, 256, 128
LR, CLIP = 1e-5, 1.0
SIDES = ("jax_irl SFT", "jax_irl SFT (full logits)", "jax_irl SFT bf16", "jax_irl IQLearn",
         "jax_irl DPO (ref precomputed)", "jax_irl ref log-probs", "jax_irl PPO update", "jax_irl GRPO update",
         "PyTorch SFT",
         "PyTorch DPO (ref in step)", "PyTorch PPO update")
TRL_SIDES = ("TRL SFT", "TRL DPO (ref in step)")  # run by default when TRL is installed (pip install trl)
# On request (--sides): the SFT step with attention through jax.nn.dot_product_attention ('xla'), in bf16 with
# 'auto' (cuDNN's fused attention on a GPU, jax_irl's own attention elsewhere), and with jax_irl's attention over
# the full [T, T] score matrix (attention_block=0, no causal query blocks).
EXTRA_SIDES = ("jax_irl SFT (xla attention)", "jax_irl SFT bf16 (auto attention)", "jax_irl SFT (full score matrix)")
# On request: the PPO update with a critic backbone of its own (``ppo.ActorCritic(..., 'separate')``).
PPO_EXTRA_SIDES = ("jax_irl PPO update (separate critic)",)
# On request: SFT, DPO and the GRPO update with LoRA rank 16 (alpha 32) on attention and MLP (``models.lora``):
# only the adapters train and have optimizer state, the base is frozen.
LORA = " LoRA r16"
LORA_SETTINGS = dict(rank=16, alpha=32.0, targets=("attn", "mlp"))
LORA_SIDES = ("jax_irl SFT" + LORA, "jax_irl DPO (ref precomputed)" + LORA, "jax_irl GRPO update" + LORA)


def allocator() -> str:
    with open("/proc/self/maps") as f:
        maps = f.read()
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in maps:
            return name
    return "glibc malloc (ptmalloc2)"


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def ppo_data(seed: int = 2):
    """One PPO minibatch on the target grid [ROWS, LENGTH - 1], the responses being the last LOSS_TOKENS tokens:
    the rollout's old log-probs and values, advantages and returns (random: the update's cost does not depend
    on them), and per-row reward and KL (logged only)."""
    import numpy as np

    r = np.random.default_rng(seed)
    grid = (ROWS, LENGTH - 1)
    return {"old_log_probs": r.normal(-9.0, 0.5, grid).astype(np.float32),
            "old_values": r.normal(0.0, 1.0, grid).astype(np.float32),
            "advantages": r.normal(0.0, 1.0, grid).astype(np.float32),
            "returns": r.normal(0.0, 1.0, grid).astype(np.float32),
            "reward": r.normal(0.0, 1.0, ROWS).astype(np.float32), "kl": np.zeros(ROWS, np.float32)}


def data(seed: int = 0):
    import numpy as np

    r = np.random.default_rng(seed)
    tokens = r.integers(1, VOCAB, (ROWS, LENGTH)).astype(np.int32)
    mask = np.zeros((ROWS, LENGTH - 1), np.float32)
    mask[:, LENGTH - 1 - LOSS_TOKENS:] = 1.0  # target t predicts token t + 1: the last 128 tokens count
    return tokens, mask


def jax_side(name: str, size: str):
    """() -> None running one jax_irl step of side ``name`` (blocking until it is done)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jax_irl import parallel, rollout, train
    from jax_irl.algorithms import grpo, gshf, iqlearn, ppo, sft
    from jax_irl.models import lora
    from jax_irl.models.config import TransformerConfig
    from jax_irl.models.transformer import Transformer

    adapters = name.endswith(LORA)
    name = name[:-len(LORA)] if adapters else name

    dtype = "bfloat16" if "bf16" in name else "float32"  # compute dtype; params stay float32
    attention = "xla" if "(xla attention)" in name else "auto" if "(auto attention)" in name else "einsum"
    block = {"attention_block": 0} if "(full score matrix)" in name else {}
    cfg = TransformerConfig.for_family("llama", vocab_size=VOCAB, max_position_embeddings=LENGTH, dtype=dtype,
                                       attention=attention, **block, **SIZES[size])
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens, mask = data()
    if name == "jax_irl ref log-probs":
        toks = jnp.asarray(tokens)

        def ref_step():
            jax.block_until_ready(rollout.reference_log_probs(model, toks))
        return ref_step
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    opt = train.OptimizerConfig(learning_rate=LR, weight_decay=0.0, max_grad_norm=CLIP)
    batch = {"tokens": tokens, "mask": mask}
    if name in ("jax_irl SFT", "jax_irl SFT bf16") + EXTRA_SIDES:
        loss_fn = sft.loss_fn(window=LOSS_TOKENS)
    elif name == "jax_irl SFT (full logits)":
        loss_fn = sft.loss_fn()
    elif name == "jax_irl IQLearn":
        loss_fn = iqlearn.make_loss_fn(iqlearn.Method("iqlearn", td_weight=0.1, gamma=0.99), window=LOSS_TOKENS)
    elif name == "jax_irl DPO (ref precomputed)":
        loss_fn = gshf.dpo_loss_fn(gshf.DPOConfig(beta=0.1), window=LOSS_TOKENS)
        batch["ref_logps"] = np.asarray(np.random.default_rng(1).normal(-1000, 5, ROWS), np.float32)
    elif name in ("jax_irl PPO update",) + PPO_EXTRA_SIDES:
        # One minibatch update of ppo.train_ppo's path: policy (clipped ratio) and value (clipped) losses on the
        # responses' span, a value head on the policy's hidden states ('shared' critic) or on a critic
        # backbone of its own ('separate').
        model = ppo.ActorCritic(model, "separate" if name in PPO_EXTRA_SIDES else "shared", rngs=nnx.Rngs(1))
        loss_fn = ppo.ppo_loss_fn(ppo.PPOConfig(), window=LOSS_TOKENS)
        batch = dict(ppo_data(), tokens=tokens, attention=np.ones_like(tokens), mask=mask)
    elif name == "jax_irl GRPO update":
        cfg_g = grpo.GRPOConfig(method="grpo", prompts_per_rollout=ROWS // 8, group_size=8,
                                max_new_tokens=LOSS_TOKENS)
        loss_fn = grpo.grpo_loss_fn(cfg_g, window=LOSS_TOKENS)
        rollout_rows = ppo_data()
        batch = {k: rollout_rows[k] for k in ("old_log_probs", "advantages", "reward", "kl")}
        batch.update(ref_log_probs=rollout_rows["old_log_probs"] + 0.1, tokens=tokens,
                     attention=np.ones_like(tokens), mask=mask)
    else:
        raise ValueError(name)
    if adapters:
        model = lora.apply(model, lora.LoraConfig(**LORA_SETTINGS))
    trainer = train.Trainer(model, loss_fn, opt, mesh)
    box = {"state": trainer.init_state(0), "batch": parallel.global_batch(batch, mesh)}

    def step():
        box["state"], metrics = trainer.step(box["state"], box["batch"])
        jax.block_until_ready((box["state"], metrics))
    step.opt_bytes = sum(x.nbytes for x in jax.tree.leaves(box["state"].opt_state))  # Adam's moments (+ counts)
    return step


def _torch_llama(size: str):
    import torch
    import transformers

    dims = SIZES[size]
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=dims["hidden_size"],
                                   intermediate_size=dims["intermediate_size"], num_hidden_layers=dims["num_layers"],
                                   num_attention_heads=dims["num_heads"], num_key_value_heads=dims["num_kv_heads"],
                                   max_position_embeddings=LENGTH, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg).train()


def torch_side(name: str, size: str):
    import copy

    import torch
    import transformers

    model = _torch_llama(size)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    tokens, mask = data()
    x = torch.as_tensor(tokens, dtype=torch.long)
    m = torch.as_tensor(mask)
    first = LENGTH - 1 - LOSS_TOKENS

    def finish(loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if name == "PyTorch SFT":
        def step():
            logits = model(input_ids=x).logits[:, first:-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), x[:, first + 1:].reshape(-1))
            finish(loss)
        return step
    if name == "PyTorch PPO update":
        # The same update by hand: a linear value head on the final hidden states, the clipped policy loss and
        # the clipped value loss (vf_coef 0.5) over the responses' tokens, as in ppo.ppo_loss_fn.
        head = torch.nn.Linear(model.config.hidden_size, 1)
        opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=LR, weight_decay=0.0)
        b = {k: torch.as_tensor(v) for k, v in ppo_data().items()}
        span = slice(first, LENGTH - 1)
        old_lp, old_v = b["old_log_probs"][:, span], b["old_values"][:, span]
        adv, ret, on = b["advantages"][:, span], b["returns"][:, span], m[:, span]

        def masked_mean(v):
            return (v * on).sum() / on.sum()

        def step():
            out = model(input_ids=x, output_hidden_states=True)
            logits = out.logits[:, first:-1]
            logp = torch.gather(torch.log_softmax(logits, -1), 2, x[:, first + 1:, None])[..., 0]
            ratio = torch.exp(logp - old_lp)
            policy = masked_mean(-torch.minimum(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv))
            v = head(out.hidden_states[-1][:, first:-1])[..., 0]
            clipped = old_v + torch.clamp(v - old_v, -0.2, 0.2)
            value = 0.5 * masked_mean(torch.maximum((v - ret) ** 2, (clipped - ret) ** 2))
            loss = policy + 0.5 * value
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()), CLIP)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step
    if name != "PyTorch DPO (ref in step)":
        raise ValueError(name)
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)

    def logps(net):
        logits = net(input_ids=x).logits[:, :-1]
        per_token = torch.gather(torch.log_softmax(logits, -1), 2, x[:, 1:, None])[..., 0]
        return (per_token * m).sum(-1)

    def step():
        with torch.no_grad():
            ref = logps(reference)
        pol = logps(model)
        margin = 0.1 * ((pol[0::2] - ref[0::2]) - (pol[1::2] - ref[1::2]))
        finish(-torch.nn.functional.logsigmoid(margin).mean())
    return step


def trl_side(name: str, size: str):
    """TRL's own trainers on the same model, rows and loss span: ``SFTTrainer`` (completion-only loss) and
    ``DPOTrainer`` (sigmoid loss, beta 0.1, the reference model's forward inside the step), each step being the
    trainer's ``training_step`` (its collated batch, its loss and metrics, backward) plus clipping and AdamW, as
    its training loop does. TRL's DPO tokenizes text, so its prompts and completions are the same ids written as
    words of a word-level tokenizer, each completion 127 ids plus TRL's EOS."""
    import copy
    import logging
    import tempfile
    import warnings

    import datasets
    import torch
    import transformers
    import trl
    from tokenizers import Tokenizer, models, pre_tokenizers

    warnings.filterwarnings("ignore")
    logging.getLogger("trl").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    model = _torch_llama(size)
    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", eos_token="t1")
    tokens, _ = data()
    prompt = LENGTH - LOSS_TOKENS
    common = dict(output_dir=tempfile.mkdtemp(prefix="bench_trl_"), learning_rate=LR, weight_decay=0.0,
                  max_grad_norm=CLIP, max_length=LENGTH, report_to="none", use_cpu=True, logging_strategy="no",
                  save_strategy="no", dataloader_num_workers=0, max_steps=1000)
    if name == "TRL SFT":
        ds = datasets.Dataset.from_dict({"input_ids": [[int(i) for i in r] for r in tokens],
                                         "completion_mask": [[0] * prompt + [1] * LOSS_TOKENS] * len(tokens)})
        trainer = trl.SFTTrainer(model=model, train_dataset=ds, processing_class=tok, args=trl.SFTConfig(
            per_device_train_batch_size=ROWS, completion_only_loss=True, **common))
    elif name == "TRL DPO (ref in step)":
        text = lambda ids: "".join(f" t{int(i)}" for i in ids)  # noqa: E731
        pairs = range(ROWS // 2)
        ds = datasets.Dataset.from_dict({"prompt": [text(tokens[2 * i][:prompt]) for i in pairs],
                                         "chosen": [text(tokens[2 * i][prompt:-1]) for i in pairs],
                                         "rejected": [text(tokens[2 * i + 1][prompt:-1]) for i in pairs]})
        trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model).eval(), train_dataset=ds,
                                 processing_class=tok, args=trl.DPOConfig(per_device_train_batch_size=ROWS // 2,
                                                                          beta=0.1, **common))
    else:
        raise ValueError(name)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop, which is not run here
    batch = next(iter(trainer.get_train_dataloader()))

    def step():
        trainer.model.train()
        trainer.training_step(trainer.model, batch)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), CLIP)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return step


def make(name: str, size: str):
    if name.startswith("jax_irl"):
        return jax_side(name, size)
    return trl_side(name, size) if name.startswith("TRL") else torch_side(name, size)


def memory_child(name: str, size: str, steps: int) -> None:
    """In a fresh process: the peak RSS of ``steps`` steps of one side above the RSS after the imports."""
    if name.startswith("jax_irl"):
        import jax  # noqa: F401
        import jax_irl.train  # noqa: F401
    else:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        if name.startswith("TRL"):
            import trl  # noqa: F401
    base = _status("VmRSS")
    step = make(name, size)
    step()
    step()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    for _ in range(steps):
        step()
    print(json.dumps({"peak": _status("VmHWM") - base}))


def input_pipeline(size: str, rounds: int, fit_steps: int, corpus_rows: int) -> None:
    """The host time per step that prefetch hides: fit without and with prefetch, interleaved."""
    import jax
    import numpy as np
    from flax import nnx

    from jax_irl import parallel, train
    from jax_irl.algorithms import sft
    from jax_irl.data import batching
    from jax_irl.models.config import TransformerConfig
    from jax_irl.models.transformer import Transformer

    r = np.random.default_rng(0)
    tokens = r.integers(1, VOCAB, (corpus_rows, LENGTH)).astype(np.int32)
    mask = np.zeros((corpus_rows, LENGTH - 1), np.float32)
    mask[:, LENGTH - 1 - LOSS_TOKENS:] = 1.0
    batches = batching.IndexSampler(corpus_rows, ROWS, seed=0).batch_fn({"tokens": tokens, "mask": mask})
    cfg = TransformerConfig.for_family("llama", vocab_size=VOCAB, max_position_embeddings=LENGTH, **SIZES[size])
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), sft.loss_fn(window=LOSS_TOKENS),
                            train.OptimizerConfig(learning_rate=LR, weight_decay=0.0, max_grad_norm=CLIP), mesh)
    sides = {"no prefetch": 0, "prefetch 2": 2}
    box = {"state": trainer.init_state(0), "position": 0}  # one training run; the sides take turns continuing it

    def run(name):
        start = time.perf_counter()
        box["state"], _ = train.fit(trainer, box["state"], batches, steps=int(box["state"].step) + fit_steps,
                                    start_position=box["position"], prefetch=sides[name], progress=False)
        jax.block_until_ready(box["state"].params)
        box["position"] += fit_steps
        return (time.perf_counter() - start) / fit_steps

    for name in sides:  # compile and warm up
        run(name)
    per_step = {name: [] for name in sides}
    for k in range(rounds):
        for name in list(sides)[k % 2:] + list(sides)[:k % 2]:
            per_step[name].append(run(name))
    build = []
    for p in range(200):
        start = time.perf_counter()
        batches(p)
        build.append(time.perf_counter() - start)
    print(f"{size}: jax_irl SFT step, {ROWS} rows x {LENGTH} tokens, from a Grain pipeline over {corpus_rows} "
          f"encoded rows; {os.cpu_count()} CPU cores, jax {jax.__version__} ({jax.devices()[0].platform}); "
          f"{rounds} interleaved rounds of {fit_steps} fit steps per side.")
    print(f"Host time to build one batch (Grain map, median of 200): {1e3 * statistics.median(build):.3f} ms.\n")
    print("| side | wall per step (median) | range |\n|---|---|---|")
    for name in sides:
        t = per_step[name]
        print(f"| {name} | {1e3 * statistics.median(t):.1f} ms | {1e3 * min(t):.1f}-{1e3 * max(t):.1f} ms |")
    hidden = statistics.median(per_step["no prefetch"]) - statistics.median(per_step["prefetch 2"])
    print(f"\nHidden by prefetch: {1e3 * hidden:.2f} ms per step (median difference).")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="W1")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--mem-steps", type=int, default=3)
    p.add_argument("--no-memory", action="store_true")
    known = SIDES + TRL_SIDES + EXTRA_SIDES + PPO_EXTRA_SIDES + LORA_SIDES
    default = SIDES + (TRL_SIDES if importlib.util.find_spec("trl") else ())
    p.add_argument("--sides", default=",".join(default), help="comma-separated subset of: " + ", ".join(known))
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--input", action="store_true", help="measure the input pipeline's prefetch instead")
    p.add_argument("--fit-steps", type=int, default=5, help="--input: fit steps per round and side")
    p.add_argument("--corpus-rows", type=int, default=4096, help="--input: rows of the encoded corpus")
    args = p.parse_args(argv)
    if args.input:
        if args.fit_steps < 1 or args.corpus_rows < ROWS or args.steps < 1:
            p.error(f"--fit-steps and --steps must be >= 1 and --corpus-rows >= {ROWS}")
        input_pipeline(args.size, args.steps, args.fit_steps, args.corpus_rows)
        return
    if args.steps < 1 or args.mem_steps < 1:
        p.error("--steps and --mem-steps must be >= 1")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in known]
    if unknown:
        p.error(f"unknown sides {unknown}; choose from {list(known)}")
    if args.memory_child:
        memory_child(args.memory_child, args.size, args.mem_steps)
        return

    import jax
    import torch

    steps, first = {}, {}
    for name in sides:
        steps[name] = make(name, args.size)
        start = time.perf_counter()
        steps[name]()
        first[name] = time.perf_counter() - start
    times = {name: [] for name in sides}
    for r in range(args.steps):
        # The order rotates every round: whichever side runs first in a round runs slower (up to 30% at W2 with
        # a fixed order, also with a 1 s pause between sides), so every side takes that place equally often.
        for name in sides[r % len(sides):] + sides[:r % len(sides)]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    memory = {}
    if not args.no_memory:
        for name in sides:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--size", args.size, "--mem-steps",
                                  str(args.mem_steps), "--memory-child", name], capture_output=True, text=True,
                                 env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                                     os.path.abspath(__file__)))))
            if out.returncode != 0:
                raise RuntimeError(f"memory run of {name!r} failed:\n{out.stderr[-2000:]}")
            memory[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]

    dims = SIZES[args.size]
    print(f"{args.size}: Llama-style vocab {VOCAB}, hidden {dims['hidden_size']}, {dims['num_layers']} layers, "
          f"{dims['num_heads']} heads / {dims['num_kv_heads']} KV, intermediate {dims['intermediate_size']}, fp32; "
          f"{ROWS} rows x {LENGTH} tokens, loss on the last {LOSS_TOKENS}; DPO: {ROWS // 2} pairs.")
    print(f"{os.cpu_count()} CPU cores; jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); allocator: {allocator()}; {args.steps} interleaved steps per side.")
    if any(n.endswith(LORA) for n in sides):
        from flax import nnx

        from jax_irl.models import lora
        from jax_irl.models.config import TransformerConfig
        from jax_irl.models.transformer import Transformer

        cfg = TransformerConfig.for_family("llama", vocab_size=VOCAB, max_position_embeddings=LENGTH, **dims)
        counts = lora.count(nnx.eval_shape(lambda: lora.apply(Transformer(cfg, rngs=nnx.Rngs(0)),
                                                              lora.LoraConfig(**LORA_SETTINGS))))
        print(f"LoRA r16 on attention and MLP: {counts['adapter']:,} trainable parameters of {counts['total']:,} "
              f"({100.0 * counts['adapter'] / counts['total']:.2f}%; optimizer state the same share of full "
              f"fine-tuning's).")
    print()
    sft = statistics.median(times["PyTorch SFT"]) if "PyTorch SFT" in times else None
    print("| side | step (median) | range | tokens/s | x PyTorch SFT | first call | peak memory | optimizer state |\n"
          "|---|---|---|---|---|---|---|---|")
    for name in sides:
        t = times[name]
        med = statistics.median(t)
        ratio = f"{med / sft:.2f}x" if sft else "-"
        mem = f"{memory[name] / 2**20:.0f} MiB" if name in memory else "-"
        opt_bytes = getattr(steps[name], "opt_bytes", None)
        opt = f"{opt_bytes / 2**20:.1f} MiB" if opt_bytes is not None else "-"
        print(f"| {name} | {med:.3f} s | {min(t):.3f}-{max(t):.3f} s | {ROWS * LENGTH / med:,.0f} | {ratio} | "
              f"{first[name]:.1f} s | {mem} | {opt} |")


if __name__ == "__main__":
    main()
