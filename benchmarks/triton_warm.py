"""First-call latency of SGLang's fused-MoE kernel set: cold Triton cache versus warm.

Two fresh processes run `python -m sglkit.cache.triton_warm` over the same plan: the first with an
empty TRITON_CACHE_DIR (every variant compiles), the second with the cache the first filled
(every variant loads). Each variant's time is its first forward (both GEMMs of the MoE layer,
synchronized); the process wall time adds Python, torch, SGLang imports and the random weights.

    python3 benchmarks/triton_warm.py --profile qwen3-30b-a3b-gh200 [--config-file F]
        [--max-tokens N | --keys-only] [--json OUT]

Needs a GPU, torch, Triton and the SGLang wheel. Prints a table and the command to rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cache: Path, out: Path) -> tuple[dict, float]:
    env = dict(os.environ)
    env["SGLKIT_TRITON_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "sglkit.cache.triton_warm", *args, "--json", str(out), "--quiet"]
    start = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"{shlex.join(argv)} exited {p.returncode}")
    return json.loads(out.read_text()), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="qwen3-30b-a3b-gh200")
    ap.add_argument("--config-file")
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--keys-only", action="store_true")
    ap.add_argument("--json", dest="json_out", help="write both runs here")
    a = ap.parse_args()
    args = ["--profile", a.profile]
    if a.config_file:
        args += ["--config-file", a.config_file]
    if a.max_tokens:
        args += ["--max-tokens", str(a.max_tokens)]
    if a.keys_only:
        args.append("--keys-only")
    with tempfile.TemporaryDirectory(prefix="sglkit-triton-bench-") as tmp:
        cache = Path(tmp) / "triton"
        cold, cold_wall = _run(args, cache, Path(tmp) / "cold.json")
        files = sum(1 for f in cache.rglob("*") if f.is_file())
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        warm, warm_wall = _run(args, cache, Path(tmp) / "warm.json")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"cold": cold, "warm": warm,
                                                "cold_wall_s": cold_wall, "warm_wall_s": warm_wall},
                                               indent=2))  # fmt: skip
    v = cold["versions"]
    print(f"fused-MoE first-call latency, cold vs warm TRITON_CACHE_DIR ({v['gpu']}, "
          f"sglang {v['sglang']}, triton {v['triton']}, torch {v['torch']})")  # fmt: skip
    print(f"config file: {cold['config_file']}")
    print(f"shape: {cold['dims']}; {len(cold['items'])} variants; cache {files} files, "
          f"{size / 2**20:.1f} MiB")  # fmt: skip
    print(f"{'variant':<72} {'cold ms':>9} {'warm ms':>9} {'ratio':>7}")
    for c, w in zip(cold["items"], warm["items"], strict=True):
        ratio = c["first_call_s"] / w["first_call_s"] if w["first_call_s"] else float("inf")
        print(f"{c['label']:<72} {c['first_call_s'] * 1e3:9.1f} {w['first_call_s'] * 1e3:9.1f} "
              f"{ratio:6.0f}x")  # fmt: skip
    tc, tw = cold["total_first_call_s"], warm["total_first_call_s"]
    print(f"{'all first calls':<72} {tc * 1e3:9.1f} {tw * 1e3:9.1f} {tc / tw:6.0f}x")
    print(f"{'process wall (imports, weights, first calls)':<72} {cold_wall * 1e3:9.0f} "
          f"{warm_wall * 1e3:9.0f} {cold_wall / warm_wall:6.1f}x")  # fmt: skip
    print("rerun: python3 benchmarks/triton_warm.py " + shlex.join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
