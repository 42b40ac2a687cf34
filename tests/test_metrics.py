import math

import jax.numpy as jnp
import numpy as np
import pytest

from jax_irl import metrics

rouge_score = pytest.importorskip("rouge_score")
sacrebleu = pytest.importorskip("sacrebleu")


def test_gsm8k_answer_extraction_and_exact_match():
    assert metrics.extract_answer("Natalia sold 48/2 = 24 clips.\n48 + 24 = 72\n#### 72") == "72"
    assert metrics.extract_answer("#### 1,234") == "1234"
    assert metrics.extract_answer("The answer is $5.50.") == "5.5"
    assert metrics.extract_answer("3 apples then 4 more, 7 in all") == "7"  # no '####': the last number
    assert metrics.extract_answer("#### -3") == "-3"
    assert metrics.extract_answer("no digits here") is None
    assert metrics.answers_match("so #### 72.0", "#### 72")
    assert metrics.exact_match(["#### 72", "#### 5", "nothing"], ["#### 72", "#### 6", "#### 1"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.exact_match(["a", "b"], ["a"])


def test_rouge_bleu_chrf_match_the_libraries_and_hand_values():
    preds = ["the cat sat on the mat", "a quick brown fox"]
    refs = ["the cat is on the mat", "the quick brown fox jumps"]
    got = metrics.rouge(preds, refs)
    scorer = rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeLsum"):
        expected = 100 * np.mean([scorer.score(r, p)[key].fmeasure for p, r in zip(preds, refs)])
        assert got[key] == pytest.approx(expected)
    # Hand value: unigram overlap 5 of 6 on both sides -> F = 5/6.
    assert metrics.rouge(preds[:1], refs[:1], types=("rouge1",))["rouge1"] == pytest.approx(100 * 5 / 6)
    assert metrics.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert metrics.bleu(refs, refs) == pytest.approx(100.0)
    assert metrics.chrf(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)


def test_diversity_metrics_hand_computed():
    same = [["the answer is 4", "the answer is 4", "the answer is 4"]]
    assert metrics.self_bleu(same) == pytest.approx(100.0)
    varied = [["alpha beta gamma delta", "one two three four", "red green blue yellow"]]
    assert metrics.self_bleu(varied) == pytest.approx(0.0)
    # Identical short samples (shorter than BLEU's 4-grams, empty too) are no diversity, not full diversity;
    # a short sample among different ones keeps its BLEU.
    assert metrics.self_bleu([["12", "12"], ["", ""]]) == pytest.approx(100.0)
    short = [["12", "12", "13"]]
    bleu = lambda s, others: sacrebleu.sentence_bleu(s, others).score  # noqa: E731
    want = np.mean([bleu("12", ["12", "13"]), bleu("12", ["12", "13"]), bleu("13", ["12", "12"])])
    assert metrics.self_bleu(short) == pytest.approx(want)
    # distinct-1 over "a b a" and "a c": tokens a b a a c -> 3 distinct / 5; distinct-2: (a b)(b a)(a c) -> 3/3.
    assert metrics.distinct_n([["a b a", "a c"]], 1) == pytest.approx(3 / 5)
    assert metrics.distinct_n([["a b a", "a c"]], 2) == pytest.approx(1.0)
    assert metrics.distinct_n([["x", "x"], ["a b a", "a c"]], 1) == pytest.approx((0.5 + 0.6) / 2)
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.self_bleu([["only one"]])


def test_token_entropy_spearman_standard_error():
    uniform = jnp.zeros((1, 2, 4))
    peaked = jnp.array([[[0.0, -jnp.inf, -jnp.inf, -jnp.inf], [0.0, 0.0, 0.0, 0.0]]])
    assert float(metrics.token_entropy(uniform, jnp.ones((1, 2)))) == pytest.approx(math.log(4), rel=1e-6)
    # Only the second (uniform) position counts; the -inf entries contribute nothing and no NaN appears.
    assert float(metrics.token_entropy(peaked, jnp.array([[0, 1]]))) == pytest.approx(math.log(4), rel=1e-6)
    assert float(metrics.token_entropy(peaked, jnp.array([[1, 0]]))) == pytest.approx(0.0, abs=1e-7)
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))
    assert metrics.standard_error([1.0, 2.0, 3.0]) == pytest.approx(1.0 / math.sqrt(3))
    assert math.isnan(metrics.standard_error([5.0])) and math.isnan(metrics.standard_error([]))


