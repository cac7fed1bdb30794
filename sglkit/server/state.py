"""The state file of a detached server: what `server.status` and `server.down` find it by.

    <state dir>/servers/<profile name>.json   {pid, argv, url, model_path, profile, log, run, ...}

Written atomically once the server is ready; removed by `server.down`. A file whose pid is gone
(or is another program now) is stale: readers say so and treat the server as down.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sglkit import paths
from sglkit.fsutil import atomic_write_json
from sglkit.proc import group_members


def folder() -> Path:
    return paths.state_dir() / "servers"


def path_for(name: str) -> Path:
    return folder() / f"{name}.json"


def write(name: str, state: dict[str, Any]) -> Path:
    folder().mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path_for(name), state)


def read(name: str) -> dict[str, Any] | None:
    try:
        return json.loads(path_for(name).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def remove(name: str) -> None:
    path_for(name).unlink(missing_ok=True)


def alive(state: dict[str, Any]) -> bool:
    """The recorded main process still runs, and is the one we started (same start time)."""
    pid = state.get("pid")
    if not isinstance(pid, int) or not group_members(pid):
        return False
    return start_time(pid) == state.get("pid_start")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the
    pid, it names one process; a reused pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def running() -> list[dict[str, Any]]:
    """The states of every detached server of the kit that is still alive."""
    out = []
    if folder().is_dir():
        for p in sorted(folder().glob("*.json")):
            try:
                st = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if alive(st):
                out.append(st)
    return out
