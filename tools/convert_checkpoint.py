"""Convert a local Hugging Face causal-LM folder through jax_irl and back, optionally casting the weights.

    .venv/bin/python tools/convert_checkpoint.py SRC DST [--param-dtype bfloat16] [--check]

Reads SRC (config.json + safetensors, sharded or not) into a jax_irl Transformer, writes DST with
save_pretrained and copies the tokenizer files. --check loads SRC and DST with transformers and prints the
largest logit difference on a random batch (0 up to float rounding for an fp32 round trip).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jax_irl.models import hf

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "generation_config.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--param-dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        p.error("dst must differ from src (nothing is overwritten in place)")
    model = hf.from_pretrained(args.src, param_dtype=args.param_dtype)
    hf.save_pretrained(model, args.dst)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(args.src, name)):
            shutil.copy(os.path.join(args.src, name), os.path.join(args.dst, name))
    cfg = model.cfg
    print(f"{args.src} -> {args.dst}: {cfg.family}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
          f"vocab {cfg.vocab_size}, params {cfg.param_dtype}")
    if args.check:
        import torch
        import transformers

        ids = np.asarray(jax.random.randint(jax.random.PRNGKey(0), (2, 16), 0, cfg.vocab_size))
        logits = []
        for folder in (args.src, args.dst):
            m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            with torch.no_grad():
                logits.append(m(input_ids=torch.tensor(ids)).logits.numpy())
        ours = np.asarray(model(jnp.asarray(ids)).logits, np.float32)
        print(f"max |logit diff| transformers(src) vs transformers(dst): {np.abs(logits[0] - logits[1]).max():.3g}; "
              f"vs jax_irl: {np.abs(logits[0] - ours).max():.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
