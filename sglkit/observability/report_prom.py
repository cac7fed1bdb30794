"""The Prometheus that obs.report queries: the run's own, or a temporary one over a copy.

A stopped run's Prometheus is gone, but its TSDB folder holds everything. We never start a
Prometheus on that folder itself: on start Prometheus replays and truncates the WAL, compacts the
head into new blocks, and deletes blocks older than its retention (15 days by default), so the run's
data would change or vanish. Instead the folder is copied to a temporary directory, a Prometheus
with no scrape jobs and a 100-year retention serves the copy on a free loopback port, and the
temporary Prometheus (its whole process group) and the copy are removed when the report is done.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from sglkit.errors import SglkitError
from sglkit.net import free_port, wait_for
from sglkit.proc import spawn, terminate_group

TEMP_PREFIX = "sglkit-report-"


class PromError(SglkitError):
    pass


@dataclass
class Prom:
    """A thin client for Prometheus' HTTP query API."""

    url: str
    timeout: float = 30.0

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            r = requests.get(self.url.rstrip("/") + path, params=params, timeout=self.timeout)
        except requests.RequestException as e:
            raise PromError(f"Prometheus at {self.url} did not answer: {e}") from None
        try:
            body = r.json()
        except ValueError:
            raise PromError(f"Prometheus at {self.url}: HTTP {r.status_code}, not JSON") from None
        if body.get("status") != "success":
            raise PromError(
                f"Prometheus at {self.url} refused {params.get('query')!r}: {body.get('error')}"
            )
        return body["data"]

    def ready(self) -> bool:
        try:
            r = requests.get(self.url.rstrip("/") + "/-/ready", timeout=2)
        except requests.RequestException:
            return False
        return r.status_code == 200

    def query(self, expr: str, at: float) -> float | None:
        """One scalar from an instant query (None when empty or NaN)."""
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        if data["resultType"] == "scalar":
            value = float(data["result"][1])
        elif data["result"]:
            value = float(data["result"][0]["value"][1])
        else:
            return None
        return None if math.isnan(value) or math.isinf(value) else value

    def names(self, start: float, end: float) -> set[str]:
        """Every metric name with samples between start and end."""
        data = self._get(
            "/api/v1/label/__name__/values", {"start": f"{start:.3f}", "end": f"{end:.3f}"}
        )
        return set(data or [])

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        """[(labels, [(t, v), ...]), ...]; NaN points dropped, empty series dropped."""
        data = self._get(
            "/api/v1/query_range",
            {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:.3f}"},
        )
        out = []
        for series in data["result"]:
            points = []
            for t, v in series["values"]:
                fv = float(v)
                if not (math.isnan(fv) or math.isinf(fv)):
                    points.append((float(t), fv))
            if points:
                out.append((series.get("metric", {}), points))
        return out


@dataclass
class Source:
    prom: Prom
    how: str  # "live" | "restarted"
    detail: str
    pid: int | None = None


def _live(manifest: dict[str, Any]) -> Prom | None:
    """The run's own Prometheus when the run is not over and it answers as this run's."""
    from sglkit.observability import identity
    from sglkit.observability import manifest as mf

    if manifest.get("status") not in mf.LIVE_STATUSES:
        return None
    url = mf.service_url(manifest, "prometheus")
    if not url:
        return None
    prom = Prom(url)
    if not prom.ready():
        return None
    # A port can be reused by another run's Prometheus: trust it only if its run_id label matches.
    try:
        identity.check_prometheus(url, str(manifest.get("run_id")))
    except SglkitError:
        return None
    return prom


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# obs.report's own Prometheus serves the copied data and scrapes nothing
TEMPORARY_CONFIG = "# obs.report: serve stored data only, scrape nothing\nglobal: {}\n"


def temporary_argv(binary: str, config: Path, data: Path, port: int) -> list[str]:
    """The temporary Prometheus' command line: long retention, so that nothing is deleted."""
    from sglkit.observability.services import prometheus_argv

    return prometheus_argv(
        binary,
        config=config,
        data=data,
        retention="100y",
        listen=f"127.0.0.1:{port}",
        log_level=None,
    )


@contextlib.contextmanager
def temporary_prometheus(
    data_dir: Path, *, ready_timeout: float = 120.0, progress=None
) -> Iterator[Source]:
    """Serve a COPY of `data_dir` with a scrape-less Prometheus on a free loopback port."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SglkitError(
            "prometheus is not on PATH; it is needed to read a stopped run's data "
            "(apt-get install prometheus)"
        )
    if not data_dir.is_dir():
        raise SglkitError(f"paths.prometheus_data: {data_dir} is not a folder (no run data)")
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    proc: subprocess.Popen | None = None
    try:
        copy = tmp / "data"
        if progress:
            progress(f"copying the run's TSDB ({_size_mib(data_dir):.1f} MiB) to {copy}")
        shutil.copytree(data_dir, copy, symlinks=True, ignore=shutil.ignore_patterns("lock"))
        cfg = tmp / "prometheus.yml"
        cfg.write_text(TEMPORARY_CONFIG)
        log = tmp / "prometheus.log"
        for _attempt in range(3):
            port = free_port()
            argv = temporary_argv(binary, cfg, copy, port)
            with open(log, "ab") as logf:
                proc = spawn(argv, stdout=logf, stderr=subprocess.STDOUT, die_with_parent=True)
            prom = Prom(f"http://127.0.0.1:{port}")
            if progress:
                progress(f"starting a temporary Prometheus on 127.0.0.1:{port} over the copy")
            try:
                wait_for(
                    lambda p=prom, pr=proc: pr.poll() is not None or p.ready(),
                    ready_timeout,
                    interval=0.2,
                    what="the temporary Prometheus to be ready",
                )
            except TimeoutError as e:
                raise SglkitError(f"{e}; log: {_tail(log)}") from None
            if proc.poll() is None:
                break
            if "address already in use" not in _tail(log, 20):
                raise SglkitError(f"temporary Prometheus exited {proc.returncode}: {_tail(log)}")
            proc = None  # a port race: pick another port
        else:
            raise SglkitError("temporary Prometheus: no free loopback port after 3 attempts")
        yield Source(prom, "restarted", f"temporary Prometheus over a copy of {data_dir}", proc.pid)
    finally:
        if proc is not None:
            terminate_group(proc, grace=10.0)
        shutil.rmtree(tmp, ignore_errors=True)


def _size_mib(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total / 2**20


@contextlib.contextmanager
def prometheus_for(
    run_dir: Path, manifest: dict[str, Any], *, progress=None, ready_timeout: float = 120.0
) -> Iterator[Source]:
    """The run's live Prometheus, else a temporary one over a copy of the run's data."""
    live = _live(manifest)
    if live is not None:
        yield Source(live, "live", f"the run's own Prometheus at {live.url}")
        return
    paths = manifest.get("paths") or {}
    data = Path(paths.get("prometheus_data") or run_dir / "prometheus" / "data")
    if not data.is_absolute():
        data = run_dir / data
    with temporary_prometheus(data, ready_timeout=ready_timeout, progress=progress) as src:
        yield src
