"""A server inside a live telemetry run: recorded in its manifest, scraped by its Prometheus.

The run is the profile's latest one while its init-run is alive (same pid namespace). The
server is recorded under the manifest's `server` key (manifest.record keeps init-run's writes),
and where the run's Prometheus does not already scrape the server's port (`scrapes_server` on
the profile's port), the port is added through the run's file_sd target file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sglkit.fsutil import atomic_write_json
from sglkit.observability import config as promconfig
from sglkit.observability import manifest as mf
from sglkit.server.spec import ServerSpec


def live_run(root: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """(run folder, manifest) of the latest run under `root` while its init-run runs here (in
    this pid namespace: a container's run is joined from inside the container)."""
    run_dir = mf.latest_run_dir(root)
    if run_dir is None:
        return None
    try:
        m = mf.settle(run_dir, by="server.up")
    except Exception:
        return None
    if m.get("status") not in mf.LIVE_STATUSES or m.get("pid_ns") != mf.pid_namespace():
        return None
    return run_dir, m


def targets_file(run_dir: Path) -> Path:
    return run_dir.joinpath(*promconfig.SGLANG_TARGETS_FILE)


def join(run_dir: Path, manifest: dict[str, Any], spec: ServerSpec, entry: dict[str, Any]) -> str:
    """Record the server in the run and make its Prometheus scrape it; says how, in words."""
    target = promconfig.hostport(spec.host, spec.port)
    scraped = manifest.get("scrapes_server") and spec.port == spec.profile.server["port"]
    if not spec.server["enable_metrics"]:
        how = "not scraped (server.enable_metrics is off)"
    elif scraped:
        how = f"scraped as {target} (the run's own sglang target)"
    else:
        path = targets_file(run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, [{"targets": [target], "labels": {"service": "sglang"}}])
        how = f"scraped as {target} (added through {path})"
    mf.record(run_dir, "server", {**entry, "scrape": how})
    return how


def leave(run_dir: Path) -> None:
    """The server stopped: no scrape target of ours left, the record marked stopped."""
    targets_file(run_dir).unlink(missing_ok=True)
    try:
        m = mf.read(run_dir)
    except Exception:
        return
    if isinstance(m.get("server"), dict):
        mf.record(
            run_dir, "server", {**m["server"], "status": "stopped", "stopped_at": mf.utcnow()}
        )
