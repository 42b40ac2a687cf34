"""A built-in pseudo-code-to-Python task, SPoC-like and small enough for CPU: each program is a few lines, one
line of pseudo-code per line of code, with stdin/stdout test cases.

A program reads one to three integers, computes one to three new values (plus, minus, times, the larger or the
smaller of two values, the absolute difference, or the sum 1..n in a loop), and prints one of them:

    read a and b                         a, b = map(int, input().split())
    set c to the larger of a and b       c = max(a, b)
    set d to c times 3                   d = c * 3
    print d                              print(d)

Expected outputs are computed here by the same operations (the reference code is never executed); the tests
draw inputs from 0..20. ``make_programs(seed, n)`` is a pure function of its arguments.
"""

from __future__ import annotations

import random
from typing import Dict, List

NAMES = "abcdefghkmnpqrstuvwxyz"
_OPS = {
    "plus": ("{u} plus {v}", "{u} + {v}", lambda u, v: u + v),
    "minus": ("{u} minus {v}", "{u} - {v}", lambda u, v: u - v),
    "times": ("{u} times {v}", "{u} * {v}", lambda u, v: u * v),
    "max": ("the larger of {u} and {v}", "max({u}, {v})", max),
    "min": ("the smaller of {u} and {v}", "min({u}, {v})", min),
    "absdiff": ("the absolute difference of {u} and {v}", "abs({u} - {v})", lambda u, v: abs(u - v)),
}


def _read(names: List[str]):
    if len(names) == 1:
        return f"read {names[0]}", f"{names[0]} = int(input())"
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    return f"read {listed}", f"{', '.join(names)} = map(int, input().split())"


def make_program(r: random.Random) -> Dict[str, object]:
    """One program: {"pseudo": lines, "code": lines, "tests": [(stdin, expected stdout)] * 3}."""
    names = r.sample(NAMES, 6)
    k = r.randint(1, 3)
    inputs, free = names[:k], names[k:]
    pseudo, code = [], []
    p, c = _read(inputs)
    pseudo.append(p)
    code.append(c)
    steps = []  # (target, kind, u, v) with u, v variable names or integer constants
    known = list(inputs)
    for _ in range(r.randint(1, 3)):
        target = free.pop(0)
        if r.random() < 0.2:
            n = r.choice(known)
            pseudo.append(f"set {target} to the sum of 1 to {n}")
            code.extend([f"{target} = 0", f"for i in range(1, {n} + 1):", f"    {target} += i"])
            steps.append((target, "sum", n, None))
        else:
            kind = r.choice(sorted(_OPS))
            u = r.choice(known)
            v = r.choice([x for x in known if x != u] + [str(r.randint(1, 9))])
            words, expr, _ = _OPS[kind]
            pseudo.append(f"set {target} to " + words.format(u=u, v=v))
            code.append(f"{target} = " + expr.format(u=u, v=v))
            steps.append((target, kind, u, v))
        known.append(target)
    shown = known[-1]
    pseudo.append(f"print {shown}")
    code.append(f"print({shown})")
    tests = []
    for _ in range(3):
        values = {name: r.randint(0, 20) for name in inputs}
        stdin = (" ".join(str(values[n]) for n in inputs)) + "\n"
        for target, kind, u, v in steps:
            if kind == "sum":
                values[target] = sum(range(1, values[u] + 1))
            else:
                get = lambda x: values[x] if x in values else int(x)  # noqa: E731
                values[target] = _OPS[kind][2](get(u), get(v))
        tests.append((stdin, f"{values[shown]}\n"))
    return {"pseudo": pseudo, "code": code, "tests": tests}


def make_programs(seed: int, n: int) -> List[Dict[str, object]]:
    """``n`` distinct programs (by pseudo-code), a pure function of (seed, n)."""
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    r = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        program = make_program(r)
        key = "\n".join(program["pseudo"])
        if key not in seen:
            seen.add(key)
            out.append(program)
    return out


def prompt(program: Dict[str, object]) -> str:
    return "Pseudo-code:\n" + "\n".join(program["pseudo"]) + "\nPython:"


def response(program: Dict[str, object]) -> str:
    return "\n" + "\n".join(program["code"])
