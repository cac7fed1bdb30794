"""Checks 4 and 5: SGLang's fused-MoE Triton kernel, and the tuner end to end.

Check 4 runs the installed SGLang's `invoke_fused_moe_kernel` through the tuner's own adapter
(sglkit.kernels.bench.reference_check) on random bf16 and fp8 block-quantized inputs and compares
the whole MoE layer with a float32 torch reference. Check 5 runs the tuner on a tiny search space
and checks the file it writes is named what `kernels.name` prints for that shape on this GPU.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sglkit.gpu.checks import Context, Fail, Skip
from sglkit.gpu.compute import cuda

# Relative error bounds (||out - ref|| / ||ref||) of one MoE layer against float32. bf16 rounds
# at 2^-8 (the layer lands near 2e-3); fp8 e4m3 keeps 3 mantissa bits and the kernel also
# quantizes activations per 128-group (near 3e-2). A wrong kernel or scale lands near 1.
BOUNDS = {"bf16": 2e-2, "fp8_w8a8": 1e-1}
M_CHECK = 64


@dataclass(frozen=True)
class Case:
    """One kernel comparison: a label, the dtype (its bound), and how to get the error."""

    label: str
    dtype: str
    error: Callable[[], float]


def judge_errors(ctx: Context, cases: Iterable[Case]) -> None:
    """Measure each case; report every error; FAIL naming the worst one over its bound."""
    worst = None
    for case in cases:
        err = float(case.error())
        bound = BOUNDS[case.dtype]
        ctx.figure(f"{case.dtype} err", f"{err:.1e}", err)
        ctx.note(f"{case.label}: relative error {err:.3g} (bound {bound:g})")
        bad = not math.isfinite(err) or err > bound
        if bad and (worst is None or not err <= worst[1]):
            worst = (case, err, bound)
    if worst:
        case, err, bound = worst
        raise Fail(
            f"{case.label} vs float32 reference", f"relative error <= {bound:g}", f"{err:.3g}"
        )


@dataclass(frozen=True)
class Dims:
    """The two shapes the smoke test checks (the kit's two GH200 profiles' MoE layers)."""

    E: int
    N: int
    K: int
    topk: int
    dtype: str
    block_shape: tuple[int, int] | None


# Qwen3-30B-A3B at TP=1 (bf16) and DeepSeek-V3 at TP=8 (fp8, 128x128 blocks, 256 routed experts)
SMOKE_SHAPES = (
    Dims(E=128, N=768, K=2048, topk=8, dtype="bf16", block_shape=None),
    Dims(E=256, N=256, K=7168, topk=8, dtype="fp8_w8a8", block_shape=(128, 128)),
)


def _kernel_modules():
    try:
        from sglkit.kernels import bench
    except Exception as e:
        raise Skip(f"sglkit.kernels.bench does not import ({type(e).__name__}: {e})") from None
    try:
        from sglang.kernels.ops.moe import fused_moe_triton_kernels  # noqa: F401
    except Exception as e:
        raise Skip(f"SGLang's fused-MoE Triton kernel does not import ({type(e).__name__}: "
                   f"{str(e)[:100]})", "sglang") from None  # fmt: skip
    return bench


def check_moe_kernel(ctx: Context) -> None:
    cuda()
    bench = _kernel_modules()
    cases = []
    for d in SMOKE_SHAPES:
        config = bench.default_config(d, M_CHECK, d.dtype, d.block_shape)
        label = (f"{d.dtype} E={d.E} N={d.N} K={d.K} top{d.topk} M={M_CHECK}"
                 + (f" block {list(d.block_shape)}" if d.block_shape else ""))  # fmt: skip
        cases.append(Case(label, d.dtype, lambda d=d, c=config: bench.reference_check(
            d, d.dtype, c, M_CHECK, d.block_shape)))  # fmt: skip
    judge_errors(ctx, cases)


def check_tuner(ctx: Context) -> None:
    cuda()
    _kernel_modules()
    try:
        from sglkit.kernels import names, search
    except Exception as e:
        raise Skip(f"the tuner (sglkit.kernels.search, names) does not import ({e})") from None
    d = SMOKE_SHAPES[0]
    with tempfile.TemporaryDirectory(prefix="sglkit-tune-") as tmp:
        written = Path(search.tune_smoke(d, Path(tmp)))
        expected = names.config_file_name(d, names.device_name())
        ctx.note(f"tuner wrote {written.name}")
        ctx.figure("file", written.name, written.name)
        if written.name != expected:
            raise Fail("tuned config file name", expected, written.name)
