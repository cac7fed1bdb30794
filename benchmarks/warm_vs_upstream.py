#!/usr/bin/env python3
"""A cold DeepGEMM warm three ways, each on an empty cache folder, on the GPU here:

  upstream  python3 -m sglang.compile_deep_gemm with the profile's serving flags
  serial    invoke cache.deepgemm --jobs 1   (the server compiles one shape after another)
  parallel  invoke cache.deepgemm --jobs N   (--jobs auto unless given: worker processes compile
            every shape at once, then the server sweeps the cache and must compile nothing)

The order of the methods is rotated from repeat to repeat, so drift on a shared machine spreads
evenly. It prints, per method, the median and maximum seconds, the ratio of the medians to
upstream's, and the kernel files each left; for the parallel warm also its two parts (the
workers' compile, then the server's start and sweep that checks it); the card is read from NVML.
Goal: parallel at most 0.35x upstream on a model with at least 6 DeepGEMM shapes (profile
deepseek-v3-fp8-2l: 6).

    python3 benchmarks/warm_vs_upstream.py --profile deepseek-v3-fp8-2l --repeats 3

Runs of one method can be taken in separate calls and joined: `--methods upstream --json a.json`,
then `--merge a.json b.json` prints the table of all of them.
"""

from __future__ import annotations

import argparse
import json
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

from bench_common import card, rotated  # noqa: E402

from sglkit.cache import deepgemm_parallel as par  # noqa: E402
from sglkit.net import free_port  # noqa: E402
from sglkit.proc import terminate_group  # noqa: E402

METHODS = ("upstream", "serial", "parallel")


def upstream_argv(profile: str, port: int) -> tuple[list[str], dict[str, str]]:
    """compile_deep_gemm with the serving spec's flags and the profile's cache environment."""
    from sglkit import profile as profiles
    from sglkit.server import spec as server_spec

    spec = server_spec.build(profiles.load(profile), server_spec.Overrides(port=port))
    return [sys.executable, "-m", "sglang.compile_deep_gemm", *spec.server_args()], \
        spec.environment()  # fmt: skip


def one_run(method: str, profile: str, jobs: int | None, work: Path, timeout: float) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=work))
    env = {**os.environ, "SGLKIT_CACHE_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    if method == "upstream":
        os.environ["SGLKIT_CACHE_ROOT"] = str(root)  # the profile's cache.root reads it
        argv, extra = upstream_argv(profile, port)
        env.update(extra)
        # plain SGLang reads the MoE configs it ships: the kit's overlay folder is built by the
        # kit's own server starts, and SGLang fails on a SGLANG_MOE_CONFIG_DIR that does not
        # exist (the profile's, or one from the caller's shell)
        env.pop("SGLANG_MOE_CONFIG_DIR", None)
    else:
        n = "1" if method == "serial" else str(jobs or "auto")
        argv = [sys.executable, "-m", "invoke", "cache.deepgemm", "-p", profile, "--port",
                str(port), "--jobs", n]  # fmt: skip
    log = root / "run.log"
    print(f"[{method}] {shlex.join(argv)}", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
        rc = stop_after(child, timeout)
    seconds = time.monotonic() - t0
    files = len(par.kernel_files(root / "deepgemm"))
    out = {"method": method, "seconds": round(seconds, 1), "rc": rc, "files": files,
           "log": str(log)}  # fmt: skip
    marker = root / "deepgemm" / ".sglkit-marker.json"
    if marker.is_file():
        out["parallel"] = json.loads(marker.read_text()).get("parallel")
    print(f"[{method}] {seconds:.1f} s, exit {rc}, {files} kernel files", flush=True)
    if rc != 0:
        print(log.read_text()[-3000:], flush=True)
    return out


def stop_after(child: subprocess.Popen, timeout: float, grace: float = 60.0) -> int:
    """Its exit status; past `timeout` its session gets SIGTERM (the kit's tasks then stop their
    server and workers), then SIGKILL after `grace`: exit status 124, as timeout(1)."""
    try:
        return child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate_group(child, grace)
        return 124


def table(runs: list[dict], gpu: str, command: str) -> str:
    by = {m: [r for r in runs if r["method"] == m and r["rc"] == 0] for m in METHODS}
    base = statistics.median([r["seconds"] for r in by["upstream"]]) if by["upstream"] else None
    lines = [f"card: {gpu}", "",
             "| method | runs | median s | max s | vs upstream | workers s | server s "
             "| kernel files | server check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for m in METHODS:
        rs = by[m]
        if not rs:
            continue
        secs = [r["seconds"] for r in rs]
        med = statistics.median(secs)
        ratio = f"{med / base:.2f}x" if base else "-"
        files = "/".join(sorted({str(r["files"]) for r in rs}))
        checks = {("verified" if r["parallel"].get("verified") else "not verified")
                  for r in rs if r.get("parallel")}  # fmt: skip
        check = "/".join(sorted(checks)) or "-"
        # the parallel warm's two parts: the workers' compile, then the rest (the server's start
        # and its sweep of every M on the cache, which checks it)
        workers = [r["parallel"]["seconds"] for r in rs if r.get("parallel")]
        split = (f"{statistics.median(workers):.1f} | {med - statistics.median(workers):.1f}"
                 if workers else "- | -")  # fmt: skip
        lines.append(f"| {m} | {len(rs)} | {med:.1f} | {max(secs):.1f} | {ratio} | {split} "
                     f"| {files} | {check} |")  # fmt: skip
    failed = [r for r in runs if r["rc"] != 0]  # 124: stopped at --timeout
    if failed:
        names = ", ".join(f"{r['method']} (stopped at --timeout after {r['seconds']:.0f} s, "
                          f"{r['files']} kernel files)" if r["rc"] == 124
                          else f"{r['method']} (exit {r['rc']})" for r in failed)  # fmt: skip
        lines.append(f"\nfailed runs: {names}")
    lines += ["", f"rerun: {command}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="deepseek-v3-fp8-2l")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--jobs", type=int, help="workers for parallel (default: --jobs auto)")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--work", help="folder for the cache roots (default: a temporary one)")
    ap.add_argument("--json", help="write the runs here")
    ap.add_argument("--merge", nargs="+", help="print the table of these --json files; run nothing")
    a = ap.parse_args(argv)
    command = "python3 benchmarks/warm_vs_upstream.py " + shlex.join(argv or sys.argv[1:])
    if a.merge:
        runs, gpus = [], set()
        for f in a.merge:
            data = json.loads(Path(f).read_text())
            runs += data["runs"]
            gpus.add(data["card"])
        print(table(runs, " / ".join(sorted(gpus)), command))
        return 0
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or a.repeats < 1:
        ap.error(f"--methods: one of {', '.join(METHODS)}" if bad else "--repeats: at least 1")
    work = Path(a.work or tempfile.mkdtemp(prefix="warm-vs-upstream-"))
    work.mkdir(parents=True, exist_ok=True)
    gpu, runs = card(), []
    for rep in range(a.repeats):
        for m in rotated(methods, rep):
            runs.append(one_run(m, a.profile, a.jobs, work, a.timeout))
            if a.json:
                Path(a.json).write_text(json.dumps({"card": gpu, "profile": a.profile,
                                                    "runs": runs}, indent=2))  # fmt: skip
    print(table(runs, gpu, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
