"""The smallest real end-to-end run: MLE vs offline IQLearn on built-in addition problems, on CPU.

A tiny character-level language model (a window MLP in plain JAX) learns to answer "a+b=" prompts. The same
model and data are trained with MLE (td_weight = 0) and with IQLearn (td_weight > 0) through
``jax_irl.losses.iqlearn_loss``; the run prints the training losses, greedy exact-match accuracy on held-out
problems, and the mean implied reward (sum of r_t over the response) that each model gives to its own correct
and wrong answers.

    python -m experiments.quickstart [--steps 400] [--td-weights 0 0.1 1.0] [--seed 0]

This is the stand-in main job until the full inverse-RL experiment (issue 5) replaces it.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_irl.losses import iqlearn_loss

CHARS = "0123456789+="
PAD, EOS = len(CHARS), len(CHARS) + 1
VOCAB = len(CHARS) + 2
WINDOW = 6  # enough to see "aa+bb=" from any response position
SEQ = 12


def encode(text: str) -> list:
    return [CHARS.index(c) for c in text]


def make_problems(rng: np.random.Generator, n: int, max_operand: int):
    """Token rows [n, SEQ] of "a+b=c<eos>" padded, and the prompt lengths."""
    rows = np.full((n, SEQ), PAD, np.int32)
    prompt_len = np.zeros(n, np.int32)
    answers = []
    for i in range(n):
        a, b = (int(x) for x in rng.integers(0, max_operand, 2))
        prompt, answer = encode(f"{a}+{b}="), encode(str(a + b)) + [EOS]
        rows[i, : len(prompt) + len(answer)] = prompt + answer
        prompt_len[i] = len(prompt)
        answers.append(a + b)
    return rows, prompt_len, np.array(answers)


def shift(rows: np.ndarray, prompt_len: np.ndarray):
    """inputs, targets, mask: position t predicts rows[t + 1]; only answer tokens (and EOS) count."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    pos = np.arange(SEQ - 1)[None, :]
    mask = (pos >= prompt_len[:, None] - 1) & (targets != PAD)
    return inputs, targets, mask.astype(np.float32)


def init_params(key, dim=24, hidden=256):
    k = jax.random.split(key, 3)
    return {
        "embed": jax.random.normal(k[0], (VOCAB, dim)) * 0.5,
        "w1": jax.random.normal(k[1], (WINDOW * dim, hidden)) / np.sqrt(WINDOW * dim),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k[2], (hidden, VOCAB)) / np.sqrt(hidden),
        "b2": jnp.zeros(VOCAB),
    }


def apply(params, tokens):
    """logits [B, T, V]: an MLP over the embeddings of the last WINDOW tokens at each position."""
    padded = jnp.pad(tokens, ((0, 0), (WINDOW - 1, 0)), constant_values=PAD)
    windows = jnp.stack([padded[:, i : i + tokens.shape[1]] for i in range(WINDOW)], axis=-1)
    x = params["embed"][windows].reshape(tokens.shape + (-1,))
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def greedy_answers(params, rows, prompt_len):
    """Greedy decoding of up to 4 answer tokens after each prompt; returns the generated rows."""
    tokens = jnp.where(jnp.arange(SEQ)[None] < jnp.asarray(prompt_len)[:, None], rows, PAD)

    def step(tokens, t):
        nxt = jnp.argmax(apply(params, tokens)[:, t - 1], -1)
        write = (t >= jnp.asarray(prompt_len)) & (t < jnp.asarray(prompt_len) + 4)
        done = jnp.any((tokens == EOS) & (jnp.arange(SEQ)[None] < t), axis=-1)
        return tokens.at[:, t].set(jnp.where(write & ~done, nxt, tokens[:, t])), None

    tokens, _ = jax.lax.scan(step, tokens, jnp.arange(1, SEQ))
    return np.asarray(tokens)


def decode_answer(row, start):
    digits = []
    for tok in row[start:]:
        if tok == EOS or tok >= len(CHARS) or CHARS[tok] not in "0123456789":
            break
        digits.append(CHARS[tok])
    return int("".join(digits)) if digits and len(digits) < 6 else None


def train(td_weight: float, steps: int, seed: int, train_data, batch: int = 128, log_every: int = 100):
    inputs, targets, mask = train_data
    params = init_params(jax.random.PRNGKey(seed))
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def update(params, state, x, y, m):
        def loss_fn(p):
            return iqlearn_loss(apply(p, x), y, m, gamma=1.0, td_weight=td_weight)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, aux["nll_loss"], aux["td_loss"]

    rng = np.random.default_rng(seed)
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(inputs), batch)
        params, state, loss, nll, td = update(params, state, inputs[idx], targets[idx], mask[idx])
        if step % log_every == 0 or step == 1:
            print(f"  td_weight={td_weight:<5g} step {step:4d}  loss {float(loss):.4f}  nll {float(nll):.4f}  "
                  f"td {float(td):.4f}", flush=True)
    return params


def evaluate(params, test_rows, test_prompt_len, test_answers):
    generated = greedy_answers(params, test_rows, test_prompt_len)
    predicted = [decode_answer(generated[i], int(test_prompt_len[i])) for i in range(len(generated))]
    correct = np.array([p == a for p, a in zip(predicted, test_answers)])
    x, y, m = shift(generated, test_prompt_len)
    m = m * (y != PAD)
    _, aux = iqlearn_loss(apply(params, jnp.asarray(x)), jnp.asarray(y), jnp.asarray(m), gamma=1.0, td_weight=0.0)
    seq_r = np.asarray(aux["sequence_rewards"])
    r_ok = float(seq_r[correct].mean()) if correct.any() else float("nan")
    r_bad = float(seq_r[~correct].mean()) if (~correct).any() else float("nan")
    return float(correct.mean()), r_ok, r_bad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--td-weights", type=float, nargs="+", default=[0.0, 0.1, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-operand", type=int, default=50)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    rng = np.random.default_rng(1234)
    train_rows, train_pl, _ = make_problems(rng, 4000, args.max_operand)
    test_rows, test_pl, test_answers = make_problems(rng, 500, args.max_operand)
    train_data = shift(train_rows, train_pl)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {len(train_rows)} train / {len(test_rows)} test "
          f"problems a+b with a, b < {args.max_operand}")
    rows = []
    for td in args.td_weights:
        t0 = time.time()
        params = train(td, args.steps, args.seed, train_data)
        acc, r_ok, r_bad = evaluate(params, test_rows, test_pl, test_answers)
        rows.append((td, acc, r_ok, r_bad, time.time() - t0))
    print("\n| td_weight | method | test exact match | mean implied reward, correct | wrong | seconds |")
    print("|---|---|---|---|---|---|")
    for td, acc, r_ok, r_bad, sec in rows:
        method = "MLE" if td == 0 else "IQLearn"
        print(f"| {td:g} | {method} | {acc:.3f} | {r_ok:.2f} | {r_bad:.2f} | {sec:.1f} |")


if __name__ == "__main__":
    main()
