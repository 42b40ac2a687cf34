"""Fixtures the algorithm tests share."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer


@pytest.fixture(scope="module")
def setup():
    """A one-layer Llama-style model (vocab 37) and a batch: data rows with a response mask that has a hole,
    and policy rows with a left-padded prompt (the online IQLearn fields)."""
    cfg = TransformerConfig.for_family("llama", vocab_size=37, hidden_size=16, num_layers=1, num_heads=2,
                                       num_kv_heads=1, intermediate_size=32, max_position_embeddings=32)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 37, (3, 9)).astype(np.int32)
    mask = np.zeros((3, 8), np.float32)
    mask[:, 3:] = 1.0
    mask[1, 6:] = 0.0
    policy = rng.integers(1, 37, (2, 7)).astype(np.int32)
    attention = np.ones((2, 7), np.int32)
    attention[0, :2] = 0  # a left-padded prompt
    policy_mask = np.zeros((2, 6), np.float32)
    policy_mask[:, 3:] = 1.0
    batch = {"tokens": tokens, "mask": mask, "policy_tokens": policy, "policy_attention": attention,
             "policy_mask": policy_mask}
    return model, jax.tree.map(jnp.asarray, batch)
