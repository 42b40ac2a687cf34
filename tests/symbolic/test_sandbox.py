"""The sandbox against hostile programs: each is contained, its certificate says why, the parent keeps working,
and no process or file is left behind."""

import dataclasses
import glob
import os
import socket
import tempfile
import threading

import pytest

from jax_irl.symbolic import sandbox as sb
from jax_irl.symbolic.programs import PythonTool, TestCase

ISO = sb.probe()
needs_isolation = pytest.mark.skipif(bool(ISO.missing), reason=f"sandbox isolation unavailable here: "
                                                                 f"{ISO.describe()}")
LIMITS = sb.Limits(cpu_seconds=1, wall_seconds=3.0, memory_bytes=256 * sb.MiB, file_bytes=64 * 1024, processes=16)
PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OK = "print('ok')\n"


@pytest.fixture(scope="module")
def tool():
    return PythonTool(lambda prompt: [TestCase("t", "", "ok")], sandbox=sb.Sandbox(LIMITS))


def _ours(uid: int) -> bool:
    """A sandbox uid of this process: 1,000,000 + (pid << 6) + slot (``sandbox._Uid``). Under pytest-xdist the
    other worker runs sandboxes of its own at the same time (this module's tests, the RLSF experiments), so a
    check for leftovers counts only this process's uids."""
    base = 1_000_000 + ((os.getpid() & 0x3FFFFF) << 6)
    return base <= uid < base + 64


def _sandbox_processes():
    """Live processes under this process's sandbox uids."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _ours(os.stat(f"/proc/{entry}").st_uid):
                    found.append(int(entry))
            except FileNotFoundError:
                pass
    return [p for p in found if not _zombie(p)]


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def _scratch_dirs():
    """The sandbox scratch directories; with a uid per run (root), only those of this process's runs (each is
    owned by its run's uid), since the other xdist worker makes and removes its own meanwhile."""
    found = set(glob.glob(os.path.join(tempfile.gettempdir(), "jax_irl-sandbox-*")))
    if not ISO.separate_uid:
        return found
    mine = set()
    for path in found:
        try:
            if _ours(os.stat(path).st_uid):
                mine.add(path)
        except FileNotFoundError:
            pass
    return mine


def _contained(tool, program, *expected_in_message):
    before = _scratch_dirs()
    cert = tool.check("p", program)
    assert not cert.correct
    text = cert.describe()
    assert any(word in text for word in expected_in_message), text
    assert _sandbox_processes() == []
    assert _scratch_dirs() == before
    assert tool.check("p", OK).correct  # the parent keeps working
    return cert


HOSTILE = {
    "infinite loop": ("while True:\n    pass\n", ("CPU-time limit",)),
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  ("CPU-time limit", "timed out")),
    "memory bomb": ("x = bytearray(1 << 34)\n", ("out of memory",)),
    "growing memory": ("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))\n", ("out of memory",)),
    "huge output": ("while True:\n    print('x' * 4096)\n", ("file-size limit",)),
    "sleeps past the timeout": ("import time\ntime.sleep(60)\n", ("timed out",)),
    "ignores SIGXCPU": ("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n",
                        ("CPU-time hard limit", "for the whole run")),  # the rlimit or the run's cgroup, first
}


# Programs that only the CPU-time limit should stop get a wall clock far above it: on a loaded machine (the other
# test worker compiling) a spinning program can get less than its 2 s of hard-limit CPU time within 3 s of wall time.
CPU_BOUND = {"infinite loop", "ignores SIGXCPU"}


@pytest.fixture(scope="module")
def cpu_tool():
    limits = dataclasses.replace(LIMITS, wall_seconds=30.0)
    return PythonTool(lambda prompt: [TestCase("t", "", "ok")], sandbox=sb.Sandbox(limits))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_resource_bombs_are_contained(tool, cpu_tool, name):
    program, why = HOSTILE[name]
    _contained(cpu_tool if name in CPU_BOUND else tool, program, *why)


@needs_isolation
@pytest.mark.parametrize("target", ["{project}/PWNED", "/tmp/PWNED", "{home}/PWNED", "/dev/shm/PWNED",
                                    "/var/tmp/PWNED", "/etc/PWNED", "/usr/PWNED"])
def test_writing_outside_the_scratch_directory_fails(tool, target):
    path = target.format(project=PROJECT, home=os.path.expanduser("~"))
    cert = _contained(tool, f"open({path!r}, 'w').write('x')\nprint('ok')\n",
                      "Read-only file system", "Permission denied", "No such file")
    assert "crashed" in cert.describe()
    assert not os.path.exists(path)


