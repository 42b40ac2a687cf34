"""The sandbox wherever a user's clone lives: a copy of the project under a temporary directory, under a fake
home directory, in a path with spaces and behind a symlink runs ``anywhere_worker``'s battery (a program runs,
its output and its scratch file work, the project and the home directory are hidden and cannot be written, the
Python and C++ tools check programs), and a layout whose interpreter is hidden is refused at start-up with a
message that names the path and the fix."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jax_irl.symbolic import sandbox as sb

ISO = sb.probe()
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(PROJECT, "tests", "symbolic", "anywhere_worker.py")
pytestmark = pytest.mark.skipif(bool(ISO.missing), reason=f"sandbox isolation unavailable: {ISO.describe()}")


def _copy_project(dest: str) -> str:
    os.makedirs(dest, exist_ok=True)
    shutil.copytree(os.path.join(PROJECT, "jax_irl"), os.path.join(dest, "jax_irl"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "README.md"):
        shutil.copy(os.path.join(PROJECT, name), dest)
    return dest


def _battery(project: str, home: str) -> dict:
    env = dict(os.environ, PYTHONPATH=project, HOME=home)
    out = subprocess.run([sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=240,
                         cwd=project)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _layouts(tmp_path):
    base = str(tmp_path)
    plain = _copy_project(os.path.join(base, "clone", "jax_irl"))  # as `git clone ... /tmp/x/jax_irl`
    home = os.path.join(base, "fake home")
    in_home = _copy_project(os.path.join(home, "code", "my project"))  # under $HOME, with spaces
    os.symlink(os.path.join(base, "clone"), os.path.join(base, "link"))
    linked = os.path.join(base, "link", "jax_irl")
    return {"under /tmp": (plain, os.path.join(base, "clone")), "under $HOME, with spaces": (in_home, home),
            "behind a symlink": (linked, home)}


@pytest.mark.slow
def test_the_battery_passes_wherever_the_project_lives(tmp_path):
    assert str(tmp_path).startswith("/tmp/") or os.path.realpath(str(tmp_path)).startswith("/tmp/")
    for layout, (project, home) in _layouts(tmp_path).items():
        os.makedirs(home, exist_ok=True)
        report = _battery(project, home)
        real = os.path.realpath(project)
        assert os.path.realpath(report["project"]) == real, layout  # the worker ran from the copy, not from this checkout
        assert report["ok"], (layout, report)
        seen = eval(report["seen"])  # noqa: S307 - our own program's output
        assert seen["scratch"] == "written", (layout, seen)
        # hidden: an empty mount over it, or not there at all (it lies inside another hidden folder)
        assert seen["project"] in ([], "FileNotFoundError"), (layout, seen)
        assert seen["home"] == "FileNotFoundError" or set(seen["home"]) <= {".pyenv"}, (layout, seen)
        assert seen["into_project"] != "written" and seen["into_home"] != "written", (layout, seen)
        assert report["pwned"] == [], layout
        assert report["python_tool"] is True and report["python_tool_wrong"] is False, (layout, report)
        if shutil.which("g++"):
            assert report["cpp_tool"] is True, (layout, report)


def test_a_hidden_interpreter_is_refused_with_the_path_and_the_fix(tmp_path, monkeypatch):
    # The interpreter's folder (sys.base_prefix) is what the sandbox binds back; hide it on purpose and expose
    # nothing in its place: the self-check must refuse the layout up front, naming the path and the fix.
    monkeypatch.setattr(sb.sys, "base_prefix", str(tmp_path))
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(sb.PYTHON)))
    with pytest.raises(sb.SandboxError) as err:
        sb.Sandbox(hide=[prefix])
    text = str(err.value)
    assert "self-check failed" in text and prefix in text and "expose=" in text
    sb.Sandbox(hide=[prefix], expose=[prefix])  # the fix the message gives works


def test_nested_hidden_paths_and_a_hidden_path_inside_an_exposed_one(tmp_path):
    outer = tmp_path / "outer"
    (outer / "inner" / "deeper").mkdir(parents=True)
    exposed = tmp_path / "tools"
    (exposed / "secret").mkdir(parents=True)
    (exposed / "visible.txt").write_text("yes")
    (exposed / "secret" / "key.txt").write_text("no")
    (outer / "inner" / "deeper" / "data.txt").write_text("no")
    box = sb.Sandbox(hide=[str(outer), str(outer / "inner"), str(outer / "inner" / "deeper"),
                           str(exposed / "secret")], expose=[str(exposed)])
    program = ("import os\n"
               f"print(open({str(exposed / 'visible.txt')!r}).read(), os.listdir({str(exposed / 'secret')!r}),\n"
               f"      os.path.exists({str(outer / 'inner' / 'deeper' / 'data.txt')!r}))\n")
    run = box.run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": program})
    assert run.ok, run.stderr
    assert run.stdout.decode().split() == ["yes", "[]", "False"]
