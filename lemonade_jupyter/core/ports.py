"""Picking a free TCP port on the loopback interface (no other imports: the quickstart, the
benchmarks and the tests use it too)."""

from __future__ import annotations

import socket

#: Backends listen here only: nothing but this host's router may reach them.
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port that was free a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])
