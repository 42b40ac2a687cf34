"""The Game of 24 as a symbolic tool: exact rational arithmetic over step lines or one expression.

A response is either step lines, each 'a op b = c' (an optional '(left: ...)' note is ignored), that combine the
four numbers two at a time until 24 is left, or a single expression over the four numbers (an optional '= 24'
is ignored). The certificate's spans name, in the response's characters:
- a line that is not a step ('a op b = c') in step mode, or an expression that does not parse;
- a number a step uses that is not available at that point (not given, or already used);
- a false step (its line): 'a op b' is not c, or a division by zero;
- a wrong final value: the last step's result (its 'c'; the expression in expression mode) when what is left is
  not exactly 24, so a true last step that merely does not reach 24 has only its result blamed;
- an expression that does not use each given number exactly once.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import List, Optional, Sequence

from jax_irl.data import game24 as puzzles
from jax_irl.metrics import MAX_NUMBER_CHARS
from jax_irl.symbolic import Certificate, Span

_NUMBER = r"-?\d+(?:/\d+)?"
_STEP = re.compile(rf"^\s*({_NUMBER})\s*([-+*/x×])\s*({_NUMBER})\s*=\s*({_NUMBER})\s*(?:\(.*\))?\s*$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "x": lambda a, b: a * b,
        "×": lambda a, b: a * b, "/": lambda a, b: a / b}


def numbers_in_prompt(prompt: str) -> List[int]:
    """The puzzle's four numbers: the first four integers in the prompt."""
    found = [int(x) for x in re.findall(r"\d+", prompt)][:4]
    if len(found) != 4:
        raise ValueError(f"a Game of 24 prompt must hold four numbers; found {found} in {prompt!r}")
    return found


class Game24Tool:
    name = "game24"

    def __init__(self, numbers=numbers_in_prompt):
        self.numbers = numbers

    def check(self, prompt: str, response: str) -> Certificate:
        given = self.numbers(prompt)
        if not response.strip():
            return Certificate(False, (Span(0, len(response), "empty response"),), self.name)
        lines = _lines(response)
        if any(_STEP.match(text) for _, _, text in lines):
            return self._steps(given, lines)
        return self._expression(given, response)

    def _steps(self, given: Sequence[int], lines) -> Certificate:
        left = [Fraction(n) for n in given]
        spans: List[Span] = []
        last: Optional[tuple] = None
        steps = true_steps = 0
        for start, end, text in lines:
            m = _STEP.match(text)
            if not m:
                spans.append(Span(start, end, f"not a step of the form 'a op b = c': {text.strip()!r}"))
                continue
            steps += 1
            before = len(spans)
            last = (start + m.start(4), start + m.end(4))  # the step's result: the value it leaves
            parsed = [_number(m.group(k)) for k in (1, 3, 4)]
            if any(isinstance(x, str) for x in parsed):
                spans.append(Span(start, end, next(x for x in parsed if isinstance(x, str))))
                continue
            (a, b, c), op = parsed, m.group(2)
            for value, group in ((a, 1), (b, 3)):
                if value in left:
                    left.remove(value)
                else:
                    s, e = start + m.start(group), start + m.end(group)
                    spans.append(Span(s, e, f"{_fmt(value)} is not available (left: {_fmt_all(left)})"))
            if op == "/" and b == 0:
                spans.append(Span(start, end, "division by zero"))
                left.append(c)
                continue
            value = _OPS[op](a, b)
            if value != c:
                spans.append(Span(start, end, f"{_fmt(a)} {op} {_fmt(b)} is {_fmt(value)}, not {_fmt(c)}"))
            left.append(c)
            true_steps += len(spans) == before
        final_ok = len(left) == 1 and left[0] == puzzles.TARGET
        if not final_ok and last is not None:
            spans.append(Span(last[0], last[1], f"the steps end with {_fmt_all(left)}, not 24"))
        details = (("mode", "steps"), ("steps", str(steps)), ("true_step_fraction", f"{true_steps / steps:.6g}"))
        return Certificate(final_ok and not spans, tuple(spans), self.name, details)

    def _expression(self, given: Sequence[int], response: str) -> Certificate:
        text = response.split("=")[0]
        start = len(text) - len(text.lstrip())
        end = len(text.rstrip())
        try:
            correct, reason = puzzles.check_expression(text, given)
        except (RecursionError, MemoryError, ValueError, UnicodeError, OverflowError, ZeroDivisionError) as err:
            correct, reason = False, f"the expression cannot be evaluated ({type(err).__name__})"
        spans = () if correct else (Span(start, max(end, start + 1) if response else 0, reason),)
        return Certificate(correct, spans, self.name, (("mode", "expression"),))


def _number(text: str):
    """The Fraction a step's number writes ('7', '-3', '8/3'), or why it is not one (a string)."""
    if len(text) > MAX_NUMBER_CHARS:
        return f"a number longer than {MAX_NUMBER_CHARS} characters"
    try:
        return Fraction(text)
    except ZeroDivisionError:
        return f"{text} divides by zero"


def _lines(text: str):
    """(start, end, text) of each non-empty line, offsets into ``text``."""
    out, pos = [], 0
    for line in text.split("\n"):
        if line.strip():
            out.append((pos, pos + len(line), line))
        pos += len(line) + 1
    return out


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _fmt_all(values) -> str:
    return "[" + ", ".join(_fmt(v) for v in values) + "]"
