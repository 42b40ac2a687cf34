"""Tasks with their metric, in one registry: where the prompts and references come from, and how a sample is
scored against its reference.

    data = tasks.load(TaskConfig(name="arithmetic"))   # TaskData(train_prompts, train_responses, ...)
    tasks.get("gsm8k").score("... #### 42", "#### 42")  # 1.0
    tool = tasks.tool(TaskConfig(name="game24"))        # the symbolic tool that certifies a sample

Built in: 'arithmetic' (GSM8K-format word problems made here, exact match), the TFDS tasks 'gsm8k' (exact
match), 'game24' (every solvable Game of 24 puzzle, solved or not), 'pseudocode' (built-in
pseudo-code to Python, passing its tests in the sandbox), 'spoc' (a local JSONL of pseudo-code, C++ and tests), 'xsum' and 'tldr' (ROUGE-1 F), 'wmt_de_en' (sentence BLEU), read through ``tfds_sources`` without any
download, and 'jsonl' (a local file of prompt/response records, ROUGE-1 F). ``register`` adds a task of a user's own.

A task is data + metric + tool, so this module sits above ``data``, ``metrics`` and ``symbolic`` (the checkers
that score Game of 24 and programs); nothing below it imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from jax_irl import metrics
from jax_irl.data import arithmetic, jsonl, tfds_sources


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: str = "arithmetic"  # a registered task: arithmetic, gsm8k, xsum, tldr, wmt_de_en, or one of your own
    data_dir: Optional[str] = None  # TFDS data directory
    train_examples: int = 2000
    eval_examples: int = 48
    max_number: int = 12  # operand cap of the built-in arithmetic task (its difficulty)
    diverse_solutions: bool = False  # arithmetic: each training solution drawn from its valid variants (step and
    # operand order, ``arithmetic.solution_variants``) instead of the one canonical text; references stay canonical
    fresh_chains: bool = False  # arithmetic: no held-out problem repeats a training problem's calculation chain

    def __post_init__(self):
        if self.name not in REGISTRY:
            raise ValueError(f"task name must be one of {sorted(REGISTRY)}; got {self.name!r}")
        if self.train_examples < 1 or self.eval_examples < 1:
            raise ValueError(f"train_examples and eval_examples must be >= 1; got {self.train_examples} and "
                             f"{self.eval_examples}")


class TaskData(NamedTuple):
    train_prompts: List[str]
    train_responses: List[str]
    eval_prompts: List[str]
    eval_references: List[str]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[TaskConfig], TaskData]
    score: Callable[[str, str], float]  # a sample's score against its reference, in [0, 1]
    metric: str  # the score's name, for tables
    # The symbolic tool that checks a sample against the prompt and certifies it (blamed spans), for RL from
    # symbolic feedback: built from the task's config, since it holds the tests of every prompt. None: no tool.
    tool: Optional[Callable[[TaskConfig], Any]] = None


def arithmetic_problems(cfg: TaskConfig):
    """(train, test) problem lists of the built-in arithmetic task under ``cfg`` (the ones ``load`` formats), with
    the training solutions diversified when ``cfg.diverse_solutions``: for analyses that need the problems'
    structure (their solution variants, wrong solutions)."""
    if cfg.name != "arithmetic":
        raise ValueError(f"arithmetic_problems needs task 'arithmetic'; got {cfg.name!r}")
    train_set, test_set = arithmetic.make_splits(seed=0, num_train=cfg.train_examples, num_test=cfg.eval_examples,
                                                 max_number=cfg.max_number, fresh_chains=cfg.fresh_chains)
    if cfg.diverse_solutions:
        train_set = arithmetic.diversify(train_set, seed=1)
    return train_set, test_set


def _arithmetic(cfg: TaskConfig) -> TaskData:
    train_set, test_set = arithmetic_problems(cfg)
    fmt = lambda p: f"Question: {p['question']}\nAnswer:"  # noqa: E731
    return TaskData([fmt(p) for p in train_set], [" " + p["answer"] for p in train_set],
                    [fmt(p) for p in test_set], [p["answer"] for p in test_set])


def _tfds(cfg: TaskConfig) -> TaskData:
    """A TFDS task of ``tfds_sources``: its 'train' split for training, its held-out ``eval_split`` for evaluation."""
    eval_split = tfds_sources.TASKS[cfg.name].eval_split  # never 'train' (TfdsTask refuses it)
    train_set = tfds_sources.load_examples(cfg.name, "train", data_dir=cfg.data_dir, limit=cfg.train_examples)
    test_set = tfds_sources.load_examples(cfg.name, eval_split, data_dir=cfg.data_dir, limit=cfg.eval_examples)
    return TaskData([r["prompt"] for r in train_set], [r["response"] for r in train_set],
                    [r["prompt"] for r in test_set], [r["response"].strip() for r in test_set])


def _jsonl(cfg: TaskConfig) -> TaskData:
    """A local JSONL file of {"prompt", "response"} records (``data_dir`` is its path): the last
    ``eval_examples`` records are the evaluation set, up to ``train_examples`` before them the training set."""
    if not cfg.data_dir:
        raise ValueError("task 'jsonl' reads the JSONL file named by data_dir; pass task.data_dir=/path/to/file.jsonl")
    records = jsonl.read_jsonl(cfg.data_dir, "sft")
    if len(records) <= cfg.eval_examples:
        raise ValueError(f"{cfg.data_dir} has {len(records)} records; it needs more than eval_examples="
                         f"{cfg.eval_examples} to leave any for training")
    held, rest = records[-cfg.eval_examples:], records[:-cfg.eval_examples][: cfg.train_examples]
    return TaskData([r["prompt"] for r in rest], [r["response"] for r in rest], [r["prompt"] for r in held],
                    [r["response"].strip() for r in held])


def _game24(cfg: TaskConfig) -> TaskData:
    """Every solvable Game of 24 puzzle over 1..13, shuffled once (seed 0): the first ``eval_examples`` are held
    out, the next ``train_examples`` train. Prompt 'Numbers: a b c d\\nSteps:'; response: the three step lines of
    ``game24.solution_steps``; reference: the numbers (the checker needs nothing else)."""
    import random

    from jax_irl.data import game24

    puzzles = [numbers for numbers, _ in game24.all_puzzles()]
    random.Random(0).shuffle(puzzles)
    held, rest = puzzles[:cfg.eval_examples], puzzles[cfg.eval_examples:][:cfg.train_examples]
    fmt = lambda n: f"Numbers: {' '.join(map(str, n))}\nSteps:"  # noqa: E731
    return TaskData([fmt(n) for n in rest], [" " + "\n".join(game24.solution_steps(n)) for n in rest],
                    [fmt(n) for n in held], [" ".join(map(str, n)) for n in held])


def game24_solved(text: str, reference: str) -> float:
    from jax_irl.symbolic.game24 import Game24Tool

    return float(Game24Tool().check(reference, text).correct)


def _pseudocode(cfg: TaskConfig) -> TaskData:
    """The built-in pseudo-code-to-Python programs (``data.pseudocode``): train and eval sets drawn with
    different seeds (distinct pseudo-code); the reference is the tests as JSON."""
    import json

    from jax_irl.data import pseudocode

    programs = pseudocode.make_programs(seed=0, n=cfg.train_examples + cfg.eval_examples)
    rest, held = programs[:cfg.train_examples], programs[cfg.train_examples:]
    return TaskData([pseudocode.prompt(p) for p in rest], [pseudocode.response(p) for p in rest],
                    [pseudocode.prompt(p) for p in held], [json.dumps(p["tests"]) for p in held])


def program_passes(text: str, reference: str) -> float:
    """1 if the Python program passes the reference's tests (JSON [[stdin, expected], ...]) in the sandbox."""
    import json

    from jax_irl.symbolic.programs import PythonTool, TestCase

    tests = [TestCase(f"t{k}", stdin, expected) for k, (stdin, expected) in enumerate(json.loads(reference))]
    return float(PythonTool(lambda prompt: tests).check("", text).correct)


