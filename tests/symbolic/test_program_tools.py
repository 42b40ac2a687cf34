"""The Python and C++ program tools: exact spans for syntax, compiler and runtime errors, named failing tests,
and certificates (never exceptions) for bad input."""

import shutil

import numpy as np
import pytest

from jax_irl import symbolic
from jax_irl.data.tokenizer import train_bpe
from jax_irl.symbolic import programs
from jax_irl.symbolic.programs import CppTool, PythonTool, TestCase

TESTS = {"add": [TestCase("small", "1 2\n", "3\n"), TestCase("big", "100 23\n", "123")]}
PY_OK = "a, b = map(int, input().split())\nprint(a + b)\n"


@pytest.fixture(scope="module")
def py():
    return PythonTool(TESTS)


def _spans(cert):
    return cert.correct, [(s.start, s.end, s.message) for s in cert.spans]


def test_python_correct_wrong_and_crashing_programs(py):
    assert _spans(py.check("add", PY_OK)) == (True, [])
    fenced = "Here it is:\n```python\n" + PY_OK + "```\nDone."
    assert _spans(py.check("add", fenced)) == (True, [])
    # A syntax error maps to its line (line 2 here: characters 12..24 of the response).
    bad = "x = 1\nprint(x +)\nprint(2)\n"
    assert _spans(py.check("add", bad)) == (False, [(6, 16, "syntax error: line 2: invalid syntax")])
    # In a fenced block the span points into the block.
    off = len("Here it is:\n```python\n")
    assert _spans(py.check("add", "Here it is:\n```python\n" + bad + "```")) == (
        False, [(off + 6, off + 16, "syntax error: line 2: invalid syntax")])
    # Wrong output: the whole program, naming each failing test with expected and got.
    wrong = PY_OK.replace("+", "-")
    assert _spans(py.check("add", wrong)) == (False, [
        (0, 46, "test 'small': expected '3\\n', got '-1\\n'"), (0, 46, "test 'big': expected '123', got '77\\n'")])
    # A crash maps to the traceback's line in the program.
    crash = "a, b = map(int, input().split())\nprint(a // (b - b))\n"
    assert _spans(py.check("add", crash)) == (False, [
        (33, 52, "test 'small': crashed with exit code 1: ZeroDivisionError: integer division or modulo by zero"),
        (33, 52, "test 'big': crashed with exit code 1: ZeroDivisionError: integer division or modulo by zero")])
    # One test passing, one failing.
    half = "a, b = map(int, input().split())\nprint(a + b if a < 50 else 0)\n"
    cert = py.check("add", half)
    assert _spans(cert) == (False, [(0, len(half), "test 'big': expected '123', got '0\\n'")])
    assert dict(cert.details)["tests_passed"] == "1/2"


def test_a_limit_stops_the_remaining_tests(py):
    tool = PythonTool(TESTS, limits=programs.Limits(cpu_seconds=1, wall_seconds=3.0))
    loop = "while True:\n    pass\n"
    assert _spans(tool.check("add", loop)) == (False, [
        (0, 21, "test 'small': CPU-time limit (1 s) exceeded"),
        (0, 21, "1 more test(s) not run after a resource limit")])


def test_bad_input_gives_certificates_not_exceptions(py):
    assert _spans(py.check("add", "")) == (False, [(0, 0, "empty program")])
    assert _spans(py.check("add", "```python\n   \n```")) == (False, [(0, 17, "empty program")])
    huge = "x = 1\n" * 20_000
    assert _spans(py.check("add", huge)) == (False, [(0, len(huge), "program longer than 100000 characters")])
    bad_text = "print(1)\nx = '\udcff'\n"  # a lone surrogate: what decoding invalid UTF-8 with surrogateescape leaves
    assert _spans(py.check("add", bad_text)) == (False, [(14, 15, "not valid UTF-8 text at character 14")])
    assert _spans(py.check("add", "print(1)\x00")) == (False, [(0, 9, "the program contains a NUL character")])
    deep = "x = " + "(" * 5000 + ")" * 5000 + "\n"
    correct, spans = _spans(py.check("add", deep))
    assert not correct and spans[0][2].startswith("syntax error")
    # A prompt without tests is the caller's bug: check raises, safe_check turns it into a certificate.
    with pytest.raises(KeyError, match="no test cases"):
        py.check("unknown", PY_OK)
    cert = symbolic.safe_check(py, "unknown", PY_OK)
    assert not cert.correct and "KeyError" in cert.spans[0].message


