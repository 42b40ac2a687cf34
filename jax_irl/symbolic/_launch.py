"""The sandbox's launcher: run by ``sandbox.Sandbox`` as ``python -I -S _launch.py CONFIG`` (standard library
only, trusted code), it isolates itself and then starts the untrusted program.

With namespaces (root, or wherever the kernel allows them):
    launcher: joins the run's cgroups (whole-run memory and CPU accounting) where the parent made them; new
              mount, network, PID and IPC namespaces (the IPC one's shared-memory sysctls capped at the run's
              memory limit); the hidden paths covered by empty read-only tmpfs mounts, the exposed paths (the
              interpreter, the scratch directory) bound back, and a size-limited tmpfs over the scratch
              directory holding a copy of its files; then every mount but the scratch directory made read-only
              (so no world-writable folder anywhere stays writable); forks the reaper; when the reaper is gone,
              copies the files the parent asked to collect back to the real scratch directory.
    reaper:   PID 1 of the new PID namespace; mounts a /proc that shows only the namespace; forks the program,
              reaps orphans, and reports the program's exit status; when it exits the kernel kills every process
              left in the namespace (a fork bomb's or a daemon's included).
    program:  resource limits, a fresh session, the sandbox's own uid (no supplementary groups), the scratch
              directory as working directory, a minimal environment, no new privileges and a seccomp filter
              that allows only the namespaced socket families (AF_UNIX, AF_INET, AF_INET6) and no io_uring;
              then exec.
Without namespaces the launcher applies the limits and execs the program itself (``Isolation`` records it).

Messages to the parent go, one JSON object per line, to the status pipe (close-on-exec, so the program never
holds it): {"reaper": pid}, {"exit": code} or {"signal": n}, or {"error": text} when isolation failed.
"""

import ctypes
import json
import os
import resource
import signal
import stat
import sys

import errno
import platform
import struct

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x20000000, 0x08000000
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
    lower = _scratch_filesystem(cfg) if cfg.get("scratch_bytes") else None
    for path in inner:
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs)
    for path, _ in handles:
        if path != cfg["scratch"]:
            _mount("none", path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    for path in outer + [p for p in inner if os.path.isdir(p)]:
        _mount("tmpfs", path, "tmpfs", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, tmpfs)
    return lower


def _scratch_filesystem(cfg):
    """A tmpfs of ``scratch_bytes`` (and a bounded number of inodes) over the scratch directory, holding a copy
    of what the parent wrote there, so the run's disk use is capped as a whole. Returns a handle on the real
    scratch directory underneath (a writable bind mount that no path reaches any more), for ``_collect_back``."""
    scratch, uid = cfg["scratch"], cfg["uid"]
    lower = os.open(scratch, os.O_PATH | os.O_DIRECTORY)
    owner = "" if uid is None else f",uid={uid},gid={uid}"
    _mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['scratch_bytes']},nr_inodes={cfg['scratch_inodes']},mode=700{owner}")
    source = f"/proc/self/fd/{lower}"
    for root, dirs, files in os.walk(source):
        rel = os.path.relpath(root, source)
        for name in dirs:
            target = os.path.normpath(os.path.join(scratch, rel, name))
            os.mkdir(target, 0o700)
            if uid is not None:
                os.chown(target, uid, uid)
        for name in files:
            target = os.path.normpath(os.path.join(scratch, rel, name))
            with open(os.path.join(root, name), "rb") as src, open(target, "wb") as dst:
                dst.write(src.read())
            os.chmod(target, os.stat(os.path.join(root, name)).st_mode & 0o777)
            if uid is not None:
                os.chown(target, uid, uid)
    return lower


def _collect_back(cfg, lower):
    """After every process of the run is gone: the ``collect`` files (regular files inside the scratch tmpfs, at
    most ``file`` bytes each) copied to the real scratch directory, where the parent reads them."""
    scratch = cfg["scratch"]
    for name in cfg.get("collect", ()):
        path = os.path.realpath(os.path.join(scratch, name))
        if not _within(path, scratch) or path == scratch:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                continue
            data, mode = f.read(cfg["limits"]["file"]), os.fstat(f.fileno()).st_mode & 0o777
        # Through the handle (``*at`` calls): /proc is the run's PID namespace's by now, without /proc/self.
        *folders, leaf = os.path.relpath(path, scratch).split("/")
        at = os.dup(lower)
        try:
            for folder in folders:
                try:
                    os.mkdir(folder, 0o700, dir_fd=at)
                except FileExistsError:
                    pass
                inner = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=at)
                os.close(at)
                at = inner
            out = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode, dir_fd=at)
            with os.fdopen(out, "wb") as f:
                f.write(data)
        finally:
            os.close(at)


