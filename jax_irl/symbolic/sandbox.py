"""A sandbox for model-written programs: each run is a separate, isolated, resource-limited process.

Every run gets:
- limits (``Limits``): CPU time, address space, the size of every file it writes (its captured output included:
  stdout and stderr are files, so a program that prints too much is stopped by the file-size limit), the number
  of processes, open files, no core dumps; and a wall-clock timeout;
- a fresh scratch directory (its working directory, HOME and TMPDIR), removed afterwards; with namespaces, a
  tmpfs of ``scratch_bytes`` holding a copy of its input files (``collect`` files copied back at the end);
- a minimal environment (PATH, HOME, TMPDIR, LANG and what the caller adds);
- where the kernel allows it (root, as on this project's machines): its own uid (so it cannot signal, read or
  write anything of the parent's, and its process limit counts only its own processes), new mount, network,
  PID and IPC namespaces: no network at all (not even loopback), the project, the home directory, the temporary
  directories and /run hidden behind empty read-only mounts (the interpreter and the scratch directory bound
  back), every other mount read-only, a /proc that shows only its own processes, a reaper as PID 1 whose exit
  makes the kernel kill every process the program left (fork bombs and daemons included), and a seccomp
  filter that allows only the namespaced socket families and no io_uring;
- where cgroup v1's memory and cpuacct controllers are writable: memory and CPU time limited for the whole
  run (all its processes together), not only per process.
Where namespaces are refused, the run falls back to limits, a new session and a process-group kill, and
``Isolation`` says what is missing; ``Sandbox(require_isolation=True)`` refuses to run instead.

After every run the parent kills anything still running under the run's uid and counts it (``strays_killed``).
``run_many`` runs a batch in parallel: each run is its own process, started from a thread pool (the threads
only wait). What a sandbox cannot stop is stated in docs/guides/symbolic.md (kernel exploits: the seccomp filter
covers socket families and io_uring only).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Mapping, Optional, Sequence, Tuple, Union

MiB = 1 << 20
_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_launch.py")
_PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = getattr(sys, "_base_executable", None) or sys.executable  # the base interpreter, not the venv's


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program): isolation refused, the launcher did not start."""


@dataclasses.dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 2
    wall_seconds: float = 5.0
    memory_bytes: int = 512 * MiB  # address space
    file_bytes: int = 1 * MiB      # each file written, stdout and stderr included
    processes: int = 32            # processes and threads of the run's uid
    open_files: int = 64
    scratch_bytes: int = 64 * MiB  # the scratch filesystem (with namespaces): every file of the run together
    scratch_inodes: int = 16384    # files and folders on the scratch filesystem (with namespaces)

    def __post_init__(self):
        for name in ("cpu_seconds", "wall_seconds", "memory_bytes", "file_bytes", "processes", "open_files",
                     "scratch_bytes", "scratch_inodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Limits.{name} must be a positive number; got {value!r}")
        for name in ("cpu_seconds", "scratch_inodes"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"Limits.{name} must be a whole number; got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class Isolation:
    namespaces: bool        # mount + network + PID + IPC namespaces
    separate_uid: bool
    missing: Tuple[str, ...] = ()  # what a fallback run lacks, in words
    cgroup: bool = False    # whole-run memory and CPU limits (cgroup v1 memory and cpuacct controllers)

    def describe(self) -> str:
        if not self.missing:
            return "own uid; mount, network, PID and IPC namespaces; whole-run cgroup limits"
        return "fallback: " + "; ".join(self.missing)


@dataclasses.dataclass(frozen=True)
class RunResult:
    exit_code: Optional[int]   # None when a signal ended it
    signal: Optional[int]
    stdout: bytes
    stderr: bytes
    wall_seconds: float
    timed_out: bool
    cause: Optional[str]       # why it did not end on its own (a limit, a signal), in words; None otherwise
    strays_killed: int         # processes still running under the run's uid afterwards, killed
    isolation: Isolation
    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)  # the ``collect`` files it left

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.cause is None

    @property
    def file_too_large(self) -> bool:
        """The file-size limit stopped it: SIGXFSZ, or EFBIG where the program ignores SIGXFSZ (Python does)."""
        return self.signal == signal.SIGXFSZ or b"[Errno 27] File too large" in self.stderr

    @property
    def out_of_memory(self) -> bool:
        return b"MemoryError" in self.stderr or b"std::bad_alloc" in self.stderr


