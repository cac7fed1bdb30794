"""Host-side lifecycle of the devcontainer: storage, up (wait for the run manifest), down, status.

`plan()` is pure: from a profile and a few choices it computes the container's name, image,
command, mounts, published ports, environment and labels. `up()` touches the world (docker SDK,
host folders) and cleans up after itself on every failure: no container is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglkit import net
from sglkit.containers import engine, render
from sglkit.errors import ConfigError, SglkitError
from sglkit.observability import manifest as manifests
from sglkit.profile import Profile, telemetry_root

NVIDIA_HINT = (
    "install the NVIDIA Container Toolkit on the host and register it with Docker "
    "(nvidia-ctk runtime configure --runtime=docker, then restart dockerd); see docs/gh200-host.md"
)
LOG_TAIL = 20


@dataclass
class Plan:
    name: str
    image: str
    variant: str
    run_id: str
    command: list[str]
    mounts: list[dict[str, Any]]
    # container port -> host port (published on 127.0.0.1); names: field -> container port
    ports: dict[int, int]
    port_names: dict[str, int]
    environment: dict[str, str]
    labels: dict[str, str]
    shm_size: str
    gpus: bool
    host_dirs: dict[str, Path] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "variant": self.variant,
            "run_id": self.run_id,
            "command": self.command,
            "mounts": self.mounts,
            "ports": {str(k): v for k, v in self.ports.items()},
            "port_names": self.port_names,
            "environment": self.environment,
            "labels": self.labels,
            "shm_size": self.shm_size,
            "gpus": self.gpus,
            "host_dirs": {k: str(v) for k, v in self.host_dirs.items()},
        }


# ---- pure ------------------------------------------------------------------------------------


def host_dirs(profile: Profile) -> dict[str, Path]:
    """Host folders mounted at /models, /cache, /telemetry and /profiles (resolved on the host)."""
    storage = Path(profile.container["storage"])
    models = os.environ.get("SGLKIT_MODELS_ROOT") or str(storage / "models")
    return {
        "models": Path(models).expanduser(),
        "cache": profile.cache_root(),
        "telemetry": telemetry_root(profile),
        "profiles": profile.path.resolve().parent,
    }


def container_ports(profile: Profile) -> dict[str, int]:
    """Ports the container listens on: every telemetry port of the profile, and the server's."""
    ports = {f"telemetry.ports.{k}": v for k, v in profile.telemetry["ports"].items()}
    ports["server.port"] = profile.server["port"]
    return ports


def plan(
    profile: Profile,
    *,
    run_id: str,
    gpus: bool,
    host_ports: dict[int, int] | None = None,
    name: str | None = None,
    image: str | None = None,
    command: list[str] | None = None,
    secrets: dict[str, str] | None = None,
) -> Plan:
    """Everything `up` will ask the engine for, computed without touching it."""
    dirs = host_dirs(profile)
    names = container_ports(profile)
    taken: dict[int, str] = {}
    for fld, port in names.items():
        if port in taken:
            raise ConfigError(f"{profile.path}: {fld}: port {port} is also {taken[port]}")
        taken[port] = fld
    host_ports = host_ports or {p: p for p in names.values()}
    mounts = [
        {"source": str(dirs[k]), "target": render.MOUNT_POINTS[k], "read_only": k == "profiles"}
        for k in ("models", "cache", "telemetry", "profiles")
    ]
    targets = {m["target"] for m in mounts}
    for i, m in enumerate(profile.container["mounts"]):
        if m["target"] in targets:
            raise ConfigError(
                f"{profile.path}: container.mounts[{i}].target: {m['target']} is already mounted"
            )
        mounts.append(dict(m))
    profile_in_container = f"{render.MOUNT_POINTS['profiles']}/{profile.path.name}"
    cmd = command or [
        "--profile",
        profile_in_container,
        "--root",
        render.MOUNT_POINTS["telemetry"],
        "--run-id",
        run_id,
        "--bind",
        "0.0.0.0",
        # where the host publishes each listener: obs.status on the host reads it there
        "--host-ports",
        ",".join(f"{c}={h}" for c, h in sorted(host_ports.items())),
    ]
    env = {
        "SGLKIT_PROFILE": profile_in_container,
        "SGLKIT_RUN_ID": run_id,
        **render.profile_env(profile),  # the profile's cache.dirs, over the image's folders
        **(secrets or {}),
    }
    labels = {
        engine.LABEL: "container",
        engine.LABEL_PROFILE: str(profile.path.resolve()),
        engine.LABEL_RUN: run_id,
        engine.LABEL_VARIANT: profile.container["variant"],
        "org.sglkit.telemetry-root": str(dirs["telemetry"]),
        "org.sglkit.ports": json.dumps({str(k): v for k, v in host_ports.items()}),
        **engine.test_labels(),
    }
    return Plan(
        name=name or profile.container["name"],
        image=image or profile.container["image"],
        variant=profile.container["variant"],
        run_id=run_id,
        command=cmd,
        mounts=mounts,
        ports=dict(host_ports),
        port_names=names,
        environment=env,
        labels=labels,
        shm_size=profile.container["shm_size"],
        gpus=gpus,
        host_dirs=dirs,
    )


