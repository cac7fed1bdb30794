"""cache.status: per cache kind, its folder, size, file count, last warm and marker match."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sglkit import profile as profiles
from sglkit.cache import fingerprint, store
from sglkit.server import spec as server_spec


def status(profile: str | None = None) -> list[dict[str, Any]]:
    p = profiles.load(profile)
    rows = []
    current: fingerprint.Fingerprint | None = None
    for kind, folder in p.cache_dirs().items():
        size, files, newest = store.folder_stats(folder) if folder.is_dir() else (0, 0, None)
        marker = store.read_marker(folder) if folder.is_dir() else None
        row: dict[str, Any] = {
            "kind": kind,
            "folder": str(folder),
            "exists": folder.is_dir(),
            "bytes": size,
            "files": files,
            "last_modified": _iso(newest),
            "last_warm": marker.get("warmed_at") if marker else None,
        }
        if marker is None:
            row["marker"] = "none"
        elif "fingerprint" not in marker or kind != "deepgemm":
            row["marker"] = "present (not compared)"
        else:
            if current is None:
                current = fingerprint.compute(server_spec.build(p))
            stored = fingerprint.Fingerprint.from_json(marker["fingerprint"])
            diff = fingerprint.differences(stored, current)
            row["marker"] = "matches" if not diff else f"differs: {diff[0]}"
            row["differences"] = diff
        rows.append(row)
    return rows


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")
