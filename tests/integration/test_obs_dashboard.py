"""The Grafana dashboard, rendered from obs.report's query table, asks a real Prometheus.

A real Prometheus (config rendered from our template, negotiating OpenMetrics, so the `sglang:`
relabel rule is in play) scrapes the STAND-IN exporter twice, once with dcgm-exporter's GPU names
and once with nvitop-exporter's (tests/fixtures/standin_metrics_exporter.py; not SGLang, not a GPU
exporter), and a real node_exporter. Every target of both renderings of the dashboard must parse
and return data. Grafana itself is not installed here (its apt repository is out of reach): what
Grafana would send is each target's `expr` as a range query, which is what this test sends.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from sglkit import profile as profiles
from sglkit.net import free_port, wait_for
from sglkit.observability import config as promconfig
from sglkit.observability import dashboard
from sglkit.proc import spawn, terminate_group

pytestmark = pytest.mark.requires("prometheus", "node_exporter")

STANDIN = Path(__file__).resolve().parents[1] / "fixtures" / "standin_metrics_exporter.py"
SCRAPE_S = 1.0


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _range(url: str, expr: str, start: float, end: float) -> dict:
    r = requests.get(
        f"{url}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": SCRAPE_S},
        timeout=10,
    )
    return r.json()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    ports = {k: free_port() for k in ("prom", "node", "dcgm", "nvitop")}
    node_bin = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    context = promconfig.context(
        profile=profiles.load("cpu-dev"),
        run_id="dashboard",
        host="test",
        bind="127.0.0.1",
        ports={"prometheus": ports["prom"], "node_exporter": ports["node"]},
        node_exporter=True,
        gpu_exporter_kind=None,
        jaeger_metrics_port=None,
        scrape_server=False,
    )
    context["scrape_interval"] = f"{int(SCRAPE_S)}s"
    # both stand-ins are SGLang targets (they serve the GPU names too)
    context["sglang_targets"] = [f"127.0.0.1:{ports['dcgm']}", f"127.0.0.1:{ports['nvitop']}"]
    config = tmp / "prometheus.yml"
    config.write_text(promconfig.render(context))
    assert yaml.safe_load(config.read_text())["scrape_configs"]
    procs = []
    try:
        for scheme in ("dcgm", "nvitop"):
            procs.append(
                spawn(
                    [
                        sys.executable,
                        str(STANDIN),
                        "--port",
                        str(ports[scheme]),
                        "--gpu-scheme",
                        scheme,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        procs.append(
            spawn(
                [
                    node_bin,
                    f"--web.listen-address=127.0.0.1:{ports['node']}",
                    "--collector.disable-defaults",
                    "--collector.cpu",
                    "--collector.meminfo",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        with open(tmp / "prometheus.log", "wb") as log:
            procs.append(
                spawn(
                    [
                        shutil.which("prometheus"),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp / 'data'}",
                        f"--web.listen-address=127.0.0.1:{ports['prom']}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{ports['prom']}"
        wait_for(lambda: _ok(f"{url}/-/ready"), 60, 0.2, "Prometheus ready")
        t0 = time.time()

        def rates_ready() -> bool:
            # a rate over the dashboard's window needs two samples of every target
            res = _range(url, "count_over_time(up[1h]) >= 3", t0, time.time())
            series = res.get("data", {}).get("result", [])
            return len({s["metric"]["instance"] for s in series}) == 4

        wait_for(rates_ready, 90, 0.5, "three scrapes of every target")
        yield url, t0
    finally:
        for p in reversed(procs):
            terminate_group(p, grace=10)


@pytest.mark.parametrize("scheme", ["dcgm", "nvitop"])
def test_every_dashboard_query_parses_and_returns_data(prometheus, scheme):
    url, t0 = prometheus
    model = dashboard.build(scheme, SCRAPE_S, run_id="dashboard")
    targets = dashboard.panel_queries(model)
    assert len(targets) >= 16
    empty, bad = [], []
    end = time.time()
    for title, expr in targets:
        res = _range(url, expr, t0, end)
        if res.get("status") != "success":
            bad.append(f"{title}: {expr}: {res.get('error')}")
        elif not any(
            v[1] not in ("NaN", "+Inf", "-Inf") for s in res["data"]["result"] for v in s["values"]
        ):
            empty.append(f"{title}: {expr}")
    assert bad == [] and empty == []


def test_a_broken_query_is_caught(prometheus):
    url, t0 = prometheus
    assert _range(url, "sum(rate(sglang:num_requests_total[", t0, time.time())["status"] == "error"
    res = _range(url, "sum(rate(sglang_num_requests_total[4s]))", t0, time.time())
    assert res["status"] == "success" and res["data"]["result"] == []
