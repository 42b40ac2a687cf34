"""Built-in arithmetic word problems in GSM8K's format, made deterministically from a seed.

Each problem is {'question', 'answer', 'final'}: the answer holds one calculation per line ('12 * 3 = 36') and
ends with '#### <final>', exactly as GSM8K's solutions do, so the same extraction and metrics serve both. The
train and test splits are disjoint: no question text appears in both.
"""

from __future__ import annotations

import itertools
import operator
import random
import re
from fractions import Fraction
from typing import Callable, Dict, List, Tuple

from jax_irl.metrics import MAX_NUMBER_CHARS, answers_match

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jia", "Kofi", "Lena", "Mateo",
         "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tomas"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "shells", "cards", "stamps", "coins"]

Problem = Dict[str, object]
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
Number = Callable[[int, int], int]  # n(low, high): a random operand in [low, min(high, max_number)]


def _gain(r: random.Random, n: Number) -> Tuple[str, List[Tuple[str, int]]]:
    name, other, item = r.choice(NAMES), r.choice(NAMES), r.choice(ITEMS)
    a, b = n(2, 60), n(2, 60)
    q = f"{name} has {a} {item}. {other} gives {name} {b} more. How many {item} does {name} have now?"
    return q, [(f"{a} + {b}", a + b)]


def _packs_left(r: random.Random, n: Number):
    name, item = r.choice(NAMES), r.choice(ITEMS)
    packs, per, away = n(2, 9), n(2, 12), n(1, 10)
    total = packs * per
    away = min(away, total - 1)
    q = (f"{name} buys {packs} packs of {item} with {per} {item} in each pack and gives away {away}. "
         f"How many {item} does {name} have left?")
    return q, [(f"{packs} * {per}", total), (f"{total} - {away}", total - away)]


def _shopping(r: random.Random, n: Number):
    name = r.choice(NAMES)
    item1, item2 = r.sample(ITEMS, 2)
    a, p, b, q_ = n(2, 9), n(1, 15), n(2, 9), n(1, 15)
    q = (f"{name} buys {a} {item1} for ${p} each and {b} {item2} for ${q_} each. "
         f"How many dollars does {name} spend in all?")
    return q, [(f"{a} * {p}", a * p), (f"{b} * {q_}", b * q_), (f"{a * p} + {b * q_}", a * p + b * q_)]


def _share(r: random.Random, n: Number):
    name, item = r.choice(NAMES), r.choice(ITEMS)
    friends, each = n(2, 8), n(2, 12)
    extra = n(1, 20)
    total = friends * each
    q = (f"{name} has {total + extra} {item}, keeps {extra} and shares the rest equally among {friends} friends. "
         f"How many {item} does each friend get?")
    return q, [(f"{total + extra} - {extra}", total), (f"{total} / {friends}", each)]


def _weekly(r: random.Random, n: Number):
    name = r.choice(NAMES)
    per_day, days, weeks, spent = n(2, 20), n(2, 7), n(2, 5), n(1, 30)
    week = per_day * days
    total = week * weeks
    spent = min(spent, total - 1)
    q = (f"{name} saves ${per_day} a day for {days} days each week. After {weeks} weeks {name} spends ${spent}. "
         f"How many dollars are left?")
    return q, [(f"{per_day} * {days}", week), (f"{week} * {weeks}", total), (f"{total} - {spent}", total - spent)]


TEMPLATES: List[Callable[[random.Random, Number], Tuple[str, List[Tuple[str, int]]]]] = [
    _gain, _packs_left, _shopping, _share, _weekly]


def _make(r: random.Random, max_number: int) -> Problem:
    def n(low: int, high: int) -> int:
        return r.randint(low, max(low, min(high, max_number)))

    question, steps = r.choice(TEMPLATES)(r, n)
    return {"question": question, "answer": _text(steps), "final": steps[-1][1], "steps": steps}


def _text(steps: List[Tuple[str, int]]) -> str:
    return "\n".join(f"{expr} = {value}" for expr, value in steps) + f"\n#### {steps[-1][1]}"


