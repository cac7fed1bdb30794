"""obs.report's work: one page, PNG plots and a JSON summary for a telemetry run.

The report is built from range queries over the run's span (manifest started_at..ended_at)
against the run's Prometheus, or, for a stopped run, a temporary Prometheus over a copy of the
run's TSDB (report_prom.py says why a copy). Output, replaced atomically as a whole folder:
<run>/report/{index.html, summary.json, <panel>.png}.

Finding the run and when it ran is the manifest's (`manifest.resolve_run`, `read_run`,
`run_span`); its scrape interval is the config's (`config.scrape_interval`); what is asked is
report_queries.py, how it is drawn and shown report_render.py. The task is observability/tasks.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError, SglkitError
from sglkit.fsutil import atomic_write_json, atomic_write_text
from sglkit.observability import config as promconfig
from sglkit.observability import manifest as mf
from sglkit.observability import report_queries as rq
from sglkit.observability.report_prom import Prom, prometheus_for
from sglkit.observability.report_stats import series_stats

SUMMARY_SCHEMA = 1
MAX_POINTS = 1000  # per series; Prometheus refuses more than 11,000

Log = Callable[[str], None]


def gpu_scheme(manifest: dict[str, Any], names: set[str]) -> str | None:
    """dcgm | nvitop: whichever naming has data in the run, else the manifest's; else None."""
    for scheme, n in rq.GPU_SCHEMES.items():
        if n["util"] in names:
            return scheme
    kind = ((manifest.get("services") or {}).get("gpu_exporter") or {}).get("kind")
    return kind if kind in rq.GPU_SCHEMES else None


def _no_log(_msg: str) -> None:
    pass


def collect(
    prom: Prom,
    manifest: dict[str, Any],
    start: float,
    end: float,
    interval: float,
    log: Log = _no_log,
) -> dict[str, Any]:
    """Query every panel and histogram; return plot data and summary numbers (no files)."""
    span = end - start
    step = max(interval, span / MAX_POINTS)
    window = rq.rate_window(interval)
    names = prom.names(start, end)
    scheme = gpu_scheme(manifest, names)
    panels_out, metrics = [], {}
    # with no GPU exporter in the run, an empty GPU panel names both schemes' metrics
    other = {p.id: p.metric_names() for p in rq.panels("nvitop")} if not scheme else {}
    for panel in rq.panels(scheme or "dcgm"):
        log(f"querying {panel.title}")
        plotted, missing, queries, keys = [], [], [], []
        for line in panel.lines:
            queries.append(rq.fill(line.expr, window))
            series = prom.query_range(queries[-1], start, end, step)
            if not series:
                missing.extend(line.metrics)
            for labels, points in sorted(series, key=lambda s: _natural(s[0], line.split_by)):
                label = line.label.format(labels.get(line.split_by, "?")) if line.split_by else ""
                plotted.append((label or line.label, points))
            if not line.summarize:
                continue
            keys.append(line.key)
            if line.summary_expr and series:
                summary_series = prom.query_range(
                    rq.fill(line.summary_expr, window), start, end, step
                )
            else:
                summary_series = series
            values = [v for _, pts in summary_series for _, v in pts]
            metrics[line.key] = {
                "title": panel.title,
                "label": line.summary_label or line.label,
                "unit": panel.unit,
                "kind": "series",
                **series_stats(values),
            }
        if panel.histogram:
            metric, _title = rq.HISTOGRAMS[panel.histogram]
            metrics[panel.histogram] = histogram_summary(prom, metric, panel, end, span)
            keys.append(panel.histogram)
        if not plotted and panel.group == "gpu":
            missing.extend(other.get(panel.id, ()))
        panels_out.append(
            {
                "id": panel.id,
                "title": panel.title,
                "unit": panel.unit,
                "group": panel.group,
                "lines": plotted,
                "queries": queries,
                "keys": keys,
                "missing": sorted(set(missing)),
                "has_data": bool(plotted),
            }
        )
    # end-to-end latency has no panel of its own but belongs in the summary
    e2e_metric, e2e_title = rq.HISTOGRAMS["e2e_latency_seconds"]
    metrics["e2e_latency_seconds"] = histogram_summary(
        prom, e2e_metric, None, end, span, title=e2e_title
    )
    return {
        "gpu_scheme": scheme,
        "step_s": step,
        "rate_window_s": window,
        "panels": panels_out,
        "metrics": metrics,
    }


