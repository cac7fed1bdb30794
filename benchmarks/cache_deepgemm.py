#!/usr/bin/env python3
"""How fast cache.deepgemm answers "already warm", notices a crash, and honours its deadline.

Runs the real `invoke cache.deepgemm --profile profiles/cpu-dev.yaml` with the STAND-IN server
(tests/fixtures/standin_sglang_server.py) as the launcher, in a temporary cache root, and prints
a table. Rerun:  python3 benchmarks/cache_deepgemm.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sglkit.net import free_port  # noqa: E402

STANDIN = REPO / "tests" / "fixtures" / "standin_sglang_server.py"


def invoke(env: dict[str, str], mode: str, *extra: str, watch: str | None = None):
    """Run the task; return (exit status, wall seconds, seconds from `watch` line to exit)."""
    launcher = shlex.join([sys.executable, str(STANDIN), "--standin-mode", mode])
    argv = ["invoke", "cache.deepgemm", "--profile", "profiles/cpu-dev.yaml",
            "--launcher", launcher, "--port", str(free_port()), "--grace", "3", *extra]  # fmt: skip
    t0 = time.monotonic()
    seen = None
    p = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for raw in p.stdout:
        if watch and seen is None and watch in raw.decode(errors="replace"):
            seen = time.monotonic()
    rc = p.wait()
    end = time.monotonic()
    return rc, end - t0, (end - seen) if seen else None


def summary(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        env = {**os.environ, "SGLKIT_CACHE_ROOT": root}
        rc, first, _ = invoke(env, "ready")
        assert rc == 0, "the first warm failed"
        rows.append(("first warm (stand-in ready after 0.5 s), wall s", f"{first:.2f}", "1"))
        warm = []
        for _ in range(args.runs):
            rc, t, _ = invoke(env, "ready")
            assert rc == 0
            warm.append(t)
        rows.append(("'already warm' rerun, wall s (min/med/max)", summary(warm), str(args.runs)))
        crash = []
        for _ in range(args.runs):
            rc, _, after = invoke(env, "crash", "--force", watch="simulated crash mid-request")
            assert rc == 1 and after is not None
            crash.append(after)
        rows.append(("crash line -> task exited, s (min/med/max)", summary(crash), str(args.runs)))
        rc, t, _ = invoke(env, "hang", "--force", "--timeout", "5")
        assert rc == 124
        rows.append(("hang with --timeout 5: task exited after, s", f"{t:.2f}", "1"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>18}  runs")
    for name, value, n in rows:
        print(f"{name:<{width}}  {value:>18}  {n}")
    rerun = f"python3 benchmarks/cache_deepgemm.py --runs {args.runs}"
    print(f"\nmachine: {os.cpu_count()} cores; rerun: {rerun}")


if __name__ == "__main__":
    main()
