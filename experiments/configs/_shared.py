"""Pieces shared by experiment configs (not a config itself: the driver skips files starting with '_')."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelSize:
    """The size of a Llama-style decoder built from scratch."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
