"""The state file of a detached server: what `server.status` and `server.down` find it by.

    <state dir>/servers/<profile name>.json   {pid, argv, url, model_path, profile, log, run, ...}

Written atomically once the server is ready; removed by `server.down`. A file whose pid is gone
(or is another program now) is stale: readers say so and treat the server as down. One whose main
process is gone while part of its group lives on (SGLang's scheduler, after the launcher was
killed) is stranded: it is kept, `server.up` refuses to start beside it, and `server.down` stops
what is left.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sglkit import paths
from sglkit.fsutil import atomic_write_json
from sglkit.observability import manifest as mf
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
    return mf.process_start(pid) == state.get("pid_start")


def leftovers(state: dict[str, Any]) -> list[int]:
    """Pids of the recorded server's process group that outlive its main process, started no
    earlier than it; none while the main process runs, or where its pid names another process."""
    pid, start = state.get("pid"), state.get("pid_start")
    if not isinstance(pid, int) or not isinstance(start, int) or mf.process_start(pid) is not None:
        return []
    if state.get("pid_ns") not in (None, mf.pid_namespace()):  # its pids are not ours to read
        return []
    return [m for m in group_members(pid) if (s := mf.process_start(m)) is not None and s >= start]


def _records() -> list[dict[str, Any]]:
    out = []
    if folder().is_dir():
        for p in sorted(folder().glob("*.json")):
            try:
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
    return out


def running() -> list[dict[str, Any]]:
    """The states of every detached server of the kit that is still alive."""
    return [st for st in _records() if alive(st)]


def stranded() -> list[tuple[dict[str, Any], list[int]]]:
    """(state, leftover pids) of every server of the kit whose main process is gone while part of
    its group still runs."""
    return [(st, left) for st in _records() if not alive(st) and (left := leftovers(st))]
