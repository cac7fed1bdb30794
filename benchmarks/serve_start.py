#!/usr/bin/env python3
"""What a server start costs, by the state of its caches: N starts in each state through the real
`invoke server.up --detach`, then one `/generate` of one token, then `invoke server.down`.

States (the order is rotated from run to run, so drift on a shared machine spreads evenly):
  cold      an empty cache root: SGLang compiles every DeepGEMM shape at start
  default   the root warmed by `cache.deepgemm`, SGLang's default (`--precompile on`: it sweeps
            every M again, re-reading the cache)
  kit       the same warm root through the kit (`--precompile auto`: the marker matches, the
            sweep is skipped)
  floor     --floor-profile (the same model in bf16: no DeepGEMM shapes), its own root, warmed
            by one untimed start first (Triton's JIT cache lives under the root)

Per state it prints the median and maximum of the seconds to /health 200 (the server's own, from
its start) and to the first token (from the task's start: the task, the start, one request), and
the median seconds of each phase of the start (server.up's breakdown of SGLang's log: launcher
imports, scheduler start, model init, weights, KV cache, CUDA graphs, warm-up).
Goal: `kit` within 1.1x of `floor`. On a GPU machine:

    python3 benchmarks/serve_start.py --profile qwen3-moe-fp8-2l \\
        --floor-profile qwen3-moe-bf16-2l --runs 3

It runs anywhere a profile's launcher runs: with the STAND-IN server profiles of
tests/fixtures it checks the mechanics on a CPU (its figures then say nothing about SGLang).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import invoke, rotated, run_main, server_down, server_status, task_env  # noqa: E402

from sglkit.net import free_port  # noqa: E402

STATES = ("cold", "default", "kit", "floor")


def one_start(env, profile: str, precompile: str, timeout: float) -> dict[str, float]:
    port = str(free_port())
    t0 = time.monotonic()
    try:  # server.down in `finally` also where server.up was interrupted after it recorded
        rc, out, err = invoke(env, "server.up", "-p", profile, "--detach", "--port", port,
                              "--precompile", precompile, timeout=timeout)  # fmt: skip
        out += err
        if rc != 0:
            raise SystemExit(f"server.up failed ({rc}):\n{out[-3000:]}")
        r = requests.post(f"http://127.0.0.1:{port}/generate", json={
            "input_ids": [1, 2, 3, 4, 5, 6, 7, 8],
            "sampling_params": {"max_new_tokens": 1, "temperature": 0, "ignore_eos": True},
        }, timeout=timeout)  # fmt: skip
        first = time.monotonic() - t0
        if r.status_code != 200:
            raise SystemExit(f"/generate: HTTP {r.status_code}: {r.text[:200]}")
        # the server's own time to ready and the phases of its start (server.up's record)
        st = server_status(env, profile)
        if st.get("ready_s") is None:
            raise SystemExit(f"server.status has no time to ready: {st}")
        ready, phases = float(st["ready_s"]), dict(st.get("start_phases") or [])
    finally:
        server_down(env, profile)
    return {"ready_s": ready, "first_token_s": first, "skipped_sweep": "precompile: off" in out,
            "phases": phases}  # fmt: skip


def report(results: dict[str, list[dict]], states: list[str]) -> None:
    """The table of starts per state, the median phases, and the goal (kit within 1.1x floor)."""
    print(f"\n{'state':8} {'runs':>4} {'ready med':>10} {'ready max':>10} "
          f"{'1st tok med':>12} {'1st tok max':>12} {'sweep skipped':>14}")  # fmt: skip
    med = {}
    for state in states:
        rs = results[state]
        if not rs:
            continue
        ready = [r["ready_s"] for r in rs]
        first = [r["first_token_s"] for r in rs]
        med[state] = statistics.median(first)
        skipped = sum(r["skipped_sweep"] for r in rs)
        print(f"{state:8} {len(rs):>4} {statistics.median(ready):>9.1f}s {max(ready):>9.1f}s "
              f"{med[state]:>11.1f}s {max(first):>11.1f}s {skipped:>10}/{len(rs)}")  # fmt: skip
    # where the starts' time went (server.up's phases from SGLang's stamped log lines)
    names = list(dict.fromkeys(n for st in states for r in results[st] for n in r["phases"]))
    if names:
        print("\nmedian seconds per phase of the start (SGLang's log stamps, about 1 s):")
        print(f"{'state':8} " + " ".join(f"{n:>16}" for n in names))
        for state in states:
            cells = []
            for n in names:
                vals = [r["phases"][n] for r in results[state] if n in r["phases"]]
                cells.append(f"{statistics.median(vals):>16.0f}" if vals else f"{'-':>16}")
            print(f"{state:8} " + " ".join(cells))
    if "kit" in med and "floor" in med and med["floor"] > 0:
        ratio = med["kit"] / med["floor"]
        print(f"\nkit / floor (median to first token): {ratio:.2f}x "
              f"(goal <= 1.10x: {'met' if ratio <= 1.10 else 'missed'})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", help="the FP8 profile (DeepGEMM shapes)")
    ap.add_argument("--floor-profile", help="the same model without DeepGEMM")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--states", default=",".join(STATES))
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--json", help="also write every start as JSON here (after each start)")
    ap.add_argument(
        "--work",
        help="the folder for the cache roots and server state (default: a new temporary one); "
        "run i's cold start leaves its cache in WORK/cold-<i>",
    )
    ap.add_argument(
        "--warm-root",
        help="a cache root cache.deepgemm already warmed for "
        "--profile: used as it is for default and kit (no warm here)",
    )
    ap.add_argument("--merge", nargs="+", help="print the table of these --json files; run nothing")
    a = ap.parse_args(argv)
    if a.merge:
        merged: dict[str, list[dict]] = {}
        for f in a.merge:
            try:
                data = json.loads(Path(f).read_text())
            except (OSError, ValueError) as e:
                ap.error(f"--merge: {f}: {e}")
            if not isinstance(data, dict) or set(data) - set(STATES):
                ap.error(f"--merge: {f}: not a --json file of this benchmark")
            for state, runs in data.items():
                merged.setdefault(state, []).extend(runs)
        report(merged, [s for s in STATES if s in merged])
        print(f"\nrerun: python3 benchmarks/serve_start.py {shlex.join(argv or sys.argv[1:])}")
        return 0
    if not (a.profile and a.floor_profile):
        ap.error("--profile and --floor-profile are required (or --merge)")
    states = [s for s in a.states.split(",") if s]
    if unknown := set(states) - set(STATES):
        ap.error(f"--states: unknown {sorted(unknown)} (known: {', '.join(STATES)})")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="sglkit-serve-start-"))
    work.mkdir(parents=True, exist_ok=True)
    if "cold" in states and (used := [d.name for d in work.glob("cold-*") if any(d.iterdir())]):
        ap.error(f"--work: {work} already holds cold starts' caches ({', '.join(sorted(used))}); "
                 "a cold start needs an empty root: give another --work")  # fmt: skip
    if a.warm_root and not (Path(a.warm_root) / "deepgemm").is_dir():
        ap.error(f"--warm-root: {a.warm_root} holds no deepgemm cache folder")
    base = task_env(SGLKIT_STATE_DIR=str(work / "state"))
    warm_root = Path(a.warm_root) if a.warm_root else work / "warm"
    floor_root = work / "floor"

    def env_for(root: Path) -> dict[str, str]:
        return dict(base, SGLKIT_CACHE_ROOT=str(root))

    if not a.warm_root and {"default", "kit"} & set(states):
        print(f"warming {warm_root} with cache.deepgemm ...", file=sys.stderr, flush=True)
        rc, out, err = invoke(env_for(warm_root), "cache.deepgemm", "-p", a.profile,
                              "--port", str(free_port()), timeout=a.timeout)  # fmt: skip
        if rc != 0:
            raise SystemExit(f"cache.deepgemm failed ({rc}):\n{(out + err)[-3000:]}")
    if "floor" in states:  # the floor's caches (Triton's JIT) are filled as the kit's are
        print(f"warming {floor_root} with one untimed start ...", file=sys.stderr, flush=True)
        one_start(env_for(floor_root), a.floor_profile, "auto", a.timeout)
    plan = {
        "cold": (a.profile, "auto", lambda i: work / f"cold-{i}"),
        "default": (a.profile, "on", lambda i: warm_root),
        "kit": (a.profile, "auto", lambda i: warm_root),
        "floor": (a.floor_profile, "auto", lambda i: floor_root),
    }
    results: dict[str, list[dict[str, float]]] = {s: [] for s in states}
    for i in range(a.runs):
        for state in rotated(states, i):
            profile, precompile, root = plan[state]
            r = one_start(env_for(root(i)), profile, precompile, a.timeout)
            results[state].append(r)
            print(f"run {i + 1}/{a.runs} {state}: ready {r['ready_s']:.1f} s, first token "
                  f"{r['first_token_s']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
            if a.json:  # after every start: a run cut short keeps what it measured
                Path(a.json).write_text(json.dumps(results, indent=2))
    report(results, states)
    print(f"\nrerun: python3 benchmarks/serve_start.py {shlex.join(argv or sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
