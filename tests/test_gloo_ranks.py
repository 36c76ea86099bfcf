"""The gloo workers' port helper retries only a taken rendezvous port (tests/gloo_ranks.py)."""

from __future__ import annotations

import sys

from gloo_ranks import run_on_free_port


def _argv(messages: list[str]):
    ports: list[int] = []

    def argv(port: int) -> list[str]:
        ports.append(port)
        msg = messages[min(len(ports), len(messages)) - 1]
        return [sys.executable, "-c", f"import sys; sys.stderr.write({msg!r}); sys.exit(1 if {msg!r} else 0)"]
    return argv, ports


def test_a_taken_port_is_retried_on_a_fresh_one():
    argv, ports = _argv(["RuntimeError: Address already in use", ""])
    proc = run_on_free_port(argv)
    assert proc.returncode == 0 and len(ports) == 2 and all(0 < p < 65536 for p in ports)


def test_any_other_failure_is_returned_at_once():
    argv, ports = _argv(["AssertionError: saved bytes differ"])
    proc = run_on_free_port(argv)
    assert proc.returncode == 1 and "saved bytes differ" in proc.stderr and len(ports) == 1


def test_retries_are_bounded():
    argv, ports = _argv(["EADDRINUSE"])
    assert run_on_free_port(argv, tries=3).returncode == 1 and len(ports) == 3
