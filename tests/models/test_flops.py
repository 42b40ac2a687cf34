"""models.config.training_flops_per_token: PaLM's 6 N + 12 L H hd T, by hand and against the model's own weights."""

import jax
import pytest
from flax import nnx

from jax_irl.models.config import TransformerConfig, training_flops_per_token
from jax_irl.models.transformer import Transformer


def test_by_hand_for_a_gated_and_a_plain_mlp():
    llama = TransformerConfig.for_family("llama", vocab_size=10, hidden_size=4, num_layers=2, num_heads=2,
                                         num_kv_heads=1, intermediate_size=6)
    # per layer: q, k, v, o = 4 * 2 * (2 + 1 + 1 + 2) = 48, gated MLP 3 * 4 * 6 = 72; unembedding 4 * 10 = 40.
    # N = 2 * 120 + 40 = 280; 6 N = 1680; attention 12 * 2 layers * 2 heads * 2 * 3 tokens = 288.
    assert training_flops_per_token(llama, 3) == 1968.0
    gpt2 = TransformerConfig.for_family("gpt2", vocab_size=10, hidden_size=4, num_layers=1, num_heads=2,
                                        intermediate_size=8)
    # q, k, v, o = 4 * 2 * (2 + 2 + 2 + 2) = 64, plain MLP 2 * 4 * 8 = 64, tied unembedding 40: N = 168.
    assert training_flops_per_token(gpt2, 5) == 6 * 168 + 12 * 1 * 2 * 2 * 5
    for bad in (0, -1, 2.0, None):
        with pytest.raises(ValueError, match="length must be a positive int"):
            training_flops_per_token(llama, bad)


def test_n_is_the_models_matmul_weights():
    cfg = TransformerConfig.for_family("llama", vocab_size=50, hidden_size=16, num_layers=3, num_heads=4,
                                       num_kv_heads=2, intermediate_size=24)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    # Every weight with two or more axes but the embedding table enters a matmul (the norms are vectors).
    n = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
            if x.ndim >= 2 and "embed" not in jax.tree_util.keystr(path))
    attention_term = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * 7
    assert training_flops_per_token(cfg, 7) == 6 * n + attention_term
