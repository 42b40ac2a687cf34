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
