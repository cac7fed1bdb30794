"""obs.compare: two runs' report summaries (summary.json), read and set side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError
from sglkit.observability import manifest as mf
from sglkit.observability.report_stats import fmt


def load_summary(ref: str, root: str | None, flag: str) -> dict[str, Any]:
    """A summary.json from its path, or from a run (id or folder) that has a report."""
    p = Path(ref).expanduser()
    if p.is_file():
        path = p
    else:
        path = mf.resolve_run(ref, root, flag=flag) / "report" / "summary.json"
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


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per metric and statistic present in either summary: values, change, change %."""
    rows = []
    ma, mb = a.get("metrics", {}), b.get("metrics", {})
    # page order (the panels' keys), then anything else by name; summary.json sorts its keys
    order = [k for s in (a, b) for p in s.get("panels", []) for k in p.get("keys", [])]
    rank = {k: i for i, k in reversed(list(enumerate(order)))}
    for key in sorted(set(ma) | set(mb), key=lambda k: (rank.get(k, len(rank)), k)):
        ea, eb = ma.get(key) or {}, mb.get(key) or {}
        stats = [s for s in ("mean", "p50", "p90", "p99", "max") if s in ea or s in eb]
        for stat in stats:
            va, vb = ea.get(stat), eb.get(stat)
            if va is None and vb is None:
                continue
            delta = vb - va if va is not None and vb is not None else None
            if delta is not None and abs(delta) <= 1e-9 * max(abs(va), abs(vb)):
                delta = 0.0  # float noise, not a difference
            pct = None
            if delta is not None and va not in (None, 0):
                pct = 100.0 * delta / abs(va)
            rows.append(
                {
                    "metric": key,
                    "unit": ea.get("unit") or eb.get("unit") or "",
                    "stat": stat,
                    "a": va,
                    "b": vb,
                    "delta": delta,
                    "pct": pct,
                }
            )
    return rows


def print_compare(a: dict[str, Any], b: dict[str, Any], *, console=None) -> list[dict[str, Any]]:
    """The rows as a table on stdout (B against A); return the rows."""
    from rich.table import Table

    from sglkit.cli import table_console

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
