"""Child process of check 3: compile (or load from TRITON_CACHE_DIR) a small Triton kernel.

Prints one JSON line: seconds of the first call (compile or cache load, plus the run), and
whether the result is right. Run as `python -m sglkit.gpu.triton_probe` in a fresh process.
"""

from __future__ import annotations

import json
import time


def main() -> int:
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def axpy(x_ptr, y_ptr, out_ptr, alpha, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask)
        y = tl.load(y_ptr + offs, mask=mask)
        tl.store(out_ptr + offs, alpha * x + y, mask=mask)

    n = 1 << 20
    x = torch.randn(n, device="cuda")
    y = torch.randn(n, device="cuda")
    out = torch.empty_like(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    axpy[(triton.cdiv(n, 1024),)](x, y, out, 2.0, n, BLOCK=1024)
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    ok = bool(torch.allclose(out, 2.0 * x + y, rtol=1e-5, atol=1e-5))
    print(json.dumps({"first_call_s": first, "ok": ok, "triton": triton.__version__}))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