host_url = manifests.host_url  # container URL -> published host URL (one place: the manifest)


def want_gpus(mode: str, variant: str, runtime: bool) -> bool:
    """--gpus auto|all|none -> whether to ask the engine for GPUs (ConfigError where impossible)."""
    if mode not in ("auto", "all", "none"):
        raise ConfigError(f"--gpus: {mode!r} is not one of auto, all, none")
    if mode == "all":
        return True
    if mode == "none":
        return False
    if runtime:
        return True
    if variant in render.GPU_VARIANTS:
        raise SglkitError(
            f"container.variant {variant} needs GPUs but the Docker engine has no NVIDIA "
            f"runtime: {NVIDIA_HINT}"
        )
    return False


# ---- storage -----------------------------------------------------------------------------------


def prepare_storage(dirs: dict[str, Path], uid: int, gid: int) -> list[Path]:
    """Create the host folders (not the profiles folder: it exists) owned by uid:gid."""
    made = []
    for kind, d in dirs.items():
        if kind == "profiles":
            if not d.is_dir():
                raise ConfigError(f"profile folder {d} does not exist")
            if not _can_read(d, uid, gid, need_exec=True):
                raise SglkitError(
                    f"--profile: the folder {d} (mounted at /profiles) is not readable by the "
                    f"container's user {uid}:{gid}; chmod o+rx it or move the profile"
                )
            continue
        try:
            d.mkdir(parents=True, exist_ok=True)
            st = d.stat()
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.chown(d, uid, gid)
        except PermissionError:
            raise SglkitError(
                f"container.storage: cannot create or chown {d} for {uid}:{gid} "
                "(run `sudo invoke container.storage` once, or set SGLKIT_STORAGE / "
                "SGLKIT_CACHE_ROOT / SGLKIT_TELEMETRY_ROOT to folders you own)"
            ) from None
        except OSError as e:
            raise SglkitError(f"container.storage: {d}: {e.strerror or e}") from None
        made.append(d)
        if kind == "cache":
            made += _link_targets(d, uid, gid)
    return made


def _link_targets(cache: Path, uid: int, gid: int) -> list[Path]:
    """The cache folders the image's HOME links point at (~/.cache/flashinfer), so that no link
    dangles in a fresh cache."""
    prefix = render.MOUNT_POINTS["cache"] + "/"
    made = []
    for target in render.home_links().values():
        d = cache / target.removeprefix(prefix)
        try:
            d.mkdir(parents=True, exist_ok=True)
            for q in [d, *d.parents]:
                if q == cache:
                    break
                if (q.stat().st_uid, q.stat().st_gid) != (uid, gid):
                    os.chown(q, uid, gid)
        except OSError as e:
            raise SglkitError(f"container.storage: {d}: {e.strerror or e}") from None
        made.append(d)
    return made


def _can_read(path: Path, uid: int, gid: int, need_exec: bool = False) -> bool:
    """Whether uid:gid may read (and enter) `path` by its mode bits (root may always)."""
    if uid == 0:
        return True
    st = path.stat()
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    want = 0o4 | (0o1 if need_exec else 0)
    return (st.st_mode >> shift) & want == want


# ---- engine side -------------------------------------------------------------------------------


