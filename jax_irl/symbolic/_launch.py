"""The sandbox's launcher: run by ``sandbox.Sandbox`` as ``python -I -S _launch.py CONFIG`` (standard library
only, trusted code), it isolates itself and then starts the untrusted program.

With namespaces (root, or wherever the kernel allows them):
    launcher: new mount, network and PID namespaces; the hidden paths covered by empty read-only tmpfs mounts,
              the exposed paths (the interpreter, the scratch directory) bound back; forks the reaper.
    reaper:   PID 1 of the new PID namespace; mounts a /proc that shows only the namespace; forks the program,
              reaps orphans, and reports the program's exit status; when it exits the kernel kills every process
              left in the namespace (a fork bomb's or a daemon's included).
    program:  resource limits, a fresh session, the sandbox's own uid (no supplementary groups), the scratch
              directory as working directory, a minimal environment; then exec.
Without namespaces the launcher applies the limits and execs the program itself (``Isolation`` records it).

Messages to the parent go, one JSON object per line, to the status pipe (close-on-exec, so the program never
holds it): {"reaper": pid}, {"exit": code} or {"signal": n}, or {"error": text} when isolation failed.
"""

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID = 0x00020000, 0x40000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
_libc = ctypes.CDLL(None, use_errno=True)


def _call(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _call(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
          f"mount {target}")


def _report(fd, **message):
    os.write(fd, (json.dumps(message) + "\n").encode())


def _within(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def _isolate_filesystem(cfg):
    """Cover the hidden paths with empty read-only tmpfs mounts and bind the exposed ones back, in an order that
    works however the two nest (a project, venv or interpreter under /tmp or the home directory, or a hidden path
    inside an exposed one):

    1. a handle (O_PATH) on every exposed path, opened while it is still visible;
    2. a tmpfs on every outermost hidden path (one inside another is covered by the outer one);
    3. each exposed path, outermost first, bound back from its handle (its mount point made inside the tmpfs);
    4. a tmpfs on every hidden path inside an exposed one (visible again after step 3);
    5. everything read-only but the scratch directory.
    """
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    expose = sorted(set(cfg["expose"]), key=lambda p: (p.count("/"), p))
    hide = sorted(set(cfg["hide"]) - set(expose), key=lambda p: (p.count("/"), p))
    handles = [(path, os.open(path, os.O_PATH)) for path in expose]
    outer = [h for h in hide if not any(o != h and _within(h, o) for o in hide)]
    inner = [h for h in hide if h not in outer and any(_within(h, e) for e in expose)]
    tmpfs = "mode=755,size=64k"
    for path in outer:
        _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
    for path, fd in handles:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    for path in inner:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
    for path, _ in handles:
        if path != cfg["scratch"]:
            _mount("none", path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    for path in outer + [p for p in inner if os.path.isdir(p)]:
        _mount("tmpfs", path, "tmpfs", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, tmpfs)


def _become_program(cfg):
    for name in ("SIGPIPE", "SIGXFSZ", "SIGXCPU"):  # Python ignores some of these; an exec would inherit that
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    limits = cfg["limits"]
    for name, soft, hard in (("RLIMIT_CPU", limits["cpu"], limits["cpu"] + 1),
                             ("RLIMIT_AS", limits["memory"], limits["memory"]),
                             ("RLIMIT_FSIZE", limits["file"], limits["file"]),
                             ("RLIMIT_NPROC", limits["processes"], limits["processes"]),
                             ("RLIMIT_NOFILE", limits["open_files"], limits["open_files"]),
                             ("RLIMIT_CORE", 0, 0)):
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.chdir(cfg["scratch"])
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if cfg["namespaces"]:
        os.setsid()
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


def _reaper(cfg, status):
    """PID 1 of the namespace: start the program, reap everything, report the program's status."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    program = os.fork()
    if program == 0:
        try:
            _become_program(cfg)
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            _report(status, error=f"starting the program: {type(err).__name__}: {err}")
        os._exit(127)
    while True:
        pid, code = os.waitpid(-1, 0)
        if pid == program:
            if os.WIFSIGNALED(code):
                _report(status, signal=os.WTERMSIG(code))
            else:
                _report(status, exit=os.WEXITSTATUS(code))
            os._exit(0)  # the kernel now kills what is left in the namespace


def _kill_all(uid):
    """Signal every process of ``uid`` at once: kill(-1) as that uid reaches all of its processes and no other."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    try:
        os.kill(-1, 9)
    except ProcessLookupError:
        pass


def main():
    cfg = json.loads(sys.argv[1])
    if "kill" in cfg:
        _kill_all(cfg["kill"])
        return
    status = cfg["status_fd"]
    os.set_inheritable(status, False)
    try:
        if cfg["namespaces"]:
            _call(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
            _isolate_filesystem(cfg)
            reaper = os.fork()
            if reaper == 0:
                try:
                    _reaper(cfg, status)
                except BaseException as err:  # noqa: BLE001 - reported to the parent
                    _report(status, error=f"the reaper: {type(err).__name__}: {err}")
                os._exit(127)
            _report(status, reaper=reaper)
            os.waitpid(reaper, 0)
            return
        _report(status, reaper=os.getpid())
        _become_program(cfg)
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        _report(status, error=f"{type(err).__name__}: {err}")
        os._exit(127)


if __name__ == "__main__":
    main()