@needs_isolation
def test_the_project_and_home_are_hidden(tool):
    readme = os.path.join(PROJECT, "README.md")
    assert os.path.exists(readme)
    cert = _contained(tool, f"print(open({readme!r}).read())\n", "No such file")
    assert cert.spans[0].start == 0  # the traceback's line
    # Each folder is either absent (it lay under a hidden one, e.g. a clone under /tmp) or empty but for the
    # interpreter bound back into it.
    listing = ("import os\n"
               "def ls(p):\n"
               "    return sorted(os.listdir(p)) if os.path.isdir(p) else None\n"
               f"print((ls({PROJECT!r}), ls({os.path.expanduser('~')!r})))\n")
    listed = tool.sandbox.run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": listing})
    assert listed.ok, listed.stderr.decode()
    project_entries, home_entries = eval(listed.stdout.decode())  # noqa: S307 - our own program's output
    assert project_entries in (None, [])
    assert home_entries is None or set(home_entries) <= {".pyenv"}


@needs_isolation
def test_no_network_even_to_loopback(tool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    for program in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('ok')\n",
                    "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\nprint('ok')\n"):
        _contained(tool, program, "Network is unreachable", "Cannot assign requested address")
    thread = threading.Thread(target=accept)
    thread.start()
    thread.join()
    server.close()
    assert accepted == []


@needs_isolation
def test_killing_the_parent_or_anything_else_fails(tool):
    me = os.getpid()
    cert = _contained(tool, f"import os\nos.kill(-1, 9)\nos.kill({me}, 9)\nprint('ok')\n", "No such process")
    assert cert.spans  # kill(-1) reached only its own namespace; our pid is not even visible there
    _contained(tool, "import os\nos.kill(os.getppid(), 9)\nprint('ok')\n", "Operation not permitted")
    listing = tool.sandbox.run([sb.PYTHON, "-I", "-S", "-c", "import os; print(sorted(int(p) for p in "
                                "os.listdir('/proc') if p.isdigit()))"])
    assert eval(listing.stdout.decode()) == [1, 2]  # noqa: S307 - the reaper and itself only


@needs_isolation
def test_daemons_and_background_children_do_not_survive():
    box = sb.Sandbox(LIMITS)
    program = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               "        time.sleep(60)\n    os._exit(0)\nprint('ok')\n")
    result = box.run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": program})
    assert result.ok and result.stdout == b"ok\n"
    assert _sandbox_processes() == []


def test_output_is_captured_and_capped():
    box = sb.Sandbox(LIMITS)
    result = box.run([sb.PYTHON, "-I", "-S", "-c", "import sys; sys.stdout.write(sys.stdin.read()[::-1]); "
                      "sys.stderr.write('e' * 10)"], stdin="abc")
    assert (result.stdout, result.stderr, result.exit_code, result.cause) == (b"cba", b"eeeeeeeeee", 0, None)
    big = box.run([sb.PYTHON, "-I", "-S", "-c", "print('x' * 100000)"])  # Python ignores SIGXFSZ: EFBIG
    assert big.file_too_large and big.exit_code in (1, 120) and len(big.stdout) <= LIMITS.file_bytes
    shell = box.run(["/usr/bin/yes"])  # SIGXFSZ kills a program that does not ignore it
    assert shell.cause.startswith("file-size limit") and len(shell.stdout) == LIMITS.file_bytes


def test_environment_is_minimal_and_scratch_is_fresh():
    box = sb.Sandbox(LIMITS, env={"EXTRA": "1"})
    result = box.run([sb.PYTHON, "-I", "-S", "-c", "import os; print((sorted(os.environ), os.listdir('.')))"],
                     {"data/input.txt": "hi"})
    names, listing = eval(result.stdout.decode())  # noqa: S307
    assert set(names) <= {"PATH", "HOME", "TMPDIR", "LANG", "EXTRA", "LC_CTYPE"} and "EXTRA" in names
    assert listing == ["data"]


def test_collect_reads_back_regular_files_only():
    box = sb.Sandbox(LIMITS)
    result = box.run([sb.PYTHON, "-I", "-S", "-c", "import os; open('a', 'w').write('A'); "
                      "os.symlink('/etc/passwd', 'b'); os.mkfifo('c')"], collect=("a", "b", "c", "d", "../x"))
    assert result.ok and dict(result.files) == {"a": b"A"}


