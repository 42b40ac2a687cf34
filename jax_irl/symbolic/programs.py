"""Program tools for RLSF (Jha et al. 2024): a model writes a program (Python, or C++ through g++); the tool
compiles it and runs the task's test cases, all inside the sandbox, and returns a certificate.

Certificate spans, in the response's characters:
- a syntax error (Python) or a compiler error (g++'s 'prog.cpp:LINE:COL: error: ...'): that line;
- a crash with a Python traceback: the line of the program's last frame;
- a failing test (wrong output), a crash without a line, a timeout or a resource limit: the whole program,
  with a message that names the test and the cause (wrong output: expected and got; a limit: which one).
The output is correct only if it compiles and passes every test. A response may hold the program bare or in a
fenced block (```python / ```cpp); spans then point into the block.

Tests are stdin/stdout pairs (SPoC's and most judges' format); outputs are compared line by line with trailing
whitespace ignored. ``tests`` maps a prompt to its tests (a dict, or a function of the prompt).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Union

from jax_irl.symbolic import Certificate, Span
from jax_irl.symbolic.sandbox import MiB, PYTHON, Limits, RunResult, Sandbox

MAX_PROGRAM_CHARS = 100_000


@dataclasses.dataclass(frozen=True)
class TestCase:
    name: str
    stdin: str
    expected: str  # expected stdout

    __test__ = False  # not a pytest class


TestsFor = Union[Mapping[str, Sequence[TestCase]], Callable[[str], Sequence[TestCase]]]
_FENCE = re.compile(r"```[ \t]*([A-Za-z+]*)[ \t]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(response: str) -> Tuple[str, int]:
    """(code, offset of the code in the response): the first fenced block's body if there is one, else all."""
    m = _FENCE.search(response)
    if m:
        return m.group(2), m.start(2)
    return response, 0


def same_output(expected: str, got: str) -> bool:
    norm = lambda s: [line.rstrip() for line in s.replace("\r\n", "\n").rstrip().split("\n")]  # noqa: E731
    return norm(expected) == norm(got)


def _line_span(code: str, offset: int, line: int) -> Tuple[int, int]:
    """Character span [start, end) in the response of 1-based ``line`` of ``code``."""
    lines = code.split("\n")
    line = min(max(line, 1), len(lines))
    start = sum(len(s) + 1 for s in lines[:line - 1])
    return offset + start, offset + start + len(lines[line - 1])


def _short(data: Union[bytes, str], limit: int = 120) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text if len(text) <= limit else text[:limit] + "...")


_PY_HARNESS = r"""
import json, sys
try:
    source = open('prog.py', 'rb').read()
    code = compile(source, 'prog.py', 'exec')
except SyntaxError as err:
    print(json.dumps({'jax_irl_syntax_error': err.msg, 'line': err.lineno}))
    sys.exit(3)
except (ValueError, MemoryError, RecursionError) as err:
    print(json.dumps({'jax_irl_syntax_error': f'{type(err).__name__}: {err}', 'line': None}))
    sys.exit(3)
sys.argv = ['prog.py']
del json
exec(code, {'__name__': '__main__', '__file__': 'prog.py', '__builtins__': __builtins__})
"""
_TRACEBACK_LINE = re.compile(rb'File "prog\.py", line (\d+)')


class _ProgramTool:
    name = "program"
    run_limits = Limits(cpu_seconds=2, wall_seconds=5.0, memory_bytes=512 * MiB, file_bytes=1 * MiB)

    def __init__(self, tests: TestsFor, *, sandbox: Optional[Sandbox] = None, limits: Optional[Limits] = None):
        self.tests = tests
        self.sandbox = sandbox or Sandbox(limits or self.run_limits)
        self.limits = limits or self.sandbox.limits

    def tests_for(self, prompt: str) -> Sequence[TestCase]:
        tests = self.tests(prompt) if callable(self.tests) else self.tests.get(prompt)
        if not tests:
            raise KeyError(f"{self.name}: no test cases for the prompt {prompt[:80]!r}")
        return tests

    def check(self, prompt: str, response: str) -> Certificate:
        tests = self.tests_for(prompt)  # a missing task is the caller's bug: it raises (safe_check records it)
        code, offset = extract_code(response)
        whole = (offset, offset + len(code))
        if not code.strip():
            return self._cert(False, [Span(0, len(response), "empty program")], stage="input")
        if len(code) > MAX_PROGRAM_CHARS:
            return self._cert(False, [Span(*whole, f"program longer than {MAX_PROGRAM_CHARS} characters")],
                              stage="input")
        try:
            code.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates, e.g. from decoding invalid UTF-8 with surrogateescape
            at = offset + err.start
            return self._cert(False, [Span(at, at + 1, f"not valid UTF-8 text at character {at}")], stage="input")
        if "\x00" in code:
            return self._cert(False, [Span(*whole, "the program contains a NUL character")], stage="input")
        return self._check(code, offset, tests)

    def check_many(self, prompts: Sequence[str], responses: Sequence[str], *, workers: Optional[int] = None
                   ) -> List[Certificate]:
        """check for a batch, in parallel (each run is its own sandboxed process)."""
        import concurrent.futures
        import os

        from jax_irl.symbolic import safe_check
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            return list(pool.map(lambda pr: safe_check(self, *pr), zip(prompts, responses)))

    def _cert(self, correct: bool, spans: List[Span], **details) -> Certificate:
        return Certificate(correct, tuple(spans), self.name, tuple((k, str(v)) for k, v in details.items()))

    def _run_tests(self, argv, files, code, offset, tests, first: Optional[RunResult] = None,
                   ) -> Certificate:
        spans, whole, passed = [], (offset, offset + len(code)), 0
        for k, test in enumerate(tests):
            result = first if (k == 0 and first is not None) else self.sandbox.run(
                argv, files, stdin=test.stdin, limits=self.limits)
            problem = self._problem(result, test, code, offset)
            if problem is None:
                passed += 1
                continue
            spans.append(problem if isinstance(problem, Span) else Span(*whole, problem))
            if result.cause is not None and k + 1 < len(tests):  # a limit: the other tests would hit it too
                spans.append(Span(*whole, f"{len(tests) - k - 1} more test(s) not run after a resource limit"))
                break
        return self._cert(not spans, spans, tests_passed=f"{passed}/{len(tests)}",
                          isolation=self.sandbox.isolation.describe())

    def _problem(self, result: RunResult, test: TestCase, code: str, offset: int) -> Union[None, str, Span]:
        label = f"test {test.name!r}"
        if result.cause is not None:
            return f"{label}: {result.cause}"
        if result.file_too_large:
            return f"{label}: file-size limit ({self.limits.file_bytes} bytes, output included) exceeded"
        if result.out_of_memory:
            return f"{label}: out of memory (limit {self.limits.memory_bytes // MiB} MiB)"
        if result.exit_code != 0:
            last = result.stderr.decode("utf-8", "replace").strip().splitlines()
            message = f"{label}: crashed with exit code {result.exit_code}" + (f": {last[-1][:200]}" if last else "")
            lines = _TRACEBACK_LINE.findall(result.stderr)
            if lines:
                return Span(*_line_span(code, offset, int(lines[-1])), message)
            return message
        if not same_output(test.expected, result.stdout.decode("utf-8", "replace")):
            return f"{label}: expected {_short(test.expected)}, got {_short(result.stdout)}"
        return None


