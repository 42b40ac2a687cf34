"""The symbolic-tool protocol on the Game of 24: exact spans, token rewards on real offsets, batch alignment."""

import numpy as np
import pytest

from jax_irl import symbolic
from jax_irl.data import game24 as puzzles
from jax_irl.data.tokenizer import train_bpe
from jax_irl.symbolic.game24 import Game24Tool

TOOL = Game24Tool()
PROMPT = "Use 4 6 1 1 to make 24."


def _spans(response):
    return [(s.start, s.end, s.message) for s in TOOL.check(PROMPT, response).spans]


def test_correct_steps_and_expressions_have_no_spans():
    for response in ("4 * 6 = 24\n24 * 1 = 24\n24 * 1 = 24", "4 * 6 = 24 (left: 1 1 24)\n1 * 1 = 1\n24 / 1 = 24",
                     "4 * 6 * 1 * 1", "(4 * 6) / (1 * 1) = 24", puzzles.solve([4, 6, 1, 1])):
        cert = TOOL.check(PROMPT, response)
        assert cert.correct and cert.spans == (), (response, cert.describe())


def test_wrong_steps_name_the_exact_characters():
    # A false step: its line, and the wrong final value: the last step's result alone (the step itself is true).
    assert _spans("4 * 6 = 25\n25 * 1 = 25\n25 * 1 = 25") == [
        (0, 10, "4 * 6 is 24, not 25"), (32, 34, "the steps end with [25], not 24")]
    # Every step true but 24 not reached: no step is blamed, only the value the steps end with.
    assert _spans("4 + 6 = 10\n10 + 1 = 11\n11 * 1 = 11") == [(32, 34, "the steps end with [11], not 24")]
    # A number that is not available: its own characters (7 is not given; the second 6 was used up).
    assert _spans("4 * 7 = 28\n28 - 6 = 22\n22 + 1 = 23") == [
        (4, 5, "7 is not available (left: [6, 1, 1])"), (32, 34, "the steps end with [1, 23], not 24")]
    assert _spans("4 * 6 = 24\n6 * 1 = 6") == [
        (11, 12, "6 is not available (left: [1, 1, 24])"), (19, 20, "the steps end with [1, 24, 6], not 24")]
    # A line that is not a step, in step mode.
    assert _spans("4 * 6 = 24\nso the answer is 24\n1 * 1 = 1\n24 * 1 = 24") == [
        (11, 30, "not a step of the form 'a op b = c': 'so the answer is 24'")]


def test_expressions_parse_errors_and_empty_responses():
    assert _spans("4 + 6 + 1 + 1") == [(0, 13, "evaluates to 12, not 24")]
    assert _spans("  4 * 6 * 1 = 24") == [(2, 11, "uses [1, 4, 6] instead of [1, 1, 4, 6]")]
    assert _spans("4 * * 6") == [(0, 7, "the expression does not parse")]
    assert TOOL.check(PROMPT, "") == symbolic.Certificate(False, (symbolic.Span(0, 0, "empty response"),), "game24")
    with pytest.raises(ValueError, match="four numbers"):
        TOOL.check("make 24", "1 + 1")


def test_token_rewards_on_real_offsets_where_a_span_starts_inside_a_token():
    response = "4 * 7 = 28\n28 - 6 = 22\n22 + 1 = 23"
    tok = train_bpe([response, "4 * 6 = 24\n24 * 1 = 24"] * 20, vocab_size=400, split_digits=False)
    ids = tok.encode(response)
    offsets = symbolic.token_offsets(tok, ids)
    assert "".join(response[s:e] for s, e in offsets) == response  # the spans tile the decoded text
    cert = TOOL.check(PROMPT, response)
    assert (4, 5) in [(sp.start, sp.end) for sp in cert.spans]  # the unavailable 7
    rewards = symbolic.token_rewards(cert, offsets)
    for k, (s, e) in enumerate(offsets[:-1]):
        wrong = any(s < span.end and span.start < e for span in cert.spans)
        assert rewards[k] == (0.0 if wrong else 1.0), (k, response[s:e])
    assert rewards[-1] == 0.0  # the output is wrong
    # BPE merged ' 7' into one token (characters 3..5): the span 4..5 starts inside it, and it counts as wrong.
    inside = [k for k, (s, e) in enumerate(offsets) if s < 4 < e]
    assert inside and all(rewards[k] == 0.0 for k in inside)
    assert rewards[0] == 1.0  # '4' (and ' *') before the span stay right
    centred = symbolic.token_rewards(TOOL.check(PROMPT, "4 * 6 * 1 * 1"), [(0, 5), (5, 13)], low=-1.0, high=1.0)
    np.testing.assert_array_equal(centred, [1.0, 1.0])


