"""GSHF: rejection sampling reaches the Gibbs target, the oracle's pairs, DPO on a buffer, and the online loop's
bookkeeping and exact resume."""

import json
import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from jax_irl import parallel, rollout, sampling, stages, train
from jax_irl.algorithms import gshf, pairs
from jax_irl.data import arithmetic, batching
from jax_irl.data.tokenizer import train_bpe
from jax_irl.models.config import TransformerConfig
from jax_irl.models.transformer import Transformer

P0 = np.array([0.4, 0.3, 0.2, 0.1])
R = np.array([1.0, 0.0, 0.5, 0.2])  # the likeliest item has the top reward, so 32 candidates nearly always hold it


def _accepted_counts(eta, seed=0, prompts=3000, n=32):
    items = np.random.default_rng(seed).choice(4, size=(prompts, n), p=P0)
    accept, rate = sampling.rejection_accept(jax.random.PRNGKey(seed), R[items], eta)
    return np.bincount(items[accept], minlength=4), rate


def _gibbs(eta):
    q = P0 * np.exp(R / eta)
    return q / q.sum()


def test_rejection_sampling_accepts_the_gibbs_distribution():
    counts, rate = _accepted_counts(0.5)
    assert stats.chisquare(counts, _gibbs(0.5) * counts.sum()).pvalue > 1e-3
    # The test has power: the same counts reject a neighbouring target and pi0 itself.
    assert stats.chisquare(counts, _gibbs(0.7) * counts.sum()).pvalue < 1e-6
    assert stats.chisquare(counts, P0 * counts.sum()).pvalue < 1e-6
    # The acceptance rate is E_pi0[exp((r - r_max) / eta)].
    np.testing.assert_allclose(rate, (P0 * np.exp((R - 1.0) / 0.5)).sum(), rtol=0.03)
    with pytest.raises(ValueError, match="eta must be > 0"):
        sampling.rejection_accept(jax.random.PRNGKey(0), np.zeros((2, 3)), 0.0)


ETAS = (2.0, 1.0, 0.5)


def _multi_step(bound, seed=1, prompts=20000, pool=4):
    items = np.random.default_rng(seed).choice(4, size=(prompts, pool ** len(ETAS)), p=P0)
    out = sampling.multi_step_rejection(jax.random.PRNGKey(seed), R[items], ETAS, pool, bound=bound)
    return np.take_along_axis(items, out.index, 1), out


def test_multistep_rejection_with_fresh_candidates_is_exact_on_a_discrete_case():
    # With the true bound of r every step is exact rejection sampling from the previous step's sampler, so the
    # last step's accepted samples follow pi0 exp(r / eta_N) / Z exactly, and step k accepts the samples of step
    # k - 1 at the rate E_{pi_{k-1}}[exp((r - max r) (1/eta_k - 1/eta_{k-1}))].
    final, out = _multi_step(bound=1.0)
    counts = np.bincount(final[out.accept], minlength=4)
    assert stats.chisquare(counts, _gibbs(0.5) * counts.sum()).pvalue > 1e-3
    assert stats.chisquare(counts, _gibbs(0.7) * counts.sum()).pvalue < 1e-6
    previous, inv = P0, 0.0
    for rate, eta in zip(out.rates, ETAS):
        expected = float((previous * np.exp((R - 1.0) * (1.0 / eta - inv))).sum())
        np.testing.assert_allclose(rate, expected, rtol=0.03)
        previous, inv = _gibbs(eta), 1.0 / eta
    one_step = float((P0 * np.exp((R - 1.0) / 0.5)).sum())
    assert min(out.rates) > one_step  # each step accepts more than the one step to eta_N
    # Every index points into its own prompt's candidates, distinct within the last pool (disjoint groups).
    assert out.index.shape == (20000, 4) and all(len(set(row)) == 4 for row in out.index[:100])