class PythonTool(_ProgramTool):
    """Python 3 programs (stdin -> stdout), run by the base interpreter in isolated mode (-I -S: no site
    packages, no user environment)."""

    name = "python"

    def _check(self, code: str, offset: int, tests: Sequence[TestCase]) -> Certificate:
        argv = [PYTHON, "-I", "-S", "-B", "-c", _PY_HARNESS]
        files = {"prog.py": code}
        first = self.sandbox.run(argv, files, stdin=tests[0].stdin, limits=self.limits)
        if first.exit_code == 3 and first.stdout.startswith(b'{"jax_irl_syntax_error"'):
            import json
            info = json.loads(first.stdout.splitlines()[0])
            line = info.get("line")
            span = _line_span(code, offset, line) if line else (offset, offset + len(code))
            where = f"line {line}: " if line else ""
            return self._cert(False, [Span(*span, f"syntax error: {where}{info['jax_irl_syntax_error']}")],
                              stage="compile")
        return self._run_tests(argv, files, code, offset, tests, first)


_GXX_DIAGNOSTIC = re.compile(r"^prog\.cpp:(\d+):(?:(\d+):)? (error|fatal error): (.*)$", re.M)


class CppTool(_ProgramTool):
    """C++ programs compiled by g++ in the sandbox (the compiler sees model-written code too), then run on the
    tests. Compiler errors map to their lines; a link error or an error without a line to the whole program."""

    name = "cpp"
    compile_limits = Limits(cpu_seconds=30, wall_seconds=60.0, memory_bytes=2048 * MiB, file_bytes=64 * MiB,
                            processes=32)

    def __init__(self, tests: TestsFor, *, compiler: str = "g++", flags: Sequence[str] = ("-std=c++17", "-O1"),
                 sandbox: Optional[Sandbox] = None, limits: Optional[Limits] = None,
                 compile_limits: Optional[Limits] = None):
        path = shutil.which(compiler)
        if path is None:
            raise FileNotFoundError(
                f"the C++ tool needs the compiler {compiler!r}, which is not on PATH: install it (Debian/Ubuntu: "
                f"'apt-get install g++'; Fedora: 'dnf install gcc-c++') or pass compiler='/path/to/g++'")
        self.compiler, self.flags = path, tuple(flags)
        if compile_limits is not None:
            self.compile_limits = compile_limits
        super().__init__(tests, sandbox=sandbox, limits=limits)

    def _check(self, code: str, offset: int, tests: Sequence[TestCase]) -> Certificate:
        built = self.sandbox.run([self.compiler, *self.flags, "-o", "prog", "prog.cpp"], {"prog.cpp": code},
                                 limits=self.compile_limits, collect=("prog",), env={"LC_ALL": "C"})
        if not built.ok or "prog" not in built.files:
            return self._cert(False, self._compile_spans(built, code, offset), stage="compile")
        binary = built.files["prog"]
        return self._run_tests(["./prog"], {"prog": binary}, code, offset, tests)

    def _compile_spans(self, built: RunResult, code: str, offset: int) -> List[Span]:
        if built.cause is not None:
            return [Span(offset, offset + len(code), f"the compiler: {built.cause}")]
        text = built.stderr.decode("utf-8", "replace")
        spans = [Span(*_line_span(code, offset, int(m.group(1))), f"line {m.group(1)}: {m.group(4)[:200]}")
                 for m in _GXX_DIAGNOSTIC.finditer(text)]
        if not spans:  # a link error ("undefined reference to `main'") or something else without a line
            lines = text.strip().splitlines()
            lines = ([line for line in lines if "undefined reference" in line]
                     or [line for line in lines if "error" in line] or lines)
            spans = [Span(offset, offset + len(code), f"does not build: {(lines[0] if lines else 'g++ failed')[:200]}")]
        return spans
