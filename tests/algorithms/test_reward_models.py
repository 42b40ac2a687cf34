"""Reward models and ensembles: the unbiased best-of-n estimator against brute force, KL_bon, the vmapped
ensemble step against K separate single-model steps, the frozen encoder, distinct heads, and bad input."""

import itertools
import math

import jax
import numpy as np
import pytest
from flax import nnx

from jax_irl import parallel, sampling, train
from jax_irl.algorithms import reward_models as rm
from jax_irl.models.config import TransformerConfig
from jax_irl.models.heads import RewardModel
from jax_irl.models.transformer import Transformer

CFG = TransformerConfig.for_family("llama", vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2,
                                   intermediate_size=32)


def _mesh():
    return parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])


def _batch(position):
    r = np.random.default_rng(position)
    tokens = r.integers(1, 32, (8, 7)).astype(np.int32)
    attention = np.ones((8, 7), np.int32)
    attention[1::2, 5:] = 0  # rejected rows are shorter: the last counted token differs
    return {"tokens": tokens, "attention": attention}


def test_bon_estimator_equals_the_average_over_all_n_subsets():
    r = np.random.default_rng(0)
    proxy, gold = r.normal(size=(3, 7)), r.normal(size=(3, 7))
    proxy[0, 2] = proxy[0, 5]  # a tie: the stable order decides, as in brute force's first-maximum rule
    for n in range(1, 8):
        brute = []
        for p, g in zip(proxy, gold):
            subsets = list(itertools.combinations(range(7), n))
            order = np.argsort(p, kind="stable")
            rank = np.empty(7, int)
            rank[order] = np.arange(7)
            brute.append(np.mean([g[max(s, key=lambda i: rank[i])] for s in subsets]))
        assert rm.bon_gold(proxy, gold, [n])[0] == pytest.approx(np.mean(brute), abs=1e-12)
    assert rm.bon_weights(7, 3).sum() == pytest.approx(1.0)
    assert rm.bon_weights(2000, 300).sum() == pytest.approx(1.0, abs=1e-9)  # large N stays exact in logs
    np.testing.assert_allclose(sampling.best_of_n_kl([1, 2, 4]), [0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    with pytest.raises(ValueError, match="1 <= n <= N"):
        rm.bon_gold(proxy, gold, [8])
    with pytest.raises(ValueError, match="same shape"):
        rm.bon_gold(proxy, gold[:, :5], [1])
    with pytest.raises(ValueError, match="finite"):
        rm.bon_gold(np.array([1.0, np.nan]), np.array([0.0, 1.0]), [1])


def test_measured_bon_kl_by_hand_brute_force_and_its_analytic_limit():
    # By hand: pool [a, a, b], proxy [1, 1, 2], n = 2. Of the 3 pairs, {0, 1} keeps a and the two with b keep b:
    # q = (a 1/3, b 2/3) against p = (a 2/3, b 1/3): KL = 1/3 log(1/2) + 2/3 log 2 = log(2) / 3.
    assert rm.bon_kl(np.array([[1.0, 1.0, 2.0]]), [["a", "a", "b"]], [2])[0] == pytest.approx(math.log(2) / 3)
    assert rm.bon_kl(np.array([[1.0, 1.0, 2.0]]), [["a", "a", "b"]], [1])[0] == pytest.approx(0.0, abs=1e-12)
    # Brute force over every n-subset of a pool with repeats and ties.
    r = np.random.default_rng(3)
    texts = [list("abcabdaa"), list("xyzxyzxy")]
    proxy = np.array([[{"a": 0.1, "b": 0.7, "c": 0.3, "d": 0.9}[t] for t in texts[0]],
                      r.normal(size=8)])
    for n in (2, 3, 5):
        want = []
        for p, row in zip(proxy, texts):
            order = np.argsort(p, kind="stable")
            rank = np.empty(8, int)
            rank[order] = np.arange(8)
            picks = [row[max(s, key=lambda i: rank[i])] for s in itertools.combinations(range(8), n)]
            want.append(sum(picks.count(y) / len(picks) * math.log(picks.count(y) / len(picks) / (row.count(y) / 8))
                            for y in set(picks)))
        assert rm.bon_kl(proxy, texts, [n])[0] == pytest.approx(np.mean(want), abs=1e-12)
    # Distinct samples: near the analytic log n - (n - 1) / n for N >> n; repeats make it smaller.
    big = r.normal(size=(2, 2000))
    distinct = [[str(i) for i in range(2000)]] * 2
    np.testing.assert_allclose(rm.bon_kl(big, distinct, [4, 16]), sampling.best_of_n_kl([4, 16]), atol=0.02)
    repeated = [[str(i % 50) for i in range(2000)]] * 2
    assert rm.bon_kl(big, repeated, [16])[0] < sampling.best_of_n_kl(16) - 0.1
    with pytest.raises(ValueError, match="texts must be"):
        rm.bon_kl(proxy, texts[:1], [2])


def test_the_vmapped_ensemble_step_equals_k_separate_single_steps():
    kind = rm.RMKind("ensemble", heads=3)
    ens = rm.build(kind, lambda r: Transformer(CFG, rngs=r), seed=0)
    opt = train.OptimizerConfig(learning_rate=1e-2, max_grad_norm=0.05, weight_decay=0.01)
    trainer = train.Trainer(ens, rm.bt_loss_fn(kind), opt, _mesh(), total_steps=3,
                            tx=rm.optimizer_for(kind, opt, 3))
    state = trainer.init_state(0)
    members = nnx.state(ens)
    singles = []
    for k in range(3):
        single = RewardModel(Transformer(CFG, rngs=nnx.Rngs(9)), 1, rngs=nnx.Rngs(9))
        own = nnx.state(single)
        nnx.replace_by_pure_dict(own, jax.tree.map(lambda x: x[k], nnx.to_pure_dict(members["members"])))
        nnx.update(single, own)
        t = train.Trainer(single, rm.bt_loss_fn(rm.RMKind()), opt, _mesh(), total_steps=3)
        singles.append((t, t.init_state(0)))
    for step in range(3):
        batch = {key: jax.numpy.asarray(v) for key, v in _batch(step).items()}
        state, metrics = trainer.step(state, batch)
        singles = [(t, t.step(s, batch)[0]) for t, s in singles]
        assert float(metrics["grad_norm"]) > 3 * 0.05  # the clip is active
    trained = nnx.state(trainer.model(state))["members"]
    for k, (t, s) in enumerate(singles):
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda x: x[k], trained)), jax.tree.leaves(nnx.state(t.model(s)))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=2e-5)
    heads = np.asarray(trained["head"]["kernel"][...])[:, :, 0]
    assert np.abs(heads[0] - heads[1]).max() > 1e-3 and np.abs(heads[1] - heads[2]).max() > 1e-3


