"""The metrics catalog (observability/metrics_catalog.yaml): load, render docs, check a URL."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from sglkit import paths, yamlsafe
from sglkit.errors import ConfigError, SglkitError

CATALOG = "metrics_catalog.yaml"
SOURCES = ("sglang", "dcgm", "nvitop", "node", "prometheus")
TYPES = ("gauge", "counter", "histogram", "summary", "gaugehistogram")
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# suffixes a family's samples carry in the text format
_SAMPLE_SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_total", "_gcount", "_gsum")


def catalog_path() -> Path:
    return paths.asset("observability", CATALOG)


def load(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The catalog, checked: every entry has a known source and type, names are unique."""
    p = Path(path) if path else catalog_path()
    data = yamlsafe.load_file(p, what="catalog")
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
        raise ConfigError(f"{p}: metrics: expected a list")
    seen: set[str] = set()
    for i, m in enumerate(data["metrics"]):
        where = f"{p}: metrics[{i}]"
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: expected a mapping")
        for key in ("name", "source", "type", "unit", "meaning"):
            if not isinstance(m.get(key), str) or not m[key]:
                raise ConfigError(f"{where}.{key}: required non-empty string")
        if not _NAME.match(m["name"]):
            raise ConfigError(f"{where}.name: {m['name']!r} is not a Prometheus metric name")
        if m["source"] not in SOURCES:
            raise ConfigError(f"{where}.source: {m['source']!r} not in {', '.join(SOURCES)}")
        if m["type"] not in TYPES:
            raise ConfigError(f"{where}.type: {m['type']!r} not in {', '.join(TYPES)}")
        if m["name"] in seen:
            raise ConfigError(f"{where}.name: {m['name']} appears twice")
        seen.add(m["name"])
    for m in data["metrics"]:
        eq = m.get("equivalent")
        if eq and eq not in seen:
            raise ConfigError(f"{p}: {m['name']}.equivalent: {eq} is not in the catalog")
    data.setdefault("sources", {})
    return data


# ---- docs/metrics.md ---------------------------------------------------------------------------
_TITLES = {
    "sglang": "SGLang server (`/metrics` with `--enable-metrics`)",
    "dcgm": "GPU: dcgm-exporter (default counters)",
    "nvitop": "GPU: nvitop-exporter (where DCGM is absent)",
    "node": "Host: node_exporter",
    "prometheus": "Prometheus itself",
}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_markdown(catalog: dict[str, Any]) -> str:
    lines = [
        "# Metrics catalog",
        "",
        "<!-- generated from observability/metrics_catalog.yaml by `invoke obs.catalog`;"
        " edit the YAML, not this file -->",
        "",
        "The metrics sglkit relies on, by source. **core** metrics are the ones dashboards,",
        "`obs.report` and `obs.catalog --check` rely on; the others exist only with a feature.",
        "`invoke obs.catalog --check URL` lists the catalog metrics a live endpoint lacks and",
        "the metrics it has that the catalog does not know.",
        "",
    ]
    metrics = catalog["metrics"]
    for source in SOURCES:
        rows = [m for m in metrics if m["source"] == source]
        if not rows:
            continue
        info = catalog.get("sources", {}).get(source, {})
        lines += [f"## {_TITLES[source]}", ""]
        if info.get("origin"):
            lines += [f"Source of this list: {info['origin']}. {len(rows)} metrics.", ""]
        lines += ["| name | type | unit | core | meaning |", "| --- | --- | --- | --- | --- |"]
        for m in rows:
            meaning = m["meaning"]
            if m.get("equivalent"):
                meaning += f" (equivalent: `{m['equivalent']}`)"
            if m.get("synthetic"):
                meaning += " (synthesized by Prometheus)"
            lines.append(
                f"| `{m['name']}` | {m['type']} | {_cell(m['unit'])} | "
                f"{'yes' if m.get('core') else ''} | {_cell(meaning)} |"
            )
        lines.append("")
    return "\n".join(lines)


# ---- checking a live endpoint ------------------------------------------------------------------
def exposed_names(text: str) -> tuple[set[str], set[str]]:
    """(family names from # TYPE lines, sample names) of a Prometheus text exposition."""
    families: set[str] = set()
    samples: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                families.add(parts[2])
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
        if m:
            samples.add(m.group(1))
    return families, samples


def _base(name: str) -> str:
    for suffix in _SAMPLE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class CheckResult:
    url: str
    sources: list[str]
    missing_core: list[str]
    missing_other: list[str]
    unknown: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing_core


def check_text(
    text: str, catalog: dict[str, Any], url: str = "", sources: Iterable[str] | None = None
) -> CheckResult:
    """Compare an exposition with the catalog, for the sources it belongs to.

    Sources default to those with at least one catalog metric in the text. `unknown` lists the
    families with a source's prefix that the catalog does not name.
    """
    families, samples = exposed_names(text)
    present = families | samples
    present_bases = {_base(n) for n in present} | present
    metrics = [m for m in catalog["metrics"] if not m.get("synthetic")]

    def has(name: str) -> bool:
        return name in present or _base(name) in present_bases

    if sources is None:
        sources = sorted({m["source"] for m in metrics if has(m["name"])})
    sources = list(sources)
    for s in sources:
        if s not in SOURCES:
            raise ConfigError(f"--source: {s!r} not in {', '.join(SOURCES)}")
    mine = [m for m in metrics if m["source"] in sources]
    known = {m["name"] for m in mine} | {_base(m["name"]) for m in mine}
    missing = [m for m in mine if not has(m["name"])]
    prefixes = tuple(
        catalog.get("sources", {}).get(s, {}).get("prefix") or f"{s}_" for s in sources
    )
    unknown = sorted(
        f
        for f in (families or {_base(n) for n in samples})
        if f.startswith(prefixes) and f not in known and _base(f) not in known
    )
    return CheckResult(
        url=url,
        sources=sources,
        missing_core=sorted(m["name"] for m in missing if m.get("core")),
        missing_other=sorted(m["name"] for m in missing if not m.get("core")),
        unknown=unknown,
    )


def check_url(
    url: str, catalog: dict[str, Any], sources: Iterable[str] | None = None, timeout=10.0
) -> CheckResult:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--check: expected an http(s) URL of a /metrics endpoint, got {url!r}")
    try:
        r = requests.get(url, timeout=timeout)
        r.raise_for_status()
    except requests.RequestException as e:
        raise SglkitError(f"--check: {url} does not answer: {e}") from None
    return check_text(r.text, catalog, url, sources)