def solution_variants(problem: Problem) -> List[str]:
    """Every valid solution text of a problem that its own steps allow, the canonical one first: each sum or
    product with its operands in either order ('3 * 12 = 36' or '12 * 3 = 36'), and independent steps in either
    order (two products before their sum); the final step stays last. Each text is a true solution in the
    task's format (``verify``), with the same final answer."""
    steps = [(str(e), int(v)) for e, v in problem["steps"]]
    orders = [list(range(len(steps)))]
    for i in range(len(steps) - 2):  # swap neighbours i, i + 1 when the second does not use the first's result
        a, b = steps[i], steps[i + 1]
        if str(a[1]) not in b[0].split():
            orders += [o[:i] + [o[i + 1], o[i]] + o[i + 2:] for o in orders if o[i:i + 2] == [i, i + 1]]
    texts = []
    for order in orders:
        ordered = [steps[j] for j in order]
        choices = [[e] + ([" ".join(e.split()[::-1])] if e.split()[1] in "+*" and e.split()[0] != e.split()[2]
                          else []) for e, _ in ordered]
        for exprs in itertools.product(*choices):
            texts.append(_text([(e, v) for e, (_, v) in zip(exprs, ordered)]))
    return list(dict.fromkeys(texts))


def diversify(problems: List[Problem], seed: int) -> List[Problem]:
    """The problems with each answer replaced by one of its ``solution_variants`` drawn at random (deterministic
    in seed): an expert whose solutions vary in step order and operand order, as human-written ones do."""
    r = random.Random(seed)
    return [dict(p, answer=r.choice(solution_variants(p))) for p in problems]


def expert_samples(problems: List[Problem], num_samples: int, seed: int) -> List[List[str]]:
    """``num_samples`` solutions per problem as the diverse expert writes them: each drawn at random from the
    problem's ``solution_variants`` (``diversify``'s distribution), deterministic in seed. Their Self-BLEU is the
    expert's own diversity, the reference line for a model's samples."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}")
    r = random.Random(seed)
    return [[r.choice(variants) for _ in range(num_samples)] for variants in map(solution_variants, problems)]


def calculation_chain(problem: Problem) -> Tuple[str, ...]:
    """The problem's calculations in order ('3 + 9', '12 * 2', ...): what is left of it with the names and the
    story taken away. Two problems with one chain differ only in their wording."""
    return tuple(str(expr) for expr, _ in problem["steps"])


def make_splits(seed: int = 0, num_train: int = 2000, num_test: int = 200, max_number: int = 60,
                fresh_chains: bool = False) -> Tuple[List[Problem], List[Problem]]:
    """(train, test) problem lists, deterministic in seed, with no question in both splits. max_number caps
    every operand (difficulty: small numbers make the arithmetic learnable by tiny models). With ``fresh_chains``
    no test problem repeats a training problem's calculation chain (``calculation_chain``) under other names:
    such problems are skipped and more are drawn (the training problems are the same either way)."""
    if num_train < 0 or num_test < 0:
        raise ValueError("split sizes must be >= 0")
    if max_number < 2:
        raise ValueError(f"max_number must be >= 2; got {max_number}")
    r = random.Random(seed)
    seen = set()
    train: List[Problem] = []
    test: List[Problem] = []
    chains = set()
    attempts = 0
    while len(train) + len(test) < num_train + num_test:
        attempts += 1
        if attempts > 50 * (num_train + num_test) + 1000:
            raise ValueError(f"could not make {num_train + num_test} distinct problems"
                             f"{' with fresh test chains' if fresh_chains else ''}; ask for fewer")
        p = _make(r, max_number)
        if p["question"] in seen:
            continue
        seen.add(p["question"])
        if len(train) < num_train:
            train.append(p)
            chains.add(calculation_chain(p))
        elif not (fresh_chains and calculation_chain(p) in chains):
            test.append(p)
    return train, test


def wrong_solution(problem: Problem, seed: int) -> str:
    """A plausible wrong solution to ``problem`` (deterministic in seed): one calculation slips (its result off
    by 1 to 3) and the later steps carry the wrong value on, computed correctly from it, so the text has the
    task's format, exactly one false line and a wrong final answer. The other half of a held-out (correct, wrong)
    pair for scoring a reward's ranking (``metrics.pair_ranking_accuracy``)."""
    r = random.Random(seed)
    steps = [(str(e), int(v)) for e, v in problem["steps"]]
    for _ in range(50):
        i, delta = r.randrange(len(steps)), r.choice([-3, -2, -1, 1, 2, 3])
        out, carried = list(steps[:i]), {steps[i][1]: steps[i][1] + delta}
        out.append((steps[i][0], steps[i][1] + delta))
        ok = True
        for expr, _ in steps[i + 1:]:
            a, op, b = expr.split()
            a, b = carried.get(int(a), int(a)), carried.get(int(b), int(b))
            if op == "/" and (b == 0 or a % b):  # the carried value no longer divides: try another slip
                ok = False
                break
            out.append((f"{a} {op} {b}", int(_OPS[op](a, b))))
        if ok and out[-1][1] != steps[-1][1] and out[-1][1] >= 0:
            return _text(out)
    raise ValueError(f"no wrong solution found for {problem['question']!r}")