def test_statistical_multistep_rejection_keeps_each_groups_best_and_nears_the_target():
    final, out = _multi_step(bound=None, prompts=6000, pool=6)
    assert out.accept.any(1).all()  # the best of every pool always survives
    freq = np.bincount(final[out.accept], minlength=4) / out.accept.sum()
    assert 0.5 * np.abs(freq - _gibbs(0.5)).sum() < 0.01  # total variation to the target (measured 0.003)
    # One statistical step over a pool of the same size stays further from it (measured 0.03): its max-based bound
    # is too low for few candidates, which the fresh intermediate samplers' larger draw corrects.
    items = np.random.default_rng(0).choice(4, size=(6000, 6), p=P0)
    accept, _ = sampling.rejection_accept(jax.random.PRNGKey(0), R[items], 0.5)
    one_step = np.bincount(items[accept], minlength=4) / accept.sum()
    assert 0.5 * np.abs(one_step - _gibbs(0.5)).sum() > 0.02
    for kwargs, match in ((dict(etas=()), "non-empty"), (dict(etas=(0.5, 0.0)), "values > 0"),
                          (dict(etas=(0.5, 1.0)), "must decrease"), (dict(pool=0), "pool must be"),
                          (dict(rewards=np.zeros((2, 5))), r"\[B, 4\]"), (dict(bound=-1.0), "upper bound"),
                          (dict(rewards=np.full((2, 4), np.nan)), "finite")):
        args = dict(rewards=np.zeros((2, 4)), etas=(1.0, 0.5), pool=2, bound=None) | kwargs
        with pytest.raises(ValueError, match=match):
            sampling.multi_step_rejection(jax.random.PRNGKey(0), args.pop("rewards"), args.pop("etas"),
                                          args.pop("pool"), **args)


def test_pairs_best_against_worst_skip_identical_and_tied_and_follow_bradley_terry():
    texts = [["a", "b", "c"], ["x", "x", "x"], ["p", "q", "r"]]
    rewards = np.array([[0.2, 0.9, 0.1], [0.1, 0.5, 0.3], [0.4, 0.4, 0.4]])
    records, counts = pairs.make_pairs(["P1", "P2", "P3"], texts, rewards, pairs.OracleConfig(), np.random.default_rng(0))
    assert records == [{"prompt": "P1", "chosen": "b", "rejected": "c"}]
    assert counts == {"pairs": 1, "identical": 1, "ties": 1}
    # Bradley-Terry labels: P(first wins) = sigmoid(gap / temperature), checked over many draws.
    oracle = pairs.OracleConfig(temperature=0.5, pair_rule="random")
    rng = np.random.default_rng(1)
    wins = sum(pairs.make_pairs(["p"], [["u", "v"]], np.array([[0.6, 0.2]]), oracle, rng)[0][0]["chosen"] == "u"
               for _ in range(4000))
    p = 1 / (1 + math.exp(-0.4 / 0.5))
    assert abs(wins / 4000 - p) < 4 * math.sqrt(p * (1 - p) / 4000)
    with pytest.raises(ValueError, match="at least 2 candidates"):
        pairs.make_pairs(["p"], [["u"]], np.array([[0.1]]), pairs.OracleConfig(), rng)
    with pytest.raises(ValueError, match="must be finite"):
        pairs.make_pairs(["p"], [["u", "v"]], np.array([[0.1, np.nan]]), pairs.OracleConfig(), rng)
    with pytest.raises(ValueError, match="one row of candidates"):
        pairs.make_pairs(["p", "q"], [["u", "v"]], np.array([[0.1, 0.2]]), pairs.OracleConfig(), rng)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        pairs.OracleConfig(temperature=-1.0)


def test_graded_gold_reward_hand_computed():
    ref = "3 * 4 = 12\n12 - 2 = 10\n#### 10"
    assert arithmetic.graded_reward(ref, ref) == pytest.approx(1.0)
    assert arithmetic.graded_reward("3 * 4 = 12\n12 - 2 = 9\n#### 9", ref) == pytest.approx(0.3 * 0.5 + 0.1)
    assert arithmetic.graded_reward("3 * 4 = 13\n#### 10", ref) == pytest.approx(0.6 + 0.1)  # right, false step
    assert arithmetic.graded_reward("the answer is 10", ref) == pytest.approx(0.6)  # no steps, no format
    assert arithmetic.graded_reward("", ref) == 0.0


@pytest.fixture(scope="module")
def lm():
    texts = [f"Question: what is {a} plus {b}?\nAnswer: {a} + {b} = {a + b}\n#### {a + b}" for a in range(9)
             for b in range(9)]
    tok = train_bpe(texts, vocab_size=120)
    cfg = TransformerConfig.for_family("llama", vocab_size=tok.vocab_size, hidden_size=32, num_layers=1,
                                       num_heads=2, num_kv_heads=2, intermediate_size=64, max_position_embeddings=96)
    return tok, Transformer(cfg, rngs=nnx.Rngs(0))


