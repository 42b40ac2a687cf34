"""Run from a copy of the project (``python anywhere_worker.py``, with the copy first on PYTHONPATH): a short
battery of sandboxed programs, printed as one JSON line. ``test_sandbox_anywhere`` lays the copy out where users
put their clones (under /tmp, under $HOME, behind a symlink, in a path with spaces)."""

import json
import os
import shutil
import sys

from jax_irl.symbolic import sandbox as sb
from jax_irl.symbolic.programs import CppTool, PythonTool, TestCase

project = sb._PROJECT
home = os.path.expanduser("~")
box = sb.Sandbox(sb.Limits(cpu_seconds=2, wall_seconds=10.0, memory_bytes=512 * sb.MiB))
probe = ("import os\n"
         "def ls(p):\n"
         "    try:\n"
         "        return sorted(os.listdir(p))\n"
         "    except OSError as e:\n"
         "        return type(e).__name__\n"
         "def write(p):\n"
         "    try:\n"
         "        open(p, 'w').write('x')\n"
         "        return 'written'\n"
         "    except OSError as e:\n"
         "        return type(e).__name__\n"
         f"print(repr({{'project': ls({project!r}), 'home': ls({home!r}), 'scratch': write('here.txt'),\n"
         f"             'into_project': write({os.path.join(project, 'PWNED')!r}),\n"
         f"             'into_home': write({os.path.join(home, 'PWNED')!r})}}))\n")
run = box.run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": probe})
report = {"project": project, "home": home, "ok": run.ok, "stderr": run.stderr.decode(errors="replace")[-500:],
          "seen": run.stdout.decode(errors="replace"), "isolation": run.isolation.describe()}
python_tool = PythonTool(lambda prompt: [TestCase("t", "3\n", "6")], sandbox=box)
report["python_tool"] = python_tool.check("p", "print(2 * int(input()))\n").correct
report["python_tool_wrong"] = python_tool.check("p", "print(7)\n").correct
if shutil.which("g++"):
    cpp = CppTool(lambda prompt: [TestCase("t", "3\n", "6")], sandbox=sb.Sandbox(CppTool.run_limits))
    report["cpp_tool"] = cpp.check("p", "#include <iostream>\nint main(){int x; std::cin >> x; "
                                        "std::cout << 2 * x << std::endl;}\n").correct
report["pwned"] = [p for p in (os.path.join(project, "PWNED"), os.path.join(home, "PWNED")) if os.path.exists(p)]
print(json.dumps(report))
sys.stdout.flush()
