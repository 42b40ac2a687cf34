"""An arithmetic checker as a symbolic tool, for GSM8K-format solutions (the built-in word problems and GSM8K).

A solution is calculation lines ('12 * 3 = 36', GSM8K's '<<12*3=36>>' annotations too) and a final line
'#### <answer>'. The certificate's spans name, in the response's characters:
- each false calculation ('a op b = c' whose value is not c, or a division by zero): the calculation;
- a final answer that differs from the reference's: the '#### n' line;
- a missing final line: the last character of the response (so the last token is the one marked wrong);
- a second '####' line: that line.
The whole output is correct when every calculation is true and the final answer matches the reference.
The reference comes from ``reference_for(prompt)`` (a dict from prompt to solution, or a function).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable, Dict, List, Union

from jax_irl.metrics import MAX_NUMBER_CHARS, answers_match, extract_answer
from jax_irl.symbolic import Certificate, Span

# A number starts only where no digit or point precedes it, and its digits are taken possessively: one pass over
# a run of digits, not a backtracking search from every position inside it (quadratic on a 40k-digit run).
_NUM = r"(?<![\d.])-?\d++(?:\.\d++)?"
_CALC = re.compile(rf"({_NUM})\s*+([-+*/x×])\s*+({_NUM})\s*+=\s*+({_NUM})")
_FINAL = re.compile(r"^[ \t]*####.*$", re.M)
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "x": lambda a, b: a * b,
        "×": lambda a, b: a * b}


class ArithmeticTool:
    name = "arithmetic"

    def __init__(self, reference_for: Union[Dict[str, str], Callable[[str], str]]):
        self.reference_for = reference_for.__getitem__ if isinstance(reference_for, dict) else reference_for

    def check(self, prompt: str, response: str) -> Certificate:
        reference = self.reference_for(prompt)
        if not response.strip():
            return Certificate(False, (Span(0, len(response), "empty response"),), self.name)
        spans: List[Span] = []
        for m in _CALC.finditer(response):
            if max(len(m.group(k)) for k in (1, 3, 4)) > MAX_NUMBER_CHARS:
                spans.append(Span(m.start(), m.end(), f"a number longer than {MAX_NUMBER_CHARS} characters"))
                continue
            a, op, b, c = Fraction(m.group(1)), m.group(2), Fraction(m.group(3)), Fraction(m.group(4))
            if op == "/":
                if b == 0:
                    spans.append(Span(m.start(), m.end(), "division by zero"))
                    continue
                value = a / b
            else:
                value = _OPS[op](a, b)
            if value != c:
                spans.append(Span(m.start(), m.end(), f"{m.group(1)} {op} {m.group(3)} is {_fmt(value)}, "
                                                      f"not {m.group(4)}"))
        finals = list(_FINAL.finditer(response))
        if not finals:
            end = len(response.rstrip())
            spans.append(Span(max(end - 1, 0), end, "no final answer line '#### <answer>'"))
        else:
            for extra in finals[1:]:
                spans.append(Span(extra.start(), extra.end(), "a second final answer line"))
            first = finals[0]
            if not answers_match(first.group(0), reference):
                spans.append(Span(first.start(), first.end(), f"the final answer {extract_answer(first.group(0))} "
                                                              f"is not the reference's {extract_answer(reference)}"))
        return Certificate(not spans, tuple(spans), self.name)


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else str(float(x))
