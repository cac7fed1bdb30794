"""invoke obs.report / obs.compare: one page, PNG plots and a JSON summary for a telemetry run.

    invoke obs.report [--run RUN_ID|PATH] [--root R] [--out DIR]
    invoke obs.compare RUN_A RUN_B [--root R]

The report is built from range queries over the run's span (manifest started_at..ended_at)
against the run's Prometheus, or, for a stopped run, a temporary Prometheus over a copy of the
run's TSDB (report_prom.py says why a copy). Output, replaced atomically as a whole folder:
<run>/report/{index.html, summary.json, <panel>.png}.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sglkit.cli import ROOT_HELP, task
from sglkit.errors import ConfigError, SglkitError
from sglkit.fsutil import atomic_write_json, atomic_write_text
from sglkit.observability import manifest as mf
from sglkit.observability import report_queries as rq
from sglkit.observability.report_prom import Prom, prometheus_for
from sglkit.observability.report_stats import STATS, series_stats
from sglkit.profile import telemetry_root

SUMMARY_SCHEMA = 1
DEFAULT_SCRAPE_INTERVAL_S = 15.0
MAX_POINTS = 1000  # per series; Prometheus refuses more than 11,000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

Log = Callable[[str], None]


# ---- finding the run -------------------------------------------------------------------------


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest (manifest.read), settled: a live status whose init-run is gone
    reads `abandoned`; a folder without one is a ConfigError naming --run."""
    if not (run_dir / mf.MANIFEST).exists():
        raise ConfigError(f"--run: {run_dir} has no manifest.json (not a run folder)")
    data = mf.read(run_dir)
    if not isinstance(data, dict) or "run_id" not in data:
        raise SglkitError(f"{run_dir / mf.MANIFEST}: not a run manifest (no run_id)")
    if data.get("status") in mf.LIVE_STATUSES:
        data = mf.settle(run_dir, by="obs.report")  # an init-run that is gone: abandoned
    return data


def resolve_run(run: str | None, root: str | None, flag: str = "--run") -> Path:
    """A run folder from a run id (under <root>/runs), a path to one, or the latest run."""
    if run:
        as_path = Path(run).expanduser()
        if (as_path / mf.MANIFEST).is_file():
            return as_path.resolve()
        if "/" in run or run in (".", ".."):
            raise ConfigError(f"{flag}: {run} is not a run folder (no manifest.json)")
    root_path = telemetry_root(None, root)
    runs = mf.runs_dir(root_path)
    if run:
        d = runs / run
        if not (d / mf.MANIFEST).is_file():
            raise ConfigError(f"{flag}: no run {run!r} under {runs}")
        return d.resolve()
    if not root_path.is_dir():
        raise ConfigError(f"--root: {root_path} does not exist (no telemetry runs there)")
    found = mf.latest_run_dir(root_path)
    if found is None:
        raise ConfigError(f"--root: no run with a manifest.json under {runs}")
    return Path(found).resolve()


# ---- times -----------------------------------------------------------------------------------


