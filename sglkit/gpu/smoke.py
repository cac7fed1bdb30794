"""The smoke test's checks, in order, and the runner behind `python -m sglkit.gpu`.

    1 driver    NVML: GPU, compute capability, memory, driver and CUDA versions (Grace, C2C)
    2 compute   torch: copy bandwidth and bf16 TFLOP/s against the datasheet, bf16 correctness
    3 triton    a small kernel compiled into a fresh TRITON_CACHE_DIR, then loaded by a 2nd process
    4 moe       SGLang's fused-MoE Triton kernel (bf16, fp8 block-quantized) vs float32 torch
    5 tuner     the tuner on a tiny space writes the file `kernels.name` names for this GPU
    6 exporter  dcgm-exporter or nvitop-exporter sees a known allocation on the GPU
    7 extras    DeepGEMM and an SGLang server warm-up, where they can run

`nox -s gpu_smoke` runs them through pytest (tests/gpu/test_smoke.py) and prints the summary
table last; `python -m sglkit.gpu` runs them without pytest. Both exit non-zero when a check
that ran failed.
"""

from __future__ import annotations

import argparse
import sys

from sglkit.gpu.checks import Check, Result, exit_status, format_result, run_check, summary_table
from sglkit.gpu.compute import check_compute
from sglkit.gpu.exporter import check_exporter
from sglkit.gpu.extras import check_extras
from sglkit.gpu.host import check_driver
from sglkit.gpu.moe import check_moe_kernel, check_tuner
from sglkit.gpu.tritoncheck import check_triton

CHECKS = (
    Check(1, "driver", "driver and devices", check_driver),
    Check(2, "compute", "memory and compute", check_compute),
    Check(3, "triton", "Triton compile and cache", check_triton),
    Check(4, "moe", "SGLang fused-MoE kernel", check_moe_kernel),
    Check(5, "tuner", "tuner end to end", check_tuner),
    Check(6, "exporter", "GPU exporter", check_exporter),
    Check(7, "extras", "DeepGEMM and server warm-up", check_extras),
)


def select(only: list[str] | None) -> list[Check]:
    if not only:
        return list(CHECKS)
    known = {c.key: c for c in CHECKS} | {str(c.number): c for c in CHECKS}
    bad = [k for k in only if k not in known]
    if bad:
        from sglkit.errors import ConfigError

        raise ConfigError(f"--only: unknown check {bad[0]!r} (known: "
                          f"{', '.join(c.key for c in CHECKS)})")  # fmt: skip
    return [known[k] for k in only]


def run_all(checks: list[Check], out=None) -> list[Result]:
    out = out or sys.stdout
    results = []
    for check in checks:
        r = run_check(check)
        print(format_result(r), file=out, flush=True)
        results.append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sglkit.gpu", description="GPU host smoke checks")
    p.add_argument("--only", action="append", help="run this check (key or number); repeatable")
    p.add_argument("--json", dest="json_out", help="also write the results here")
    a = p.parse_args(argv)
    results = run_all(select(a.only))
    if a.json_out:
        from sglkit.gpu.checks import write_json

        write_json(a.json_out, results)
    print(summary_table(results), flush=True)
    return exit_status(results)
