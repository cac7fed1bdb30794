"""A cache folder on disk: its completion marker, its lock, its size, whether it is writable.

    <cache.root>/deepgemm/                 the cache (what SGLANG_DG_CACHE_DIR names)
    <cache.root>/deepgemm/.sglkit-marker.json   completion marker (written last, atomically)
    <cache.root>/.deepgemm.lock            flock held while warming, exporting or importing

The lock lives beside the folder, not in it, so that an import can swap the folder by rename.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError, SglkitError
from sglkit.fsutil import atomic_write_json

MARKER = ".sglkit-marker.json"


def marker_path(folder: Path) -> Path:
    return folder / MARKER


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker's JSON, or None when there is none; a corrupt marker counts as none."""
    try:
        data = json.loads(marker_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(folder: Path, data: dict[str, Any]) -> Path:
    return atomic_write_json(marker_path(folder), data)


def remove_marker(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        marker_path(folder).unlink()


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


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def locked(folder: Path, wait: float = 0.0, what: str = "warm") -> Iterator[None]:
    """Hold the folder's lock; fail at once (or after `wait` s) naming the holder's pid."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(path)
                    raise SglkitError(
                        f"cache folder {folder} is busy: {holder} holds {path}; "
                        "wait for it or pass --lock-timeout SECONDS",
                        exit_code=75,  # EX_TEMPFAIL
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} ({what})\n".encode())
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process"


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
                elif e.is_file(follow_symlinks=False) and not (d == folder and e.name == MARKER):
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