def parse_time(value: str, field: str) -> float:
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise SglkitError(f"manifest: {field}: {value!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(value: Any) -> float | None:
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


def run_span(run_dir: Path, manifest: dict[str, Any]) -> tuple[float, float]:
    if not manifest.get("started_at"):
        raise SglkitError(f"{run_dir / 'manifest.json'}: started_at: missing")
    start = parse_time(manifest["started_at"], "started_at")
    if manifest.get("ended_at"):
        end = parse_time(manifest["ended_at"], "ended_at")
    elif manifest.get("status") in ("stopped", "failed"):
        end = (run_dir / "manifest.json").stat().st_mtime  # ended without saying when
    else:
        end = time.time()
    if end <= start:
        raise SglkitError(f"manifest: ended_at ({iso(end)}) is not after started_at")
    return start, end


# ---- building --------------------------------------------------------------------------------


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
    from sglkit.observability.report_render import data_uri, plot_panel, render_html

    manifest = read_manifest(run_dir)
    out = Path(out) if out else run_dir / "report"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    start, end = run_span(run_dir, manifest)
    interval = scrape_interval(run_dir, manifest)
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
            "started_at": iso(start),
            "ended_at": iso(end),
            "span_s": round(end - start, 3),
            "scrape_interval_s": interval,
            "step_s": data["step_s"],
            "rate_window_s": data["rate_window_s"],
            "gpu_scheme": data["gpu_scheme"],
            "prometheus": {"how": src.how, "detail": src.detail},
            "generated_at": iso(time.time()),
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


HEADLINE = (  # (summary key, statistic, card caption)
    ("request_throughput_rps", "mean", "Requests/s"),
    ("generation_tokens_per_s", "mean", "Generated tokens/s"),
    ("ttft_seconds", "p50", "Time to first token"),
    ("ttft_seconds", "p99", "Time to first token"),
    ("itl_seconds", "p50", "Inter-token latency"),
    ("itl_seconds", "p99", "Inter-token latency"),
    ("kv_cache_usage_pct", "max", "KV-cache usage"),
    ("gpu_util_pct", "mean", "GPU utilization"),
    ("host_cpu_busy_pct", "mean", "Host CPU busy"),
)


def page_context(summary, manifest, run_dir: Path, folder: Path, data_uri) -> dict[str, Any]:
    metrics = summary["metrics"]
    rows = []
    for key, m in metrics.items():
        rows.append(
            {
                "key": key,
                "title": m["title"],
                "label": m["label"],
                "unit": m["unit"],
                "kind": m["kind"],
                "mean": m.get("mean"),
                "p50": m.get("p50"),
                "p90": m.get("p90"),
                "p99": m.get("p99"),
                "max": m.get("max"),
                "n": m.get("count") if m["kind"] == "histogram" else m.get("samples"),
            }
        )
    headline = []
    for key, stat, caption in HEADLINE:
        m = metrics.get(key) or {}
        headline.append(
            {
                "title": caption,
                "label": m.get("label", ""),
                "stat": stat,
                "value": m.get(stat),
                "unit": m.get("unit", ""),
            }
        )
    groups = {"serving": "Serving (SGLang)", "gpu": "GPU", "host": "Host"}
    sections = []
    for gid, gtitle in groups.items():
        items = []
        for p in summary["panels"]:
            if p["group"] != gid:
                continue
            stats = []
            for key in p["keys"]:
                m = metrics.get(key) or {}
                if m.get("mean") is None:
                    continue
                names = ("mean", "p50", "p90", "p99") if m["kind"] == "histogram" else STATS
                stats.append(
                    {
                        "label": m["label"],
                        "parts": [(n, m.get(n)) for n in names],
                        "unit": m["unit"],
                    }
                )
            img = data_uri(folder / p["png"]) if p["png"] else None
            items.append(p | {"img": img, "stats": stats, "why": _why_empty(p, manifest)})
        # a whole group without data, for a reason the run recorded: one box, not one per panel
        reason = _run_reason(gid, manifest)
        all_empty = bool(items) and not any(p["has_data"] for p in items) and bool(reason)
        sections.append(
            {"id": gid, "title": gtitle, "panels": items, "all_empty": all_empty, "reason": reason}
        )
    services = []
    for name, svc in (manifest.get("services") or {}).items():
        svc = svc or {}
        services.append(
            {"name": name, "status": svc.get("status", "?"), "url": svc.get("url") or ""}
        )
    profile = summary.get("profile") or {}
    return {
        "s": summary,
        "run_dir": str(run_dir),
        "profile_name": profile.get("name", "?") if isinstance(profile, dict) else str(profile),
        "span": _human_span(summary["span_s"]),
        "headline": headline,
        "rows": rows,
        "sections": sections,
        "services": services,
        "reasons": manifest.get("reasons") or [],
        "empty": sum(1 for p in summary["panels"] if not p["has_data"]),
        "gpu_names": rq.GPU_SCHEMES.get(summary["gpu_scheme"] or "", {}),
    }


def _run_reason(group: str, manifest: dict[str, Any]) -> str:
    """Why a whole group of panels can have no data, from the manifest; "" when it says nothing."""
    gpu = (manifest.get("services") or {}).get("gpu_exporter") or {}
    if group == "gpu" and gpu.get("status") in ("absent", "failed"):
        reason = gpu.get("reason") or "no reason recorded"
        return f"No GPU exporter ran in this run ({gpu['status']}: {reason})."
    if group == "serving" and manifest.get("scrapes_server") is False:
        return "This run did not scrape the SGLang server (scrapes_server: false)."
    return ""


def _why_empty(panel: dict[str, Any], manifest: dict[str, Any]) -> str:
    """One sentence for a panel without data: the run's own reason when the manifest has one."""
    if panel["has_data"]:
        return ""
    names = ", ".join(panel["missing"]) or "its metrics"
    looked = f"Prometheus holds no samples of {names} between the run's start and end."
    reason = _run_reason(panel["group"], manifest)
    return f"{reason} {looked}" if reason else looked


def _human_span(s: float) -> str:
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


# ---- compare ---------------------------------------------------------------------------------


def load_summary(ref: str, root: str | None, flag: str) -> dict[str, Any]:
    p = Path(ref).expanduser()
    if p.is_file():
        path = p
    else:
        path = resolve_run(ref, root, flag=flag) / "report" / "summary.json"
        if not path.is_file():
            raise ConfigError(
                f"{flag}: run {ref} has no report/summary.json; build it with "
                f"`invoke obs.report --run {ref}`"
            )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{flag}: {path}: unreadable summary: {e}") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise ConfigError(f"{flag}: {path}: not an obs.report summary (no metrics)")
    return data


def print_compare(a: dict[str, Any], b: dict[str, Any], *, console=None) -> list[dict[str, Any]]:
    from rich.table import Table

    from sglkit.cli import table_console
    from sglkit.observability.report_stats import compare_rows, fmt

    console = console or table_console()
    rows = compare_rows(a, b)
    table = Table(
        title=f"A = {a.get('run_id')}   B = {b.get('run_id')}",
        title_justify="left",
    )
    for col, just in (
        ("metric", "left"),
        ("unit", "left"),
        ("stat", "left"),
        ("A", "right"),
        ("B", "right"),
        ("B - A", "right"),
        ("change", "right"),
    ):
        table.add_column(col, justify=just)
    for r in rows:
        pct = "-" if r["pct"] is None else f"{r['pct']:+.1f}%"
        delta = "-" if r["delta"] is None else ("+" if r["delta"] > 0 else "") + fmt(r["delta"])
        table.add_row(r["metric"], r["unit"], r["stat"], fmt(r["a"]), fmt(r["b"]), delta, pct)
    console.print(table)
    return rows


# ---- tasks -----------------------------------------------------------------------------------


@task(
    help={
        "run": "run id under <root>/runs, or a run folder (default: the latest run)",
        "root": ROOT_HELP,
        "out": "output folder (default: <run>/report; replaced as a whole)",
    }
)
def report(c, run=None, root=None, out=None):
    """Build PNG plots, one self-contained HTML page and summary.json for a run."""
    from sglkit.console import err

    console = err()
    run_dir = resolve_run(run, root)
    with console.status(f"report for {run_dir.name}") as status:

        def log(msg: str) -> None:
            status.update(f"report for {run_dir.name}: {msg}")

        summary = build_report(run_dir, Path(out) if out else None, log=log)
    folder = Path(out) if out else run_dir / "report"
    empty = [p["title"] for p in summary["panels"] if not p["has_data"]]
    console.print(
        f"report: {folder / 'index.html'} ({len(summary['panels']) - len(empty)} panels with "
        f"data, {len(empty)} without; data from {summary['prometheus']['how']} Prometheus)"
    )
    print(folder / "index.html")


@task(
    help={
        "run_a": "run id, run folder or summary.json (the baseline)",
        "run_b": "run id, run folder or summary.json",
        "root": ROOT_HELP,
    }
)
def compare(c, run_a, run_b, root=None):
    """Print a table of differences between two runs' report summaries (B against A)."""
    a = load_summary(run_a, root, "RUN_A")
    b = load_summary(run_b, root, "RUN_B")
    print_compare(a, b)
