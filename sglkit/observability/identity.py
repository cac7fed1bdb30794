"""Is the Prometheus that answers on a run's port that run's own? (its `run_id` external label)

A port outlives a run: after a crash, or with a container's port published elsewhere, another
run's Prometheus (or any other program) may answer where the manifest says ours listens. Every
command that reads a live run's data (obs.status, obs.report) asks this module first.
"""

from __future__ import annotations

import requests

from sglkit import yamlsafe
from sglkit.errors import ConfigError, SglkitError


def prometheus_run_id(url: str, timeout: float = 5.0) -> str | None:
    """The `run_id` external label of the Prometheus at `url` (None when it has none).

    SglkitError when nothing (or not a Prometheus) answers there.
    """
    try:
        r = requests.get(f"{url.rstrip('/')}/api/v1/status/config", timeout=timeout)
        r.raise_for_status()
        text = r.json()["data"]["yaml"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as e:
        raise SglkitError(f"prometheus at {url} does not answer: {_short(e)}") from None
    try:
        cfg = yamlsafe.loads(text, source=f"{url} config")
    except ConfigError as e:
        raise SglkitError(f"prometheus at {url}: unreadable config ({e})") from None
    glob = cfg.get("global") if isinstance(cfg, dict) else None
    labels = glob.get("external_labels") if isinstance(glob, dict) else None
    run_id = labels.get("run_id") if isinstance(labels, dict) else None
    return str(run_id) if run_id is not None else None


def check_prometheus(url: str, run_id: str, timeout: float = 5.0) -> None:
    """SglkitError unless the Prometheus at `url` says it serves run `run_id`."""
    got = prometheus_run_id(url, timeout)
    if got != run_id:
        who = f"run {got}" if got else "no sglkit run (no run_id label)"
        raise SglkitError(
            f"prometheus at {url} serves {who}, not run {run_id}: its data is not this run's"
        )


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 160 else text[:157] + "..."
