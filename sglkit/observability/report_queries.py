"""What obs.report asks Prometheus: the one table of metric names, panels and PromQL.

Metric names are those SGLang, dcgm-exporter, nvitop-exporter and node_exporter export (checked
against their source; see docs/report.md). When observability/metrics_catalog.yaml exists, the
names used here are checked against it (`names_missing_from_catalog`, a unit test calls it).
SGLang's names are queried as exported (`sglang:...`): the scrape config's relabel rule undoes
the OpenMetrics escaping to `sglang_...` at ingestion (observability/prometheus.yml.j2).
Pure functions only: nothing here talks to Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# SGLang (python/sglang/srt/metrics/collector.py): name -> Prometheus type.
SGLANG = {
    "num_requests_total": "sglang:num_requests_total",  # counter
    "prompt_tokens_total": "sglang:prompt_tokens_total",  # counter
    "generation_tokens_total": "sglang:generation_tokens_total",  # counter
    "num_running_reqs": "sglang:num_running_reqs",  # gauge
    "num_queue_reqs": "sglang:num_queue_reqs",  # gauge
    "token_usage": "sglang:token_usage",  # gauge, fraction of the KV pool in use
    "cache_hit_rate": "sglang:cache_hit_rate",  # gauge, prefix-cache hit rate (fraction)
    "gen_throughput": "sglang:gen_throughput",  # gauge, tokens/s
    "ttft": "sglang:time_to_first_token_seconds",  # histogram
    "itl": "sglang:inter_token_latency_seconds",  # histogram
    "e2e": "sglang:e2e_request_latency_seconds",  # histogram
}

# The GPU exporter's two naming schemes. Units agree (percent, MiB, W, degrees C).
# nvitop-exporter declares gauges with a unit, and prometheus_client appends it to the name.
GPU_SCHEMES: dict[str, dict[str, str]] = {
    "dcgm": {
        "util": "DCGM_FI_DEV_GPU_UTIL",
        "mem_used_mib": "DCGM_FI_DEV_FB_USED",
        "power_w": "DCGM_FI_DEV_POWER_USAGE",
        "temp_c": "DCGM_FI_DEV_GPU_TEMP",
        "device_label": "gpu",
    },
    "nvitop": {
        "util": "gpu_utilization_Percentage",
        "mem_used_mib": "gpu_memory_used_MiB",
        "power_w": "gpu_power_usage_W",
        "temp_c": "gpu_temperature_C",
        "device_label": "index",
    },
}

NODE = {
    "cpu_seconds": "node_cpu_seconds_total",
    "mem_total": "node_memory_MemTotal_bytes",
    "mem_available": "node_memory_MemAvailable_bytes",
}

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class Line:
    """One plotted line (or one per device when `split_by` names a label)."""

    key: str  # summary key; also the legend text when there is one series
    label: str
    expr: str  # PromQL; "{w}" is replaced by the rate window
    split_by: str | None = None
    summary_expr: str | None = None  # aggregated expression for the summary (default: expr)
    summarize: bool = True
    metrics: tuple[str, ...] = ()  # the exported names it reads (named when a panel is empty)
    summary_label: str | None = None  # what the summary_expr aggregates, for readers


@dataclass(frozen=True)
class Panel:
    id: str
    title: str
    unit: str
    lines: tuple[Line, ...]
    histogram: str | None = None  # the SGLang histogram summarised run-wide (key)
    group: str = "serving"

    def metric_names(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for line in self.lines:
            for m in line.metrics:
                seen[m] = None
        return tuple(seen)


def _quantile_lines(prefix: str, metric: str) -> tuple[Line, ...]:
    return tuple(
        Line(
            key=f"{prefix}_p{round(q * 100)}",
            label=f"p{round(q * 100)}",
            expr=f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{{w}}])))",
            summarize=False,
            metrics=(metric,),
        )
        for q in QUANTILES
    )


def panels(gpu_scheme: str) -> list[Panel]:
    """The report's panels, in page order, for one GPU naming scheme."""
    if gpu_scheme not in GPU_SCHEMES:
        raise ValueError(f"unknown GPU exporter scheme {gpu_scheme!r}")
    g = GPU_SCHEMES[gpu_scheme]
    s = SGLANG
    dev = g["device_label"]

    def rate(m: str) -> str:
        return f"sum(rate({m}[{{w}}]))"

    return [
        Panel(
            "requests",
            "Request throughput",
            "requests/s",
            (
                Line(
                    "request_throughput_rps",
                    "finished requests/s",
                    rate(s["num_requests_total"]),
                    metrics=(s["num_requests_total"],),
                ),
            ),
        ),
        Panel(
            "tokens",
            "Token throughput",
            "tokens/s",
            (
                Line(
                    "prompt_tokens_per_s",
                    "prompt (prefill) tokens/s",
                    rate(s["prompt_tokens_total"]),
                    metrics=(s["prompt_tokens_total"],),
                ),
                Line(
                    "generation_tokens_per_s",
                    "generated tokens/s",
                    rate(s["generation_tokens_total"]),
                    metrics=(s["generation_tokens_total"],),
                ),
            ),
        ),
        Panel(
            "queue",
            "Queue length and running requests",
            "requests",
            (
                Line(
                    "queue_reqs",
                    "waiting in queue",
                    f"sum({s['num_queue_reqs']})",
                    metrics=(s["num_queue_reqs"],),
                ),
                Line(
                    "running_reqs",
                    "running",
                    f"sum({s['num_running_reqs']})",
                    metrics=(s["num_running_reqs"],),
                ),
            ),
        ),
        Panel(
            "ttft",
            "Time to first token",
            "seconds",
            _quantile_lines("ttft", s["ttft"]),
            histogram="ttft_seconds",
        ),
        Panel(
            "itl",
            "Inter-token latency",
            "seconds",
            _quantile_lines("itl", s["itl"]),
            histogram="itl_seconds",
        ),
        Panel(
            "kv_cache",
            "KV-cache usage",
            "% of KV pool",
            (
                Line(
                    "kv_cache_usage_pct",
                    "KV pool in use",
                    f"100 * avg({s['token_usage']})",
                    metrics=(s["token_usage"],),
                ),
            ),
        ),
        Panel(
            "prefix_cache",
            "Prefix-cache hit rate",
            "%",
            (
                Line(
                    "prefix_cache_hit_pct",
                    "prefix-cache hit rate",
                    f"100 * avg({s['cache_hit_rate']})",
                    metrics=(s["cache_hit_rate"],),
                ),
            ),
        ),
        Panel(
            "gpu_util",
            "GPU utilization",
            "%",
            (
                Line(
                    "gpu_util_pct",
                    "GPU {}",
                    g["util"],
                    split_by=dev,
                    summary_expr=f"avg({g['util']})",
                    metrics=(g["util"],),
                    summary_label="average of all GPUs",
                ),
            ),
            group="gpu",
        ),
        Panel(
            "gpu_memory",
            "GPU memory used",
            "GiB",
            (
                Line(
                    "gpu_memory_used_gib",
                    "GPU {}",
                    f"{g['mem_used_mib']} / 1024",
                    split_by=dev,
                    summary_expr=f"sum({g['mem_used_mib']}) / 1024",
                    metrics=(g["mem_used_mib"],),
                    summary_label="sum over all GPUs",
                ),
            ),
            group="gpu",
        ),
        Panel(
            "gpu_power",
            "GPU power",
            "W",
            (
                Line(
                    "gpu_power_w",
                    "GPU {}",
                    g["power_w"],
                    split_by=dev,
                    summary_expr=f"sum({g['power_w']})",
                    metrics=(g["power_w"],),
                    summary_label="sum over all GPUs",
                ),
            ),
            group="gpu",
        ),
        Panel(
            "gpu_temp",
            "GPU temperature",
            "°C",
            (
                Line(
                    "gpu_temp_max_c",
                    "GPU {}",
                    g["temp_c"],
                    split_by=dev,
                    summary_expr=f"max({g['temp_c']})",
                    metrics=(g["temp_c"],),
                    summary_label="hottest GPU",
                ),
            ),
            group="gpu",
        ),
        Panel(
            "host_cpu",
            "Host CPU busy",
            "% of all cores",
            (
                Line(
                    "host_cpu_busy_pct",
                    "all cores",
                    "100 * (1 - avg(rate(" + NODE["cpu_seconds"] + '{mode="idle"}[{w}])))',
                    metrics=(NODE["cpu_seconds"],),
                ),
            ),
            group="host",
        ),
        Panel(
            "host_memory",
            "Host memory used",
            "GiB",
            (
                Line(
                    "host_memory_used_gib",
                    "total − available",
                    f"sum({NODE['mem_total']} - {NODE['mem_available']}) / 1073741824",
                    metrics=(NODE["mem_total"], NODE["mem_available"]),
                ),
            ),
            group="host",
        ),
    ]


