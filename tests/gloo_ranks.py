"""Run a gloo rendezvous worker on a free local port, for tests: the port is found by binding port 0 and
releasing it, so another process can take it before the worker binds it; a worker that fails with
"address already in use" is run again on a fresh port (at most ``tries`` times). Any other failure is returned
as it is."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable

_IN_USE = ("address already in use", "eaddrinuse")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_free_port(argv: Callable[[int], list[str]], *, tries: int = 3,
                     timeout: int = 600) -> subprocess.CompletedProcess:
    """``subprocess.run(argv(port))`` with a free ``port``, retried on a fresh one while the rendezvous port was
    taken; the last run's result."""
    for _ in range(tries):
        proc = subprocess.run(argv(free_port()), capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0 or not any(s in proc.stderr.lower() for s in _IN_USE):
            return proc
    return proc
