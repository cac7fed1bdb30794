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


TUNE_BATCHES = (1, 16)
TUNE_PROFILE = "qwen3-30b-a3b-gh200"  # Qwen3-30B-A3B at TP=1 (bf16): the first of SMOKE_SHAPES


def tiny_space(default: dict) -> list[dict]:
    """SGLang's default config and two neighbours (more stages, a wider N tile)."""
    keys = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps",
            "num_stages")  # fmt: skip
    base = {k: int(default.get(k, {"num_warps": 4, "num_stages": 3}.get(k, 1))) for k in keys}
    wider = {**base, "BLOCK_SIZE_N": min(256, base["BLOCK_SIZE_N"] * 2)}
    deeper = {**base, "num_stages": 2 if base["num_stages"] > 2 else 3}
    out: list[dict] = []
    for c in (base, wider, deeper):
        if c not in out:
            out.append(c)
    return out


def check_tuner(ctx: Context) -> None:
    cuda()
    bench = _kernel_modules()
    try:
        from sglkit.kernels import names, search, target
    except Exception as e:
        raise Skip(
            f"the tuner (sglkit.kernels.search, names, target) does not import ({e})"
        ) from None
    import triton

    from sglkit import profile as profiles

    with tempfile.TemporaryDirectory(prefix="sglkit-tune-") as tmp:
        store = Path(tmp)
        # the Qwen3-30B-A3B TP=1 profile's target on this GPU, in a temporary store
        kt = target.kernel_target(
            profiles.load(TUNE_PROFILE), names.device_name(), triton.__version__, store_root=store
        )
        shape, expected = kt.shape, kt.file_name
        measure = bench.make_measure(shape, reps=5, sets=2)
        results = search.tune(
            TUNE_BATCHES,
            lambda M: tiny_space(bench.default_config(shape, M)),
            measure,
            state_path=store / "state.json",
            budget=3,
            default_config=lambda M: bench.default_config(shape, M),
        )
        out = kt.path
        from sglkit.fsutil import atomic_write_json

        atomic_write_json(out, search.configs_json(results))
        n = len(tiny_space(bench.default_config(shape, 1)))
        ctx.note(f"tuned M={list(results)} over {n} configs each; wrote {out.name}")
        ctx.figure("file", out.name, out.name)
        sglang_name, read = _sglang_reads(bench, store, shape)
    ctx.note(f"the installed SGLang looks up {sglang_name}")
    if sglang_name != expected:
        raise Fail("file name the installed SGLang computes on this GPU", expected, sglang_name)
    if read is None:
        raise Fail("SGLang get_moe_configs under SGLANG_MOE_CONFIG_DIR", "our file", "nothing")
    if sorted(read) != sorted(TUNE_BATCHES):
        raise Fail("batch sizes SGLang read back", str(list(TUNE_BATCHES)), str(sorted(read)))


def _sglang_reads(bench, store: Path, shape) -> tuple[str, dict | None]:
    """(name the installed SGLang computes on this GPU, what its get_moe_configs reads from
    `store` as SGLANG_MOE_CONFIG_DIR). Uses the tuner's private copy of SGLang's config module
    (its package __init__ needs sgl_kernel; get_exec answers "not deterministic")."""
    import os

    mod = bench.sglang_config_module()
    bn, bk = shape.block_shape or (0, 0)
    block = [bn, bk] if shape.block_shape else None
    name = mod.get_config_file_name(shape.E, shape.N, shape.dtype, block, shape.per_channel_quant)
    old = os.environ.get("SGLANG_MOE_CONFIG_DIR")
    os.environ["SGLANG_MOE_CONFIG_DIR"] = str(store)
    try:
        mod.get_moe_configs.cache_clear()
        configs = mod.get_moe_configs(
            shape.E, shape.N, shape.dtype, bn, bk, shape.per_channel_quant
        )
    finally:
        mod.get_moe_configs.cache_clear()
        if old is None:
            os.environ.pop("SGLANG_MOE_CONFIG_DIR", None)
        else:
            os.environ["SGLANG_MOE_CONFIG_DIR"] = old
    return name, configs