RECORDS = [{"prompt": f"Question: what is {a} plus 2?\nAnswer:", "chosen": f" {a} + 2 = {a + 2}\n#### {a + 2}",
            "rejected": f" {a} + 2 = {a + 3}\n#### {a + 3}"} for a in range(8)]


def test_preference_rows_interleave_pairs_and_refuse_bad_records(lm):
    tok, _ = lm
    rows = pairs.preference_rows(tok, RECORDS, 64)
    assert rows["tokens"].shape[0] == 16 and rows["mask"].shape[1] == rows["tokens"].shape[1] - 1
    chosen = tok.decode(rows["tokens"][0, 1:][rows["mask"][0] > 0])
    rejected = tok.decode(rows["tokens"][1, 1:][rows["mask"][1] > 0])
    assert chosen.strip() == RECORDS[0]["chosen"].strip() and rejected.strip() == RECORDS[0]["rejected"].strip()
    with pytest.raises(ValueError, match="buffer is empty"):
        pairs.preference_rows(tok, [], 64)
    with pytest.raises(ValueError, match="record 1 needs a string 'rejected'"):
        pairs.preference_rows(tok, [RECORDS[0], {"prompt": "p", "chosen": "c"}], 64)


def test_dpo_on_a_buffer_starts_at_log2_lowers_its_loss_and_widens_the_margin(lm, tmp_path):
    tok, pi0 = lm
    rows = pairs.preference_rows(tok, RECORDS, 64)
    ref = gshf.reference_logps(pi0, rows, rows_per_batch=5)
    direct = rollout.score_rows(pi0, rollout.LMScores(("log_probs",)), rows)["log_probs"].sum(-1)
    np.testing.assert_allclose(ref, direct, rtol=1e-5, atol=1e-4)
    stage = stages.StageConfig(steps=40, batch_size=4, optimizer=train.OptimizerConfig(learning_rate=1e-2))
    mesh = parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1])
    stages.run_stage(stages.Run(str(tmp_path), mesh, progress=False), pi0, gshf.dpo_loss_fn(gshf.DPOConfig(beta=0.5)),
                     stage, gshf.pair_batch_fn(rows, ref, 4, seed=0))
    with open(tmp_path / "metrics.jsonl") as f:
        log = [json.loads(line) for line in f]
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert np.mean([r["loss"] for r in log[-5:]]) < math.log(2) - 0.2
    assert log[-1]["reward_margin"] > 0.5 and log[-1]["reward_accuracy"] == 1.0


@pytest.mark.parametrize("loss_type,nll_weight", [("sigmoid", 0.0), ("ipo", 0.0), ("sigmoid", 0.5)])
def test_dpo_with_a_loss_window_equals_the_full_path(lm, loss_type, nll_weight):
    tok, pi0 = lm
    rows = pairs.preference_rows(tok, RECORDS, 64)
    window = rollout.loss_window(rows["mask"])
    assert window is not None and window < rows["mask"].shape[1]
    r = np.random.default_rng(0)
    batch = jax.tree.map(jnp.asarray, dict(rows, ref_logps=r.normal(-20, 2, 16).astype(np.float32)))
    cfg = gshf.DPOConfig(beta=0.5, loss_type=loss_type, nll_weight=nll_weight)
    full, windowed = gshf.dpo_loss_fn(cfg), gshf.dpo_loss_fn(cfg, window=window)
    (want, aux_want), (got, aux) = nnx.jit(full)(pi0, batch, None), nnx.jit(windowed)(pi0, batch, None)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    np.testing.assert_allclose(float(aux["chosen_logps"]), float(aux_want["chosen_logps"]), rtol=1e-5)
    g_want = nnx.jit(nnx.grad(lambda m: full(m, batch, None)[0]))(pi0)
    g = nnx.jit(nnx.grad(lambda m: windowed(m, batch, None)[0]))(pi0)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def _context(lm, tmp_path):
    tok, pi0 = lm
    problems = [(a, b) for a in range(2, 9) for b in range(2, 9)]
    prompts = [f"Question: what is {a} plus {b}?\nAnswer:" for a, b in problems]
    refs = [f"{a} + {b} = {a + b}\n#### {a + b}" for a, b in problems]
    enc = batching.encode_examples(tok, prompts, refs, 48)
    tokens, mask = rollout.prompt_rows(enc["tokens"], enc["prompt_lengths"], tok.pad_id, int(enc["prompt_lengths"].max()))
    every = rollout.Prompts(tokens, mask, prompts, refs)
    return gshf.Context(pi0=pi0, train_prompts=every, eval_prompts=every.take(np.arange(6)),
                        settings=pairs.SampleSettings(tok, 10, pairs.per_sample(arithmetic.graded_reward), temperature=1.0),
                        oracle=pairs.OracleConfig(temperature=0.05), optimizer=train.OptimizerConfig(learning_rate=1e-3),
                        batch_pairs=4, max_length=48, eval_samples=2)


