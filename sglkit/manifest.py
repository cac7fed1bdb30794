"""The run manifest: what a telemetry run is, written atomically, read by everyone.

Layout under a telemetry root:

    <root>/runs/<run_id>/manifest.json   one run's facts (this module's contract)
    <root>/latest                        symlink -> runs/<run_id> (the most recently started run)
    <root>/container_run_meta.env        the latest run's facts as KEY=VALUE for shells

A run directory is never reused: `create_run_dir` refuses an existing run id. Every write is a
temp file + rename, so a reader sees the old manifest or the new one, never half of either.
Nothing secret goes in (no environment, no tokens): only ids, paths, ports, pids and versions.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import secrets
import shlex
import socket
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError, SglkitError
from sglkit.fsutil import atomic_symlink, atomic_write_json, atomic_write_text

SCHEMA = 1
MANIFEST = "manifest.json"
LATEST = "latest"
META_ENV = "container_run_meta.env"
RUN_STATUSES = ("starting", "ready", "degraded", "stopped", "failed")
SERVICE_STATUSES = ("starting", "running", "restarting", "stopped", "failed", "absent")
SERVICE_NAMES = ("prometheus", "node_exporter", "gpu_exporter", "jaeger")
# keys written into a live run's manifest by others than its init-run: the server serving in it
RECORDED_KEYS = ("server",)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def utcnow() -> str:
    """ISO 8601 UTC with millisecond precision and a Z suffix."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def new_run_id() -> str:
    """Sortable by start time and unique across hosts: 20261129T035600Z-<6 hex>."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or run_id in (".", ".."):
        raise ConfigError(
            f"--run-id: {run_id!r} is not a run id (letters, digits, '.', '_', '-'; "
            "at most 128; not starting with '.' or '-')"
        )
    return run_id


def runs_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "runs"


def run_dir(root: str | os.PathLike, run_id: str) -> Path:
    """<root>/runs/<run_id>; the id is checked so that it cannot escape runs/."""
    return runs_dir(root) / check_run_id(run_id)


def create_run_dir(root: str | os.PathLike, run_id: str) -> Path:
    """Make a fresh run folder; refuse an id that exists (a run directory is never reused)."""
    d = run_dir(root, run_id)
    try:
        runs_dir(root).mkdir(parents=True, exist_ok=True)
        d.mkdir()
    except FileExistsError:
        raise ConfigError(f"--run-id: run {run_id} already exists at {d} (never reused)") from None
    except OSError as e:
        raise SglkitError(f"--root: cannot create {d}: {e.strerror or e}") from None
    return d


def read(run_dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(run_dir) / MANIFEST
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SglkitError(f"{p}: no manifest (not a run folder?)") from None
    except (OSError, ValueError) as e:
        raise SglkitError(f"{p}: unreadable manifest: {e}") from None


def write(run_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Atomically write <run_dir>/manifest.json after checking the contract's shape. The keys
    that other processes record into a live run (RECORDED_KEYS) are carried over from the file
    unless `manifest` sets them: init-run rewrites the manifest from its own state."""
    validate(manifest)
    with _locked(run_dir):
        path = Path(run_dir) / MANIFEST
        out = dict(manifest)
        if path.exists():
            with contextlib.suppress(OSError, ValueError):
                on_disk = json.loads(path.read_text(encoding="utf-8"))
                for key in RECORDED_KEYS:
                    if key in on_disk and key not in out:
                        out[key] = on_disk[key]
        return atomic_write_json(path, out)


def record(run_dir: str | os.PathLike, key: str, value: Any) -> None:
    """Set (or with value None, drop) one of RECORDED_KEYS in a run's manifest, under the
    manifest lock, keeping everything init-run wrote."""
    if key not in RECORDED_KEYS:
        raise ValueError(f"manifest: {key}: not a recorded key ({RECORDED_KEYS})")
    with _locked(run_dir):
        m = read(run_dir)
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
        validate(m)
        atomic_write_json(Path(run_dir) / MANIFEST, m)


