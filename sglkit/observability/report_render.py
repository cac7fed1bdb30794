"""PNG plots (matplotlib, no global pyplot state) and the self-contained HTML page (jinja2)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

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
