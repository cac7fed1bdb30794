"""obs.report's pure parts: the query table, statistics, run lookup, the page template."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from sglkit.errors import ConfigError, SglkitError
from sglkit.observability import config as promconfig
from sglkit.observability import manifest as mf
from sglkit.observability import report as rep
from sglkit.observability import report_queries as rq
from sglkit.observability import report_render as rr
from sglkit.observability.compare import compare_rows, print_compare
from sglkit.observability.report_render import render_html
from sglkit.observability.report_stats import percentile, series_stats
from sglkit.paths import asset

# ---- the query table -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme,other", [("dcgm", "nvitop"), ("nvitop", "dcgm")])
def test_gpu_panels_use_only_their_schemes_names(scheme, other):
    exprs = " ".join(
        f"{line.expr} {line.summary_expr or ''}" for p in rq.panels(scheme) for line in p.lines
    )
    for role, name in rq.GPU_SCHEMES[scheme].items():
        if role != "device_label":
            assert name in exprs
    for role, name in rq.GPU_SCHEMES[other].items():
        if role != "device_label":
            assert name not in exprs


def test_sglang_is_queried_by_its_own_names_only():
    """The scrape config stores `sglang:...` whatever the exposition; no escaped spelling here."""
    text = json.dumps([[line.__dict__ for line in p.lines] for p in rq.panels("dcgm")])
    assert "sglang:time_to_first_token_seconds_bucket" in text
    assert "sglang_" not in text
    assert all(m.startswith("sglang:") for m, _ in rq.HISTOGRAMS.values())
    with pytest.raises(ValueError):
        rq.panels("amd-smi")


def test_histogram_panels_plot_quantiles_from_rate_of_buckets():
    ttft = next(p for p in rq.panels("dcgm") if p.id == "ttft")
    assert [line.label for line in ttft.lines] == ["p50", "p90", "p99"]
    assert rq.fill(ttft.lines[2].expr, 20) == (
        "histogram_quantile(0.99, sum by (le) "
        "(rate(sglang:time_to_first_token_seconds_bucket[20s])))"
    )
    assert all(not line.summarize for line in ttft.lines)
    assert ttft.histogram == "ttft_seconds"


def test_the_report_covers_what_the_issue_asks():
    ids = [p.id for p in rq.panels("dcgm")]
    assert ids == [
        "requests",
        "tokens",
        "queue",
        "ttft",
        "itl",
        "kv_cache",
        "prefix_cache",
        "gpu_util",
        "gpu_memory",
        "gpu_power",
        "gpu_temp",
        "host_cpu",
        "host_memory",
    ]
    keys = [line.key for p in rq.panels("dcgm") for line in p.lines]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(
    "seconds,text", [(20, "20s"), (0.5, "500ms"), (1.25, "1250ms"), (0, "1ms"), (3600, "3600s")]
)
def test_promql_durations(seconds, text):
    assert rq.duration(seconds) == text


def test_rate_window_covers_several_scrapes():
    assert rq.rate_window(5) == 20
    assert rq.rate_window(0.1) == 2.0


def test_run_wide_histogram_queries_use_increase_over_the_span():
    q = rq.histogram_exprs("sglang:inter_token_latency_seconds", 90)
    assert q["p50"] == (
        "histogram_quantile(0.5, sum by (le) (increase(sglang:inter_token_latency_seconds_bucket[90s])))"
    )
    assert q["mean"].startswith("sum(increase(sglang:inter_token_latency_seconds_sum[90s])) / ")
    assert set(q) == {"p50", "p90", "p99", "mean", "count"}


def test_query_names_agree_with_the_metrics_catalog():
    catalog = asset("observability", "metrics_catalog.yaml")
    if not catalog.is_file():
        pytest.skip("observability/metrics_catalog.yaml has not landed in this tree yet")
    assert rq.names_missing_from_catalog(catalog) == []


def test_catalog_reader_takes_a_list_or_a_mapping(tmp_path):
    as_list = tmp_path / "a.yaml"
    as_list.write_text("metrics:\n  - name: sglang:token_usage\n    type: gauge\n")
    as_map = tmp_path / "b.yaml"
    as_map.write_text("sglang:num_running_reqs: {type: gauge}\n")
    assert rq.catalog_names(as_list) == {"sglang:token_usage"}
    assert rq.catalog_names(as_map) == {"sglang:num_running_reqs"}
    assert "sglang:num_running_reqs" in rq.names_missing_from_catalog(as_list)


# ---- statistics ------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy():
    v = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(v, 0.5) == 3.0
    assert percentile(v, 0.99) == pytest.approx(4 + 6 * 0.96)
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_series_stats_and_empty_series():
    s = series_stats([4.0, 2.0, 8.0, 6.0])
    assert (s["mean"], s["max"], s["min"], s["samples"]) == (5.0, 8.0, 2.0, 4)
    assert s["p50"] == 5.0
    assert series_stats([])["mean"] is None


def test_compare_rows_deltas_and_missing_sides():
    a = {"metrics": {"x": {"unit": "s", "mean": 2.0, "max": 4.0}, "y": {"mean": None}}}
    b = {"metrics": {"x": {"unit": "s", "mean": 3.0, "max": 2.0}, "z": {"mean": 1.0}}}
    rows = {(r["metric"], r["stat"]): r for r in compare_rows(a, b)}
    assert rows[("x", "mean")]["delta"] == 1.0 and rows[("x", "mean")]["pct"] == 50.0
    assert rows[("x", "max")]["pct"] == -50.0
    assert rows[("z", "mean")]["a"] is None and rows[("z", "mean")]["delta"] is None
    assert ("y", "mean") not in rows  # no data on either side: no row


def test_print_compare_table():
    a = {"run_id": "ra", "metrics": {"x": {"unit": "req/s", "mean": 2.0}}}
    b = {"run_id": "rb", "metrics": {"x": {"unit": "req/s", "mean": 3.0}}}
    console = Console(record=True, width=160)
    print_compare(a, b, console=console)
    text = console.export_text()
    assert "ra" in text and "rb" in text and "+50.0%" in text and "req/s" in text


# ---- finding runs, reading manifests ---------------------------------------------------------


def _run(root: Path, run_id: str, **manifest) -> Path:
    d = root / "runs" / run_id
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"run_id": run_id, **manifest}))
    return d


def test_resolve_run_by_id_path_and_latest(tmp_path):
    a = _run(tmp_path, "a", status="stopped")
    b = _run(tmp_path, "b", status="stopped")
    os.symlink("runs/a", tmp_path / "latest")
    assert mf.resolve_run("b", str(tmp_path)) == b.resolve()
    assert mf.resolve_run(str(b), None) == b.resolve()
    assert mf.resolve_run(None, str(tmp_path)) == a.resolve()


@pytest.mark.parametrize(
    "run,make,flag",
    [
        ("nope", True, "--run"),
        (None, False, "--root"),
        (None, True, "--root"),
        ("../etc", True, "--run"),
    ],
)
def test_resolve_run_errors_name_the_flag(tmp_path, run, make, flag):
    root = tmp_path / "root"
    if make:
        (root / "runs").mkdir(parents=True)
    with pytest.raises(ConfigError) as e:
        mf.resolve_run(run, str(root))
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_run_span_from_the_manifest(tmp_path):
    d = _run(tmp_path, "r")
    m = {"started_at": "2026-11-29T03:00:00.000Z", "ended_at": "2026-11-29T03:01:30Z"}
    start, end = mf.run_span(d, m)
    assert end - start == 90
    with pytest.raises(SglkitError, match="started_at"):
        mf.run_span(d, {"ended_at": m["ended_at"]})
    with pytest.raises(SglkitError, match="not after"):
        mf.run_span(d, {"started_at": m["ended_at"], "ended_at": m["started_at"]})
    with pytest.raises(SglkitError, match="ISO 8601"):
        mf.run_span(d, {"started_at": "yesterday"})


def test_scrape_interval_from_the_rendered_config(tmp_path):
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 500ms\n")
    interval = promconfig.scrape_interval
    assert interval(tmp_path, {"paths": {"prometheus_config": str(cfg)}}) == 0.5
    assert interval(tmp_path, {"paths": {}}) == promconfig.DEFAULT_SCRAPE_INTERVAL_S
    assert interval(tmp_path, {"scrape_interval": "2m"}) == 120


def test_gpu_naming_detection_from_stored_names():
    assert rep.gpu_scheme({}, {"gpu_utilization_Percentage"}) == "nvitop"
    assert rep.gpu_scheme({}, {"DCGM_FI_DEV_GPU_UTIL"}) == "dcgm"
    manifest = {"services": {"gpu_exporter": {"kind": "nvitop"}}}
    assert rep.gpu_scheme(manifest, set()) == "nvitop"
    assert rep.gpu_scheme({}, set()) is None


def test_out_that_is_a_file_is_refused_and_left_alone(tmp_path):
    d = _run(tmp_path, "r", status="stopped", started_at="2026-11-29T03:00:00Z")
    out = tmp_path / "out"
    out.write_text("keep me")
    with pytest.raises(ConfigError, match=r"^--out"):
        rep.build_report(d, out)
    assert out.read_text() == "keep me"


def test_stopped_run_without_prometheus_binary_fails_cleanly(tmp_path, monkeypatch):
    d = _run(
        tmp_path,
        "r",
        status="stopped",
        started_at="2026-11-29T03:00:00Z",
        ended_at="2026-11-29T03:01:00Z",
        paths={"prometheus_data": str(tmp_path / "data")},
    )
    (tmp_path / "data").mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(SglkitError, match="prometheus is not on PATH"):
        rep.build_report(d)
    assert not (d / "report").exists()
    assert sorted(x.name for x in d.iterdir()) == ["manifest.json"]
    assert list(scratch.iterdir()) == []


# ---- the page --------------------------------------------------------------------------------


def _summary(**over):
    s = {
        "schema": 1,
        "run_id": "<script>alert(1)</script>",
        "status": "stopped",
        "profile": {"name": "cpu-dev", "hash": "x"},
        "started_at": "2026-11-29T03:00:00Z",
        "ended_at": "2026-11-29T03:01:00Z",
        "span_s": 60.0,
        "scrape_interval_s": 5.0,
        "step_s": 5.0,
        "rate_window_s": 20.0,
        "gpu_scheme": None,
        "prometheus": {"how": "restarted", "detail": "temporary Prometheus over a copy"},
        "generated_at": "2026-11-29T03:02:00Z",
        "metrics": {
            "kv_cache_usage_pct": {
                "title": "KV-cache usage",
                "label": "KV pool in use",
                "unit": "%",
                "kind": "series",
                "mean": None,
                "p50": None,
                "p99": None,
                "max": None,
                "min": None,
                "samples": 0,
            }
        },
        "panels": [
            {
                "id": "kv_cache",
                "title": "KV-cache usage",
                "unit": "%",
                "group": "serving",
                "has_data": False,
                "missing": ["sglang:token_usage"],
                "keys": ["kv_cache_usage_pct"],
                "png": None,
                "series": [],
                "queries": ["100 * avg(sglang:token_usage)"],
            }
        ],
    }
    s.update(over)
    return s


def test_page_says_when_a_panel_has_no_data_and_escapes_input(tmp_path):
    s = _summary()
    html = render_html(rr.page_context(s, {"services": {}}, tmp_path, tmp_path, None))
    assert 'id="kv_cache" class="nodata" data-nodata="true"' in html
    assert "No data in this run." in html and "sglang:token_usage" in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "none found in this run" in html  # no GPU exporter
    assert "<img" not in html


def test_page_template_is_strict(tmp_path):
    s = _summary()
    ctx = rr.page_context(s, {"services": {}}, tmp_path, tmp_path, None)
    del ctx["span"]
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        render_html(ctx)


def test_empty_panels_give_the_runs_own_reason():
    gpu = {"id": "gpu_util", "group": "gpu", "has_data": False, "missing": ["DCGM_FI_DEV_GPU_UTIL"]}
    absent = {"services": {"gpu_exporter": {"status": "absent", "reason": "no GPU here"}}}
    assert rr._why_empty(gpu, absent).startswith("No GPU exporter ran in this run (absent: no GPU")
    serving = {"id": "queue", "group": "serving", "has_data": False, "missing": ["sglang:x"]}
    assert "did not scrape the SGLang server" in rr._why_empty(serving, {"scrapes_server": False})
    assert rr._why_empty(serving, {}).startswith("Prometheus holds no samples of sglang:x")
    assert rr._why_empty(serving | {"has_data": True}, {}) == ""


def test_a_group_empty_for_a_recorded_reason_gets_one_box(tmp_path):
    s = _summary()
    manifest = {"services": {}, "scrapes_server": False}
    ctx = rr.page_context(s, manifest, tmp_path, tmp_path, None)
    serving = next(sec for sec in ctx["sections"] if sec["id"] == "serving")
    assert serving["all_empty"] and "did not scrape the SGLang server" in serving["reason"]
    html = render_html(ctx)
    assert "No data for any Serving (SGLang) panel" in html
    assert html.count('data-nodata="true"') == 1 and "No data in this run." not in html


def test_compare_rows_follow_page_order_and_ignore_float_noise():
    a = {
        "panels": [{"keys": ["z_first"]}, {"keys": ["a_second"]}],
        "metrics": {"a_second": {"mean": 1.0}, "z_first": {"mean": 5.96}, "extra": {"mean": 1}},
    }
    b = {"metrics": {"a_second": {"mean": 1.0}, "z_first": {"mean": 5.96 + 8.88e-16}}}
    rows = compare_rows(a, b)
    assert [r["metric"] for r in rows] == ["z_first", "a_second", "extra"]
    assert rows[0]["delta"] == 0.0 and rows[0]["pct"] == 0.0
