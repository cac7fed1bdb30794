"""Which telemetry services this host can run, and the exact argv of each (pure planning).

Binaries are found on PATH by their Debian names and their upstream names. Prometheus and
node_exporter are core: missing, they fail the service (the run is degraded). The GPU exporter and
Jaeger are optional: missing, they are `absent` with the reason, and the run is not degraded.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglkit.observability.config import hostport

PROMETHEUS_NAMES = ("prometheus",)
NODE_EXPORTER_NAMES = ("prometheus-node-exporter", "node_exporter")
JAEGER_NAMES = ("jaeger-all-in-one", "jaeger")
DCGM_EXPORTER_NAMES = ("dcgm-exporter",)
# Grafana OSS: `grafana` (10+, `grafana server`) or the older `grafana-server`; its home holds
# conf/defaults.ini and the web assets (/usr/share/grafana in Grafana's Debian package)
GRAFANA_NAMES = ("grafana", "grafana-server")
GRAFANA_HOMES = ("/usr/share/grafana",)
# every port a service listens on, by name in the manifest's `ports`
PORT_NAMES = (
    "prometheus",
    "node_exporter",
    "gpu_exporter",
    "jaeger_ui",
    "jaeger_otlp",
    "jaeger_admin",
    "grafana",
)
DEFAULT_JAEGER_ADMIN = 14269

Which = Callable[[str], str | None]


@dataclass
class ServiceSpec:
    """One service of a run: how to start it and how to tell it is healthy."""

    name: str
    argv: list[str] | None = None
    port: int | None = None
    bind: str = "127.0.0.1"
    url: str | None = None
    health_url: str | None = None
    kind: str | None = None
    optional: bool = False
    # why it is not started: optional -> absent, core -> failed
    unavailable: str | None = None
    # every (port, label) it binds, checked before each start
    listens: list[tuple[int, str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def first_on_path(names: tuple[str, ...], which: Which = shutil.which) -> str | None:
    for n in names:
        found = which(n)
        if found:
            return found
    return None


def nvml_gpu_count() -> tuple[int, str]:
    """(number of GPUs NVML sees, why none) without importing anything heavy."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except Exception as e:
        return 0, f"pynvml does not import ({type(e).__name__})"
    try:
        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
    except Exception as e:
        return 0, f"NVML does not answer ({type(e).__name__})"
    return n, "" if n else "NVML reports no GPU"


def dcgm_present() -> bool:
    return bool(ctypes.util.find_library("dcgm") or shutil.which("nv-hostengine"))


def url(bind: str, port: int, path: str = "") -> str:
    return f"http://{hostport(bind, port)}{path}"


def plan(
    *,
    bind: str,
    ports: dict[str, int],
    prometheus_config: Path,
    prometheus_data: Path,
    retention: str = "15d",
    which: Which = shutil.which,
    gpu_probe: Callable[[], tuple[int, str]] = nvml_gpu_count,
    dcgm_probe: Callable[[], bool] = dcgm_present,
    nvitop_importable: Callable[[], bool] | None = None,
    jaeger_wanted: bool = True,
    lifecycle_api: bool = True,
    grafana_config: Path | None = None,
    grafana_homes: tuple[str, ...] = GRAFANA_HOMES,
) -> dict[str, ServiceSpec]:
    """The five services with their argv, or the reason each cannot run here."""
    specs: dict[str, ServiceSpec] = {}

    # Prometheus: TSDB inside the run folder so a report can be built from a stopped run.
    p = ServiceSpec("prometheus", port=ports["prometheus"], bind=bind, kind="prometheus")
    binary = first_on_path(PROMETHEUS_NAMES, which)
    p.url = url(bind, p.port)
    p.health_url = url(bind, p.port, "/-/ready")
    p.listens = [(p.port, "prometheus")]
    if binary:
        p.argv = prometheus_argv(
            binary,
            config=prometheus_config,
            data=prometheus_data,
            retention=retention,
            listen=_listen(bind, p.port),
            lifecycle_api=lifecycle_api,
        )
    else:
        p.unavailable = f"binary not found on PATH (looked for {', '.join(PROMETHEUS_NAMES)})"
    specs["prometheus"] = p

    n = ServiceSpec("node_exporter", port=ports["node_exporter"], bind=bind, kind="node_exporter")
    binary = first_on_path(NODE_EXPORTER_NAMES, which)
    n.url = url(bind, n.port, "/metrics")
    n.health_url = n.url
    n.listens = [(n.port, "node_exporter")]
    if binary:
        n.argv = [binary, f"--web.listen-address={_listen(bind, n.port)}"]
    else:
        n.unavailable = f"binary not found on PATH (looked for {', '.join(NODE_EXPORTER_NAMES)})"
    specs["node_exporter"] = n

    specs["gpu_exporter"] = _gpu_exporter(
        bind, ports["gpu_exporter"], which, gpu_probe, dcgm_probe, nvitop_importable
    )
    specs["jaeger"] = _jaeger(bind, ports, which, jaeger_wanted)
    specs["grafana"] = _grafana(bind, ports.get("grafana"), which, grafana_config, grafana_homes)
    return specs