def verify(problem: Problem) -> bool:
    """Every calculation line is true and the final answer is the last line's result."""
    lines = str(problem["answer"]).split("\n")
    for line in lines[:-1]:
        expr, value = line.split("=")
        a, op, b = expr.split()
        if _OPS[op](int(a), int(b)) != int(value):
            return False
    return lines[-1] == f"#### {problem['final']}" and int(lines[-2].split("=")[1]) == problem["final"]


def calculation_corpus(seed: int, num_rows: int, per_row: int = 6, max_number: int = 60) -> List[str]:
    """Rows of unrelated single calculations ('9 * 4 = 36'), one per line, drawn from the same operand ranges as
    the problems' solution steps: the arithmetic that a pretrained language model brings to the task. A row
    never holds a question, a final-answer line or the steps of one solution in order, so pretraining on it
    teaches the calculations but not how to solve a problem."""
    if num_rows < 0 or per_row < 1:
        raise ValueError(f"need num_rows >= 0 and per_row >= 1; got {num_rows}, {per_row}")
    if max_number < 2:
        raise ValueError(f"max_number must be >= 2; got {max_number}")
    r = random.Random(seed)

    def n(low: int, high: int) -> int:
        return r.randint(low, max(low, min(high, max_number)))

    lines: List[str] = []
    while len(lines) < num_rows * per_row:
        _, steps = r.choice(TEMPLATES)(r, n)
        lines.append("{} = {}".format(*r.choice(steps)))  # one step per draw: no solution's chain survives
    return ["\n".join(lines[i:i + per_row]) for i in range(0, len(lines), per_row)]


_CALCULATION = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+(?:\.\d+)?)\s*$")
_FINAL = re.compile(r"^\s*####\s*(-?\d+(?:\.\d+)?)\s*$")


def graded_reward(text: str, reference: str) -> float:
    """A programmatic, graded gold reward in [0, 1] for a solution to a built-in problem (the preference oracle
    of the GSHF experiment):

        r* = 0.6 * [the final answer equals the reference's]
           + 0.3 * (true calculation lines / calculation lines)   (a line 'a op b = c'; 0 when there is none)
           + 0.1 * [well formed: the last non-empty line is '#### <number>' and '####' occurs once]

    so a right answer reached through false steps or in the wrong format scores below a clean one, and a wrong
    answer with true steps scores above one with false steps. The final answer is read as ``metrics`` does."""
    lines = [line for line in text.split("\n") if line.strip()]
    calculations = [m for m in (_CALCULATION.match(line) for line in lines) if m]
    true = 0
    for m in calculations:
        if max(len(m.group(k)) for k in (1, 3, 4)) > MAX_NUMBER_CHARS:
            continue  # a runaway number: a false line, not an exception
        x, op, y, value = int(m.group(1)), m.group(2), int(m.group(3)), Fraction(m.group(4))
        if op == "/" and y == 0:
            continue
        result = {"+": Fraction(x + y), "-": Fraction(x - y), "*": Fraction(x * y)}.get(op) if op != "/" \
            else Fraction(x, y)
        true += result == value
    steps = true / len(calculations) if calculations else 0.0
    formed = bool(lines) and _FINAL.match(lines[-1]) is not None and text.count("####") == 1
    return 0.6 * float(answers_match(text, reference)) + 0.3 * steps + 0.1 * float(formed)