# Run-wide summaries of SGLang's histograms: key -> (metric, title).
HISTOGRAMS = {
    "ttft_seconds": (SGLANG["ttft"], "Time to first token"),
    "itl_seconds": (SGLANG["itl"], "Inter-token latency"),
    "e2e_latency_seconds": (SGLANG["e2e"], "End-to-end request latency"),
}


def fill(expr: str, window_s: float) -> str:
    """Put the rate window into a PromQL template."""
    return expr.replace("{w}", duration(window_s))


def duration(seconds: float) -> str:
    """A PromQL duration: whole milliseconds, at least 1ms."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def rate_window(scrape_interval_s: float) -> float:
    """rate() needs two samples in its window; four scrape intervals tolerate a missed one."""
    return max(4 * scrape_interval_s, 2.0)


def histogram_exprs(metric: str, span_s: float) -> dict[str, str]:
    """Instant queries (at the run's end) that summarise a histogram over the whole run."""
    d = duration(span_s)
    out = {
        f"p{round(q * 100)}": (
            f"histogram_quantile({q}, sum by (le) (increase({metric}_bucket[{d}])))"
        )
        for q in QUANTILES
    }
    out["mean"] = f"sum(increase({metric}_sum[{d}])) / sum(increase({metric}_count[{d}]))"
    out["count"] = f"sum(increase({metric}_count[{d}]))"
    return out


def all_metric_names() -> set[str]:
    names = set(SGLANG.values()) | set(NODE.values())
    for scheme in GPU_SCHEMES.values():
        names |= {v for k, v in scheme.items() if k != "device_label"}
    return names


def catalog_names(path: Path) -> set[str]:
    """Metric names in the metrics catalog, whether it is a list of entries or a mapping."""
    from sglkit import yamlsafe

    data: Any = yamlsafe.load_file(path, what="catalog")
    if isinstance(data, dict) and "metrics" in data:
        data = data["metrics"]
    names: set[str] = set()
    if isinstance(data, dict):
        for k, v in data.items():
            names.add(v.get("name", k) if isinstance(v, dict) else k)
    elif isinstance(data, list):
        names |= {e["name"] for e in data if isinstance(e, dict) and "name" in e}
    return names


def names_missing_from_catalog(path: Path) -> list[str]:
    """Names this table queries that the catalog does not know (empty when they agree)."""
    known = catalog_names(path)
    return sorted(n for n in all_metric_names() if n not in known)
