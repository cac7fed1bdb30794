"""obs.status: the latest run's manifest plus what Prometheus says about its scrape targets."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

import requests

from sglkit.errors import SglkitError
from sglkit.observability import identity
from sglkit.observability import manifest as mf


def targets(prometheus_url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Active targets from /api/v1/targets: job, url, health, last scrape, last error."""
    try:
        r = requests.get(f"{prometheus_url}/api/v1/targets", timeout=timeout)
        r.raise_for_status()
        body = r.json()
    except (requests.RequestException, ValueError) as e:
        raise SglkitError(f"prometheus at {prometheus_url} does not answer: {e}") from None
    out = []
    for t in body.get("data", {}).get("activeTargets", []):
        out.append(
            {
                "job": t.get("labels", {}).get("job") or t.get("scrapePool"),
                "url": t.get("scrapeUrl"),
                "health": t.get("health"),
                "last_scrape": t.get("lastScrape"),
                "last_error": t.get("lastError") or "",
            }
        )
    return sorted(out, key=lambda t: (t["job"] or "", t["url"] or ""))


_RFC3339 = re.compile(r"^(?P<head>[0-9-]+T[0-9:]+)(?:\.(?P<frac>[0-9]+))?(?P<tz>Z|[+-][0-9:]+)$")


def age(ts: str | None, now: _dt.datetime | None = None) -> str:
    """'3.2s ago' for a Prometheus RFC 3339 timestamp; 'never' for the zero time."""
    if not ts or ts.startswith("0001-"):
        return "never"
    m = _RFC3339.match(ts)
    if not m:
        return ts
    tz = "+00:00" if m["tz"] == "Z" else m["tz"]
    frac = (m["frac"] or "0")[:6]  # Prometheus prints nanoseconds; Python takes microseconds
    when = _dt.datetime.fromisoformat(f"{m['head']}.{frac.ljust(6, '0')}{tz}")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{max((now - when).total_seconds(), 0):.1f}s ago"


def collect(root: str | Path) -> dict[str, Any]:
    """Everything obs.status prints, as data: the manifest and the targets (or why none).

    The run is settled first (a run whose init-run is gone is marked abandoned); Prometheus is
    asked where the run published it (the host port for a container run), and only once it has
    said it serves this run (its run_id external label).
    """
    run = mf.latest_run_dir(root)
    if run is None:
        raise SglkitError(f"--root: no run under {root} (start one with invoke obs.up)")
    m = mf.settle(run, by="obs.status")
    prom = m["services"].get("prometheus") or {}
    url = mf.service_url(m, "prometheus")
    result: dict[str, Any] = {
        "manifest": m,
        "run_dir": str(run),
        "prometheus_url": url,
        "targets": [],
        "error": None,
    }
    if m["status"] == "abandoned":
        result["error"] = (
            f"run {m['run_id']} is abandoned: its init-run (pid {m.get('pid')}) is gone and "
            "never finalized the manifest"
        )
        return result
    if m["status"] in ("stopped", "failed"):
        result["error"] = f"run {m['run_id']} is {m['status']} (ended {m.get('ended_at')})"
        return result
    if prom.get("status") != "running" or not url:
        result["error"] = f"prometheus is {prom.get('status')}: {prom.get('reason')}"
        return result
    try:
        identity.check_prometheus(url, m["run_id"])
        result["targets"] = targets(url)
    except SglkitError as e:
        result["error"] = str(e)
    return result


def problems(result: dict[str, Any]) -> list[str]:
    """What makes obs.status exit non-zero: no Prometheus answer, or a target down.

    A target Prometheus has not scraped yet ("unknown") is shown as such but is not a problem.
    """
    out = [result["error"]] if result["error"] else []
    if not result["error"] and not result["targets"]:
        out.append("prometheus reports no active targets")
    for t in result["targets"]:
        if t["health"] == "down":
            out.append(f"{t['job']} {t['url']} is {t['health']}: {t['last_error'] or 'no error'}")
    return out


def render(result: dict[str, Any], console=None) -> None:
    from rich.table import Table

    from sglkit.cli import table_console

    console = console or table_console()
    m = result["manifest"]
    console.print(
        f"run [bold]{m['run_id']}[/]  status [bold]{m['status']}[/]  profile {m['profile']['name']}"
        f"  started {m.get('started_at')}  ({result['run_dir']})"
    )
    for r in m.get("reasons", []):
        console.print(f"  reason: {r}")
    services = Table(title="services (manifest)")
    for col in ("service", "status", "pid", "url", "restarts", "reason"):
        services.add_column(col)
    for name, s in m["services"].items():
        services.add_row(
            name,
            s.get("status") or "",
            str(s.get("pid") or ""),
            s.get("url") or "",
            str(s.get("restarts", 0)),
            s.get("reason") or "",
        )
    console.print(services)
    if result["error"]:
        console.print(f"[red]{result['error']}[/]")
        return
    table = Table(title="Prometheus targets")
    for col in ("job", "url", "health", "last scrape", "last error"):
        table.add_column(col)
    for t in result["targets"]:
        color = "green" if t["health"] == "up" else "red"
        table.add_row(
            t["job"] or "",
            t["url"] or "",
            f"[{color}]{t['health']}[/]",
            age(t["last_scrape"]),
            t["last_error"],
        )
    console.print(table)
