"""Ports and waiting: free loopback ports, the address a client (or a port check) uses for a
listener's bind, and waiting on a condition with a deadline."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def client_host(bind: str) -> str:
    """The address a client on this machine uses for a listener bound to `bind` (a wildcard bind,
    0.0.0.0 or ::, is reached on loopback)."""
    return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind


def host_port(bind: str, port: int) -> str:
    """host:port of that address, an IPv6 address in brackets."""
    h = client_host(bind)
    return f"[{h}]:{port}" if ":" in h else f"{h}:{port}"


def probe_host(bind: str) -> str:
    """The address to choose or check a port on for a listener bound to `bind` (unlike
    client_host, a 0.0.0.0 bind is checked as itself: the port must be free on every interface;
    :: and an empty bind are checked on loopback, the probe sockets being IPv4)."""
    return bind if bind not in ("", "::") else "127.0.0.1"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `condition` until it returns something truthy; raise TimeoutError at the deadline.

    Exceptions raised by `condition` count as "not yet"; the last one is named in the error.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # the condition is allowed to fail while things start
            last_exc = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)
