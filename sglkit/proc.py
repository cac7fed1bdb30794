"""Child processes in their own process group, always cleaned up as a group.

Every long-running child the kit starts (servers, exporters, Prometheus) goes through `spawn`
and ends through `terminate_group`: TERM to the whole group, KILL after a grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Have Linux send this process `sig` when its parent dies (between fork and exec, or in a
    worker's initializer); a no-op where prctl is not there."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
    except OSError:
        pass


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    stdout=None,
    stderr=None,
    die_with_parent: bool = False,
) -> subprocess.Popen:
    """Start `argv` (a list, never a shell string) as the leader of a new process group."""
    if isinstance(argv, str):
        raise TypeError("argv must be a list of strings, not a shell string")
    return subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
        preexec_fn=set_parent_death_signal if die_with_parent else None,
    )


def group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies, read from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            pids.append(int(entry))
    return pids


def terminate_group(proc: subprocess.Popen | int, grace: float = 5.0) -> int | None:
    """TERM the process group, KILL it after `grace` seconds; reap the leader; return its status."""
    pgid = proc if isinstance(proc, int) else proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not isinstance(proc, int):
            proc.poll()
        if not group_members(pgid):
            break
        time.sleep(0.02)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if isinstance(proc, int):
        return None
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        return None
