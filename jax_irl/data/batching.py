"""Prompt/response examples -> padded token rows with response masks, and batches that resume exactly.

Row layout: [bos] prompt response eos pad... ; the model reads tokens[:, :-1] and predicts tokens[:, 1:], and
``mask[b, t]`` is 1 where target t is a response token or the eos (the tokens the losses count).

Batches come from a Grain pipeline (``IndexSampler``, ``Batches``): ``IndexSampler.indices(position)`` is a pure
function of (seed, position), so a run that resumes at a data position sees exactly the batches it would have
seen, and ``Batches.iterator`` prefetches the next batches on a host thread while the device computes, with a
state that ``checkpoint.Checkpointer`` saves beside the model's.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import grain
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


def _shuffle_seed(seed: int) -> int:
    """Grain's shuffle seed for ``seed``: Grain shuffles epoch e with seed + e, so seeds s and s + 1 would share an
    epoch's order one epoch apart; hashing the seed first keeps nearby seeds' orders unrelated."""
    return int(np.random.SeedSequence(int(seed)).generate_state(1)[0])


class IndexSampler:
    """Shuffled batches of example indices, as a Grain random-access pipeline:
    ``grain.MapDataset.range(num_examples).shuffle(seed').repeat().batch(batch_size, drop_remainder=True)``.

    Each epoch is a fresh permutation (Grain folds the epoch into the seed; seed' hashes ``seed``); batches run
    across epoch boundaries, so every example is seen once per epoch and none is dropped. ``indices(position)``
    is a pure function of (seed, position): a resumed run sees exactly the batches it would have seen.

    Example:
        >>> sampler = IndexSampler(num_examples=10, batch_size=4, seed=0)
        >>> sorted(np.concatenate([sampler.indices(p) for p in range(5)])[:10].tolist()) == list(range(10))
        True
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        for name, value in (("num_examples", num_examples), ("batch_size", batch_size), ("seed", seed)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int; got {value!r}")
        if batch_size < 1 or num_examples < batch_size:
            raise ValueError(f"need at least one full batch: {num_examples} examples, batch size {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0; got {seed}")
        self.num_examples, self.batch_size, self.seed = int(num_examples), int(batch_size), int(seed)
        self.dataset = (grain.MapDataset.range(self.num_examples).shuffle(seed=_shuffle_seed(seed)).repeat()
                        .batch(self.batch_size, drop_remainder=True))

    def indices(self, position: int) -> np.ndarray:
        """The global batch at data position ``position`` (>= 0)."""
        if position < 0:
            raise ValueError(f"position must be >= 0; got {position}")
        return np.asarray(self.dataset[int(position)])

    def local_indices(self, position: int) -> np.ndarray:
        """This process's share of the global batch (for parallel.global_batch)."""
        return _local(self.indices(position))

    def batch_fn(self, arrays: Dict[str, np.ndarray]) -> "Batches":
        """position -> this process's rows of every array (the contract of train.fit), prefetchable."""
        return Batches(self, arrays)


def _local(indices: np.ndarray) -> np.ndarray:
    return np.array_split(indices, jax.process_count())[jax.process_index()]


class _Rows:
    """Grain map: a global batch of example indices -> this process's rows of every array (example i owns rows
    i * r .. i * r + r - 1 of ``arrays``; ``per_example`` arrays hold one row per example, repeated r times)."""

    def __init__(self, arrays: Dict[str, np.ndarray], rows_per_example: int, per_example: Dict[str, np.ndarray]):
        self.arrays, self.r, self.per_example = arrays, rows_per_example, per_example

    def __call__(self, indices: np.ndarray) -> Dict[str, np.ndarray]:
        examples = _local(np.asarray(indices))
        idx = (examples[:, None] * self.r + np.arange(self.r)[None, :]).reshape(-1) if self.r > 1 else examples
        out = {k: v[idx] for k, v in self.arrays.items()}
        out.update({k: np.repeat(v[examples], self.r, axis=0) for k, v in self.per_example.items()})
        return out


class Batches:
    """The rows of ``arrays`` at each data position of ``sampler``: called as fn(position) (``train.fit``'s
    batch_fn contract), or read in order from ``iterator(start)``, a Grain iterator that builds the next
    ``prefetch`` batches on a host thread while the device computes. The iterator's state (its next position)
    is what ``checkpoint.Checkpointer.save`` stores with a checkpoint (Grain's Orbax handler).

    Example i of the sampler owns rows i * r .. i * r + r - 1 of every array (r = ``rows_per_example``: 2 keeps a
    preference pair's chosen and rejected rows together); ``per_example`` arrays (one row per example, such as
    a pair's margin) are repeated onto each of its r rows."""

    def __init__(self, sampler: IndexSampler, arrays: Dict[str, np.ndarray], *, rows_per_example: int = 1,
                 per_example: Optional[Dict[str, np.ndarray]] = None):
        if not arrays:
            raise ValueError("Batches needs at least one array")
        if not isinstance(rows_per_example, (int, np.integer)) or rows_per_example < 1:
            raise ValueError(f"rows_per_example must be an int >= 1; got {rows_per_example!r}")
        per_example = dict(per_example or {})
        want = sampler.num_examples * rows_per_example
        lengths = {k: len(v) for k, v in arrays.items()}
        if any(n != want for n in lengths.values()):
            raise ValueError(f"every array needs {want} rows ({sampler.num_examples} examples x {rows_per_example}); "
                             f"got {lengths}")
        lengths = {k: len(v) for k, v in per_example.items()}
        if any(n != sampler.num_examples for n in lengths.values()):
            raise ValueError(f"every per_example array needs the sampler's {sampler.num_examples} rows; got {lengths}")
        self.sampler = sampler
        self.dataset = sampler.dataset.map(_Rows(arrays, int(rows_per_example), per_example))

    def __call__(self, position: int) -> Dict[str, np.ndarray]:
        if position < 0:
            raise ValueError(f"position must be >= 0; got {position}")
        return self.dataset[int(position)]

    def iterator(self, start: int, prefetch: int = 2) -> Any:
        """A ``grain.DatasetIterator`` from data position ``start``, prefetching ``prefetch`` batches (0: none);
        ``get_state()`` -> {"next_index": position}."""
        if start < 0 or prefetch < 0:
            raise ValueError(f"start and prefetch must be >= 0; got {start} and {prefetch}")
        it = self.dataset.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch else 0,
                                                            prefetch_buffer_size=prefetch)).__iter__()
        it.set_state({"next_index": int(start)})
        return it