def _read_only_everywhere(scratch):
    """Every mount of the namespace read-only but the scratch directory, keeping its nosuid/nodev/noexec. A
    mount point now covered by a hidden path's tmpfs is out of reach and skipped (ENOENT or EINVAL)."""
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    for line in lines:
        fields = line.split(" ")
        point = fields[4].encode().decode("unicode_escape")  # octal escapes such as \040 for a space
        if _within(point, scratch):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in fields[5].split(","):
            flags |= keep.get(option, 0)
        try:
            _mount("none", point, None, flags)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.EINVAL):
                raise


def _cap_ipc(memory):
    """The new IPC namespace's System V shared memory capped at the run's address-space limit (these sysctls
    are per IPC namespace), so shared memory cannot hold more than one process may."""
    page = os.sysconf("SC_PAGE_SIZE")
    for name, value in (("shmmax", memory), ("shmall", max(1, memory // page))):
        with open(f"/proc/sys/kernel/{name}", "w") as f:
            f.write(str(value))


# seccomp: allow the socket families that the network namespace isolates; refuse the rest (AF_VSOCK reaches the
# host of a virtual machine, AF_NETLINK's families are not all namespaced, AF_PACKET, AF_BLUETOOTH ...), and
# io_uring (which can open sockets without the socket syscall). Other architectures' syscalls are refused.
_SECCOMP = {"x86_64": (0xC000003E, 41, 53, 425, True), "aarch64": (0xC00000B7, 198, 199, 425, False)}
_ALLOWED_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6


def _seccomp_filter():
    """Install the filter (after PR_SET_NO_NEW_PRIVS, as the kernel requires without CAP_SYS_ADMIN)."""
    machine = platform.machine()
    if machine not in _SECCOMP:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine!r} (x86_64 and aarch64 only)")
    arch, socket_nr, socketpair_nr, io_uring_nr, x32 = _SECCOMP[machine]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, refuse = 0x7FFF0000, 0x00050000
    n_fam = len(_ALLOWED_FAMILIES)
    prog = [(ld, 0, 0, 4),                              # arch
            (jeq, 1, 0, arch),
            (ret, 0, 0, refuse | errno.ENOSYS),         # another architecture's syscall
            (ld, 0, 0, 0)]                              # nr
    if x32:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, refuse | errno.ENOSYS)]
    prog += [(jeq, 0, 1, io_uring_nr), (ret, 0, 0, refuse | errno.ENOSYS),
             (jeq, 1, 0, socket_nr),
             (jeq, 0, n_fam + 2, socketpair_nr),
             (ld, 0, 0, 16)]                            # args[0], low 32 bits: the family
    prog += [(jeq, n_fam - i, 0, family) for i, family in enumerate(_ALLOWED_FAMILIES)]
    prog += [(ret, 0, 0, refuse | errno.EAFNOSUPPORT), (ret, 0, 0, allow)]
    raw = b"".join(struct.pack("=HBBI", *op) for op in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = FProg(len(prog), ctypes.addressof(buf))
    _call(_libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _call(_libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


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
        _seccomp_filter()
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
        for group in cfg.get("cgroups", ()):  # before anything else, so every process of the run is inside
            with open(os.path.join(group, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if cfg["namespaces"]:
            _call(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
            _cap_ipc(cfg["limits"]["memory"])
            lower = _isolate_filesystem(cfg)
            _read_only_everywhere(cfg["scratch"])
            # The reaper waits for the launcher's {"reaper": pid} to be written before it starts the program, so
            # the parent always reads that message first (a program that ends at once used to race it).
            go_read, go_write = os.pipe()
            reaper = os.fork()
            if reaper == 0:
                try:
                    os.close(go_write)
                    if os.read(go_read, 1) != b"1":
                        os._exit(127)  # the launcher died before reporting: nothing to run for
                    os.close(go_read)
                    _reaper(cfg, status)
                except BaseException as err:  # noqa: BLE001 - reported to the parent
                    _report(status, error=f"the reaper: {type(err).__name__}: {err}")
                os._exit(127)
            os.close(go_read)
            _report(status, reaper=reaper)
            os.write(go_write, b"1")
            os.close(go_write)
            os.waitpid(reaper, 0)
            if lower is not None:
                _collect_back(cfg, lower)
            return
        _report(status, reaper=os.getpid())
        _become_program(cfg)
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        _report(status, error=f"{type(err).__name__}: {err}")
        os._exit(127)


if __name__ == "__main__":
    main()
