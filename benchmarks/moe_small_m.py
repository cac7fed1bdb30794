#!/usr/bin/env python3
"""Small batches of the fused-MoE kernel: why M=1-4 reaches a small fraction of copy bandwidth,
and what a wider small-batch grid (sglkit.kernels.space.SMALL_M_GRID) gains over SGLang's grid.

Per profile (its MoE shape from the model config, as `kernels.tune` takes it) and batch size M:

  before   the best config of SGLang's grid (space.full_space(), pruned): every candidate timed
  after    the best of `before` and of every small-batch candidate SGLang's grid lacks
           (space.small_m_space(), pruned by the same rules)
  default  SGLang's own default config

The three are then re-timed side by side (median of --reps CUDA-graph replays, L2 flushed before
each), for the whole layer and for the two GEMMs alone. "frac" is expert-weight bytes the batch
reads (uniform routing) / time / copy bandwidth of this GPU, measured in the same run. "blocks"
is the gate/up GEMM's working thread blocks (routed experts x ceil(2N / BLOCK_SIZE_N)) over the
card's SM count. At M=1 a torch.profiler trace of the layer (no L2 flush between iterations;
the weights of one layer exceed the L2 on the shapes below) says where its time goes, kernel by
kernel. On a GPU host with SGLang importable:

    python3 benchmarks/moe_small_m.py --profiles qwen3-moe-fp8-2l,deepseek-v3-gh200 \\
        --batch-sizes 1,2,4 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import card  # noqa: E402


def gate_up_blocks(dims, M: int, block_n: int) -> float:
    """Working thread blocks of the gate/up GEMM at batch size M (M <= 16: one M block per
    routed expert), expected under uniform routing."""
    routed = dims.E * (1 - (1 - dims.topk / dims.E) ** M)
    return routed * math.ceil(2 * dims.N / block_n)


def short(cfg: dict) -> str:
    from sglkit.kernels import space as sp

    return ",".join(str(cfg.get(k, "-")) for k in sp.KEYS)  # bf16 defaults lack warps/stages


def kernel_profile(bench, cfg: dict, M: int, iters: int = 20) -> list[dict]:
    """CUDA kernels of `iters` eager layer runs at batch size M: name, calls per layer, mean us
    per layer."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from sglkit.kernels import moe_kernel as mk

    kcfg = mk.kernel_config(cfg)
    r, staged = bench.runner(M, kcfg["BLOCK_SIZE_M"])
    bench._feed(r, staged[0])
    for _ in range(3):
        r.forward(kcfg)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            r.forward(kcfg)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
        if us > 0:
            rows.append({"kernel": e.key[:70], "calls": e.count // iters, "us": us / iters})
    rows.sort(key=lambda x: -x["us"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="qwen3-moe-fp8-2l,deepseek-v3-gh200")
    ap.add_argument("--batch-sizes", default="1,2,4")
    ap.add_argument("--reps", type=int, default=50, help="replays of the side-by-side timing")
    ap.add_argument("--json", help="write every row here (after each batch size)")
    a = ap.parse_args(argv)
    import torch

    from sglkit import profile as profiles
    from sglkit.kernels import bench as kb
    from sglkit.kernels import search, target
    from sglkit.kernels import space as sp

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bw = kb.copy_bandwidth()
    pool = kb.CompilePool()
    print(f"compile pool started ({pool.workers} workers)", file=sys.stderr, flush=True)
    report: dict = {"card": card(), "sms": sms, "copy_bw": bw, "rows": [], "profiles": {}}
    batch_sizes = [int(x) for x in a.batch_sizes.split(",") if x.strip()]
    for name in [x for x in a.profiles.split(",") if x]:
        shape = target.profile_shape(profiles.load(name))
        measure = kb.make_measure(shape, pool=pool)
        b = measure.bench
        dims = b.dims
        for M in batch_sizes:
            t1 = time.monotonic()
            grid = sp.candidates(shape, M)  # what kernels.tune searches
            in_grid = {sp.key(c) for c in grid}
            wide = sp.prune(sp.small_m_space(), shape, M=M).kept
            extra = [c for c in wide if sp.key(c) not in in_grid]
            before = search.exhaustive(M, grid, measure)
            best_extra = search.exhaustive(M, extra, measure) if extra else before
            after = best_extra if best_extra.time < before.time else before
            picks = {"default": kb.default_config(shape, M, shape.dtype, shape.block_shape),
                     "before": before.config, "after": after.config}  # fmt: skip
            wbytes = kb.weight_bytes(dims, M)
            for label, cfg in picks.items():
                layer = b.time(cfg, M, reps=a.reps, max_seconds=10.0)
                gemms = b.time(cfg, M, reps=a.reps, what="gemms", max_seconds=10.0)
                report["rows"].append({
                    "profile": name, "M": M, "pick": label, "config": short(cfg),
                    "layer_us": layer * 1e6, "gemms_us": gemms * 1e6,
                    "frac_layer": wbytes / layer / bw, "frac_gemms": wbytes / gemms / bw,
                    "blocks": gate_up_blocks(dims, M, cfg["BLOCK_SIZE_N"]),
                    "candidates": len(grid) if label == "before" else len(grid) + len(extra),
                })  # fmt: skip
            print(f"{name} M={M}: {len(grid)} + {len(extra)} candidates, "
                  f"{time.monotonic() - t1:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
            if M == 1:
                report["profiles"][name] = {
                    label: kernel_profile(b, cfg, M) for label, cfg in picks.items()
                    if label != "before"
                }  # fmt: skip
            if a.json:
                Path(a.json).write_text(json.dumps(report, indent=2))
    pool.close()
    print_report(report)
    print(f"\nrerun: python3 benchmarks/moe_small_m.py {shlex.join(argv or sys.argv[1:])}")
    return 0


def print_report(report: dict) -> None:
    print(f"\n{report['card']}: {report['sms']} SMs, copy bandwidth "
          f"{report['copy_bw'] / 1e12:.2f} TB/s (read + write)")  # fmt: skip
    print(
        "\n| profile | M | pick | config (BM,BN,BK,GM,warps,stages) | layer us | GEMMs us "
        "| frac layer | frac GEMMs | gate/up blocks / SMs | candidates |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in report["rows"]:
        print(f"| {r['profile']} | {r['M']} | {r['pick']} | {r['config']} | {r['layer_us']:.1f} "
              f"| {r['gemms_us']:.1f} | {r['frac_layer']:.2f} | {r['frac_gemms']:.2f} "
              f"| {r['blocks'] / report['sms']:.2f} | {r['candidates']} |")  # fmt: skip
    for name, picks in report["profiles"].items():
        for label, rows in picks.items():
            total = sum(x["us"] for x in rows) or 1.0
            print(f"\n{name}, M=1, {label}: CUDA kernels per layer (torch.profiler, eager, "
                  "mean of 20)")  # fmt: skip
            print("| kernel | calls | us | share |\n|---|---:|---:|---:|")
            for x in rows[:8]:
                print(f"| {x['kernel']} | {x['calls']} | {x['us']:.1f} | {x['us'] / total:.0%} |")


if __name__ == "__main__":
    sys.exit(main())
