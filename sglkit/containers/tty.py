"""An interactive TTY session in a running container through the docker SDK (no docker CLI)."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import termios
import tty


def interactive(client, container, argv: list[str], user: str = "") -> int:
    """Run argv in the container on a TTY wired to ours; return its exit status."""
    api = client.api
    interactive_in = sys.stdin.isatty()
    exec_id = api.exec_create(
        container.id, argv, stdin=True, tty=interactive_in, user=user, environment=_term_env()
    )["Id"]
    sock = api.exec_start(exec_id, tty=interactive_in, socket=True)
    raw = getattr(sock, "_sock", sock)

    def resize(*_):
        cols, rows = shutil.get_terminal_size()
        with contextlib.suppress(Exception):
            api.exec_resize(exec_id, height=rows, width=cols)

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd) if interactive_in else None
    prev = signal.signal(signal.SIGWINCH, resize) if interactive_in else None
    try:
        if old is not None:
            tty.setraw(fd, termios.TCSANOW)  # keep type-ahead (TCSAFLUSH would drop it)
            resize()
        _pump(raw, fd)
    finally:
        if old is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
        if prev is not None:
            signal.signal(signal.SIGWINCH, prev)
        with contextlib.suppress(OSError):
            raw.close()
    code = api.exec_inspect(exec_id).get("ExitCode")
    return int(code) if code is not None else 1


def _pump(sock, fd: int) -> None:
    out = sys.stdout.buffer
    stdin_open = True
    while True:
        watch = [sock, fd] if stdin_open else [sock]
        ready, _, _ = select.select(watch, [], [])
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            out.write(data)
            out.flush()
        if stdin_open and fd in ready:
            data = os.read(fd, 65536)
            if not data:
                stdin_open = False
                with contextlib.suppress(OSError):
                    sock.shutdown(1)  # SHUT_WR: the shell sees end of input
                continue
            sock.sendall(data)


def _term_env() -> dict[str, str]:
    return {"TERM": os.environ.get("TERM", "xterm-256color")}