def test_batch_rewards_line_up_with_sampler_rows_and_a_broken_tool_gives_a_certificate():
    tok = train_bpe(["4 * 6 = 24\n24 * 1 = 24", "4 * 6 * 1 * 1", "4 + 6"] * 20, vocab_size=100)
    good, bad = tok.encode("4 * 6 * 1 * 1"), tok.encode("4 + 6 + 1 + 1")
    width = max(len(good), len(bad)) + 3
    ids = np.full((2, width), tok.pad_id, np.int32)
    mask = np.zeros((2, width), np.int32)
    for b, row in enumerate((good, bad)):
        ids[b, :len(row) + 1] = row + [tok.eos_id]  # EOS closes the response, as the sampler emits it
        mask[b, :len(row) + 1] = 1
    rewards, certs = symbolic.batch_token_rewards(TOOL, [PROMPT, PROMPT], ids, mask, tok)
    assert [c.correct for c in certs] == [True, False]
    np.testing.assert_array_equal(rewards[0, :len(good) + 1], 1.0)  # EOS, the last token, carries correctness
    assert rewards[1, len(bad)] == 0.0 and (rewards[1, :len(bad)] == 0.0).all()  # the whole expression is wrong
    assert (rewards[:, width - 2:] == 0).all() and (rewards[mask == 0] == 0).all()

    class Broken:
        name = "broken"

        def check(self, prompt, response):
            raise RuntimeError("boom")

    _, (cert, _) = symbolic.batch_token_rewards(Broken(), [PROMPT, PROMPT], ids, mask, tok)
    assert not cert.correct and "broken tool failed: RuntimeError: boom" in cert.spans[0].message
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        symbolic.batch_token_rewards(TOOL, [PROMPT], ids[0], mask[0], tok)


def test_offsets_from_a_hugging_face_wordpiece_tokenizer(tiny_hf_llama):
    """A Hugging Face tokenizer (MiniLM's WordPiece, which joins '##' pieces and puts spaces between words):
    the incremental spans tile the decoded text, and a span inside a word marks the token that holds it."""
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(tiny_hf_llama[1])
    ids = tok.encode("12 * 2 = 24 unbelievably", add_special_tokens=False)
    text = tok.decode(ids)
    offsets = symbolic.token_offsets(tok, ids)
    assert "".join(text[s:e] for s, e in offsets) == text and offsets[-1][1] == len(text)
    pieces = tok.convert_ids_to_tokens(ids)
    assert any(p.startswith("##") for p in pieces)  # 'unbelievably' is split into word pieces
    word = text.index("unbelievably")
    cert = symbolic.Certificate(False, (symbolic.Span(word + 4, word + 5, "x"),), "t")
    rewards = symbolic.token_rewards(cert, offsets)
    holder = [k for k, (s, e) in enumerate(offsets) if s <= word + 4 < e]
    assert len(holder) == 1 and rewards[holder[0]] == 0.0
    assert rewards.sum() == len(ids) - 1 - (holder[0] != len(ids) - 1)