def test_fallback_without_namespaces_still_limits_and_kills_the_group(monkeypatch):
    box = sb.Sandbox(LIMITS)
    box.isolation = sb.Isolation(False, False, ("test fallback",))
    assert box.run(["/bin/echo", "hi"]).stdout == b"hi\n"
    slow = box.run([sb.PYTHON, "-I", "-S", "-c", "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n"
                    "time.sleep(60)"], limits=sb.Limits(cpu_seconds=1, wall_seconds=0.5))
    assert slow.timed_out and slow.cause.startswith("timed out")
    loop = box.run([sb.PYTHON, "-I", "-S", "-c", "while True: pass"], limits=sb.Limits(cpu_seconds=1))
    assert loop.cause.startswith("CPU-time limit")


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="Limits.cpu_seconds"):
        sb.Limits(cpu_seconds=0)
    with pytest.raises(ValueError, match="Limits.wall_seconds"):
        sb.Limits(wall_seconds=float("nan"))
    with pytest.raises(ValueError, match="whole number"):
        sb.Limits(cpu_seconds=1.5)
    box = sb.Sandbox(LIMITS)
    with pytest.raises(ValueError, match="leaves the scratch directory"):
        box.run(["/bin/true"], {"../escape": "x"})
    with pytest.raises(ValueError, match="argv"):
        box.run([])
    with pytest.raises(TypeError, match="sandbox.Limits"):
        sb.Sandbox({"cpu_seconds": 1})


def test_run_many_runs_in_parallel_and_keeps_order():
    box = sb.Sandbox(LIMITS)
    jobs = [([sb.PYTHON, "-I", "-S", "-c", "import sys; print(int(sys.stdin.read()) ** 2)"], {}, str(k))
            for k in range(8)]
    assert [r.stdout for r in box.run_many(jobs, workers=4)] == [f"{k * k}\n".encode() for k in range(8)]


