"""obs.report against real Prometheus: two runs scraped at once, one stopped, one live.

Each run has its own real Prometheus (TSDB in <run>/prometheus/data, the manifest contract's
shape) scraping a real prometheus-node-exporter and the STAND-IN exporter
(tests/fixtures/standin_metrics_exporter.py) that serves SGLang's and a GPU exporter's names with
known values: run A uses dcgm-exporter's names and is stopped before its report (so the report
starts a temporary Prometheus over a copy); run B uses nvitop-exporter's names, lacks
sglang:cache_hit_rate, and stays live. Each Prometheus runs the scrape config rendered from
observability/prometheus.yml.j2 (the stand-in is the SGLang target). Run A's stand-in answers the
text format, run B's OpenMetrics, where prometheus_client writes `sglang_...`: the template's
relabel rule must store SGLang's own `sglang:...` names for both.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from sglkit import profile as profiles
from sglkit.observability import config as promconfig
from sglkit.observability import report as rep
from sglkit.proc import spawn, terminate_group

pytestmark = pytest.mark.requires("prometheus", "node_exporter")

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fixtures" / "standin_metrics_exporter.py"
SCRAPE = 1.0


def _standin_module():
    spec = importlib.util.spec_from_file_location("standin_metrics_exporter", STANDIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SI = _standin_module()


def _iso(ts: float) -> str:
    t = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _node_exporter_binary() -> str:
    return shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Run:
    """A run folder in the manifest contract's shape, with live processes until stopped."""

    def __init__(self, root, run_id, scheme, exposition, omit, node_port, ports):
        self.root, self.run_id, self.scheme = root, run_id, scheme
        self.exposition = exposition
        self.dir = root / "runs" / run_id
        self.data = self.dir / "prometheus" / "data"
        self.logs = self.dir / "logs"
        self.data.mkdir(parents=True)
        self.logs.mkdir()
        self.epoch = time.time()
        self.started_at = self.epoch
        exp_port, self.prom_port = ports(), ports()
        self.exp_port = exp_port
        argv = [sys.executable, str(STANDIN), "--port", str(exp_port), "--gpu-scheme", scheme]
        argv += ["--epoch", repr(self.epoch), "--exposition", exposition]
        for m in omit:
            argv += ["--omit", m]
        self.procs = {}
        with open(self.logs / "standin.log", "wb") as log:
            self.procs["standin"] = spawn(argv, stdout=log, stderr=subprocess.STDOUT)
        self.config = self.dir / "prometheus" / "prometheus.yml"
        # the config init-run writes, from our template; the stand-in is the SGLang target (it
        # serves the GPU exporter's names too, so no separate GPU job would add anything)
        context = promconfig.context(
            profile=profiles.load("cpu-dev"),
            run_id=run_id,
            host="test",
            bind="127.0.0.1",
            ports={"prometheus": self.prom_port, "node_exporter": node_port},
            node_exporter=True,
            gpu_exporter_kind=None,
            jaeger_metrics_port=None,
            scrape_server=False,
        )
        context["scrape_interval"] = f"{int(SCRAPE)}s"
        context["sglang_targets"] = [f"127.0.0.1:{exp_port}"]
        self.config.write_text(promconfig.render(context))
        prom_argv = [
            shutil.which("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.prom_port}",
        ]
        with open(self.logs / "prometheus.log", "wb") as log:
            self.procs["prometheus"] = spawn(prom_argv, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.prom_port}"
        self.manifest = {
            "schema": 1,
            "run_id": run_id,
            "status": "starting",
            "reasons": [],
            "profile": {"name": "cpu-dev", "hash": "test"},
            "host": "test",
            "started_at": _iso(self.started_at),
            "ready_at": None,
            "ended_at": None,
            "paths": {
                "run_dir": str(self.dir),
                "logs": str(self.logs),
                "prometheus_data": str(self.data),
                "prometheus_config": str(self.config),
            },
            "services": {
                "prometheus": {
                    "status": "running",
                    "pid": self.procs["prometheus"].pid,
                    "url": self.url,
                    "port": self.prom_port,
                },
                "node_exporter": {"status": "running", "url": f"http://127.0.0.1:{node_port}"},
                "gpu_exporter": {"status": "running", "kind": scheme},
                "jaeger": {"status": "absent"},
            },
        }
        self.write()

    def write(self):
        (self.dir / "manifest.json").write_text(json.dumps(self.manifest, indent=2))

    def query(self, expr: str) -> float | None:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        res = r["data"]["result"]
        return float(res[0]["value"][1]) if res else None

    def enough_data(self) -> bool:
        # a full gauge cycle seen, and at least 14 scrapes stored
        running = "sglang:num_running_reqs[5m]"
        n = self.query(f"count_over_time({running})") or 0
        top = self.query(f"max_over_time({running})")
        low = self.query(f"min_over_time({running})")
        node = self.query("count_over_time(node_memory_MemAvailable_bytes[5m])") or 0
        return n >= 14 and top == 8 and low == 2 and node >= 5

    def stop(self):
        for name in ("prometheus", "standin"):
            terminate_group(self.procs[name], grace=10)
        self.manifest["status"] = "stopped"
        self.manifest["ended_at"] = _iso(time.time())
        for svc in self.manifest["services"].values():
            if svc["status"] == "running":
                svc["status"] = "stopped"
        self.write()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from sglkit.net import free_port, wait_for

    root = tmp_path_factory.mktemp("telemetry")
    node_port = free_port()
    node = spawn(
        [
            _node_exporter_binary(),
            f"--web.listen-address=127.0.0.1:{node_port}",
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.meminfo",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    made: list[Run] = []
    try:
        a = Run(root, "run-a-dcgm", "dcgm", "text", [], node_port, free_port)
        made.append(a)
        omit = ["sglang:cache_hit_rate"]
        b = Run(root, "run-b-nvitop", "nvitop", "negotiate", omit, node_port, free_port)
        made.append(b)
        for r in made:
            wait_for(lambda r=r: _http_ok(r.url + "/-/ready"), 60, 0.2, "Prometheus ready")
            r.manifest["status"] = "ready"
            r.manifest["ready_at"] = _iso(time.time())
            r.write()
        for r in made:
            wait_for(r.enough_data, 90, 0.5, f"{r.run_id}: a full cycle of stand-in values")
        a.stop()
        yield {"root": root, "a": a, "b": b}
    finally:
        for r in made:
            for p in r.procs.values():
                terminate_group(p, grace=10)
        terminate_group(node, grace=10)


def _tree(d: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def _quantile(name: str, q: float) -> float:
    """Prometheus' histogram_quantile over the stand-in's served mix (linear in the bucket)."""
    bounds, mix = SI.HISTOGRAMS[name]
    total = sum(n for _, n in mix)
    rank, prev_bound, prev_cum = q * total, 0.0, 0.0
    for b in bounds:
        cum = sum(n for v, n in mix if v <= b)
        if cum >= rank:
            return prev_bound + (b - prev_bound) * (rank - prev_cum) / (cum - prev_cum)
        prev_bound, prev_cum = b, cum
    raise AssertionError("rank beyond the last bucket")


# Float noise in the scraped counts is far below 0.5 % of the total; 5 % failed the fixed mixes
# themselves (ITL p90 is exactly 5 % from its bucket's count, and every p99 is 1 % from the
# total), while a rank on a cumulative count (the old mixes: distance 0) still fails.
QUANTILE_MARGIN = 0.005


@pytest.mark.parametrize("name", sorted(SI.HISTOGRAMS))
def test_served_quantiles_sit_inside_buckets(name):
    """No rank sits on a bucket's cumulative count: there histogram_quantile is discontinuous
    (it jumps over empty buckets on float noise in the scraped counts), so the expected value
    would depend on luck."""
    bounds, mix = SI.HISTOGRAMS[name]
    total = sum(n for _, n in mix)
    for q in (0.5, 0.9, 0.99):
        for b in bounds:
            cum = sum(n for v, n in mix if v <= b)
            assert abs(q * total - cum) > QUANTILE_MARGIN * total, (q, b)


def _mean(name: str) -> float:
    _, mix = SI.HISTOGRAMS[name]
    return sum(v * n for v, n in mix) / sum(n for _, n in mix)


@pytest.fixture(scope="module")
def report_a(runs, tmp_path_factory):
    """Run A (stopped) through the real CLI: invoke obs.report --run ... --root ..."""
    a = runs["a"]
    before = _tree(a.data)
    tmpdir = tmp_path_factory.mktemp("tmp")
    env = dict(os.environ, TMPDIR=str(tmpdir))
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "obs.report", "--run", a.run_id, "--root", str(a.root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    return {"proc": proc, "before": before, "after": _tree(a.data), "tmpdir": tmpdir}


def test_stopped_run_report_matches_served_values(runs, report_a):
    a = runs["a"]
    summary = json.loads((a.dir / "report" / "summary.json").read_text())
    assert summary["prometheus"]["how"] == "restarted"
    assert summary["gpu_scheme"] == "dcgm"
    assert summary["scrape_interval_s"] == SCRAPE
    m = summary["metrics"]

    # counters: rates are constant, so rate samples are the served rate, except the first few,
    # whose windows reach back before the first scrape (Prometheus extrapolates less there)
    for key, name in (
        ("request_throughput_rps", "sglang:num_requests_total"),
        ("prompt_tokens_per_s", "sglang:prompt_tokens_total"),
        ("generation_tokens_per_s", "sglang:generation_tokens_total"),
    ):
        assert m[key]["p50"] == pytest.approx(SI.RATES[name], rel=0.05), key
        assert m[key]["max"] == pytest.approx(SI.RATES[name], rel=0.05), key
        assert 0.8 * SI.RATES[name] <= m[key]["mean"] <= 1.02 * SI.RATES[name], key

    # gauges: the cycle's extremes are seen exactly; sampled together they keep their relations
    run = m["running_reqs"]
    assert (run["max"], run["min"]) == (8.0, 2.0)
    assert 2.0 < run["mean"] < 8.0
    assert m["queue_reqs"]["mean"] + run["mean"] == pytest.approx(8.0, abs=1e-6)
    assert m["kv_cache_usage_pct"]["mean"] == pytest.approx(10 * run["mean"], abs=1e-6)
    assert m["kv_cache_usage_pct"]["max"] == pytest.approx(80.0)
    assert m["prefix_cache_hit_pct"]["max"] == pytest.approx(40.0)
    assert m["prefix_cache_hit_pct"]["mean"] == pytest.approx(5 * run["mean"], abs=1e-6)

    # GPUs (dcgm names): GPU 0 cycles 20..80 %, GPU 1 holds 50 %; the summary is their average
    assert m["gpu_util_pct"]["max"] == pytest.approx(65.0)
    assert m["gpu_util_pct"]["min"] == pytest.approx(35.0)
    assert m["gpu_util_pct"]["mean"] == pytest.approx(5 * run["mean"] + 25, abs=1e-6)
    assert m["gpu_memory_used_gib"]["max"] == pytest.approx(60.0)
    assert m["gpu_power_w"]["max"] == pytest.approx(850.0)
    assert m["gpu_temp_max_c"]["max"] == pytest.approx(70.0)
    assert m["gpu_temp_max_c"]["min"] == pytest.approx(55.0)

    # histograms: run-wide mean and quantiles of the served observation mix
    for key, name in (
        ("ttft_seconds", "sglang:time_to_first_token_seconds"),
        ("itl_seconds", "sglang:inter_token_latency_seconds"),
        ("e2e_latency_seconds", "sglang:e2e_request_latency_seconds"),
    ):
        assert m[key]["mean"] == pytest.approx(_mean(name), rel=1e-3), key
        for q in (0.5, 0.9, 0.99):
            assert m[key][f"p{round(q * 100)}"] == pytest.approx(_quantile(name, q), rel=1e-3)
        assert m[key]["count"] > 0

    # host metrics come from the real node_exporter
    assert 0 < m["host_memory_used_gib"]["mean"] < psutil.virtual_memory().total / 2**30
    assert 0 <= m["host_cpu_busy_pct"]["mean"] <= 100


def test_stopped_run_every_panel_has_a_png_and_the_run_data_is_untouched(runs, report_a):
    a = runs["a"]
    out = a.dir / "report"
    summary = json.loads((out / "summary.json").read_text())
    assert all(p["has_data"] for p in summary["panels"]), [
        p["id"] for p in summary["panels"] if not p["has_data"]
    ]
    for p in summary["panels"]:
        w, h = _png_size(out / p["png"])
        assert w > 300 and h > 150
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == len(summary["panels"])
    assert 'data-nodata="true"' not in html
    # the run's TSDB is byte-for-byte where it was: the report read a copy
    assert report_a["after"] == report_a["before"]
    # the temporary Prometheus and its copy are gone
    assert list(report_a["tmpdir"].iterdir()) == []
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(str(report_a["tmpdir"]) in arg for arg in (p.info["cmdline"] or []))
    ]
    assert leftovers == []
    assert str(out / "index.html") in report_a["proc"].stdout


def test_live_run_with_nvitop_names_and_a_panel_without_data(runs, tmp_path, monkeypatch):
    b = runs["b"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "out"
    summary = rep.build_report(b.dir, out)
    assert summary["prometheus"]["how"] == "live"
    assert summary["gpu_scheme"] == "nvitop"
    m = summary["metrics"]
    assert m["gpu_util_pct"]["max"] == pytest.approx(65.0)
    assert m["gpu_memory_used_gib"]["max"] == pytest.approx(60.0)
    assert m["running_reqs"]["max"] == 8.0
    panels = {p["id"]: p for p in summary["panels"]}
    assert panels["gpu_util"]["series"] == ["GPU 0", "GPU 1"]
    # the stand-in for run B does not serve the prefix-cache hit rate
    empty = panels["prefix_cache"]
    assert empty["has_data"] is False and empty["png"] is None
    assert empty["missing"] == ["sglang:cache_hit_rate"]
    assert not (out / "prefix_cache.png").exists()
    assert m["prefix_cache_hit_pct"]["mean"] is None
    html = (out / "index.html").read_text()
    assert 'id="prefix_cache" class="nodata" data-nodata="true"' in html
    assert "sglang:cache_hit_rate" in html
    for p in summary["panels"]:
        if p["has_data"]:
            _png_size(out / p["png"])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]  # nothing half-written left

    # a second report replaces the first as a whole
    (out / "stray.txt").write_text("from an older report")
    rep.build_report(b.dir, out)
    assert not (out / "stray.txt").exists()
    assert (out / "index.html").is_file()


def test_openmetrics_run_stores_sglangs_own_names(runs):
    """Run B's stand-in answers OpenMetrics with `sglang_...`; its TSDB holds `sglang:...`."""
    b = runs["b"]
    served = requests.get(
        f"http://127.0.0.1:{b.exp_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    )
    assert served.headers["Content-Type"].startswith("application/openmetrics-text")
    samples = [ln for ln in served.text.splitlines() if ln and not ln.startswith("#")]
    # the escaping the relabel undoes: "# TYPE sglang:x" keeps ':', its samples read sglang_x
    assert any(ln.startswith("sglang_num_running_reqs{") for ln in samples)
    assert not [ln for ln in samples if ln.startswith("sglang:")]
    assert b.query("count_over_time(sglang:num_running_reqs[5m])") >= 14
    assert b.query("count_over_time(sglang:time_to_first_token_seconds_bucket[5m])") > 0
    assert b.query("count_over_time(sglang_num_running_reqs[5m])") is None
    assert b.query('count({__name__=~"sglang_.+"})') is None
    # the GPU exporter's names in the same job are left alone
    assert b.query("count(gpu_utilization_Percentage)") == 2


def test_compare_prints_differences(runs, report_a, tmp_path):
    a, b = runs["a"], runs["b"]
    rep.build_report(b.dir)  # <run>/report/summary.json
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "obs.compare", a.run_id, b.run_id, "--root", str(a.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert proc.returncode == 0, proc.stderr
    assert a.run_id in proc.stdout and b.run_id in proc.stdout
    for key in ("request_throughput_rps", "ttft_seconds", "gpu_util_pct", "host_cpu_busy_pct"):
        assert key in proc.stdout
    # A has a prefix-cache hit rate, B none: the row shows A's value and no change
    row = next(line for line in proc.stdout.splitlines() if "prefix_cache_hit_pct" in line)
    assert "-" in row

    # a run without a report: one line naming the argument, exit 2, nothing written
    c_dir = a.root / "runs" / "run-c"
    c_dir.mkdir()
    (c_dir / "manifest.json").write_text(json.dumps({"run_id": "run-c", "status": "stopped"}))
    bad = subprocess.run(
        [sys.executable, "-m", "invoke", "obs.compare", a.run_id, "run-c", "--root", str(a.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "RUN_B" in bad.stderr
    assert sorted(x.name for x in c_dir.iterdir()) == ["manifest.json"]


def test_a_prometheus_of_another_run_on_the_manifests_port_is_not_trusted(runs, tmp_path):
    """Run A's folder, claiming to be live at run B's Prometheus URL (a reused port)."""
    a, b = runs["a"], runs["b"]
    clone = a.root / "runs" / "run-a-clone"
    shutil.copytree(a.dir, clone, ignore=shutil.ignore_patterns("report"))
    m = json.loads((clone / "manifest.json").read_text())
    m.update(run_id="run-a-dcgm", status="ready")
    m["paths"]["prometheus_data"] = str(clone / "prometheus" / "data")
    m["services"]["prometheus"]["url"] = b.url
    (clone / "manifest.json").write_text(json.dumps(m))
    summary = rep.build_report(clone, tmp_path / "out")
    assert summary["prometheus"]["how"] == "restarted"
    assert summary["gpu_scheme"] == "dcgm"  # A's data, not B's nvitop series
