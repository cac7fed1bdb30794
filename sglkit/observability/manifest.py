"""The run manifest: what a telemetry run is, written atomically, read by everyone.

Layout under a telemetry root:

    <root>/runs/<run_id>/manifest.json   one run's facts (this module's contract)
    <root>/latest                        symlink -> runs/<run_id> (the latest run that got ready)
    <root>/container_run_meta.env        the latest run's facts as KEY=VALUE for shells

Finding a run is here too: `runs_dir`, `run_dir`, `latest_run_dir`, and `resolve_run` for a
--run/--root pair; `read_run` opens one for a reader that needs a finished record (obs.report),
and `run_span` says when it ran.

A run directory is never reused: `create_run_dir` refuses an existing run id. Every write is a
temp file + rename, so a reader sees the old manifest or the new one, never half of either.
Nothing secret goes in (no environment, no tokens): only ids, paths, ports, pids and versions.

A manifest whose init-run died without finalizing it (SIGKILL, a host crash) still says
`starting`, `ready` or `degraded`; `settle()` is how every reader opens a run: where it can tell
that init-run is gone (same host and pid namespace, or another boot of the kernel) it rewrites the
manifest as `abandoned`, keeping everything else it recorded.
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
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sglkit.errors import ConfigError, SglkitError
from sglkit.fsutil import atomic_symlink, atomic_write_json, atomic_write_text
from sglkit.profile import telemetry_root

SCHEMA = 1
MANIFEST = "manifest.json"
LATEST = "latest"
META_ENV = "container_run_meta.env"
RUN_STATUSES = ("starting", "ready", "degraded", "stopped", "failed", "abandoned")
LIVE_STATUSES = ("starting", "ready", "degraded")  # init-run is (or should be) running
SERVICE_STATUSES = ("starting", "running", "restarting", "stopped", "failed", "absent")
SERVICE_NAMES = ("prometheus", "node_exporter", "gpu_exporter", "jaeger", "grafana")
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


def resolve_run(run: str | None, root: str | None, flag: str = "--run") -> Path:
    """A run folder from a run id (under <root>/runs), a path to one, or the latest run; `root`
    is a --root flag (None: the default profile's telemetry.root, loaded only then)."""
    if run:
        as_path = Path(run).expanduser()
        if (as_path / MANIFEST).is_file():
            return as_path.resolve()
        if "/" in run or run in (".", ".."):
            raise ConfigError(f"{flag}: {run} is not a run folder (no manifest.json)")
    root_path = telemetry_root(None, root)
    runs = runs_dir(root_path)
    if run:
        d = runs / run
        if not (d / MANIFEST).is_file():
            raise ConfigError(f"{flag}: no run {run!r} under {runs}")
        return d.resolve()
    if not root_path.is_dir():
        raise ConfigError(f"--root: {root_path} does not exist (no telemetry runs there)")
    found = latest_run_dir(root_path)
    if found is None:
        raise ConfigError(f"--root: no run with a manifest.json under {runs}")
    return Path(found).resolve()


def read_run(run_dir: Path, by: str) -> dict[str, Any]:
    """A run's manifest (read), settled: a live status whose init-run is gone reads `abandoned`
    (marked by `by`); a folder without one is a ConfigError naming --run."""
    if not (run_dir / MANIFEST).exists():
        raise ConfigError(f"--run: {run_dir} has no manifest.json (not a run folder)")
    data = read(run_dir)
    if not isinstance(data, dict) or "run_id" not in data:
        raise SglkitError(f"{run_dir / MANIFEST}: not a run manifest (no run_id)")
    if data.get("status") in LIVE_STATUSES:
        data = settle(run_dir, by=by)  # an init-run that is gone: abandoned
    return data


def parse_time(value: str, field: str) -> float:
    """A manifest time (ISO 8601; no zone: UTC) -> seconds since the epoch."""
    try:
        t = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise SglkitError(f"manifest: {field}: {value!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def iso(ts: float) -> str:
    """Seconds since the epoch -> ISO 8601 UTC, whole seconds, Z suffix."""
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_span(run_dir: Path, manifest: dict[str, Any]) -> tuple[float, float]:
    """When the run started and ended (seconds since the epoch): ended_at, else for a run that
    ended without saying when the manifest's last write, else now (a live run)."""
    if not manifest.get("started_at"):
        raise SglkitError(f"{run_dir / MANIFEST}: started_at: missing")
    start = parse_time(manifest["started_at"], "started_at")
    if manifest.get("ended_at"):
        end = parse_time(manifest["ended_at"], "ended_at")
    elif manifest.get("status") in ("stopped", "failed"):
        end = (run_dir / MANIFEST).stat().st_mtime  # ended without saying when
    else:
        end = time.time()
    if end <= start:
        raise SglkitError(f"manifest: ended_at ({iso(end)}) is not after started_at")
    return start, end


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


def host_url(url: str | None, ports: dict[int, int]) -> str | None:
    """A service URL as init-run wrote it (container view) -> the URL on the host's loopback,
    given the published ports (container port -> host port)."""
    if not url:
        return None
    parts = urlsplit(url)
    port = parts.port
    if port is None or port not in ports:
        return url
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{ports[port]}"))


def host_ports(m: dict[str, Any]) -> dict[int, int]:
    """The manifest's published ports (container port -> host port); {} for a bare-host run."""
    out: dict[int, int] = {}
    for k, v in (m.get("host_ports") or {}).items():
        try:
            out[int(k)] = int(v)
        except (TypeError, ValueError):
            continue
    return out


def service_url(m: dict[str, Any], service: str, key: str = "url") -> str | None:
    """A service's URL as reachable from this process: the URL init-run recorded when we share
    its network namespace, else (a container run seen from the host) the published host port."""
    url = ((m.get("services") or {}).get(service) or {}).get(key)
    ports = host_ports(m)
    if ports and m.get("net_ns") != net_namespace():
        return host_url(url, ports)
    return url


def hostname() -> str:
    return socket.gethostname()


def pid_namespace() -> str | None:
    """This process' pid namespace ('pid:[4026531836]'): a manifest's pid means something only
    in the same namespace (a run inside a container records the container's)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def net_namespace() -> str | None:
    """This process' network namespace: a manifest's URLs are reachable as written only here."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


def boot_id() -> str | None:
    """The kernel's boot id (the same inside containers): another one means the host rebooted."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22); None if gone.

    With the pid it names one process for the life of a boot: a reused pid has another start."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # a zombie or dead process: gone for our purposes
        return None
    return int(fields[19])


def identity() -> dict[str, Any]:
    """What a manifest records so that a later reader can tell whether this process lives."""
    return {
        "host": hostname(),
        "pid": os.getpid(),
        "pid_ns": pid_namespace(),
        "pid_start": process_start(os.getpid()),
        "boot_id": boot_id(),
        "net_ns": net_namespace(),
    }


def init_run_gone(m: dict[str, Any]) -> bool:
    """True when the run's init-run is known to be gone; False when alive or when this process
    cannot tell (another host or pid namespace on the same boot: a run in a container)."""
    if m.get("boot_id") and boot_id() and m["boot_id"] != boot_id():
        return True  # the kernel that ran it has rebooted since
    pid = m.get("pid")
    if not pid or m.get("host") != hostname() or m.get("pid_ns") != pid_namespace():
        return False
    started = process_start(pid)
    if started is None:
        return True
    return m.get("pid_start") is not None and started != m["pid_start"]  # the pid was reused


def settle(run_dir: str | os.PathLike, by: str) -> dict[str, Any]:
    """Read a run's manifest; if its init-run is gone without finalizing it, mark it `abandoned`.

    `by` names the command that noticed (obs.status, obs.up, obs.report). The mark is written
    atomically where the folder is writable; either way the returned manifest carries it.
    """
    run_dir = Path(run_dir)
    m = read(run_dir)
    if m.get("status") not in LIVE_STATUSES or not init_run_gone(m):
        return m
    m = read(run_dir)  # init-run is gone: whatever it wrote last is on disk now
    if m.get("status") not in LIVE_STATUSES:
        return m
    m = abandoned(m, by)
    try:
        write(run_dir, m)
        root = run_dir.parent.parent  # <root>/runs/<run_id>, as seen from here
        if run_dir.parent.name == "runs" and latest_is(root, run_dir):
            write_meta_env(root, m)
    except OSError as e:
        m["reasons"].append(f"the abandoned mark could not be written: {e.strerror or e}")
    return m


def abandoned(m: dict[str, Any], by: str) -> dict[str, Any]:
    """The manifest of a run whose init-run is gone: status `abandoned`, history kept."""
    m = json.loads(json.dumps(m))
    now = utcnow()
    m["reasons"] = [
        *m.get("reasons", []),
        f"init-run (pid {m.get('pid')}) is gone and never finalized this run; "
        f"marked abandoned by {by} at {now}",
    ]
    m["status"] = "abandoned"
    m["abandoned_at"] = now
    same_ns = m.get("host") == hostname() and m.get("pid_ns") == pid_namespace()
    for name, svc in (m.get("services") or {}).items():
        if svc.get("status") not in ("starting", "running", "restarting"):
            continue
        pid = svc.get("pid")
        if same_ns and pid and process_start(pid) is not None:
            m["reasons"].append(f"{name}: pid {pid} still runs without its supervisor")
            continue
        svc["status"] = "stopped"
        svc["reason"] = f"gone with init-run (pid was {pid})" if pid else "gone with init-run"
        svc["pid"] = None
    return m