_SIGNAL_WORDS = {signal.SIGSEGV: "crashed (segmentation fault)", signal.SIGABRT: "aborted",
                 signal.SIGFPE: "crashed (arithmetic error)", signal.SIGBUS: "crashed (bus error)"}


class Sandbox:
    """Runs programs (argv lists) with ``files`` written into a fresh scratch directory first."""

    def __init__(self, limits: Limits = Limits(), *, hide: Sequence[str] = (), expose: Sequence[str] = (),
                 env: Optional[Mapping[str, str]] = None, require_isolation: bool = False,
                 scratch_root: Optional[str] = None):
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a sandbox.Limits; got {type(limits).__name__}")
        self.limits = limits
        self.scratch_root = os.path.abspath(scratch_root or tempfile.gettempdir())
        if not os.path.isdir(self.scratch_root):
            raise ValueError(f"scratch_root {self.scratch_root!r} is not a directory")
        home = os.path.expanduser("~")
        # /run (and /var/run, /var/lock into it) holds the services' sockets, which a read-only mount does not
        # stop a program from connecting to.
        defaults = [_PROJECT, home, tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm", "/run"]
        self.expose = tuple(os.path.realpath(p) for p in [sys.base_prefix, *expose])
        # A folder on the way to an exposed path that others may not enter (a 0700 home holding the interpreter,
        # as pyenv's /root/.pyenv) would stop the run's own uid there: it is hidden too, so that the empty,
        # enterable mount over it leads to the exposed path bound back inside.
        closed = [a for p in self.expose for a in _ancestors(p) if not os.stat(a).st_mode & stat.S_IXOTH]
        self.hide = tuple(sorted({os.path.realpath(p) for p in list(defaults) + list(hide) + closed
                                  if os.path.isdir(p)}))
        self.env = dict(env or {})
        self.isolation = probe()
        if require_isolation and self.isolation.missing:
            raise SandboxError(f"isolation required but unavailable: {self.isolation.describe()}")
        if self.isolation.namespaces:
            problem = _self_check(self.hide, tuple(p for p in self.expose if os.path.isdir(p)), self.scratch_root)
            if problem:
                raise SandboxError(problem)

    # ----------------------------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], files: Optional[Mapping[str, Union[str, bytes]]] = None, *,
            stdin: Union[str, bytes] = b"", limits: Optional[Limits] = None, collect: Sequence[str] = (),
            env: Optional[Mapping[str, str]] = None) -> RunResult:
        """Run ``argv`` in a fresh scratch directory holding ``files`` (executable by the run); ``collect``
        names files to read back afterwards (regular files inside the scratch directory, at most
        ``limits.file_bytes`` each; a missing or odd one is left out)."""
        limits = limits or self.limits
        if not argv:
            raise ValueError("argv must name a program")
        with _Uid() as uid, _Scratch(self.scratch_root, uid if self.isolation.separate_uid else None) as scratch:
            for name, content in (files or {}).items():
                _write_file(scratch.path, name, content, uid if self.isolation.separate_uid else None)
            result = self._run(list(argv), stdin, limits, uid, scratch, env or {}, tuple(collect))
            found = {name: data for name in collect
                     if (data := _collect(scratch.path, name, limits.file_bytes)) is not None}
            return dataclasses.replace(result, files=found) if found else result

    def run_many(self, jobs: Sequence[Tuple[Sequence[str], Mapping[str, Union[str, bytes]], Union[str, bytes]]],
                 *, workers: Optional[int] = None, limits: Optional[Limits] = None) -> List[RunResult]:
        """Runs (argv, files, stdin) jobs in parallel, ``workers`` at a time (default: the CPU count)."""
        workers = workers or os.cpu_count() or 1
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda job: self.run(job[0], job[1], stdin=job[2], limits=limits), jobs))

    # ----------------------------------------------------------------------------------------------------------
    def _run(self, argv, stdin, limits: Limits, uid: int, scratch: "_Scratch", extra_env, collect) -> RunResult:
        with _Cgroup(f"jax_irl-sandbox-{uid}", limits) if self.isolation.cgroup else contextlib.nullcontext() as group:
            return self._run_in(argv, stdin, limits, uid, scratch, extra_env, collect, group)

    def _run_in(self, argv, stdin, limits, uid, scratch, extra_env, collect, group) -> RunResult:
        iso = self.isolation
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": scratch.path, "TMPDIR": scratch.path,
               "LANG": "C.UTF-8", **self.env, **extra_env}
        hide = list(self.hide)
        read_end, write_end = os.pipe()
        cfg = {"status_fd": write_end, "namespaces": iso.namespaces, "uid": uid if iso.separate_uid else None,
               "argv": argv, "env": env, "scratch": scratch.path, "hide": hide,
               "expose": [p for p in self.expose if os.path.isdir(p)] + [scratch.path],
               "limits": {"cpu": limits.cpu_seconds, "memory": limits.memory_bytes, "file": limits.file_bytes,
                          "processes": limits.processes, "open_files": limits.open_files},
               "scratch_bytes": limits.scratch_bytes if iso.namespaces else None,
               "scratch_inodes": limits.scratch_inodes, "collect": list(collect),
               "cgroups": group.paths if group else []}
        payload = json.dumps(cfg)
        if len(payload.encode()) > MAX_LAUNCH_BYTES:
            os.close(read_end)
            os.close(write_end)
            sizes = (sum(len(str(a).encode()) + 1 for a in argv),
                     sum(len(str(k).encode()) + len(str(v).encode()) + 2 for k, v in env.items()))
            raise SandboxError(f"the program's argv ({sizes[0]} bytes) and environment ({sizes[1]} bytes) are too "
                               f"large to pass to the sandbox (at most {MAX_LAUNCH_BYTES} bytes together, under the "
                               f"kernel's 128 KiB limit on one argument): pass large inputs as files or stdin")
        stdin_bytes = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
        with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
            fin.write(stdin_bytes)
            fin.seek(0)
            start = time.monotonic()
            try:
                proc = subprocess.Popen([PYTHON, "-I", "-S", _LAUNCHER, payload], stdin=fin, stdout=fout,
                                        stderr=ferr, pass_fds=(write_end,), start_new_session=True, env=env,
                                        cwd=scratch.path)
            except OSError as err:
                os.close(read_end)
                raise SandboxError(f"the sandbox's launcher could not be started: {err}") from None
            finally:
                os.close(write_end)
            messages = _Messages(read_end)
            try:
                first = messages.next(timeout=30.0)
                if first is None or "error" in first:
                    proc.kill()
                    proc.wait()
                    raise SandboxError(f"the sandbox did not start: "
                                       f"{(first or {}).get('error', 'no word from the launcher')}")
                if "reaper" not in first:
                    proc.kill()
                    proc.wait()
                    raise SandboxError(f"the sandbox's launcher sent {first} before naming its reaper")
                reaper = first["reaper"]
                timed_out, over_cpu = False, False
                deadline = start + limits.wall_seconds
                while True:  # the wall clock, and the whole run's CPU time where a cgroup counts it
                    try:
                        proc.wait(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
                        break
                    except subprocess.TimeoutExpired:
                        over_cpu = group is not None and group.cpu_seconds() > limits.cpu_seconds + 1
                        if over_cpu or time.monotonic() >= deadline:
                            timed_out = not over_cpu
                            _kill_quietly(reaper if iso.namespaces else -reaper)  # the PID namespace, or the group
                            proc.kill()
                            proc.wait()
                            break
                wall = time.monotonic() - start
                status = messages.next(timeout=1.0)
                after = messages.next(timeout=0.5) if status is not None and not timed_out else None
            finally:
                messages.close()
            if status is not None and "error" in status:
                raise SandboxError(f"the sandbox could not start the program: {status['error']}")
            if after is not None and "error" in after:
                raise SandboxError(f"the sandbox failed after the program ended: {after['error']}")
            if iso.namespaces:
                exit_code, sig = (status or {}).get("exit"), (status or {}).get("signal")
                if status is None and not timed_out:
                    sig = signal.SIGKILL
            else:
                exit_code, sig = (proc.returncode, None) if proc.returncode >= 0 else (None, -proc.returncode)
                if not timed_out:
                    _kill_quietly(-reaper)
            strays = _kill_uid(uid) if iso.separate_uid else 0
            out, err = _head(fout, limits.file_bytes), _head(ferr, limits.file_bytes)
        if timed_out:
            exit_code, sig = None, None
        cause = _cause(timed_out, sig, limits)
        if over_cpu:
            exit_code, sig = None, signal.SIGKILL
            cause = (f"CPU-time limit ({limits.cpu_seconds} s, +1 s of grace, for the whole run: all its processes "
                     f"together) exceeded")
        elif group is not None and group.oom_kills():
            cause = (f"out of memory: the run's processes together reached its {limits.memory_bytes // MiB} MiB "
                     f"(the kernel killed {group.oom_kills()} of them)")
        return RunResult(exit_code, sig, out, err, wall, timed_out, cause, strays, iso)


def _cause(timed_out: bool, sig: Optional[int], limits: Limits) -> Optional[str]:
    if timed_out:
        return f"timed out: still running after the {limits.wall_seconds:g} s wall-clock limit"
    if sig is None:
        return None
    if sig == signal.SIGXCPU:
        return f"CPU-time limit ({limits.cpu_seconds} s) exceeded"
    if sig == signal.SIGXFSZ:
        return f"file-size limit ({limits.file_bytes} bytes, output included) exceeded"
    if sig == signal.SIGKILL:
        return f"killed (SIGKILL: the {limits.cpu_seconds} s CPU-time hard limit, or the kernel)"
    return _SIGNAL_WORDS.get(sig, f"killed by signal {signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig}")


@functools.lru_cache(maxsize=None)
def probe() -> Isolation:
    """What isolation this machine allows, found once per process by running the launcher on ``true``."""
    missing = []
    separate_uid = os.geteuid() == 0
    if not separate_uid:
        missing.append("same uid as the parent (not root): the program can signal and read what the parent can")
    namespaces = _try_namespaces(separate_uid)
    if not namespaces:
        missing.append("no mount/network/PID/IPC namespaces (refused by the kernel): network open, files visible, "
                       "stray processes killed by process group and uid only, disk use capped per file only")
    cgroup = separate_uid and _Cgroup.available()
    if not cgroup:
        missing.append("no writable cgroup v1 memory and cpuacct controllers: memory and CPU time are limited per "
                       "process, not for the whole run")
    return Isolation(namespaces, separate_uid, tuple(missing), cgroup)


def _try_namespaces(separate_uid: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return not _launch_once(["/bin/true"], hide=(), expose=(), scratch_root=None)


def _launch_once(argv, *, hide, expose, scratch_root) -> List[str]:
    """Run the launcher with namespaces on ``argv`` (no uid change) in a fresh scratch directory; returns the
    problems it reported ([] when ``argv`` ran and exited 0)."""
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="jax_irl-probe-", dir=scratch_root))
    read_end, write_end = os.pipe()
    cfg = {"status_fd": write_end, "namespaces": True, "uid": None, "argv": list(argv),
           "env": {"PATH": "/usr/bin:/bin"}, "scratch": scratch, "hide": list(hide),
           "expose": list(expose) + [scratch],
           "limits": {"cpu": 5, "memory": 1024 * MiB, "file": MiB, "processes": 64, "open_files": 64}}
    try:
        proc = subprocess.Popen([PYTHON, "-I", "-S", _LAUNCHER, json.dumps(cfg)], pass_fds=(write_end,),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        os.close(write_end)
        _, err = proc.communicate(timeout=30)
        with os.fdopen(read_end, "rb") as f:
            lines = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        problems = [m["error"] for m in lines if "error" in m]
        if not problems and not any(m.get("exit") == 0 for m in lines):
            codes = [m for m in lines if "exit" in m or "signal" in m]
            problems.append(f"{argv[0]} did not exit cleanly ({codes or 'no status'}; stderr "
                            f"{err.decode(errors='replace')[-300:]!r})")
        return problems
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        return [f"{type(err).__name__}: {err}"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _self_check(hide: Tuple[str, ...], expose: Tuple[str, ...], scratch_root: str) -> Optional[str]:
    """Start the interpreter in a sandbox laid out as ``hide``/``expose`` once per layout and process; None when
    it runs, else a message that says what failed, what the layout was, and how to fix it."""
    problems = _launch_once([PYTHON, "-I", "-S", "-c", "pass"], hide=hide, expose=expose, scratch_root=scratch_root)
    if not problems:
        return None
    hidden_home = [h for h in hide if _under(os.path.realpath(PYTHON), h)
                   and not any(_under(os.path.realpath(PYTHON), e) for e in expose)]
    fix = (f"the interpreter {PYTHON} lies under the hidden path {hidden_home[0]} and outside every exposed "
           f"path: pass Sandbox(expose=[<the folder that holds it>])" if hidden_home else
           "check that the paths above exist and are directories; pass Sandbox(scratch_root=...) to put the "
           "scratch directories elsewhere, or expose=[...] for a folder the program needs")
    return (f"the sandbox's start-up self-check failed: {'; '.join(problems)}. Layout: hidden {list(hide)}, bound "
            f"back {list(expose)}, scratch directories under {scratch_root}. Fix: {fix}")


class _Messages:
    """JSON lines from the launcher's status pipe."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def next(self, timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        os.close(self.fd)


# The launcher's configuration (argv and environment included) travels as one argument of its command line; Linux
# refuses a single argument over 128 KiB (MAX_ARG_STRLEN) with E2BIG.
MAX_LAUNCH_BYTES = 120 * 1024


class _Uid:
    """A uid of its own for each concurrent run: 1,000,000 + (pid << 6) + slot (64 slots per process)."""
    _lock = threading.Lock()
    _used: set = set()

    def __enter__(self) -> int:
        with self._lock:
            slot = next((s for s in range(64) if s not in self._used), None)
            if slot is None:
                raise SandboxError("more than 64 concurrent sandbox runs in one process")
            self._used.add(slot)
        self.slot = slot
        return 1_000_000 + ((os.getpid() & 0x3FFFFF) << 6) + slot

    def __exit__(self, *exc):
        with self._lock:
            self._used.discard(self.slot)


class _Cgroup:
    """The run's cgroups (v1): memory (resident memory, page cache and shared memory of all its processes
    together, capped at ``memory_bytes``, swap included where the host has swap; the kernel's OOM killer acts
    inside it) and cpuacct (CPU time of all
    its processes, which the parent polls). Made before the launcher starts, which joins them first thing;
    removed after the run, once every process of it is gone."""
    ROOT = "/sys/fs/cgroup"

    def __init__(self, name: str, limits: Limits):
        self.name, self.limits = name, limits

    @classmethod
    def available(cls) -> bool:
        try:
            with cls(f"jax_irl-probe-{os.getpid()}", Limits()) as group:
                return group.cpu_seconds() == 0.0 and group.oom_kills() == 0
        except OSError:
            return False

    def __enter__(self) -> "_Cgroup":
        self.paths = []
        try:
            for controller in ("memory", "cpuacct"):
                path = os.path.join(self.ROOT, controller, self.name)
                os.makedirs(path, exist_ok=True)
                self.paths.append(path)
            memory = os.path.join(self.ROOT, "memory", self.name)
            with open(os.path.join(memory, "memory.limit_in_bytes"), "w") as f:
                f.write(str(self.limits.memory_bytes))
            # On a host with swap the limit above caps resident memory only, and the run would spill into swap
            # instead of meeting it: cap memory and swap together (where the kernel accounts swap), and keep
            # the group's pages out of swap.
            for knob, value in (("memory.memsw.limit_in_bytes", self.limits.memory_bytes), ("memory.swappiness", 0)):
                if os.path.exists(os.path.join(memory, knob)):
                    with open(os.path.join(memory, knob), "w") as f:
                        f.write(str(value))
        except OSError:
            self.__exit__()
            raise
        return self

    def cpu_seconds(self) -> float:
        with open(os.path.join(self.ROOT, "cpuacct", self.name, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    def oom_kills(self) -> int:
        with open(os.path.join(self.ROOT, "memory", self.name, "memory.oom_control")) as f:
            fields = dict(line.split() for line in f.read().splitlines() if len(line.split()) == 2)
        return int(fields.get("oom_kill", 0))

    def __exit__(self, *exc):
        for path in reversed(self.paths):
            for _ in range(200):  # a killed process leaves its cgroup a moment after it is reaped
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)
            else:
                raise SandboxError(f"the sandbox's cgroup {path} could not be removed (processes still in it)")


class _Scratch:
    def __init__(self, root: str, uid: Optional[int]):
        self.root, self.uid = root, uid

    def __enter__(self) -> "_Scratch":
        self.path = os.path.realpath(tempfile.mkdtemp(prefix="jax_irl-sandbox-", dir=self.root))
        if self.uid is not None:
            os.chown(self.path, self.uid, self.uid)
        os.chmod(self.path, 0o700)
        return self

    def __exit__(self, *exc):
        remove_tree(self.path)


def remove_tree(path: str) -> None:
    """Remove a scratch directory whatever the run left in it: folders made read-only from the inside, and trees
    deeper than Python's recursion limit or PATH_MAX (where ``shutil.rmtree`` raises RecursionError or fails),
    which coreutils' ``rm`` (fts, no recursion) removes. Raises SandboxError, naming the path, only if the tree
    is still there afterwards."""
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        pass
    if not os.path.lexists(path):
        return
    for command in (["chmod", "-R", "u+rwx", path], ["rm", "-rf", "--one-file-system", path]):
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    if os.path.lexists(path):
        raise SandboxError(f"the scratch directory {path} could not be removed")


def _write_file(root: str, name: str, content: Union[str, bytes], uid: Optional[int]):
    path = os.path.realpath(os.path.join(root, name))
    if not _under(path, root) or path == root:
        raise ValueError(f"sandbox file name {name!r} leaves the scratch directory")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    os.chmod(path, 0o700)
    if uid is not None:
        os.chown(path, uid, uid)


def _collect(root: str, name: str, limit: int) -> Optional[bytes]:
    path = os.path.realpath(os.path.join(root, name))
    try:
        if not _under(path, root) or not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def _ancestors(path: str) -> List[str]:
    """The folders above ``path`` (an absolute real path), '/' excluded, that exist."""
    out, parent = [], os.path.dirname(path)
    while parent not in ("/", ""):
        if os.path.isdir(parent):
            out.append(parent)
        parent = os.path.dirname(parent)
    return out


def _under(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _head(f, limit: int) -> bytes:
    f.seek(0)
    return f.read(limit)


def _kill_quietly(pid: int):
    try:
        os.kill(pid, signal.SIGKILL) if pid > 0 else os.killpg(-pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def processes_of(uid: int, include_zombies: bool = False) -> List[int]:
    """Pids of the processes running under ``uid`` (by /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            if not include_zombies:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue
            found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return found


def _kill_uid(uid: int) -> int:
    """Kill every process of ``uid`` (kill(-1) as that uid, repeated until none is left); returns how many."""
    left = processes_of(uid)
    count = len(left)
    for _ in range(50):
        if not left:
            return count
        subprocess.run([PYTHON, "-I", "-S", _LAUNCHER, json.dumps({"kill": uid})], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.01)
        left = processes_of(uid)
    raise SandboxError(f"processes of sandbox uid {uid} survive repeated kills: {left}")


__all__ = ["Isolation", "Limits", "PYTHON", "RunResult", "Sandbox", "SandboxError", "probe", "processes_of"]
