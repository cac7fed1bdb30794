#!/usr/bin/env python3
"""How fast the telemetry stack is up, and what it costs while it runs.

Starts `python -m sglkit.observability.init_run --ports auto` (real Prometheus and node_exporter
on loopback) N times and measures, from the moment the process is started:
  (a) until manifest.json says `ready`,
  (b) until Prometheus reports every target `up` (/api/v1/targets),
then keeps one more run for --overhead-seconds and measures the whole stack (init-run and its
children): CPU seconds per minute and resident memory (mean and max of samples every 5 s).

    python3 benchmarks/stack_ready.py [--n 5] [--overhead-seconds 60] [--profile cpu-dev]

Goal (issue 3): (b) within one scrape interval + 2 s; overhead under 2% of one core, 150 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sglkit import profile as profiles  # noqa: E402
from sglkit.observability import manifest as mf  # noqa: E402


def start(root: Path, profile: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "sglkit.observability.init_run", "--quiet"]
    argv += ["--profile", profile, "--root", str(root), "--ports", "auto"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.DEVNULL)


def poll(cond, timeout: float, interval: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cond()
        except Exception:
            v = None
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def manifest(root: Path) -> dict | None:
    run = mf.latest_run_dir(root)
    return mf.read(run) if run else None


def all_up(url: str) -> bool:
    body = requests.get(f"{url}/api/v1/targets", timeout=2).json()
    targets = body["data"]["activeTargets"]
    return bool(targets) and all(t["health"] == "up" for t in targets)


def one_run(profile: str, keep_for: float = 0.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="sglkit-bench-") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        proc = start(root, profile)
        try:
            m = poll(
                lambda: (x := manifest(root)) and x["status"] in ("ready", "degraded") and x,
                120,
                0.01,
                "manifest ready",
            )
            t_ready = time.monotonic() - t0
            if m["status"] != "ready":
                raise RuntimeError(f"run is {m['status']}: {m['reasons']}")
            url = m["services"]["prometheus"]["url"]
            poll(lambda: all_up(url), 120, 0.05, "all targets up")
            t_up = time.monotonic() - t0
            result = {"ready": t_ready, "up": t_up}
            if keep_for:
                result.update(overhead(proc.pid, keep_for))
            return result
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def stack_processes(pid: int) -> list[psutil.Process]:
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def overhead(pid: int, seconds: float) -> dict:
    """CPU seconds per minute and RSS (MiB) of init-run plus its children over `seconds`."""

    def cpu(procs):
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss(procs):
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total / 2**20

    procs = stack_processes(pid)
    c0, t0 = cpu(procs), time.monotonic()
    samples = [rss(procs)]
    while time.monotonic() - t0 < seconds:
        time.sleep(min(5.0, seconds - (time.monotonic() - t0)) if seconds > 0 else 0)
        procs = stack_processes(pid)
        samples.append(rss(procs))
    elapsed = time.monotonic() - t0
    cpu_s = cpu(procs) - c0
    return {
        "cpu_s_per_min": cpu_s * 60 / elapsed,
        "cpu_pct_core": 100 * cpu_s / elapsed,
        "rss_mean": statistics.fmean(samples),
        "rss_max": max(samples),
        "window": elapsed,
    }


def seconds(duration: str) -> float:
    """'5s' / '500ms' / '1m' -> seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if duration.endswith(suffix):
            return float(duration[: -len(suffix)]) * scale
    raise ValueError(duration)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5, help="start-up runs (default 5)")
    ap.add_argument("--overhead-seconds", type=float, default=60.0)
    ap.add_argument("--profile", default="cpu-dev")
    a = ap.parse_args()
    interval = profiles.load(a.profile).telemetry["scrape_interval"]
    ready, up = [], []
    for i in range(a.n):
        r = one_run(a.profile)
        ready.append(r["ready"])
        up.append(r["up"])
        print(f"run {i + 1}/{a.n}: ready {r['ready']:.2f}s, targets up {r['up']:.2f}s", flush=True)
    print(f"overhead run: {a.overhead_seconds:g}s at scrape interval {interval} ...", flush=True)
    o = one_run(a.profile, keep_for=a.overhead_seconds)
    cmd = shlex.join([sys.executable, *sys.argv])
    host = f"{os.uname().nodename}, {psutil.cpu_count()} cores, Python {sys.version.split()[0]}"
    print()
    print(f"stack_ready: profile {a.profile}, scrape interval {interval}, N={a.n} ({host})")
    print()
    goal_up = seconds(interval) + 2

    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print("| measure | median | max | goal |")
    print("| --- | --- | --- | --- |")
    print(f"| start -> manifest ready | {statistics.median(ready):.2f} s | {max(ready):.2f} s | |")
    print(
        f"| start -> every target up | {statistics.median(up):.2f} s | {max(up):.2f} s "
        f"| <= {goal_up:g} s (interval + 2 s): {met(max(up) <= goal_up)} |"
    )
    print()
    print(f"| stack overhead over {o['window']:.0f} s (init-run + children) | value | goal |")
    print("| --- | --- | --- |")
    print(
        f"| CPU | {o['cpu_s_per_min']:.2f} CPU-s/min ({o['cpu_pct_core']:.2f}% of one core) "
        f"| < 2% of one core: {met(o['cpu_pct_core'] < 2)} |"
    )
    print(
        f"| resident memory | mean {o['rss_mean']:.0f} MiB, max {o['rss_max']:.0f} MiB "
        f"| < 150 MiB: {met(o['rss_max'] < 150)} |"
    )
    print()
    print(f"rerun: {cmd}")


if __name__ == "__main__":
    main()