def _run(folder, seed: int) -> stages.Run:
    """A (method, seed) run in ``folder`` on one device."""
    return stages.Run(str(folder), parallel.make_mesh(parallel.MeshConfig(1, 1, 1), jax.devices()[:1]), seed=seed,
                      progress=False)


def _params(model):
    return jax.device_get(nnx.state(model, nnx.Param))


def test_online_loop_bookkeeping_reference_and_restarts(lm, tmp_path):
    ctx = _context(lm, tmp_path)
    before = _params(ctx.pi0)
    method = gshf.GSHFMethod("online", beta=0.5, rounds=3, prompts_per_round=6, candidates=3)
    out = gshf.run_method(method, ctx, _run(tmp_path / "cold", 0))
    jax.tree.map(np.testing.assert_array_equal, before, _params(ctx.pi0))  # pi0 (the reference) never changes
    sizes = []
    for t in range(3):
        with open(tmp_path / "cold" / f"round_{t}" / "pairs.json") as f:
            made = json.load(f)
        assert made["counts"]["pairs"] == len(made["records"])
        assert sum(made["counts"].values()) == 6  # one pair per prompt, labelled or skipped
        sizes.append(len(made["records"]))
        with open(tmp_path / "cold" / f"round_{t}" / "train" / "metrics.jsonl") as f:
            first = json.loads(f.readline())["loss"]
        assert first == pytest.approx(math.log(2), abs=1e-5)  # every round restarts from pi0
    assert out["final"]["labels"] == sum(sizes) and set(out["rounds"]) == {"0", "1", "2"}
    with open(tmp_path / "cold" / "buffer.jsonl") as f:
        assert len(f.readlines()) == sum(sizes)
    for key in ("gold", "kl", "win_rate"):
        assert np.isfinite(out["final"][key])
    warm = gshf.run_method(gshf.GSHFMethod("online", beta=0.5, rounds=2, prompts_per_round=6, candidates=3,
                                           warm_start=True), ctx, _run(tmp_path / "warm", 0))
    with open(tmp_path / "warm" / "round_1" / "train" / "metrics.jsonl") as f:
        assert abs(json.loads(f.readline())["loss"] - math.log(2)) > 1e-3  # warm start: from the last iterate
    assert set(warm["rounds"]) == {"0", "1"}