@contextlib.contextmanager
def _locked(run_dir: str | os.PathLike):
    """An exclusive lock on the run folder itself (flock on its descriptor: no lock file left
    behind) for one read-modify-write of the manifest."""
    import fcntl

    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def validate(m: dict[str, Any]) -> None:
    """Raise ValueError naming the first key that breaks the contract (a programming error)."""
    for key in ("schema", "run_id", "status", "reasons", "profile", "services", "paths"):
        if key not in m:
            raise ValueError(f"manifest: {key}: missing")
    if m["schema"] != SCHEMA:
        raise ValueError(f"manifest: schema: expected {SCHEMA}, got {m['schema']!r}")
    if m["status"] not in RUN_STATUSES:
        raise ValueError(f"manifest: status: {m['status']!r} not in {RUN_STATUSES}")
    if not isinstance(m["reasons"], list) or not all(isinstance(r, str) for r in m["reasons"]):
        raise ValueError("manifest: reasons: expected a list of strings")
    for name, svc in m["services"].items():
        if svc.get("status") not in SERVICE_STATUSES:
            raise ValueError(f"manifest: services.{name}.status: {svc.get('status')!r}")


def latest_run_dir(root: str | os.PathLike) -> Path | None:
    """The run <root>/latest points at; else the newest run folder holding a manifest; else None."""
    root = Path(root)
    link = root / LATEST
    if link.is_symlink():
        target = (root / os.readlink(link)).resolve()
        if (target / MANIFEST).is_file():
            return target
    runs = runs_dir(root)
    if not runs.is_dir():
        return None
    found = [d for d in runs.iterdir() if (d / MANIFEST).is_file()]
    return max(found, key=lambda d: (d / MANIFEST).stat().st_mtime) if found else None


def point_latest(root: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """<root>/latest -> runs/<id> (relative, so the root can be mounted elsewhere)."""
    root = Path(root)
    rel = os.path.relpath(Path(run_dir), root)
    return atomic_symlink(rel, root / LATEST)


def latest_is(root: str | os.PathLike, run_dir: str | os.PathLike) -> bool:
    link = Path(root) / LATEST
    if not link.is_symlink():
        return False
    return (Path(root) / os.readlink(link)).resolve() == Path(run_dir).resolve()


def meta_env(manifest: dict[str, Any]) -> dict[str, str]:
    """The manifest's facts as shell variables (no secrets: the manifest holds none)."""
    services = manifest.get("services", {})
    env = {
        "SGLKIT_RUN_ID": manifest["run_id"],
        "SGLKIT_RUN_STATUS": manifest["status"],
        "SGLKIT_RUN_DIR": manifest["paths"]["run_dir"],
        "SGLKIT_RUN_MANIFEST": str(Path(manifest["paths"]["run_dir"]) / MANIFEST),
        "SGLKIT_RUN_LOGS": manifest["paths"]["logs"],
        "SGLKIT_PROMETHEUS_DATA": manifest["paths"]["prometheus_data"],
        "SGLKIT_PROFILE_NAME": manifest["profile"]["name"],
        "SGLKIT_PROFILE_HASH": manifest["profile"]["hash"],
        "SGLKIT_RUN_HOST": manifest.get("host") or "",
        "SGLKIT_RUN_STARTED_AT": manifest.get("started_at") or "",
    }
    for name in SERVICE_NAMES:
        svc = services.get(name) or {}
        key = name.upper()
        env[f"SGLKIT_{key}_STATUS"] = svc.get("status") or "absent"
        env[f"SGLKIT_{key}_URL"] = svc.get("url") or ""
    jaeger = services.get("jaeger") or {}
    env["SGLKIT_JAEGER_UI_URL"] = jaeger.get("ui_url") or ""
    env["SGLKIT_OTLP_ENDPOINT"] = jaeger.get("otlp_endpoint") or ""
    return env


def render_meta_env(manifest: dict[str, Any]) -> str:
    lines = ["# written by sglkit init-run; the latest run's facts (see manifest.json)"]
    lines += [f"{k}={shlex.quote(str(v))}" for k, v in meta_env(manifest).items()]
    return "\n".join(lines) + "\n"


def write_meta_env(root: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    return atomic_write_text(Path(root) / META_ENV, render_meta_env(manifest))


def read_meta_env(path: str | os.PathLike) -> dict[str, str]:
    """Parse container_run_meta.env back (what a shell's `. file` would set)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value)
        out[key] = parts[0] if parts else ""
    return out


def hostname() -> str:
    return socket.gethostname()


def pid_namespace() -> str | None:
    """This process' pid namespace ('pid:[4026531836]'): a manifest's pid means something only
    in the same namespace (a run inside a container records the container's)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