def prometheus_argv(
    binary: str,
    *,
    config: Path | str,
    data: Path | str,
    retention: str,
    listen: str,
    lifecycle_api: bool = False,
    log_level: str | None = "info",
) -> list[str]:
    """The one Prometheus command line the kit uses (init-run's, and obs.report's temporary one).

    Every flag here is accepted by 2.x (Debian's 2.42 here) and by 3.5 (the GPU images); a unit
    test checks them against the 3.5 documentation (tests/data/prometheus_compat.yaml)."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address={listen}",
        *(["--web.enable-lifecycle"] if lifecycle_api else []),
        *([f"--log.level={log_level}"] if log_level else []),
    ]


def _listen(bind: str, port: int) -> str:
    return f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"


def _gpu_exporter(bind, port, which, gpu_probe, dcgm_probe, nvitop_importable) -> ServiceSpec:
    g = ServiceSpec("gpu_exporter", port=port, bind=bind, optional=True)
    g.url = url(bind, port, "/metrics")
    g.listens = [(port, "gpu_exporter")]
    dcgm = first_on_path(DCGM_EXPORTER_NAMES, which)
    if dcgm and dcgm_probe():
        g.kind = "dcgm"
        g.argv = [dcgm, "--address", _listen(bind, port)]
        g.health_url = url(bind, port, "/health")
        return g
    count, why = gpu_probe()
    if not count:
        g.unavailable = f"no GPU here: {why}" + ("" if dcgm else "; dcgm-exporter not on PATH")
        return g
    importable = nvitop_importable or _nvitop_importable
    if not importable():
        g.unavailable = "a GPU is present but neither DCGM nor nvitop_exporter is installed"
        return g
    g.kind = "nvitop"
    g.argv = [sys.executable, "-m", "nvitop_exporter", "--bind-address", bind, "--port", str(port)]
    g.health_url = g.url
    return g


def _nvitop_importable() -> bool:
    return importlib.util.find_spec("nvitop_exporter") is not None


def _jaeger(bind, ports, which, wanted) -> ServiceSpec:
    ui, otlp, admin = ports["jaeger_ui"], ports["jaeger_otlp"], ports["jaeger_admin"]
    j = ServiceSpec("jaeger", port=ui, bind=bind, optional=True, kind="jaeger")
    j.url = url(bind, ui)
    j.listens = [(ui, "jaeger_ui"), (otlp, "jaeger_otlp"), (admin, "jaeger_admin")]
    j.extra = {
        "ui_url": url(bind, ui),
        "otlp_endpoint": hostport(bind, otlp),
        "metrics_port": admin,
    }
    if not wanted:
        j.unavailable = "tracing is off in the profile (telemetry.tracing: false)"
        return j
    binary = first_on_path(JAEGER_NAMES, which)
    if not binary:
        j.unavailable = f"binary not found on PATH (looked for {', '.join(JAEGER_NAMES)})"
        return j
    # Jaeger 1.x all-in-one flags: the listeners we use pinned to `bind`, the collector's legacy
    # receivers too (ephemeral ports) so a second run does not collide. The agent's UDP/sampling
    # flags are left out: later 1.x releases dropped the agent, and an unknown flag stops Jaeger.
    # Not verified here (no Jaeger on the test machine): see docs/observability.md.
    h = bind
    j.argv = [
        binary,
        f"--query.http-server.host-port={_listen(h, ui)}",
        "--collector.otlp.enabled=true",
        f"--collector.otlp.grpc.host-port={_listen(h, otlp)}",
        f"--admin.http.host-port={_listen(h, admin)}",
        f"--collector.otlp.http.host-port={_listen(h, 0)}",
        f"--query.grpc-server.host-port={_listen(h, 0)}",
        f"--collector.grpc-server.host-port={_listen(h, 0)}",
        f"--collector.http-server.host-port={_listen(h, 0)}",
    ]
    j.health_url = url(bind, admin, "/")
    return j


def _grafana(bind, port, which, config, homes) -> ServiceSpec:
    g = ServiceSpec("grafana", port=port, bind=bind, optional=True, kind="grafana")
    if port is None:
        g.unavailable = "no port for it (telemetry.ports.grafana)"
        return g
    g.url = url(bind, port)
    g.health_url = url(bind, port, "/api/health")
    g.listens = [(port, "grafana")]
    binary = first_on_path(GRAFANA_NAMES, which)
    if not binary:
        g.unavailable = (
            f"binary not found on PATH (looked for {', '.join(GRAFANA_NAMES)}); the GPU images "
            "install Grafana OSS from Grafana's apt repository"
        )
        return g
    home = next((h for h in homes if Path(h, "conf", "defaults.ini").is_file()), None)
    if home is None:
        g.unavailable = (
            f"{binary} found, but no Grafana home (conf/defaults.ini) in {', '.join(homes)}"
        )
        return g
    if config is None:
        g.unavailable = "no Grafana config for this run"
        return g
    sub = ["server"] if Path(binary).name == "grafana" else []
    g.argv = [binary, *sub, f"--homepath={home}", f"--config={config}"]
    return g


def binary_version(argv0: str, timeout: float = 10.0) -> str | None:
    """First line of `<binary> --version` (Prometheus tools print it on stdout or stderr)."""
    try:
        r = subprocess.run(
            [argv0, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (r.stdout or r.stderr).strip().splitlines()
    return text[0].strip() if text else None