def find(c, name: str):
    from docker.errors import NotFound

    try:
        return c.containers.get(name)
    except NotFound:
        return None


def remove_quietly(container) -> None:
    from docker.errors import APIError, NotFound

    with contextlib.suppress(NotFound, APIError):
        container.remove(force=True)


def last_logs(container, n: int = LOG_TAIL) -> list[str]:
    try:
        raw = container.logs(tail=n)
    except Exception:
        return []
    return raw.decode("utf-8", "replace").rstrip().splitlines()


def _port_field(p: Plan, host_port: int) -> str:
    for fld, cport in p.port_names.items():
        if p.ports.get(cport) == host_port:
            return fld
    return "a published port"


def create_and_start(c, p: Plan):
    """Create and start the container; on any failure remove it and raise one clear line."""
    from docker.errors import APIError, ImageNotFound
    from docker.types import DeviceRequest, Mount

    mounts = [
        Mount(target=m["target"], source=m["source"], type="bind", read_only=m["read_only"])
        for m in p.mounts
    ]
    kwargs: dict[str, Any] = {
        "name": p.name,
        "command": p.command,
        "detach": True,
        "mounts": mounts,
        "ports": {f"{cp}/tcp": ("127.0.0.1", hp) for cp, hp in p.ports.items()},
        "environment": p.environment,
        "labels": p.labels,
        "shm_size": p.shm_size,
        "stop_signal": "SIGTERM",
    }
    if p.gpus:
        kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    try:
        container = c.containers.create(p.image, **kwargs)
    except ImageNotFound:
        raise SglkitError(
            f"container.image: image {p.image} not found on this engine; build it with "
            "`invoke container.build` (or pass --image)"
        ) from None
    except APIError as e:
        # create failed: nothing was created, so nothing is left to clean
        raise SglkitError(
            f"container.up: the engine refused to create {p.name}: {_explain(e)}"
        ) from None
    try:
        container.start()
    except BaseException as e:
        remove_quietly(container)
        if isinstance(e, APIError):
            raise SglkitError(_start_error(p, e)) from None
        raise
    return container