def test_a_frozen_encoder_stays_bitwise_unchanged_and_the_heads_differ():
    kind = rm.RMKind("multihead", heads=4, freeze_encoder=True, bootstrap="poisson")
    model = rm.build(kind, lambda r: Transformer(CFG, rngs=r), seed=1)
    before = jax.tree.map(np.asarray, nnx.state(model.backbone))
    head_before = np.asarray(model.head.kernel[...])
    assert np.abs(head_before[:, 0] - head_before[:, 1]).max() > 1e-3  # different initialisations
    opt = train.OptimizerConfig(learning_rate=1e-2, weight_decay=0.1)
    trainer = train.Trainer(model, rm.bt_loss_fn(kind), opt, _mesh(), total_steps=3, tx=rm.optimizer_for(kind, opt, 3))
    state = trainer.init_state(0)
    for step in range(3):
        state, metrics = trainer.step(state, {k: jax.numpy.asarray(v) for k, v in _batch(step).items()})
    assert {f"accuracy_{k}" for k in range(4)} <= set(metrics) and "disagreement" in metrics
    trained = trainer.model(state)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(nnx.state(trained.backbone))):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert np.abs(np.asarray(trained.head.kernel[...]) - head_before).max() > 1e-4
    # Without freezing, the encoder moves.
    free = rm.RMKind("multihead", heads=4)
    model = rm.build(free, lambda r: Transformer(CFG, rngs=r), seed=1)
    trainer = train.Trainer(model, rm.bt_loss_fn(free), opt, _mesh(), total_steps=1)
    state, _ = trainer.step(trainer.init_state(0), {k: jax.numpy.asarray(v) for k, v in _batch(0).items()})
    assert np.abs(np.asarray(nnx.state(trainer.model(state).backbone)["embed"][...]) -
                  before["embed"]).max() > 1e-4