def test_raft_and_rso_train_on_the_accepted_samples_of_fresh_multistep_rejection(lm, tmp_path):
    ctx = _context(lm, tmp_path)
    common = dict(beta=0.5, rounds=1, prompts_per_round=6, candidates=3, rs_schedule=(2.0,))
    rso = gshf.run_method(gshf.GSHFMethod("rso", **common), ctx, _run(tmp_path / "rso", 0))
    with open(tmp_path / "rso" / "round_0" / "accepted.json") as f:
        made = json.load(f)
    # 3 ** 2 = 9 samples of pi0 a prompt go in (the labels: gold rewards read); the last step's pool is 3 fresh
    # samples of the eta = 2 sampler, whose best always survives.
    assert rso["final"]["labels"] == 6 * 9 and len(made["rates"]) == 2
    assert all(1 <= len(kept) <= 3 for kept in made["accepted"])
    with open(tmp_path / "rso" / "round_0" / "pairs.json") as f:
        pairs_made = json.load(f)
    # RSO's pairs are disjoint pairs of one prompt's accepted samples, the higher gold reward chosen.
    by_prompt = {p: {t: g for t, g in kept} for p, kept in zip(made["prompts"], made["accepted"])}
    assert pairs_made["counts"]["pairs"] == len(pairs_made["records"]) == rso["final"]["pairs"]
    assert (pairs_made["counts"]["pairs"] + pairs_made["counts"]["identical"] + pairs_made["counts"]["ties"]
            == sum(len(kept) // 2 for kept in made["accepted"]))
    for r in pairs_made["records"]:
        assert by_prompt[r["prompt"]][r["chosen"]] >= by_prompt[r["prompt"]][r["rejected"]]
    with open(tmp_path / "rso" / "round_0" / "train" / "metrics.jsonl") as f:
        assert json.loads(f.readline())["loss"] == pytest.approx(math.log(2), abs=1e-5)  # DPO from pi0
    raft = gshf.run_method(gshf.GSHFMethod("raft", **common), ctx, _run(tmp_path / "raft", 0))
    with open(tmp_path / "raft" / "round_0" / "accepted.json") as f:
        assert json.load(f) == made  # the same sampler, seed and prompts: the same accepted samples
    accepted = sum(len(kept) for kept in made["accepted"])
    assert raft["final"]["accept_rate"] == pytest.approx(accepted / (6 * 3))
    with open(tmp_path / "raft" / "round_0" / "train" / "metrics.jsonl") as f:
        assert "chosen_logps" not in json.loads(f.readline())  # RAFT fine-tunes (MLE), no pairs
    # A pool where no prompt keeps two samples leaves RSO nothing to pair: a clear error, nothing trained.
    lonely = dict(made, accepted=[kept[:1] for kept in made["accepted"]])
    with pytest.raises(ValueError, match="no prompt kept two samples"):
        gshf._rso_pairs(ctx, gshf.GSHFMethod("rso", **common), lonely, np.random.default_rng(0))


def test_a_loop_killed_mid_round_resumes_to_the_same_result(lm, tmp_path, monkeypatch):
    ctx = _context(lm, tmp_path)
    method = gshf.GSHFMethod("hybrid", beta=0.5, rounds=2, prompts_per_round=6, candidates=3)
    straight = gshf.run_method(method, ctx, _run(tmp_path / "a", 1))
    original = gshf.pair_batch_fn
    state = {"calls": 0}

    def preempting(*args, **kwargs):
        fn = original(*args, **kwargs)
        state["calls"] += 1

        def batch(position):
            if state["calls"] == 2 and position == 1 and not state.get("sent"):
                state["sent"] = True
                os.kill(os.getpid(), signal.SIGTERM)  # round 1's training stops after saving
            return fn(position)

        return batch

    monkeypatch.setattr(gshf, "pair_batch_fn", preempting)
    with pytest.raises(stages.StagePreempted):
        gshf.run_method(method, ctx, _run(tmp_path / "b", 1))
    assert state.get("sent")
    resumed = gshf.run_method(method, ctx, _run(tmp_path / "b", 1))
    assert resumed == straight

    def final_checksums(folder):  # the checksums every checkpoint records of its params and optimizer state
        ckpts = tmp_path / folder / "round_1" / "train" / "checkpoints"
        last = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
        return json.loads((ckpts / str(last) / "meta" / "metadata").read_text())["checksums"]

    assert final_checksums("b") == final_checksums("a")  # bitwise the same final params


def test_method_fields_are_validated():
    for bad, match in ((dict(kind="ppo"), "kind must be one of"), (dict(beta=0.0), "beta must be > 0"),
                       (dict(candidates=1), "candidates >= 2"), (dict(kind="hybrid", rounds=1), "hybrid needs"),
                       (dict(rs_schedule=(0.05,), beta=0.1), "rs_schedule"), (dict(loss_type="kto"), "loss_type"),
                       (dict(epochs=0.0), "epochs"), (dict(kind="raft", pessimism=1.0), "applies to the DPO"),
                       (dict(nll_weight=-1.0), "nll_weight")):
        with pytest.raises(ValueError, match=match):
            gshf.GSHFMethod(**bad)


def test_reward_model_gold_scores_each_response_as_one_unpadded_row(lm):
    from jax_irl.algorithms import reward_models
    from jax_irl.models.heads import RewardModel

    tok, _ = lm
    cfg = TransformerConfig.for_family("llama", vocab_size=tok.vocab_size, hidden_size=16, num_layers=1,
                                       num_heads=2, num_kv_heads=2, intermediate_size=32)
    model = RewardModel(Transformer(cfg, rngs=nnx.Rngs(3)), num_heads=3, rngs=nnx.Rngs(4))
    gold = reward_models.reward_model_gold(model, tok, aggregation="min", max_length=48, rows_per_batch=2)
    prompts, responses = ["what is 2 plus 2?", "what is 3 plus 1?"], [[" 4", " 2 + 2 = 4\n#### 4", " 5"], [" 4", "", " x"]]
    got = gold(prompts, ["", ""], responses)
    assert got.shape == (2, 3)
    for i, p in enumerate(prompts):
        for j, r in enumerate(responses[i]):
            row = batching.encode_examples(tok, [p], [r], 48)
            n = int(row["prompt_lengths"][0] + row["mask"].sum())
            tokens = row["tokens"][:, :n]
            want = np.asarray(model(tokens, np.ones_like(tokens))).min(-1)[0]
            np.testing.assert_allclose(got[i, j], want, rtol=1e-5, atol=1e-6)


def test_pessimistic_dpo_puts_the_uncertainty_margin_into_the_loss(lm, tmp_path):
    """With pessimism c, each pair's margin is c * (Gamma_rejected - Gamma_chosen); at step 1 (policy == pi0)
    the sigmoid loss is then mean(-log sigmoid(-margin)) over the first batch, not log 2."""
    ctx = _context(lm, tmp_path)
    ctx = ctx._replace(settings=ctx.settings._replace(
        uncertainty=lambda prompts, refs, responses: np.array([[len(t) / 10 for t in ts] for ts in responses])))
    method = gshf.GSHFMethod("online", beta=0.5, rounds=1, prompts_per_round=6, candidates=3, pessimism=2.0)
    gshf.run_method(method, ctx, _run(tmp_path / "p", 0))
    with open(tmp_path / "p" / "round_0" / "pairs.json") as f:
        records = json.load(f)["records"]
    margin = np.array([2.0 * (len(r["rejected"]) - len(r["chosen"])) / 10 for r in records])
    for r in records:
        assert r["chosen_uncertainty"] == pytest.approx(len(r["chosen"]) / 10)
    batch = min(4, len(records))
    chosen = batching.IndexSampler(len(records), batch, seed=0).indices(0)
    want = np.mean(np.log1p(np.exp(margin[chosen])))  # -log sigmoid(-m)
    with open(tmp_path / "p" / "round_0" / "train" / "metrics.jsonl") as f:
        assert json.loads(f.readline())["loss"] == pytest.approx(want, rel=1e-5)
    without = ctx._replace(settings=ctx.settings._replace(uncertainty=None))
    with pytest.raises(ValueError, match="pessimistic DPO needs the oracle's uncertainty"):
        gshf.run_method(method, without, _run(tmp_path / "q", 0))


def test_a_users_preference_file_is_the_offline_set(lm, tmp_path):
    from jax_irl.data import jsonl

    path = tmp_path / "prefs.jsonl"
    jsonl.write_jsonl(str(path), RECORDS)
    ctx = _context(lm, tmp_path)._replace(offline_records=jsonl.read_jsonl(str(path), "preference"))
    out = gshf.run_method(gshf.GSHFMethod("offline_dpo", beta=0.5, rounds=1, prompts_per_round=4), ctx, _run(tmp_path / "u", 0))
    assert out["final"]["labels"] == len(RECORDS)
    with open(tmp_path / "u" / "buffer.jsonl") as f:
        assert [json.loads(line) for line in f] == RECORDS
    path.write_text('{"prompt": "p", "chosen": "c"}\n')
    with pytest.raises(ValueError, match="prefs.jsonl:1: missing field 'rejected'"):
        jsonl.read_jsonl(str(path), "preference")


def test_pairs_with_the_same_chosen_and_rejected_tokens_are_dropped_and_counted(capsys):
    from jax_irl.data.tokenizer import train_bpe

    tok = train_bpe(["what is 2 + 2? 4", "what is 3 + 3? 6", "the answer is long " * 4], vocab_size=300)
    records = [{"prompt": "what is 2 + 2?", "chosen": " 4", "rejected": " 5"},
               {"prompt": "what is 3 + 3?", "chosen": " 6", "rejected": " 6"},  # identical texts
               # different texts that are the same tokens once cut to max_length
               {"prompt": "q", "chosen": " the answer is long the answer is long A",
                "rejected": " the answer is long the answer is long B"}]
    kept = pairs.distinct_pairs(tok, records, max_length=8)
    assert kept == records[:1]
    assert "2 of 3 pairs have the same chosen and rejected response" in capsys.readouterr().out
    with pytest.raises(ValueError, match="every one of the 1 pairs has the same chosen and rejected"):
        pairs.distinct_pairs(tok, records[1:2], max_length=8)
    with pytest.raises(ValueError, match="buffer is empty"):
        pairs.distinct_pairs(tok, [], max_length=8)