def _explain(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return engine._short(Exception(text))


def _start_error(p: Plan, e: Exception) -> str:
    text = _explain(e)
    if "could not select device driver" in text or "nvidia-container-cli" in text:
        return (
            f"container.up: GPUs were requested but the Docker engine cannot provide them "
            f"({text}); {p.name} was removed; {NVIDIA_HINT}"
        )
    if "port is already allocated" in text or "address already in use" in text:
        import re

        m = re.search(r"127\.0\.0\.1:(\d+)", text) or re.search(r":(\d+)", text)
        port = int(m.group(1)) if m else 0
        return (
            f"{_port_field(p, port)}: port {port} on 127.0.0.1 is in use ({text}); "
            f"{p.name} was removed; free the port or pass --host-ports auto"
        )
    return f"container.up: {p.name} did not start: {text}; it was removed"


@dataclass
class Outcome:
    run_id: str
    run_dir: Path
    manifest: dict[str, Any]
    urls: dict[str, str | None]
    container_id: str


def wait_ready(
    container,
    run_dir: Path,
    timeout: float,
    on_status: Callable[[str], None] = lambda s: None,
    interval: float = 0.25,
) -> dict[str, Any]:
    """Wait until <run_dir>/manifest.json says ready; SglkitError on failed/exit/deadline."""
    deadline = time.monotonic() + timeout
    last = "no manifest yet"
    while True:
        m = None
        if (run_dir / manifests.MANIFEST).is_file():
            with contextlib.suppress(SglkitError):
                m = manifests.read(run_dir)
        if m:
            status = m.get("status")
            last = f"manifest status {status}"
            if m.get("reasons"):
                last += f" ({'; '.join(map(str, m['reasons']))[:200]})"
            if status == "ready":
                return m
            if status in ("failed", "stopped"):
                raise _NotReady(f"the run's manifest says {status}", last)
        on_status(last)
        container.reload()
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            raise _NotReady(f"the container exited (status {code}) before the run was ready", last)
        if time.monotonic() >= deadline:
            raise _NotReady(f"the run was not ready within {timeout:g}s", last)
        time.sleep(interval)


class _NotReady(Exception):
    def __init__(self, why: str, last: str):
        super().__init__(why)
        self.why, self.last = why, last


def preflight(c, p: Plan) -> None:
    """Refuse before creating anything: a running container of that name, a host port in use."""
    existing = find(c, p.name)
    if existing is not None:
        existing.reload()
        if existing.status in ("running", "restarting", "paused"):
            raise SglkitError(
                f"container {p.name} is already {existing.status} "
                f"(run {existing.labels.get(engine.LABEL_RUN, '?')}); "
                "`invoke container.down` first, or pass --name"
            )
        if existing.labels.get(engine.LABEL) != "container":
            raise SglkitError(
                f"a container named {p.name} exists and is not sglkit's; remove it or pass --name"
            )
        remove_quietly(existing)  # an old stopped sglkit container of the same name
    for cport, hport in p.ports.items():
        if net.port_in_use(hport):
            fld = next((f for f, cp in p.port_names.items() if cp == cport), "a port")
            raise SglkitError(
                f"{fld}: port {hport} on 127.0.0.1 is in use; free it or pass --host-ports auto"
            )


def up(
    c,
    p: Plan,
    *,
    timeout: float,
    say: Callable[[str], None] = print,
    on_status: Callable[[str], None] = lambda s: None,
    grace: float = 10.0,
) -> Outcome:
    """Start the planned container and wait for its run to be ready; clean up on any failure."""
    preflight(c, p)
    run_dir = manifests.run_dir(p.host_dirs["telemetry"], p.run_id)
    container = create_and_start(c, p)
    try:
        m = wait_ready(container, run_dir, timeout, on_status=on_status)
    except BaseException as e:
        lines = last_logs(container)
        with contextlib.suppress(Exception):
            container.stop(timeout=int(grace))
        remove_quietly(container)
        if isinstance(e, _NotReady):
            for line in lines:
                say(f"  | {line}")
            raise SglkitError(
                f"container.up: {e.why} ({e.last}); container {p.name} stopped and removed; "
                f"last {len(lines)} log lines above; run folder {run_dir}"
            ) from None
        raise
    urls = {
        name: host_url(svc.get("url"), p.ports)
        for name, svc in (m.get("services") or {}).items()
        if svc.get("status") == "running"
    }
    return Outcome(p.run_id, run_dir, m, urls, container.id)


def down(c, name: str, grace: float = 10.0) -> dict[str, Any] | None:
    """Stop and remove the container; return what it was running (labels), None if absent."""
    container = find(c, name)
    if container is None:
        return None
    labels = dict(container.labels)
    with contextlib.suppress(Exception):
        container.stop(timeout=int(grace))
    remove_quietly(container)
    return labels


def describe(c, name: str) -> dict[str, Any] | None:
    """State of the named container and of its run (manifest), for container.status."""
    container = find(c, name)
    if container is None:
        return None
    container.reload()
    labels = container.labels
    ports = {int(k): v for k, v in json.loads(labels.get("org.sglkit.ports", "{}")).items()}
    run_id = labels.get(engine.LABEL_RUN)
    root = labels.get("org.sglkit.telemetry-root")
    info: dict[str, Any] = {
        "name": container.name,
        "id": container.short_id,
        "image": (container.image.tags or [container.image.short_id])[0],
        "state": container.status,
        "run_id": run_id,
        "run_dir": None,
        "manifest_status": None,
        "services": {},
    }
    if run_id and root:
        rd = manifests.run_dir(root, run_id)
        info["run_dir"] = str(rd)
        with contextlib.suppress(SglkitError):
            m = manifests.read(rd)
            info["manifest_status"] = m.get("status")
            info["services"] = {
                n: {"status": s.get("status"), "url": host_url(s.get("url"), ports)}
                for n, s in (m.get("services") or {}).items()
            }
    return info


def secrets(profile: Profile, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's variables named in `container.secrets` (default HF_TOKEN) and set: the only
    ones passed into the container. Others named like secrets stay on the host."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in profile.container["secrets"] if environ.get(k)}


def secret_note(forwarded: dict[str, str]) -> str | None:
    """The plan's line about secrets: their names only (never a value), None when none."""
    if not forwarded:
        return None
    return f"secrets passed in (container.secrets): {', '.join(sorted(forwarded))}"
