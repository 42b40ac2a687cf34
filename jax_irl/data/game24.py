"""The Game of 24: four numbers from 1..13, combined with + - * / (each used once) to make 24.

``solve`` finds an expression with exact rational arithmetic; ``all_puzzles`` lists every solvable multiset of
four numbers from 1..13 (1362 of the 1820), each with one solution; ``check_expression`` verifies a proposed
answer (the arithmetic checker RLSF turns into rewards).
"""

from __future__ import annotations

import ast
import functools
import itertools
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

TARGET = 24


def _combine(a: Fraction, b: Fraction, ea: str, eb: str):
    """Every value (with its expression) that one operation makes from a and b."""
    out = [(a + b, f"({ea} + {eb})"), (a * b, f"({ea} * {eb})"), (a - b, f"({ea} - {eb})"),
           (b - a, f"({eb} - {ea})")]
    if b != 0:
        out.append((a / b, f"({ea} / {eb})"))
    if a != 0:
        out.append((b / a, f"({eb} / {ea})"))
    return out


@functools.lru_cache(maxsize=None)
def _solvable(values: Tuple[Fraction, ...]) -> bool:
    """Whether the sorted values can make 24 (memoised on the values alone)."""
    if len(values) == 1:
        return values[0] == TARGET
    n = len(values)
    for i, j in itertools.combinations(range(n), 2):
        rest = [values[k] for k in range(n) if k not in (i, j)]
        for value, _ in _combine(values[i], values[j], "", ""):
            if _solvable(tuple(sorted(rest + [value]))):
                return True
    return False


def _solve(values: Tuple[Fraction, ...], exprs: Tuple[str, ...]) -> Optional[str]:
    """An expression for solvable values, following only steps that stay solvable."""
    if len(values) == 1:
        return exprs[0] if values[0] == TARGET else None
    n = len(values)
    for i, j in itertools.combinations(range(n), 2):
        rest = [k for k in range(n) if k not in (i, j)]
        for value, expr in _combine(values[i], values[j], exprs[i], exprs[j]):
            new_values = [values[k] for k in rest] + [value]
            if _solvable(tuple(sorted(new_values))):
                return _solve(tuple(new_values), tuple(exprs[k] for k in rest) + (expr,))
    return None


def solve(numbers: Sequence[int]) -> Optional[str]:
    """An expression using each number once that equals 24 exactly, or None. Outer parentheses dropped."""
    if len(numbers) != 4:
        raise ValueError(f"the Game of 24 takes 4 numbers; got {len(numbers)}")
    nums = tuple(sorted(numbers))
    found = _solve(tuple(Fraction(x) for x in nums), tuple(str(x) for x in nums))
    return found[1:-1] if found and found.startswith("(") and found.endswith(")") else found


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def solution_steps(numbers: Sequence[int]) -> Optional[List[str]]:
    """Three step lines 'a op b = c' that combine the numbers two at a time into 24, or None. Deterministic;
    steps keep the larger operand first and avoid negative values where a solution without them exists."""
    if len(numbers) != 4:
        raise ValueError(f"the Game of 24 takes 4 numbers; got {len(numbers)}")

    def search(values: List[Fraction], allow_negative: bool) -> Optional[List[str]]:
        if len(values) == 1:
            return [] if values[0] == TARGET else None
        n = len(values)
        for i, j in itertools.combinations(range(n), 2):
            a, b = max(values[i], values[j]), min(values[i], values[j])
            rest = [values[k] for k in range(n) if k not in (i, j)]
            options = [(a + b, "+", a, b), (a * b, "*", a, b), (a - b, "-", a, b)]
            options += [(a / b, "/", a, b)] if b != 0 else []
            options += [(b / a, "/", b, a)] if a != 0 else []
            options += [(b - a, "-", b, a)] if allow_negative else []
            for value, op, x, y in options:
                if not allow_negative and value < 0:
                    continue
                if not _solvable(tuple(sorted(rest + [value]))):
                    continue
                tail = search(rest + [value], allow_negative)
                if tail is not None:
                    return [f"{_fmt(x)} {op} {_fmt(y)} = {_fmt(value)}"] + tail
        return None

    start = [Fraction(x) for x in sorted(numbers, reverse=True)]
    return search(start, False) or search(start, True)


def calculation_corpus(seed: int, num_rows: int, per_row: int = 6, high: int = 24) -> List[str]:
    """Rows of unrelated single calculations on whole numbers up to ``high`` ('12 * 2 = 24', '9 - 4 = 5'; a
    division only where it is exact): the arithmetic a pretrained model brings, never a puzzle's solution."""
    import random

    if num_rows < 0 or per_row < 1 or high < 2:
        raise ValueError(f"need num_rows >= 0, per_row >= 1 and high >= 2; got {num_rows}, {per_row}, {high}")
    r = random.Random(seed)
    lines: List[str] = []
    while len(lines) < num_rows * per_row:
        a, b = sorted((r.randint(1, high), r.randint(1, high)), reverse=True)
        op = r.choice("+-*/")
        if op == "/" and a % b:
            continue
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        lines.append(f"{a} {op} {b} = {value}")
    return ["\n".join(lines[i:i + per_row]) for i in range(0, len(lines), per_row)]


def all_puzzles(low: int = 1, high: int = 13) -> List[Tuple[Tuple[int, int, int, int], str]]:
    """Every solvable multiset of 4 numbers in [low, high], sorted, with one solution each."""
    out = []
    for combo in itertools.combinations_with_replacement(range(low, high + 1), 4):
        solution = solve(combo)
        if solution is not None:
            out.append((combo, solution))
    return out


def _evaluate(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if b == 0:
            raise ZeroDivisionError("division by zero")
        return a / b
    raise ValueError(f"only integers and + - * / are allowed; found {type(node).__name__}")


def _numbers_used(node) -> List[int]:
    return sorted(n.value for n in ast.walk(node) if isinstance(n, ast.Constant))


def check_expression(expression: str, numbers: Sequence[int]) -> Tuple[bool, str]:
    """(correct, reason): the expression must parse, use exactly the given numbers once each, and equal 24."""
    text = expression.split("=")[0].strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return False, "the expression does not parse"
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        return False, "division by zero"
    except ValueError as err:
        return False, str(err)
    if _numbers_used(tree) != sorted(numbers):
        return False, f"uses {_numbers_used(tree)} instead of {sorted(numbers)}"
    if value != TARGET:
        return False, f"evaluates to {value}, not {TARGET}"
    return True, "correct"
