"""Helpers of the e2e tests: run invoke like a user, write test profiles, find containers."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from sglkit.net import free_port

REPO = Path(__file__).resolve().parents[2]
CPU_IMAGE = "sglkit/dev:cpu"


def invoke(*args: str, env: dict[str, str] | None = None, timeout: float = 600):
    """`python -m invoke <args>` from the repo root; CompletedProcess with text output."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def write_profile(
    folder: Path,
    *,
    name: str | None = None,
    storage: Path | None = None,
    ports: dict[str, int] | None = None,
    ready_timeout: float = 120,
    image: str = CPU_IMAGE,
) -> Path:
    """A cpu profile with its own container name, folders and (free) ports."""
    folder.mkdir(parents=True, exist_ok=True)
    name = name or f"sglkit-{os.environ.get('SGLKIT_TEST_LABEL', 'e2e')}-{secrets.token_hex(2)}"
    ports = ports or {}
    taken: set[int] = set()

    def port(key: str) -> int:
        if key in ports:
            return ports[key]
        while True:
            p = free_port()
            if p not in taken:
                taken.add(p)
                return p

    data = {
        "name": name,
        "model": {"path": "Qwen/Qwen3-30B-A3B"},
        "server": {"port": port("server")},
        "cache": {"root": str(folder / "cache")},
        "telemetry": {
            "root": str(folder / "telemetry"),
            "scrape_interval": "1s",
            "ports": {
                k: port(k)
                for k in (
                    "prometheus",
                    "node_exporter",
                    "gpu_exporter",
                    "jaeger_ui",
                    "jaeger_otlp",
                    "grafana",
                )
            },
        },
        "container": {
            "variant": "cpu",
            "image": image,
            "name": name,
            "storage": str(storage or folder / "storage"),
            "ready_timeout": ready_timeout,
            "shm_size": "256m",
        },
    }
    # the profile's folder is mounted at /profiles: readable by the container's user
    pdir = folder / "profiles"
    pdir.mkdir(exist_ok=True)
    pdir.chmod(0o755)
    path = pdir / f"{name}.yaml"
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML
    return path


def containers_named(client, name: str) -> list:
    """Every container with exactly this name, in any state (created included)."""
    return [c for c in client.containers.list(all=True, filters={"name": name}) if c.name == name]