def test_a_tree_too_deep_for_rmtree_is_removed_after_the_run(tmp_path):
    box = sb.Sandbox(LIMITS, scratch_root=str(tmp_path))
    deep = ("import os\n"
            "for _ in range(3000):\n"
            "    os.mkdir('d')\n"
            "    os.chdir('d')\n"
            "os.chmod('.', 0o500)\n"
            "print('ok')\n")
    result = box.run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": deep})
    assert result.ok and result.stdout.strip() == b"ok", result.stderr[-500:]
    assert os.listdir(tmp_path) == []  # the scratch directory is gone
    # The same tree by hand: shutil.rmtree alone raises RecursionError (or leaves it); remove_tree does not.
    path = tmp_path / "tree"
    os.makedirs(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(3000):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    sb.remove_tree(str(path))
    assert not path.exists()


def test_oversized_argv_or_environment_is_refused_by_name_without_leaking(tmp_path):
    box = sb.Sandbox(LIMITS, scratch_root=str(tmp_path))

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for _ in range(20):
        with pytest.raises(sb.SandboxError, match=r"argv \(\d+ bytes\) and environment \(\d+ bytes\) are too large"):
            box.run([sb.PYTHON, "-c", "print(1)", "x" * 200_000])
        with pytest.raises(sb.SandboxError, match="too large"):
            box.run([sb.PYTHON, "-c", "print(1)"], env={"BIG": "y" * 200_000})
    assert open_fds() == before
    assert os.listdir(tmp_path) == []
    assert box.run([sb.PYTHON, "-c", "print(1)", "x" * 50_000]).ok  # a large argv under the limit still runs


def _world_writable_dirs(depth=3):
    """The host's world-writable directories down to ``depth`` levels (not /proc or /sys)."""
    found, frontier = [], ["/"]
    for _ in range(depth):
        nxt = []
        for parent in frontier:
            try:
                entries = list(os.scandir(parent))
            except OSError:
                continue
            for entry in entries:
                if entry.path in ("/proc", "/sys") or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    if entry.stat(follow_symlinks=False).st_mode & 0o002:
                        found.append(entry.path)
                except OSError:
                    continue
                nxt.append(entry.path)
        frontier = nxt
    return found


@needs_isolation
def test_no_world_writable_folder_of_the_host_is_writable():
    box = sb.Sandbox(LIMITS)
    folders = sorted(set(_world_writable_dirs()) | {"/run/lock", "/var/lock", "/var/tmp", "/dev/shm"})
    name = f"jax_irl-pwned-{os.getpid()}"
    program = ("import os, sys\n"
               "written = []\n"
               "for folder in sys.argv[1:]:\n"
               "    try:\n"
               f"        open(os.path.join(folder, {name!r}), 'w').write('x')\n"
               "        written.append(folder)\n"
               "    except OSError:\n"
               "        pass\n"
               "open('/dev/null', 'w').write('x')  # device nodes still work\n"
               "print(written)\n")
    result = box.run([sb.PYTHON, "-I", "-S", "prog.py", *folders], {"prog.py": program})
    assert result.ok, result.stderr.decode()
    assert eval(result.stdout.decode()) == []  # noqa: S307 - our own program's output
    assert [f for f in folders if os.path.exists(os.path.join(f, name))] == []
    assert "/run/lock" in folders and os.path.isdir("/tmp")


@needs_isolation
def test_system_v_ipc_does_not_outlive_the_run_and_shared_memory_is_capped():
    key = 0x4A490000 + (os.getpid() & 0xFFFF)
    program = ("import ctypes\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               f"shm = libc.shmget({key}, 4096, 0o1666)\n"
               f"msg = libc.msgget({key}, 0o1666)\n"
               f"big = libc.shmget({key + 1}, ctypes.c_size_t(1 << 30), 0o1666)\n"  # past the 256 MiB limit
               "print(shm >= 0, msg >= 0, big, ctypes.get_errno())\n")
    result = sb.Sandbox(LIMITS).run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": program})
    assert result.ok, result.stderr.decode()
    created_shm, created_msg, big, err = result.stdout.decode().split()
    assert (created_shm, created_msg, big, int(err)) == ("True", "True", "-1", 22)  # EINVAL: over shmmax

    def keys(table):
        with open(f"/proc/sysvipc/{table}") as f:
            return {int(line.split()[0]) for line in f.read().splitlines()[1:]}

    assert key not in keys("shm") and key not in keys("msg")


@needs_isolation
def test_only_namespaced_socket_families_and_no_io_uring():
    program = ("import ctypes, errno, socket\n"
               "out = {}\n"
               "for name, family in (('vsock', 40), ('netlink', 16), ('packet', 17), ('bluetooth', 31)):\n"
               "    try:\n"
               "        socket.socket(family, socket.SOCK_DGRAM if family == 16 else socket.SOCK_STREAM).close()\n"
               "        out[name] = 'opened'\n"
               "    except OSError as err:\n"
               "        out[name] = errno.errorcode.get(err.errno)\n"
               "a, b = socket.socketpair()\n"
               "a.sendall(b'hi')\n"
               "out['unix'] = b.recv(2).decode()\n"
               "socket.socket(socket.AF_INET6).close()\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               "libc.syscall.restype = ctypes.c_long\n"
               "params = ctypes.create_string_buffer(120)\n"
               "rc = libc.syscall(425, 8, params)\n"
               "out['io_uring'] = errno.errorcode.get(ctypes.get_errno()) if rc < 0 else 'opened'\n"
               "print(out)\n")
    result = sb.Sandbox(LIMITS).run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": program})
    assert result.ok, result.stderr.decode()
    assert eval(result.stdout.decode()) == {  # noqa: S307 - our own program's output
        "vsock": "EAFNOSUPPORT", "netlink": "EAFNOSUPPORT", "packet": "EAFNOSUPPORT", "bluetooth": "EAFNOSUPPORT",
        "unix": "hi", "io_uring": "ENOSYS"}


@needs_isolation
def test_a_unix_socket_under_run_is_out_of_reach():
    path = f"/run/jax_irl-test-{os.getpid()}.sock"
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(path)
        server.listen(1)
        os.chmod(path, 0o777)
        program = (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\nprint('connected')\n")
        result = sb.Sandbox(LIMITS).run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": program})
        assert not result.ok and b"FileNotFoundError" in result.stderr, result.stderr.decode()
    finally:
        server.close()
        os.unlink(path)


needs_cgroup = pytest.mark.skipif(not ISO.cgroup, reason=f"no whole-run cgroup here: {ISO.describe()}")


def _cgroups_left():
    found = glob.glob("/sys/fs/cgroup/*/jax_irl-sandbox-*")
    return [g for g in found if _ours(int(g.rsplit("-", 1)[1]))]


@needs_cgroup
def test_the_memory_limit_counts_swap_where_the_host_has_swap():
    # With swap on the host, a cap on resident memory alone lets a run spill into swap instead of meeting it.
    with sb._Cgroup(f"jax_irl-sandbox-{os.getpid()}", sb.Limits(memory_bytes=96 * sb.MiB)) as group:
        memory = os.path.join(group.ROOT, "memory", group.name)
        for knob, value in (("memory.limit_in_bytes", 96 * sb.MiB), ("memory.memsw.limit_in_bytes", 96 * sb.MiB),
                            ("memory.swappiness", 0)):
            if knob == "memory.limit_in_bytes" or os.path.exists(os.path.join(memory, knob)):
                with open(os.path.join(memory, knob)) as f:
                    assert int(f.read()) == value, knob
    assert _cgroups_left() == []


@needs_cgroup
def test_memory_is_limited_for_the_whole_run_not_per_process():
    # Three children each touch 150 MiB, under a 256 MiB limit per process: 450 MiB together.
    program = ("import os, time\n"
               "kids = []\n"
               "for _ in range(3):\n"
               "    pid = os.fork()\n"
               "    if pid == 0:\n"
               "        block = b'x' * (150 << 20)\n"
               "        time.sleep(1.5)\n"
               "        os._exit(0)\n"
               "    kids.append(pid)\n"
               "codes = [os.waitpid(k, 0)[1] for k in kids]\n"
               "print(codes)\n"
               "raise SystemExit(1 if any(codes) else 0)\n")
    result = sb.Sandbox(LIMITS).run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": program})
    assert not result.ok and result.cause.startswith("out of memory: the run's processes together"), result
    assert _cgroups_left() == [] and _sandbox_processes() == []
    # One process under the limit still runs.
    single = sb.Sandbox(LIMITS).run([sb.PYTHON, "-I", "-S", "-c", "b = b'x' * (100 << 20); print(len(b))"])
    assert single.ok and single.stdout == b"104857600\n"


@needs_cgroup
def test_cpu_time_is_limited_for_the_whole_run_not_per_process():
    # Four children each spin for 0.9 s of CPU, under the 1 s limit per process: 3.6 s together.
    program = ("import os, time\n"
               "kids = []\n"
               "for _ in range(4):\n"
               "    pid = os.fork()\n"
               "    if pid == 0:\n"
               "        while time.process_time() < 0.9:\n"
               "            pass\n"
               "        os._exit(0)\n"
               "    kids.append(pid)\n"
               "for k in kids:\n"
               "    os.waitpid(k, 0)\n"
               "print('done')\n")
    limits = sb.Limits(cpu_seconds=1, wall_seconds=20.0, memory_bytes=256 * sb.MiB, processes=16)
    result = sb.Sandbox(limits).run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": program})
    assert not result.ok and "for the whole run" in result.cause and result.stdout == b"", result
    assert _cgroups_left() == [] and _sandbox_processes() == []


@needs_isolation
def test_the_scratch_filesystem_is_size_limited_and_collect_still_works(tmp_path):
    limits = sb.Limits(cpu_seconds=2, wall_seconds=10.0, memory_bytes=256 * sb.MiB, file_bytes=1 * sb.MiB,
                       scratch_bytes=4 * sb.MiB)
    program = ("import os\n"
               "written = 0\n"
               "try:\n"
               "    for i in range(20):\n"
               "        with open(f'big{i}', 'wb') as f:\n"
               "            f.write(b'y' * 1000_000)\n"
               "        written += 1\n"
               "except OSError as err:\n"
               "    print(written, err.errno)\n"
               "for i in range(1, 20):\n"
               "    if os.path.exists(f'big{i}'):\n"
               "        os.remove(f'big{i}')\n"
               "os.makedirs('out/deep')\n"
               "open('out/deep/r', 'w').write('R')\n")
    box = sb.Sandbox(limits, scratch_root=str(tmp_path))
    result = box.run([sb.PYTHON, "-I", "-S", "prog.py"], {"prog.py": program, "data/in.txt": "given"},
                     collect=("out/deep/r", "big0", "data/in.txt"))
    written, code = result.stdout.split()
    assert int(written) <= 4 and int(code) == 28  # ENOSPC once the 4 MiB are full
    assert result.files == {"out/deep/r": b"R", "big0": b"y" * 1000_000, "data/in.txt": b"given"}
    assert os.listdir(tmp_path) == []
    few = sb.Sandbox(dataclasses.replace(limits, scratch_inodes=500), scratch_root=str(tmp_path))
    inodes = few.run([sb.PYTHON, "-I", "-S", "-c", "import os\nn = 0\ntry:\n    while n < 40000:\n"
                      "        open(f'f{n}', 'w').close()\n        n += 1\nexcept OSError as err:\n"
                      "    print(n, err.errno)\n"])
    made, code = inodes.stdout.split()
    assert 400 < int(made) < 500 and int(code) == 28
    with pytest.raises(ValueError, match="Limits.scratch_bytes"):
        sb.Limits(scratch_bytes=0)
    with pytest.raises(ValueError, match="Limits.scratch_inodes must be a whole number"):
        sb.Limits(scratch_inodes=2.5)
