"""Character-level "a+b=c" problems: the data of the lm_tiny recipe."""

from __future__ import annotations

import numpy as np

CHARS = "0123456789+="
PAD, EOS = len(CHARS), len(CHARS) + 1
VOCAB = len(CHARS) + 2
SEQ = 12


def encode(text: str) -> list:
    return [CHARS.index(c) for c in text]


def make_problems(rng: np.random.Generator, n: int, max_operand: int):
    """Token rows [n, SEQ] of "a+b=c<eos>" padded, the prompt lengths and the answers."""
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


def response_mask(rows: np.ndarray, prompt_len: np.ndarray) -> np.ndarray:
    """[n, SEQ - 1]: target t predicts rows[t + 1]; only answer tokens (and EOS) count."""
    targets = rows[:, 1:]
    pos = np.arange(SEQ - 1)[None, :]
    return ((pos >= prompt_len[:, None] - 1) & (targets != PAD)).astype(np.float32)


def decode_answer(row, start: int):
    """The integer spelled by the digits from ``start`` up to EOS or a non-digit (None if there is none)."""
    digits = []
    for tok in row[start:]:
        if tok == EOS or tok >= len(CHARS) or CHARS[tok] not in "0123456789":
            break
        digits.append(CHARS[tok])
    return int("".join(digits)) if digits and len(digits) < 6 else None
