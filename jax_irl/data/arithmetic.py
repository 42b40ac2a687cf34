"""Built-in arithmetic word problems in GSM8K's format, made deterministically from a seed.

Each problem is {'question', 'answer', 'final'}: the answer holds one calculation per line ('12 * 3 = 36') and
ends with '#### <final>', exactly as GSM8K's solutions do, so the same extraction and metrics serve both. The
train and test splits are disjoint: no question text appears in both.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Tuple

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo",
         "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "cards", "stamps", "coins"]

Problem = Dict[str, object]


def _gain(r: random.Random) -> Tuple[str, List[Tuple[str, int]]]:
    name, other, item = r.choice(NAMES), r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 60), r.randint(2, 60)
    q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
    return q, [(f"{a} + {b}", a + b)]


def _packs_left(r: random.Random):
    name, item = r.choice(NAMES), r.choice(ITEMS)
    packs, per, away = r.randint(2, 9), r.randint(2, 12), r.randint(1, 10)
    total = packs * per
    away = min(away, total - 1)
    q = (f"{name} buys {packs} packs of {item} with {per} {item} in each pack and gives away {away}. "
         f"How many {item} does {name} have left?")
    return q, [(f"{packs} * {per}", total), (f"{total} - {away}", total - away)]


def _shopping(r: random.Random):
    name = r.choice(NAMES)
    item1, item2 = r.sample(ITEMS, 2)
    a, p, b, q_ = r.randint(2, 9), r.randint(1, 15), r.randint(2, 9), r.randint(1, 15)
    q = (f"{name} buys {a} {item1} for ${p} each and {b} {item2} for ${q_} each. "
         f"How many dollars does {name} spend in all?")
    return q, [(f"{a} * {p}", a * p), (f"{b} * {q_}", b * q_), (f"{a * p} + {b * q_}", a * p + b * q_)]


def _share(r: random.Random):
    name, item = r.choice(NAMES), r.choice(ITEMS)
    friends, each = r.randint(2, 8), r.randint(2, 12)
    extra = r.randint(1, 20)
    total = friends * each
    q = (f"{name} has {total + extra} {item}, keeps {extra} and shares the rest equally among {friends} friends. "
         f"How many {item} does each friend get?")
    return q, [(f"{total + extra} - {extra}", total), (f"{total} / {friends}", each)]


def _weekly(r: random.Random):
    name = r.choice(NAMES)
    per_day, days, weeks, spent = r.randint(2, 20), r.randint(2, 7), r.randint(2, 5), r.randint(1, 30)
    week = per_day * days
    total = week * weeks
    spent = min(spent, total - 1)
    q = (f"{name} saves ${per_day} a day for {days} days each week. After {weeks} weeks {name} spends ${spent}. "
         f"How many dollars are left?")
    return q, [(f"{per_day} * {days}", week), (f"{week} * {weeks}", total), (f"{total} - {spent}", total - spent)]


TEMPLATES: List[Callable[[random.Random], Tuple[str, List[Tuple[str, int]]]]] = [
    _gain, _packs_left, _shopping, _share, _weekly]


def _make(r: random.Random) -> Problem:
    question, steps = r.choice(TEMPLATES)(r)
    lines = [f"{expr} = {value}" for expr, value in steps]
    final = steps[-1][1]
    return {"question": question, "answer": "\n".join(lines) + f"\n#### {final}", "final": final}


def make_splits(seed: int = 0, num_train: int = 2000, num_test: int = 200) -> Tuple[List[Problem], List[Problem]]:
    """(train, test) problem lists, deterministic in seed, with no question in both splits."""
    if num_train < 0 or num_test < 0:
        raise ValueError("split sizes must be >= 0")
    r = random.Random(seed)
    seen = set()
    problems: List[Problem] = []
    attempts = 0
    while len(problems) < num_train + num_test:
        attempts += 1
        if attempts > 50 * (num_train + num_test) + 1000:
            raise ValueError(f"could not make {num_train + num_test} distinct problems; ask for fewer")
        p = _make(r)
        if p["question"] not in seen:
            seen.add(p["question"])
            problems.append(p)
    return problems[:num_train], problems[num_train:]


def verify(problem: Problem) -> bool:
    """Every calculation line is true and the final answer is the last line's result."""
    lines = str(problem["answer"]).split("\n")
    for line in lines[:-1]:
        expr, value = line.split("=")
        a, op, b = expr.split()
        x, y = int(a), int(b)
        result = {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op]
        if result != int(value):
            return False
    return lines[-1] == f"#### {problem['final']}" and int(lines[-2].split("=")[1]) == problem["final"]
