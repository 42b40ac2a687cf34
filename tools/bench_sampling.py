"""Tokens/s of jax_irl's KV-cache sampler against transformers' generate, on the same model, prompts and lengths.

Both run greedy decoding with no EOS (so both produce exactly batch * max_new_tokens tokens) on one random
Llama-style model built from a config, saved once with transformers and loaded by jax_irl. Each side gets a
warm-up call (compilation for JAX) and then --repeats rounds in which both sides run in turn (interleaved, the
order alternating); the median. Prints a markdown table.

A second table splits each side's time into the prefill plus first token (a call with max_new_tokens=1) and the
time per further decoding step, and sets the step against a memory floor: a decoding step reads every weight
matrix and the KV cache once, and this machine's rate of streaming weights through an XLA matmul (a chain of
[batch, hidden] x [hidden, vocab] products over as many bytes, measured here) bounds how fast any step can be.

    .venv/bin/python tools/bench_sampling.py [--batch 8] [--prompt 32] [--new 64] [--hidden 256] [--layers 4]

Workload W1 (8 heads / 4 KV heads, intermediate 688, vocab 8192, 8 x (64 + 128)):

    .venv/bin/python tools/bench_sampling.py --batch 8 --prompt 64 --new 128 --vocab 8192 --heads 8 --kv-heads 4 \
        --intermediate 688
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from jax_irl import sampling
from jax_irl.models import hf


def timed(sides, repeats):
    """{name: fn} -> {name: median seconds}: a warm-up call each, then ``repeats`` interleaved rounds."""
    for fn in sides.values():
        fn()  # warm-up (and compilation)
    times = {name: [] for name in sides}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def streaming_rate(batch: int, hidden: int, total_bytes: int, repeats: int, loops: int = 32) -> float:
    """Bytes per second at which XLA streams float32 weights through [batch, hidden] x [hidden, 8192] products
    whose weights total about ``total_bytes`` (so that, like a decoding step's, they come from beyond the core's
    caches), ``loops`` passes over all of them inside one jitted loop, each pass depending on the last (as decoding
    steps do), so that dispatch is not counted."""
    per = hidden * 8192 * 4
    n = max(1, -(-total_bytes // per))
    rng = np.random.default_rng(0)
    weights = [jax.device_put(rng.standard_normal((hidden, 8192), np.float32) * 0.01) for _ in range(n)]
    x = jax.device_put(rng.standard_normal((batch, hidden), np.float32))

    def passes(x, ws):
        def one(_, x):
            for w in ws:
                x = x + 1e-3 * (x @ w)[:, :hidden]
            return x
        return jax.lax.fori_loop(0, loops, one, x)

    chain = jax.jit(passes)
    seconds = timed({"stream": lambda: jax.block_until_ready(chain(x, weights))}, repeats)["stream"]
    return loops * n * per / seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=32, help="longest prompt; others are ragged, down to half")
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--heads", type=int, default=None, help="attention heads (default hidden / 64)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default hidden / 128)")
    p.add_argument("--intermediate", type=int, default=None, help="MLP width (default hidden * 8 / 3)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    heads = args.heads or max(args.hidden // 64, 1)
    kv_heads = args.kv_heads or max(args.hidden // 128, 1)
    cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                                   intermediate_size=args.intermediate or args.hidden * 8 // 3,
                                   num_hidden_layers=args.layers, num_attention_heads=heads,
                                   num_key_value_heads=kv_heads, max_position_embeddings=1024,
                                   bos_token_id=0, eos_token_id=None, pad_token_id=0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_model = transformers.AutoModelForCausalLM.from_config(cfg).eval().to(device)
    n_params = sum(x.numel() for x in torch_model.parameters())
    with tempfile.TemporaryDirectory() as folder:
        torch_model.save_pretrained(folder)
        ours = hf.from_pretrained(folder)

    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(1, args.vocab, int(rng.integers(args.prompt // 2, args.prompt + 1))))
               for _ in range(args.batch)]
    tokens, mask = sampling.left_pad(prompts, pad_id=0)
    key = jax.random.PRNGKey(0)

    def run_ours():
        out = sampling.generate(ours, tokens, mask, key, max_new_tokens=args.new, greedy=True, eos_ids=())
        out.tokens.block_until_ready()
        return out

    t_ids = torch.tensor(tokens, dtype=torch.long, device=device)
    t_mask = torch.tensor(mask, dtype=torch.long, device=device)

    def run_torch():
        with torch.no_grad():
            return torch_model.generate(input_ids=t_ids, attention_mask=t_mask, do_sample=False,
                                        max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0)

    same = np.array_equal(np.asarray(run_ours().tokens), run_torch()[:, tokens.shape[1]:].cpu().numpy())
    t = timed({"ours": run_ours, "torch": run_torch}, args.repeats)
    t_ours, t_torch = t["ours"], t["torch"]
    total = args.batch * args.new
    print(f"model: Llama-style, {n_params / 1e6:.1f}M params, hidden {args.hidden}, {args.layers} layers, "
          f"{heads} heads / {kv_heads} KV heads, intermediate {cfg.intermediate_size}, "
          f"vocab {args.vocab}; batch {args.batch}, prompts {args.prompt // 2}-{args.prompt} tokens, "
          f"{args.new} new tokens, greedy; jax on {jax.devices()[0].platform}, torch on {device} "
          f"({torch.get_num_threads()} threads); identical tokens: {same}")
    print("\n| sampler | seconds (median) | tokens/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| transformers {transformers.__version__} generate | {t_torch:.3f} | {total / t_torch:.0f} | 1.00x |")
    print(f"| jax_irl generate (jax {jax.__version__}) | {t_ours:.3f} | {total / t_ours:.0f} | "
          f"{t_torch / t_ours:.2f}x |")
    if args.new < 2:
        return

    def first_ours():
        sampling.generate(ours, tokens, mask, key, max_new_tokens=1, greedy=True, eos_ids=()).tokens.block_until_ready()

    def first_torch():
        with torch.no_grad():
            torch_model.generate(input_ids=t_ids, attention_mask=t_mask, do_sample=False, max_new_tokens=1,
                                 min_new_tokens=1, pad_token_id=0)

    first = timed({"ours": first_ours, "torch": first_torch}, args.repeats)
    step = {k: (t[k] - first[k]) / (args.new - 1) for k in t}
    # A decoding step reads every weight matrix (the embedding row lookup aside) and, on average over the run,
    # the KV cache up to the mean length; jax_irl's cache has prompt + new slots and its attention reads them all.
    weights = sum(x.numel() for name, x in torch_model.named_parameters() if "embed_tokens" not in name) * 4
    if cfg.tie_word_embeddings:
        weights += args.vocab * args.hidden * 4
    head_dim = args.hidden // heads
    cache = 2 * args.layers * args.batch * kv_heads * head_dim * (tokens.shape[1] + args.new) * 4
    rate = streaming_rate(args.batch, args.hidden, weights + cache, args.repeats)
    floor = (weights + cache) / rate
    print(f"\nPer decoding step: {weights / 2**20:.1f} MiB of weights and {cache / 2**20:.1f} MiB of jax_irl's KV cache; "
          f"XLA streams weights at {rate / 1e9:.1f} GB/s here, a floor of {floor * 1e3:.2f} ms per step.")
    print("\n| sampler | prefill + first token | per further step | step / memory floor |")
    print("|---|---|---|---|")
    print(f"| transformers generate | {first['torch'] * 1e3:.1f} ms | {step['torch'] * 1e3:.2f} ms | "
          f"{step['torch'] / floor:.1f}x |")
    print(f"| jax_irl generate | {first['ours'] * 1e3:.1f} ms | {step['ours'] * 1e3:.2f} ms | "
          f"{step['ours'] / floor:.1f}x |")


if __name__ == "__main__":
    main()