def test_every_kind_scores_pairs_and_bad_kinds_are_refused():
    rows = rm.pair_rows({"tokens": _batch(0)["tokens"], "mask": np.asarray(_batch(0)["attention"][:, 1:])})
    np.testing.assert_array_equal(rows["attention"], _batch(0)["attention"])
    for kind in (rm.RMKind(), rm.RMKind("multihead", heads=2), rm.RMKind("ensemble", heads=2)):
        model = rm.build(kind, lambda r: Transformer(CFG, rngs=r), seed=0)
        out = rm.evaluate_pairs(model, rows)
        assert len(out["accuracy"]) == kind.heads and 0 <= out["mean_accuracy"] <= 1
    for bad, match in ((dict(kind="twin"), "RMKind.kind"), (dict(kind="single", heads=2), "one head"),
                       (dict(kind="ensemble", heads=2, freeze_encoder=True), "freeze_encoder"),
                       (dict(bootstrap="jackknife"), "bootstrap"), (dict(kind="multihead", heads=0), "heads")):
        with pytest.raises(ValueError, match=match):
            rm.RMKind(**bad)
    records = [{"prompt": str(i), "chosen": "a", "rejected": "b"} for i in range(1000)]
    flipped = rm.flip_labels(records, 0.25, seed=0)
    share = np.mean([r["chosen"] == "b" for r in flipped])
    assert 0.2 < share < 0.3 and records[0]["chosen"] == "a"
    with pytest.raises(ValueError, match="label-noise"):
        rm.flip_labels(records, 1.5, seed=0)


def test_a_bert_encoder_from_a_local_checkpoint_is_a_proxy_backbone(tiny_hf_llama):
    """The ensembles experiment's BERT path: a local BERT folder (MiniLM) and its own tokenizer, K heads
    trained by Bradley-Terry for a few steps, scored on pairs."""
    from jax_irl.algorithms import pairs
    from jax_irl.models import hf
    from jax_irl.data.tokenizer import TextTokenizer
    from jax_irl.models.encoder import BertEncoder

    folder = tiny_hf_llama[1]
    backbone = hf.backbone_from_pretrained(folder)
    assert isinstance(backbone, BertEncoder)
    assert isinstance(hf.backbone_from_pretrained(str(tiny_hf_llama[0])), Transformer)
    tok = TextTokenizer.load(folder)
    records = [{"prompt": f"what is {a} plus {a}?", "chosen": f"it is {2 * a}", "rejected": f"it is {2 * a + 1}"}
               for a in range(8)]
    rows = rm.pair_rows(pairs.preference_rows(tok, records, 32))
    kind = rm.RMKind("multihead", heads=2)
    model = rm.build(kind, lambda r: nnx.clone(backbone), seed=0)
    opt = train.OptimizerConfig(learning_rate=1e-3)
    trainer = train.Trainer(model, rm.bt_loss_fn(kind), opt, _mesh(), total_steps=2)
    state = trainer.init_state(0)
    batch = {k: jax.numpy.asarray(rows[k]) for k in ("tokens", "attention")}
    first = None
    for _ in range(2):
        state, metrics = trainer.step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert np.isfinite(first) and float(metrics["loss"]) < first  # the same batch twice: the loss falls
    out = rm.evaluate_pairs(trainer.model(state), rows)
    assert len(out["accuracy"]) == 2 and np.isfinite(out["disagreement"])
