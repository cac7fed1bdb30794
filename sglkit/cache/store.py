"""A cache folder on disk: its completion marker, its lock, its size, whether it is writable.

    <cache.root>/deepgemm/                 the cache (what SGLANG_DG_CACHE_DIR names)
    <cache.root>/deepgemm/.sglkit-marker.json   completion marker (written last, atomically)
    <cache.root>/.deepgemm.lock            flock held while warming, exporting or importing

The lock lives beside the folder, not in it, so that an import can swap the folder by rename.
It is sglkit.fsutil.locked (re-exported here): the kernels overlay, a folder under the same
cache root, takes it too and sits on a lower floor than this package.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError
from sglkit.fsutil import atomic_write_json
from sglkit.fsutil import locked as locked

MARKER = ".sglkit-marker.json"


def marker_path(folder: Path, node: int | None = None) -> Path:
    """The completion marker; one per node (`node` = its rank) where a server spans nodes, so
    that nodes sharing a cache folder each say what they compiled."""
    return folder / (MARKER if node is None else MARKER.replace(".json", f".node-{node}.json"))


def is_marker(name: str) -> bool:
    return name.startswith(MARKER.removesuffix(".json")) and name.endswith(".json")


def read_marker(folder: Path, node: int | None = None) -> dict[str, Any] | None:
    """The marker's JSON, or None when there is none; a corrupt marker counts as none."""
    try:
        data = json.loads(marker_path(folder, node).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(folder: Path, data: dict[str, Any], node: int | None = None) -> Path:
    return atomic_write_json(marker_path(folder, node), data)


def remove_marker(folder: Path, node: int | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        marker_path(folder, node).unlink()


def ensure_writable(folder: Path, field: str) -> None:
    """Create `folder` and prove a file can be written in it; ConfigError naming `field`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sglkit-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"{field}: cache folder {folder} is not writable ({reason})") from None


def folder_stats(folder: Path) -> tuple[int, int, float | None]:
    """(bytes, files, newest mtime) of the files under `folder` (the marker excluded)."""
    size = files = 0
    newest: float | None = None
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False) and not (d == folder and is_marker(e.name)):
                    st = e.stat(follow_symlinks=False)
                    size += st.st_size
                    files += 1
                    newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
            except OSError:
                continue
    return size, files, newest


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
