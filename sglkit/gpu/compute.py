"""Check 2: memory and compute sanity with torch, against the card's datasheet figures.

A device-to-device copy measures bandwidth (bytes read plus bytes written); a bf16 matrix product
on random data is checked against a float32 product of the same inputs and timed in TFLOP/s. Both
fail only below a generous floor (datasheet.FLOOR) that catches a broken host, not a slow one.
"""

from __future__ import annotations

from sglkit.gpu import datasheet
from sglkit.gpu.checks import Context, Fail, Skip

COPY_BYTES = 1 << 30
MATMUL_N = 8192
# bf16 keeps 8 significant bits: a product of random data lands near 3e-3 relative error
BF16_MATMUL_BOUND = 1e-2


def cuda():
    """torch with a usable CUDA device, or Skip naming why not."""
    try:
        import torch
    except Exception as e:
        raise Skip(f"torch does not import ({type(e).__name__})", "gpu") from None
    if not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} sees no CUDA device", "gpu")
    return torch


def time_cuda(torch, fn, iters: int, warmup: int = 3) -> float:
    """Mean seconds per call of `fn` on the current stream, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def relative_error(torch, got, ref) -> float:
    """||got - ref|| / ||ref|| in float32 (Frobenius)."""
    got, ref = got.float(), ref.float()
    return float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref))


def copy_bandwidth(torch, dev) -> float:
    """TB/s of a device-to-device copy, bytes read plus bytes written; Fail if bytes differ."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    secs = time_cuda(torch, lambda: dst.copy_(src), iters=20)
    if not torch.equal(dst, src):
        raise Fail("device-to-device copy", "dst equal to src", "different bytes")
    return 2 * COPY_BYTES / secs / 1e12


def bf16_matmul(torch, dev) -> tuple[float, float]:
    """(TFLOP/s, relative error vs float32) of an n x n x n bf16 product of random data."""
    n = MATMUL_N
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=gen)
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # a true float32 reference
    try:
        ref = a.float() @ b.float()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    out = a @ b
    err = relative_error(torch, out, ref)
    del ref
    secs = time_cuda(torch, lambda: torch.matmul(a, b, out=out), iters=20)
    return 2 * n**3 / secs / 1e12, err


def check_compute(ctx: Context) -> None:
    torch = cuda()
    dev = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(dev)
    sheet = datasheet.lookup(name)
    ctx.note(
        f"{name}: datasheet "
        + (
            f"{sheet.bandwidth_tbs} TB/s, {sheet.bf16_tflops:g} bf16 TFLOP/s"
            if sheet
            else "unknown: figures reported without a floor"
        )
    )

    bandwidth = copy_bandwidth(torch, dev)
    bw_text, bw_fail = datasheet.judge(
        "copy bandwidth", bandwidth, sheet.bandwidth_tbs if sheet else None, "TB/s"
    )
    ctx.figure("copy", bw_text, round(bandwidth, 3))
    tflops, err = bf16_matmul(torch, dev)
    torch.cuda.empty_cache()
    tf_text, tf_fail = datasheet.judge(
        "bf16 matmul", tflops, sheet.bf16_tflops if sheet else None, "TFLOP/s"
    )
    ctx.figure("bf16", tf_text, round(tflops, 1))
    ctx.figure("bf16 err", f"{err:.1e}", err)
    if err > BF16_MATMUL_BOUND:
        raise Fail(
            "bf16 matmul vs float32", f"relative error <= {BF16_MATMUL_BOUND:g}", f"{err:.3g}"
        )
    for failure in (bw_fail, tf_fail):
        if failure:
            raise Fail(*failure)
