"""obs.report over a run of the real stack: init-run (real Prometheus and node_exporter).

The profile points the SGLang scrape target at the STAND-IN exporter (no GPU here, so init-run
starts no GPU exporter: the GPU panels must say they have no data). The run is reported live,
then stopped with SIGTERM and reported again through a temporary Prometheus over a copy.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
import yaml

from sglkit.net import free_port, wait_for
from sglkit.observability import report as rep
from sglkit.paths import asset
from sglkit.proc import group_members, spawn, terminate_group

pytestmark = pytest.mark.requires("prometheus", "node_exporter")

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fixtures" / "standin_metrics_exporter.py"


def _profile(tmp: Path, server_port: int) -> Path:
    data = yaml.safe_load(asset("profiles", "cpu-dev.yaml").read_text())
    data["name"] = "cpu-dev-standin"
    data["model"]["config"] = str(asset("profiles", "models", "Qwen3-30B-A3B", "config.json"))
    data["server"]["port"] = server_port
    data["telemetry"]["scrape_interval"] = "1s"
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _stored(url: str, expr: str) -> float:
    r = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    res = r["data"]["result"]
    return float(res[0]["value"][1]) if res else 0.0


def test_report_on_a_real_init_run_live_then_stopped(tmp_path, monkeypatch):
    server_port = free_port()
    profile = _profile(tmp_path, server_port)
    root = tmp_path / "root"
    standin = spawn(
        [sys.executable, str(STANDIN), "--port", str(server_port), "--gpu-scheme", "none"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    init = None
    try:
        init = spawn(
            [
                *(sys.executable, "-m", "sglkit.observability.init_run"),
                *("--profile", str(profile), "--root", str(root), "--ports", "auto"),
                *("--server-metrics", "on", "--run-id", "stack", "--quiet"),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        run_dir = root / "runs" / "stack"
        wait_for(lambda: _manifest(run_dir)["status"] == "ready", 90, 0.2, "init-run to be ready")
        url = _manifest(run_dir)["services"]["prometheus"]["url"]
        # at least 8 scrapes of the stand-in and of node_exporter stored
        wait_for(
            lambda: (
                _stored(url, "count_over_time(sglang:num_requests_total[5m])") >= 8
                and _stored(url, "count_over_time(node_memory_MemAvailable_bytes[5m])") >= 4
            ),
            90,
            0.5,
            "Prometheus to store the stand-in's and node_exporter's samples",
        )

        # the stand-in answers Prometheus in OpenMetrics (`sglang_...`); init-run's rendered
        # config stores SGLang's own names
        assert _stored(url, 'count({__name__=~"sglang_.+"})') == 0.0

        live = rep.build_report(run_dir)
        assert live["prometheus"]["how"] == "live"
        panels = {p["id"]: p for p in live["panels"]}
        for pid in ("requests", "tokens", "queue", "ttft", "itl", "host_cpu", "host_memory"):
            assert panels[pid]["has_data"], pid
        for pid in ("gpu_util", "gpu_memory", "gpu_power", "gpu_temp"):
            assert not panels[pid]["has_data"] and panels[pid]["png"] is None
        assert live["gpu_scheme"] is None
        assert live["metrics"]["request_throughput_rps"]["p50"] == pytest.approx(2.0, rel=0.05)

        init.send_signal(signal.SIGTERM)
        assert init.wait(timeout=60) == 0
        m = _manifest(run_dir)
        assert m["status"] == "stopped" and m["ended_at"]

        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        stopped = rep.build_report(run_dir)
        assert stopped["prometheus"]["how"] == "restarted"
        assert stopped["ended_at"][:19] == m["ended_at"][:19]
        s_panels = {p["id"]: p["has_data"] for p in stopped["panels"]}
        assert s_panels == {pid: p["has_data"] for pid, p in panels.items()}
        assert stopped["metrics"]["request_throughput_rps"]["p50"] == pytest.approx(2.0, rel=0.05)
        html = (run_dir / "report" / "index.html").read_text()
        assert html.count('data-nodata="true"') == 4  # the four GPU panels
        assert "none found in this run" in html
        assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.yaml", "root"]
    finally:
        if init is not None and init.poll() is None:
            terminate_group(init, grace=10)
        terminate_group(standin, grace=10)
    if init is not None:
        assert group_members(init.pid) == []
