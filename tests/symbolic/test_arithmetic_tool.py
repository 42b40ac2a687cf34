"""The arithmetic checker as a symbolic tool: exact spans on GSM8K-format solutions."""

from jax_irl.data import arithmetic
from jax_irl.symbolic.arithmetic import ArithmeticTool

REF = "3 * 4 = 12\n12 - 2 = 10\n#### 10"
TOOL = ArithmeticTool({"q": REF})


def _spans(response):
    cert = TOOL.check("q", response)
    return cert.correct, [(s.start, s.end, s.message) for s in cert.spans]


def test_correct_and_wrong_solutions_have_the_exact_spans():
    assert _spans(REF) == (True, [])
    assert _spans("Compute <<3*4=12>> then <<12-2=10>>.\n#### 10") == (True, [])  # GSM8K annotations
    assert _spans("3 * 4 = 13\n13 - 2 = 11\n#### 11") == (False, [
        (0, 10, "3 * 4 is 12, not 13"), (23, 30, "the final answer 11 is not the reference's 10")])
    # Right answer reached through a false step: the step is wrong, the output is wrong.
    assert _spans("3 * 4 = 13\n#### 10") == (False, [(0, 10, "3 * 4 is 12, not 13")])
    assert _spans("3 * 4 = 12\n12 - 2 = 10") == (False, [(21, 22, "no final answer line '#### <answer>'")])
    assert _spans("#### 10\n#### 10") == (False, [(8, 15, "a second final answer line")])
    assert _spans("5 / 0 = 1\n#### 10") == (False, [(0, 9, "division by zero")])
    assert _spans("") == (False, [(0, 0, "empty response")])


def test_every_built_in_solution_is_certified_correct():
    train, test = arithmetic.make_splits(seed=0, num_train=200, num_test=20, max_number=12)
    tool = ArithmeticTool({p["question"]: p["answer"] for p in train + test})
    for p in train + test:
        assert tool.check(p["question"], " " + p["answer"]).correct, p


def test_runaway_numbers_get_certificates_and_are_read_in_one_pass():
    tool = ArithmeticTool(lambda prompt: "#### 3")
    big = "9" * 5000
    cert = tool.check("p", f"{big} + 1 = 2\n#### 3")
    assert not cert.correct and cert.spans[0].message == "a number longer than 64 characters"
    cert = tool.check("p", "1" * 40000)  # a single 40k-digit run (a backtracking regex took 37 s on it)
    assert not cert.correct and "no final answer line" in cert.spans[-1].message
    assert not tool.check("p", f"1 + 2 = 3\n#### {big}").correct  # an overlong answer is wrong, not an error
