"""Throughput of the symbolic program tools: programs checked per second, sandboxed, on this machine's cores.

Each row checks a batch of model-like programs (half correct, half wrong) against 3 stdin/stdout tests, with
``check_many`` at 1 worker and at the CPU count. The first rows isolate the sandbox's own cost: the same
trivial program (/bin/true, and ``python -c pass``) started by a bare subprocess and through the sandbox,
interleaved run by run. Prints a markdown table. The isolation level in use is printed above it.

    .venv/bin/python tools/bench_sandbox.py [--programs 24] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import time

from jax_irl.symbolic import sandbox as sb
from jax_irl.symbolic.programs import CppTool, PythonTool, TestCase

TESTS = {"sum": [TestCase("one", "1 2\n", "3\n"), TestCase("two", "10 -4\n", "6\n"),
                 TestCase("big", "123456789 987654321\n", "1111111110\n")]}
PY = ["import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n",
      "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a - b)\n"]
CPP = ["#include <iostream>\nint main() { long long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }\n",
       "#include <iostream>\nint main() { long long a, b; std::cin >> a >> b; std::cout << a - b << '\\n'; }\n"]


def per_call(fns, repeats):
    """Median seconds per call of each fn, the calls interleaved (a, b, a, b, ...)."""
    times = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def throughput(tool, programs, workers):
    start = time.perf_counter()
    certs = tool.check_many(["sum"] * len(programs), programs, workers=workers)
    seconds = time.perf_counter() - start
    assert [c.correct for c in certs] == [k % 2 == 0 for k in range(len(programs))], "unexpected verdicts"
    return len(programs) / seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--programs", type=int, default=24)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    box = sb.Sandbox()
    cores = os.cpu_count() or 1
    print(f"isolation: {box.isolation.describe()}; {cores} cores; interpreter {sb.PYTHON}\n")
    rows = []
    bare_true, box_true = per_call([lambda: subprocess.run(["/bin/true"], check=True),
                                    lambda: box.run(["/bin/true"])], args.repeats)
    rows.append(("start /bin/true", f"{bare_true * 1e3:.1f} ms", f"{box_true * 1e3:.1f} ms", "", ""))
    cmd = [sb.PYTHON, "-I", "-S", "-c", "pass"]
    bare_py, box_py = per_call([lambda: subprocess.run(cmd, check=True), lambda: box.run(cmd)], args.repeats)
    rows.append(("start python -I -S", f"{bare_py * 1e3:.1f} ms", f"{box_py * 1e3:.1f} ms", "", ""))
    py_tool = PythonTool(TESTS, sandbox=box)
    programs = [PY[k % 2] for k in range(args.programs)]
    rows.append(("Python tool, 3 tests", "", "", f"{throughput(py_tool, programs, 1):.1f}",
                 f"{throughput(py_tool, programs, cores):.1f}"))
    if shutil.which("g++"):
        cpp_tool = CppTool(TESTS, sandbox=box)
        programs = [CPP[k % 2] for k in range(max(args.programs // 3, 2))]
        rows.append(("C++ tool (g++ -O1), 3 tests", "", "", f"{throughput(cpp_tool, programs, 1):.2f}",
                     f"{throughput(cpp_tool, programs, cores):.2f}"))
    else:
        rows.append(("C++ tool", "g++ not installed", "", "", ""))
    print("| what | bare subprocess | sandboxed | programs/s, 1 worker | programs/s, "
          f"{cores} workers |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