def histogram_summary(
    prom: Prom, metric: str, panel: rq.Panel | None, end: float, span: float, title: str = ""
) -> dict[str, Any]:
    """Run-wide mean and p50/p90/p99 from the histogram's increase over the whole run."""
    out: dict[str, Any] = {
        "title": panel.title if panel else title,
        "label": "whole run",
        "unit": "seconds",
        "kind": "histogram",
        "metric": metric,
    }
    exprs = rq.histogram_exprs(metric, span)
    count = prom.query(exprs["count"], end)
    out["count"] = count or 0.0
    for stat in ("mean", "p50", "p90", "p99"):
        out[stat] = prom.query(exprs[stat], end) if count else None
    out["max"] = None  # a histogram does not record its largest observation
    return out


def _natural(labels: dict[str, str], key: str | None) -> tuple:
    v = labels.get(key, "") if key else ""
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


def build_report(
    run_dir: Path, out: Path | None = None, log: Log = _no_log, ready_timeout: float = 120.0
) -> dict[str, Any]:
    """Query, plot, render and write <out> (default <run>/report) in one atomic swap."""
    try:
        import matplotlib  # noqa: F401  (a dependency of the kit; absent only in a broken install)
    except ImportError:
        raise SglkitError(
            "obs.report needs matplotlib, a dependency of sglkit: pip install -e . again"
        ) from None
    from sglkit.observability.report_render import data_uri, page_context, plot_panel, render_html

    manifest = mf.read_run(run_dir, by="obs.report")
    out = Path(out) if out else run_dir / "report"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    start, end = mf.run_span(run_dir, manifest)
    interval = promconfig.scrape_interval(run_dir, manifest)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise ConfigError(f"--out: cannot write under {out.parent}: {e.strerror or e}") from None
    try:
        with prometheus_for(run_dir, manifest, progress=log, ready_timeout=ready_timeout) as src:
            data = collect(src.prom, manifest, start, end, interval, log=log)
        log("drawing plots")
        panels = []
        for p in data["panels"]:
            png = None
            if p["has_data"]:
                png = f"{p['id']}.png"
                plot_panel(tmp / png, p["title"], p["unit"], p["lines"], start, end - start)
            panels.append(
                {k: p[k] for k in ("id", "title", "unit", "group", "has_data", "missing", "keys")}
                | {
                    "png": png,
                    "series": [label for label, _ in p["lines"]],
                    "queries": p["queries"],
                }
            )
        summary = {
            "schema": SUMMARY_SCHEMA,
            "run_id": manifest["run_id"],
            "status": manifest.get("status"),
            "profile": manifest.get("profile"),
            "started_at": mf.iso(start),
            "ended_at": mf.iso(end),
            "span_s": round(end - start, 3),
            "scrape_interval_s": interval,
            "step_s": data["step_s"],
            "rate_window_s": data["rate_window_s"],
            "gpu_scheme": data["gpu_scheme"],
            "prometheus": {"how": src.how, "detail": src.detail},
            "generated_at": mf.iso(time.time()),
            "metrics": data["metrics"],
            "panels": panels,
        }
        atomic_write_json(tmp / "summary.json", summary)
        log("rendering the page")
        html = render_html(page_context(summary, manifest, run_dir, tmp, data_uri))
        atomic_write_text(tmp / "index.html", html)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp`: a reader sees the old report or the new one, never a mix."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    os.chmod(out, 0o755)
