"""Local TCP helpers for the processes the demo, the benchmark and the tests start (moto, Redis, Flower)."""

from __future__ import annotations

import socket


def listening(host: str, port: int) -> bool:
    """True when something accepts connections on host:port (half a second at most)."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