def test_matched_accuracy_and_gap_hand_computed():
    # A frontier over temperatures: (diversity, accuracy) points in any order, read off by interpolation.
    d, acc = [30.0, 10.0, 20.0], [0.2, 0.6, 0.5]
    assert metrics.matched_accuracy(d, acc, 15.0) == pytest.approx(0.55)
    assert metrics.matched_accuracy(d, acc, 25.0) == pytest.approx(0.35)
    assert metrics.matched_accuracy(d, acc, 30.0) == pytest.approx(0.2)
    assert math.isnan(metrics.matched_accuracy(d, acc, 35.0))  # no extrapolation
    a = [([10.0, 30.0], [0.6, 0.2]), ([10.0, 30.0], [0.8, 0.4])]  # at 20: 0.4 and 0.6
    b = [([0.0, 40.0], [0.5, 0.1]), ([0.0, 40.0], [0.3, 0.1]), ([0.0, 10.0], [0.3, 0.2])]  # 0.3, 0.2, (out)
    gap, se = metrics.matched_gap(a, b, 20.0)
    assert gap == pytest.approx(0.5 - 0.25)
    assert se == pytest.approx(math.sqrt(np.var([0.4, 0.6], ddof=1) / 2 + np.var([0.3, 0.2], ddof=1) / 2))
    assert all(math.isnan(x) for x in metrics.matched_gap(a, [([0.0, 10.0], [0.3, 0.2])], 20.0))
    # paired by seed: per-seed gaps 0.1 and 0.3 at the target -> 0.2 +- 0.1 (by hand: std 0.1414 / sqrt 2)
    pa = [([10.0, 30.0], [0.6, 0.4]), ([10.0, 30.0], [0.8, 0.6])]
    pb = [([10.0, 30.0], [0.5, 0.3]), ([10.0, 30.0], [0.5, 0.3])]
    gap, se = metrics.matched_paired_gap(pa, pb, 20.0)
    assert gap == pytest.approx(0.2) and se == pytest.approx(0.1)
    one_seed = metrics.matched_paired_gap(pa[:1], pb[:1], 20.0)
    assert one_seed[0] == pytest.approx(0.1) and math.isnan(one_seed[1])  # one seed: no standard error
    assert all(math.isnan(x) for x in metrics.matched_paired_gap(pa, pb, 40.0))  # beyond every frontier
    with pytest.raises(ValueError, match="one per seed on both sides; got 2 and 1"):
        metrics.matched_paired_gap(pa, pb[:1], 20.0)
    with pytest.raises(ValueError, match="two or more"):
        metrics.matched_accuracy([1.0], [0.5], 1.0)
    with pytest.raises(ValueError, match="finite"):
        metrics.matched_accuracy([1.0, float("nan")], [0.5, 0.4], 1.0)


def test_correlation_split_separates_within_and_across_prompt_parts():
    # Across prompts the reward tracks difficulty perfectly; within each prompt it ranks samples backwards.
    groups = [0, 0, 1, 1, 2, 2]
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    rewards = [9.0, 10.0, 4.0, 5.0, -1.0, 0.0]
    scores_by_prompt = [1.0, 0.0, 0.5, 0.5, 0.0, 0.0]  # prompt means 0.5, 0.5, 0.0 ...
    split = metrics.correlation_split(rewards, scores, groups)
    assert split["within"] == pytest.approx(-1.0)
    assert math.isnan(split["across"])  # every prompt's mean score is 0.5: constant
    split = metrics.correlation_split(rewards, scores_by_prompt, groups)
    assert split["across"] == pytest.approx(np.corrcoef([9.5, 4.5, -0.5], [0.5, 0.5, 0.0])[0, 1])
    assert split["pooled"] == pytest.approx(np.corrcoef(rewards, scores_by_prompt)[0, 1])
    with pytest.raises(ValueError, match=r"must be \[N\] alike"):
        metrics.correlation_split([1.0], [1.0, 2.0], [0, 0])


def test_pair_ranking_accuracy_counts_ties_half():
    assert metrics.pair_ranking_accuracy([2.0, 1.0, 0.0, 5.0], [1.0, 1.0, 3.0, 4.0]) == pytest.approx(2.5 / 4)
    with pytest.raises(ValueError, match="need two"):
        metrics.pair_ranking_accuracy([], [])


def test_runaway_answers_are_wrong_not_errors():
    from jax_irl.data import arithmetic as data_arithmetic

    big = "9" * 5000  # past Python's 4300-digit int() limit
    assert not metrics.answers_match(f"#### {big}", "#### 3")
    assert not metrics.answers_match("#### 1" + "0" * 400, "#### 3")  # a float would overflow
    assert metrics.answers_match("#### 1" + "0" * 40, "#### 1" + "0" * 40)  # long but fine: exact
    assert metrics.extract_answer(f"#### {big}") is None
    assert data_arithmetic.graded_reward(f"{big} + 1 = 2\n#### {big}", "#### 3") == pytest.approx(0.1)


def test_expert_match_by_hand():
    # Support {A, B, C}, q = 1/3 each. Samples [A, A, B, X]: p = (1/2, 1/4, 0) on the support and 1/4 outside.
    # tv = 1/2 (|1/2 - 1/3| + |1/4 - 1/3| + 1/3 + 1/4) = 1/2 (1/6 + 1/12 + 1/3 + 1/4) = 5/12; coverage 2/3;
    # valid 3/4. A second prompt that matches its one-text support exactly: tv 0, coverage 1, valid 1.
    got = metrics.expert_match([[" A", "A", "B ", "X"], ["Z", "Z"]], [["A", "B", "C"], ["Z"]])
    assert got["tv"] == pytest.approx((5 / 12 + 0.0) / 2)
    assert got["coverage"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert got["valid"] == pytest.approx((3 / 4 + 1.0) / 2)
    # Samples spread evenly over the support are a perfect match; all outside it, the farthest possible.
    assert metrics.expert_match([["A", "B", "C"]], [["A", "B", "C"]]) == {"tv": 0.0, "coverage": 1.0, "valid": 1.0}
    assert metrics.expert_match([["X", "Y"]], [["A", "B"]])["tv"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one support per prompt"):
        metrics.expert_match([["A"]], [])
    with pytest.raises(ValueError, match="at least one sample and one support"):
        metrics.expert_match([[]], [["A"]])