def _spoc(cfg: TaskConfig) -> TaskData:
    """A SPoC-style JSONL file (``data_dir``) of {"prompt", "response", "tests"} records (pseudo-code, C++ code,
    stdin/stdout tests): the last ``eval_examples`` records are held out; the reference is the tests as JSON."""
    import json

    if not cfg.data_dir:
        raise ValueError("task 'spoc' reads the JSONL file named by data_dir; pass task.data_dir=/path/to/spoc.jsonl")
    records = jsonl.read_program_records(cfg.data_dir)
    if len(records) <= cfg.eval_examples:
        raise ValueError(f"{cfg.data_dir} has {len(records)} records; it needs more than eval_examples="
                         f"{cfg.eval_examples} to leave any for training")
    held, rest = records[-cfg.eval_examples:], records[:-cfg.eval_examples][: cfg.train_examples]
    return TaskData([r["prompt"] for r in rest], [r["response"] for r in rest], [r["prompt"] for r in held],
                    [json.dumps(r["tests"]) for r in held])


def cpp_passes(text: str, reference: str) -> float:
    """1 if the C++ program builds with g++ and passes the reference's tests (JSON) in the sandbox."""
    import json

    from jax_irl.symbolic.programs import CppTool, TestCase

    tests = [TestCase(f"t{k}", stdin, expected) for k, (stdin, expected) in enumerate(json.loads(reference))]
    return float(CppTool(lambda prompt: tests).check("", text).correct)