def test_reward_fn_token_and_scalar_kinds_from_certificates():
    tok = train_bpe(["4 * 6 = 24\n24 * 1 = 24\n24 * 1 = 24", "4 * 7 = 28"] * 20, vocab_size=300)
    good = tok.encode(" 6 * 4 = 24\n1 * 1 = 1\n24 * 1 = 24")
    bad = tok.encode(" 6 * 4 = 25\n25 * 1 = 25")
    width = max(len(good), len(bad)) + 1
    ids = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), np.int32)
    for b, row in enumerate((good, bad)):
        ids[b, :len(row) + 1] = row + [tok.eos_id]
        mask[b, :len(row) + 1] = 1
    prompts = ["Numbers: 1 1 4 6", "Numbers: 1 1 4 6"]
    token, stats = symbolic.reward_fn(TOOL, tok)(prompts, ids, mask)
    assert stats["correct"].tolist() == [1.0, 0.0]
    # Correct: 0 on every token, the bonus 1 on the last (EOS).
    np.testing.assert_array_equal(token[0, :len(good) + 1], [0.0] * len(good) + [1.0])
    # Wrong: -0.2 on the tokens of the false step and of the wrong final value, 0 elsewhere, -0.2 on EOS.
    offsets = symbolic.token_offsets(tok, list(ids[1, :len(bad) + 1]))
    cert = TOOL.check(prompts[1], tok.decode(list(ids[1, :len(bad) + 1])))
    want = [-0.2 if any(s < sp.end and sp.start < e for sp in cert.spans) else 0.0 for s, e in offsets]
    want[-1] = -0.2
    np.testing.assert_allclose(token[1, :len(bad) + 1], want)
    assert (token[mask == 0] == 0).all() and -0.2 in token[1, :-2]
    assert stats["true_step_fraction"].tolist() == [1.0, 0.5]  # '25 * 1 = 25' is a true step
    scalar, _ = symbolic.reward_fn(TOOL, tok, symbolic.RewardSpec("scalar"))(prompts, ids, mask)
    assert scalar.tolist() == [1.0, 0.0]
    paper, _ = symbolic.reward_fn(TOOL, tok, symbolic.RewardSpec("token", low=0.0, high=1.0, bonus=0.0))(
        prompts, ids, mask)
    assert paper[0, :len(good) + 1].tolist() == [1.0] * (len(good) + 1) and paper[1, len(bad)] == 0.0
    # Mean-normalised: each response's token rewards divided by its token count (the outcome bonus is not), so
    # a wrong response's token part sums to its mean token reward, the blamed share of its tokens times -0.2.
    mean, _ = symbolic.reward_fn(TOOL, tok, symbolic.RewardSpec("token", normalise="mean"))(prompts, ids, mask)
    np.testing.assert_allclose(mean[1, :len(bad) + 1], np.array(want) / (len(bad) + 1), rtol=1e-6)
    assert -0.2 <= mean[1].sum() < 0 and mean[0].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="RewardSpec.normalise"):
        symbolic.RewardSpec(normalise="sum")
    with pytest.raises(ValueError, match="RewardSpec.kind"):
        symbolic.RewardSpec("dense")
    with pytest.raises(ValueError, match="RewardSpec.low"):
        symbolic.RewardSpec(low=float("inf"))


def test_group_reward_fn_gives_outcomes_and_blame_on_the_spans_only():
    tok = train_bpe(["4 * 6 = 24\n24 * 1 = 24\n24 * 1 = 24", "4 * 7 = 28"] * 20, vocab_size=300)
    good = tok.encode(" 6 * 4 = 24\n1 * 1 = 1\n24 * 1 = 24")
    bad = tok.encode(" 6 * 4 = 25\n25 * 1 = 25")
    width = max(len(good), len(bad)) + 1
    ids = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), np.int32)
    for b, row in enumerate((good, bad)):
        ids[b, :len(row) + 1] = row + [tok.eos_id]
        mask[b, :len(row) + 1] = 1
    prompts = ["Numbers: 1 1 4 6"] * 2
    outcomes, terms, stats = symbolic.group_reward_fn(TOOL, tok, penalty=-0.5, bonus=2.0)(prompts, ids, mask)
    assert outcomes.tolist() == [2.0, 0.0] and stats["correct"].tolist() == [1.0, 0.0]
    assert (terms[0] == 0).all() and (terms[mask == 0] == 0).all()
    kept = list(ids[1, :len(bad) + 1])
    cert = TOOL.check(prompts[1], tok.decode(kept))
    blamed = symbolic.blamed_tokens(cert, symbolic.token_offsets(tok, kept))
    np.testing.assert_array_equal(terms[1, :len(kept)], np.where(blamed, -0.5, 0.0))
    assert 0 < blamed.sum() < len(kept) and not blamed[-1]  # the EOS is not blamed for the wrong outcome
    with pytest.raises(ValueError, match="penalty must be a finite number < 0"):
        symbolic.group_reward_fn(TOOL, tok, penalty=0.2)
    with pytest.raises(ValueError, match="bonus must be a finite number > 0"):
        symbolic.group_reward_fn(TOOL, tok, bonus=float("nan"))


@pytest.mark.parametrize("response, why", [
    ("1/0 + 2 = 3", "1/0 divides by zero"),
    ("9" * 5000 + " + 1 = 24", "a number longer than 64 characters"),
    ("+".join(["1"] * 100000), "cannot be evaluated (RecursionError)"),
    ("4 * 6 \ud800 = 24", "cannot be evaluated (UnicodeEncodeError)"),
    ("(" * 5000 + "4" + ")" * 5000, "does not parse"),
])
def test_hostile_responses_get_certificates_not_exceptions(response, why):
    cert = Game24Tool().check("Use 4 6 8 2 to make 24.", response)
    assert not cert.correct and any(why in s.message for s in cert.spans), cert.spans
