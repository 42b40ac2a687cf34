"""Prompt/response examples -> padded token rows with response masks, and batches that resume exactly.

Row layout: [bos] prompt response eos pad... ; the model reads tokens[:, :-1] and predicts tokens[:, 1:], and
``mask[b, t]`` is 1 where target t is a response token or the eos (the tokens the losses count).

``BatchSampler.indices(position)`` is a pure function of (seed, position): epoch e uses the permutation drawn
from (seed, e). A run that resumes at a data position therefore sees exactly the batches it would have seen.
"""

from __future__ import annotations

from typing import Dict, Sequence

import jax
import numpy as np


def encode_examples(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
                    add_bos: bool = True) -> Dict[str, np.ndarray]:
    """tokens [N, max_length] int32, mask [N, max_length - 1] float32, prompt_lengths [N] (tokens before the
    response, bos included), and 'truncated' (how many responses lost tokens to max_length). A prompt that does
    not fit is clipped from the left after the bos, keeping at least one prompt token."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        raise ValueError("no examples to encode")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3; got {max_length}")
    n = len(prompts)
    tokens = np.full((n, max_length), tokenizer.pad_id, np.int32)
    mask = np.zeros((n, max_length - 1), np.float32)
    prompt_lengths = np.zeros(n, np.int32)
    truncated = 0
    for i, (p, r) in enumerate(zip(prompts, responses)):
        head = ([tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else [])
        body = tokenizer.encode(p)
        response_ids = tokenizer.encode(r) + [tokenizer.eos_id]
        room = max_length - len(response_ids)
        if room < 1:  # even a one-token prompt leaves no room: cut the response
            response_ids = response_ids[: max_length - 1]
            truncated += 1
            room = 1
        if len(head) + len(body) <= room:
            prompt_ids = head + body
        elif room > len(head):  # bos stays; the prompt text is clipped from the left
            prompt_ids = head + body[len(body) - (room - len(head)):]
        else:  # room for a single prompt token
            prompt_ids = head[:1] if head else body[-1:]
        row = prompt_ids + response_ids
        tokens[i, : len(row)] = row
        prompt_lengths[i] = len(prompt_ids)
        # target index t predicts tokens[t + 1]: response tokens sit at targets len(prompt)-1 .. len(row)-2
        mask[i, len(prompt_ids) - 1: len(row) - 1] = 1.0
    return {"tokens": tokens, "mask": mask, "prompt_lengths": prompt_lengths, "truncated": np.int32(truncated)}


def trim_padding(encoded: Dict[str, np.ndarray], pad_id: int) -> Dict[str, np.ndarray]:
    """``encode_examples``'s output without the trailing columns that are padding in every row (the row width
    becomes the longest row's length), which saves their compute in every step."""
    tokens = encoded["tokens"]
    used = np.nonzero((tokens != pad_id).any(0))[0]
    width = max(int(used[-1]) + 1 if used.size else 0, 2)
    return dict(encoded, tokens=tokens[:, :width], mask=encoded["mask"][:, :width - 1])


class BatchSampler:
    """Deterministic shuffled batches of example indices; batch ``position`` is a pure function of it."""

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if batch_size < 1 or num_examples < batch_size:
            raise ValueError(f"need at least one full batch: {num_examples} examples, batch size {batch_size}")
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = num_examples // batch_size  # the last partial batch of each epoch is dropped

    def indices(self, position: int) -> np.ndarray:
        """The global batch at data position ``position`` (>= 0)."""
        if position < 0:
            raise ValueError(f"position must be >= 0; got {position}")
        epoch, k = divmod(position, self.steps_per_epoch)
        perm = np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)
        return perm[k * self.batch_size:(k + 1) * self.batch_size]

    def local_indices(self, position: int) -> np.ndarray:
        """This process's share of the global batch (for parallel.global_batch)."""
        return np.array_split(self.indices(position), jax.process_count())[jax.process_index()]

    def batch_fn(self, arrays: Dict[str, np.ndarray]):
        """position -> this process's rows of every array (the contract of train.fit)."""
        def fn(position: int) -> Dict[str, np.ndarray]:
            idx = self.local_indices(position)
            return {k: v[idx] for k, v in arrays.items()}

        return fn
