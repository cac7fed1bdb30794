"""PNG plots (matplotlib, no global pyplot state) and the self-contained HTML page (jinja2):
`page_context` is what the page shows, from the summary and the manifest; `render_html` fills
observability/report.html.j2 with it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from sglkit.observability import report_queries as rq
from sglkit.observability.report_stats import STATS
from sglkit.paths import asset

# A palette that stays readable for the common colour-vision deficiencies (Okabe-Ito).
COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def _elapsed_formatter(span_s: float):
    from matplotlib.ticker import FuncFormatter

    def fmt(x: float, _pos: int) -> str:
        x = max(0.0, x)
        if span_s >= 3600:
            return f"{int(x // 3600)}:{int(x % 3600 // 60):02d}h"
        return f"{int(x // 60)}:{int(x % 60):02d}"

    return FuncFormatter(fmt)


def plot_panel(
    path: Path,
    title: str,
    unit: str,
    lines: list[tuple[str, list[tuple[float, float]]]],
    t0: float,
    span_s: float,
) -> Path:
    """One panel as a PNG: x = time since the run started (m:ss), y = the panel's unit."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(lines):
        xs = [t - t0 for t, _ in points]
        ys = [v for _, v in points]
        style = {"marker": "o", "markersize": 3} if len(points) < 3 else {}
        ax.plot(xs, ys, label=label, color=COLORS[i % len(COLORS)], linewidth=1.6, **style)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_ylabel(unit)
    ax.set_xlabel(
        "time since run start (h:mm)" if span_s >= 3600 else "time since run start (m:ss)"
    )
    ax.set_xlim(0, max(span_s, 1.0))
    ax.xaxis.set_major_formatter(_elapsed_formatter(span_s))
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    lo = min(v for _, pts in lines for _, v in pts)
    if lo >= 0:
        ax.set_ylim(bottom=0)
    ax.margins(y=0.12)
    if len(lines) > 1:  # above the plot, right of the title: never over a line
        ax.legend(
            fontsize=8,
            frameon=False,
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncols=min(len(lines), 4),
            borderaxespad=0.2,
        )
    fig.savefig(path, format="png")
    return path


def seconds(v: float) -> str:
    """5.0 -> "5 s", 0.5 -> "500 ms", 120 -> "2 min"."""
    if v < 1:
        return f"{v * 1000:g} ms"
    if v >= 120 and v % 60 == 0:
        return f"{v / 60:g} min"
    return f"{v:g} s"


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def render_html(context: dict[str, Any]) -> str:
    """The page, from observability/report.html.j2 (sandboxed, StrictUndefined, autoescaped)."""
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    from sglkit.observability.report_stats import fmt, fmt_count

    template = asset("observability", "report.html.j2")
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(template.parent)),
        undefined=StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt
    env.filters["secs"] = seconds
    env.filters["count"] = fmt_count
    return env.get_template(template.name).render(**context)


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