def _game24_tool(cfg: TaskConfig):
    from jax_irl.symbolic.game24 import Game24Tool

    return Game24Tool()


def _pseudocode_tool(cfg: TaskConfig):
    """The Python tool with the tests of every built-in program (train and held-out), by prompt."""
    from jax_irl.data import pseudocode
    from jax_irl.symbolic.programs import PythonTool, TestCase

    programs = pseudocode.make_programs(seed=0, n=cfg.train_examples + cfg.eval_examples)
    return PythonTool({pseudocode.prompt(p): [TestCase(f"test {k + 1}", stdin, out)
                                              for k, (stdin, out) in enumerate(p["tests"])] for p in programs})


def _spoc_tool(cfg: TaskConfig):
    """The g++ tool (in the sandbox) with the tests of every record of the JSONL file, by prompt."""
    from jax_irl.symbolic import sandbox
    from jax_irl.symbolic.programs import CppTool, TestCase

    if not cfg.data_dir:
        raise ValueError("task 'spoc' reads the JSONL file named by data_dir; pass task.data_dir=/path/to/spoc.jsonl")
    records = jsonl.read_program_records(cfg.data_dir)
    return CppTool({r["prompt"]: [TestCase(f"test {k + 1}", stdin, out) for k, (stdin, out) in enumerate(r["tests"])]
                    for r in records}, sandbox=sandbox.Sandbox(CppTool.run_limits))


def exact_match(text: str, reference: str) -> float:
    return float(metrics.answers_match(text, reference))


def rouge1(text: str, reference: str) -> float:
    return metrics.rouge([text], [reference], types=("rouge1",))["rouge1"] / 100.0


def sentence_bleu(text: str, reference: str) -> float:
    return metrics.bleu([text], [reference]) / 100.0


REGISTRY: Dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task (a name already registered is refused)."""
    if task.name in REGISTRY:
        raise ValueError(f"task {task.name!r} is already registered")
    REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def tool(cfg: TaskConfig):
    """The task's symbolic tool (``Task.tool``) for ``cfg``; a task without one is refused, naming those with one."""
    task = get(cfg.name)
    if task.tool is None:
        raise ValueError(f"task {cfg.name!r} has no symbolic tool; tasks with one: "
                         f"{sorted(n for n, t in REGISTRY.items() if t.tool is not None)}")
    return task.tool(cfg)


def load(cfg: TaskConfig) -> TaskData:
    """The task's train prompts/responses and eval prompts/references; an empty split is refused."""
    data = get(cfg.name).load(cfg)
    if not data.train_prompts or not data.eval_prompts:
        raise ValueError(f"task {cfg.name!r} gave {len(data.train_prompts)} training and {len(data.eval_prompts)} "
                         f"evaluation examples; it needs at least one of each")
    return data


register(Task("arithmetic", _arithmetic, exact_match, "accuracy"))
register(Task("gsm8k", _tfds, exact_match, "accuracy"))
register(Task("xsum", _tfds, rouge1, "ROUGE-1"))
register(Task("tldr", _tfds, rouge1, "ROUGE-1"))
register(Task("wmt_de_en", _tfds, sentence_bleu, "BLEU"))
register(Task("jsonl", _jsonl, rouge1, "ROUGE-1"))
register(Task("game24", _game24, game24_solved, "success", tool=_game24_tool))
register(Task("pseudocode", _pseudocode, program_passes, "pass rate", tool=_pseudocode_tool))
register(Task("spoc", _spoc, cpp_passes, "pass rate", tool=_spoc_tool))
