"""Prometheus scrape config: rendered from observability/prometheus.yml.j2 and the profile, and
read back (`scrape_interval`: a run's interval, from the config it ran with).

Rendering is sandboxed with StrictUndefined: a variable the template names but the context lacks
is a ConfigError naming the template and the variable, never an empty string in the config.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from sglkit import paths
from sglkit.errors import ConfigError, SglkitError
from sglkit.net import host_port

TEMPLATE = "prometheus.yml.j2"
DEFAULT_SCRAPE_INTERVAL_S = 15.0  # for a run that recorded no interval
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def template_path(template: str | os.PathLike | None = None) -> Path:
    return Path(template) if template else paths.asset("observability", TEMPLATE)


def environment(folder: Path) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(context: dict[str, Any], template: str | os.PathLike | None = None) -> str:
    """Render the scrape config template with `context`; ConfigError on a missing variable."""
    path = template_path(template)
    if not path.is_file():
        raise ConfigError(f"{path}: template not found")
    env = environment(path.parent)
    try:
        return env.get_template(path.name).render(**context)
    except jinja2.UndefinedError as e:
        raise ConfigError(f"{path}: template variable undefined: {e.message}") from None
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"{path}: line {e.lineno}: {e.message}") from None
    except jinja2.exceptions.SecurityError as e:
        raise ConfigError(f"{path}: unsafe template: {e}") from None


# a run's file_sd target list for servers started by server.up, relative to the run folder
SGLANG_TARGETS_FILE = ("prometheus", "targets", "sglang.json")


hostport = host_port


def context(
    *,
    profile,
    run_id: str,
    host: str,
    bind: str,
    ports: dict[str, int],
    node_exporter: bool,
    gpu_exporter_kind: str | None,
    jaeger_metrics_port: int | None,
    scrape_server: bool,
    sglang_sd_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The template's variables, from the profile and the services this run starts.

    `sglang_sd_file` is the file_sd file through which `server.up` adds a server it starts on
    another port than the profile's (SGLANG_TARGETS_FILE under the run's prometheus folder)."""
    server = profile.server
    return {
        "run_id": run_id,
        "host": host,
        "profile": profile.name,
        "scrape_interval": profile.telemetry["scrape_interval"],
        "prometheus_target": hostport(bind, ports["prometheus"]),
        "node_exporter_target": hostport(bind, ports["node_exporter"]) if node_exporter else None,
        "sglang_targets": [hostport(server["host"], server["port"])] if scrape_server else [],
        "sglang_sd_file": str(sglang_sd_file) if sglang_sd_file else None,
        "gpu_exporter_target": (
            hostport(bind, ports["gpu_exporter"]) if gpu_exporter_kind else None
        ),
        "gpu_exporter_kind": gpu_exporter_kind or "",
        "jaeger_metrics_target": (
            hostport(bind, jaeger_metrics_port) if jaeger_metrics_port else None
        ),
    }


def promtool_check(*config_files: str | os.PathLike, timeout: float = 60.0) -> str:
    """Run `promtool check config FILE...`; SglkitError with promtool's words when one fails."""
    promtool = shutil.which("promtool")
    if not promtool:
        raise SglkitError("promtool: not on PATH (apt-get install prometheus)")
    r = subprocess.run(
        [promtool, "check", "config", *map(str, config_files)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        last = [ln for ln in out.splitlines() if ln.strip()][-1:] or ["(no output)"]
        where = ", ".join(map(str, config_files))
        raise SglkitError(f"{where}: promtool check config failed: {last[0]}")
    return out


def parse_duration(value: Any) -> float | None:
    """A Prometheus duration (5s, 500ms, 2m) or a number -> seconds; None when it is neither."""
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(str(value).strip())
    return float(m.group(1)) * _UNIT_S[m.group(2)] if m else None


def scrape_interval(run_dir: Path, manifest: dict[str, Any]) -> float:
    """The run's scrape interval, from its rendered Prometheus config (else the manifest)."""
    from sglkit import yamlsafe

    cfg = (manifest.get("paths") or {}).get("prometheus_config")
    if cfg:
        p = Path(cfg) if Path(cfg).is_absolute() else run_dir / cfg
        with contextlib.suppress(ConfigError, AttributeError):
            glob = (yamlsafe.load_file(p, what="Prometheus config") or {}).get("global") or {}
            got = parse_duration(glob.get("scrape_interval", ""))
            if got:
                return got
    got = parse_duration(manifest.get("scrape_interval", ""))
    return got or DEFAULT_SCRAPE_INTERVAL_S
