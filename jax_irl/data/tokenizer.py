"""Tokenizers behind one small interface: a byte-level BPE trained on built-in text when no checkpoint is
given, or a local Hugging Face tokenizer folder (no download)."""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"


class TextTokenizer:
    """encode(text) -> ids (no special tokens), decode(ids) -> text (special tokens dropped), and the ids of
    pad / eos / bos."""

    def __init__(self, tokenizer, pad_id: int, eos_id: int, bos_id: Optional[int]):
        self._tok = tokenizer
        self.pad_id, self.eos_id, self.bos_id = pad_id, eos_id, bos_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> List[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        special = {self.pad_id, self.eos_id, self.bos_id}
        return self._tok.decode([int(i) for i in ids if int(i) not in special], skip_special_tokens=True)

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self._tok.save(os.path.join(folder, "tokenizer.json"))
        with open(os.path.join(folder, "jax_irl_tokenizer.json"), "w") as f:
            json.dump({"pad_id": self.pad_id, "eos_id": self.eos_id, "bos_id": self.bos_id}, f)

    @classmethod
    def load(cls, folder: str) -> "TextTokenizer":
        """A tokenizer saved by ``save``, or a Hugging Face tokenizer folder (tokenizer.json + config)."""
        from tokenizers import Tokenizer

        path = os.path.join(folder, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{folder} has no tokenizer.json")
        tok = Tokenizer.from_file(path)
        ours = os.path.join(folder, "jax_irl_tokenizer.json")
        if os.path.exists(ours):
            with open(ours) as f:
                ids = json.load(f)
            return cls(tok, ids["pad_id"], ids["eos_id"], ids["bos_id"])
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        eos = hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id
        if eos is None:
            raise ValueError(f"the tokenizer in {folder} has no eos (or sep) token")
        pad = hf.pad_token_id if hf.pad_token_id is not None else eos
        return cls(tok, pad, eos, hf.bos_token_id)


def train_bpe(texts: Sequence[str], vocab_size: int = 512, min_frequency: int = 2,
              split_digits: bool = True) -> TextTokenizer:
    """A byte-level BPE trained on texts, with <pad>=0, <eos>=1, <bos>=2. Deterministic for the same texts.

    split_digits keeps every digit its own token (as Llama's tokenizer does), which makes arithmetic learnable
    for small models: a number's tokens then follow its digits instead of arbitrary merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not texts:
        raise ValueError("train_bpe needs at least one text")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, EOS, BOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    return TextTokenizer(tok, tok.token_to_id(PAD), tok.token_to_id(EOS), tok.token_to_id(BOS))
