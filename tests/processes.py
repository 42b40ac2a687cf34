"""Helpers for tests that start several JAX processes on localhost."""

import os
import socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(procs, timeout: float = 300) -> list:
    """Each process's stdout, once all have exited 0 (an assertion shows the stderr tail of one that did not).
    A process still running at the timeout is killed."""
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        finally:
            p.kill()
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    return outs