def test_check_many_matches_check_in_order(py):
    responses = [PY_OK, "print(", PY_OK.replace("+", "*"), ""]
    many = py.check_many(["add"] * 4, responses, workers=2)
    assert [c.correct for c in many] == [True, False, False, False]
    assert many == [py.check("add", r) for r in responses]
    with pytest.raises(ValueError, match="2 prompts for 1 responses"):
        py.check_many(["add", "add"], [PY_OK])


def test_token_rewards_from_a_program_certificate_on_real_offsets(py):
    tok = train_bpe([PY_OK, "print(a // (b - b))\n", "x = 1\nprint(x +)\n"] * 20, vocab_size=300)
    crash = "a, b = map(int, input().split())\nprint(a // (b - b))\n"
    ids = tok.encode(crash)
    rewards, certs = symbolic.batch_token_rewards(py, ["add"], np.asarray([ids]), np.ones((1, len(ids))), tok)
    offsets = symbolic.token_offsets(tok, ids)
    line2 = (33, 52)
    expected = [0.0 if (s < line2[1] and line2[0] < e) else 1.0 for s, e in offsets]
    expected[-1] = 0.0  # wrong output: the last token is low
    np.testing.assert_array_equal(rewards[0], expected)
    assert 0.0 in rewards[0, :-1] and 1.0 in rewards[0]


needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed (apt-get install g++)")
CPP_OK = "#include <iostream>\nint main() {\n  long a, b;\n  std::cin >> a >> b;\n  std::cout << a + b << std::endl;\n}\n"


@needs_gxx
def test_cpp_compiler_errors_map_to_lines_and_tests_run():
    cpp = CppTool(TESTS)
    assert _spans(cpp.check("add", CPP_OK)) == (True, [])
    missing_semicolon = CPP_OK.replace("std::cin >> a >> b;", "std::cin >> a >> b")
    correct, spans = _spans(cpp.check("add", missing_semicolon))
    line4 = (46, 66)  # '  std::cin >> a >> b' (g++ reports where the ';' is expected)
    assert not correct and (spans[0][0], spans[0][1]) == line4 and "expected" in spans[0][2]
    undeclared = CPP_OK.replace("a + b", "a + c")
    correct, spans = _spans(cpp.check("add", undeclared))
    line5 = (68, 102)
    assert not correct and [(s, e) for s, e, _ in spans] == [line5] and "'c' was not declared" in spans[0][2]
    no_main = "#include <iostream>\nint helper() { return 1; }\n"
    correct, spans = _spans(cpp.check("add", no_main))
    assert not correct and spans[0][:2] == (0, len(no_main)) and "undefined reference to `main'" in spans[0][2]
    wrong = CPP_OK.replace("a + b", "a * b")
    assert _spans(cpp.check("add", wrong)) == (False, [
        (0, len(wrong), "test 'small': expected '3\\n', got '2\\n'"),
        (0, len(wrong), "test 'big': expected '123', got '2300\\n'")])
    segv = "int main() { volatile int *p = nullptr; return *p; }\n"
    assert _spans(cpp.check("add", segv))[1][0] == (0, len(segv), "test 'small': crashed (segmentation fault)")


@needs_gxx
def test_cpp_compiler_bombs_and_hostile_programs_are_contained():
    cpp = CppTool(TESTS, compile_limits=programs.Limits(cpu_seconds=5, wall_seconds=10.0,
                                                        memory_bytes=1024 * programs.MiB, file_bytes=8 * programs.MiB))
    include_bomb = "#include \"/dev/zero\"\nint main() {}\n"  # the compiler reads forever
    correct, spans = _spans(cpp.check("add", include_bomb))
    assert not correct and (spans[0][0], spans[0][1]) in ((0, 19), (0, len(include_bomb)))
    fork = "#include <unistd.h>\nint main() { while (true) fork(); }\n"
    correct, spans = _spans(cpp.check("add", fork))
    assert not correct and ("CPU-time" in spans[0][2] or "timed out" in spans[0][2])
    flood = "#include <cstdio>\nint main() { for (;;) std::puts(\"xxxxxxxxxxxxxxxx\"); }\n"
    assert "file-size limit" in cpp.check("add", flood).spans[0].message


def test_cpp_without_a_compiler_says_how_to_install_it():
    with pytest.raises(FileNotFoundError, match="apt-get install g\\+\\+"):
        CppTool(TESTS, compiler="no-such-compiler-g++")
