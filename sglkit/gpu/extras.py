"""Check 7: DeepGEMM (where `deep_gemm` imports) and an SGLang server warm-up (where a model
is configured locally). Each part runs where it can; the check SKIPs with both reasons when
neither can.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import requests

from sglkit.gpu.checks import Context, Fail, Skip
from sglkit.gpu.compute import cuda, relative_error

# fp8 e4m3 inputs are compared with a float32 product of the same (dequantized) values; what is
# left is the bf16 rounding of the output and accumulation order.
DEEPGEMM_BOUND = 2e-2
SERVER_TIMEOUT = float(os.environ.get("SGLKIT_SMOKE_SERVER_TIMEOUT", "900"))


def _deepgemm(ctx: Context, torch) -> str:
    """Run one fp8 GEMM through DeepGEMM; returns a skip reason, or '' when it ran and passed."""
    try:
        import deep_gemm
    except Exception as e:
        return f"deep_gemm does not import ({type(e).__name__}: {str(e)[:80]})"
    fn = getattr(deep_gemm, "fp8_gemm_nt", None) or getattr(deep_gemm, "gemm_fp8_fp8_bf16_nt", None)
    if fn is None:
        return f"deep_gemm {getattr(deep_gemm, '__version__', '?')} has no fp8 NT GEMM entry point"
    m, n, k = 256, 4096, 7168
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(m, k, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device="cuda", generator=gen).to(torch.float8_e4m3fn)
    # unit scales: the product is the plain product of the fp8 values
    sa = torch.ones(k // 128, m, device="cuda").t()  # column-major (M, K/128), as DeepGEMM wants
    sb = torch.ones(n // 128, k // 128, device="cuda")
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    try:
        fn((a, sa), (b, sb), out)
    except Exception as e:
        raise Fail(
            "DeepGEMM fp8 GEMM",
            "it runs (deep_gemm imports)",
            f"{type(e).__name__}: {str(e).splitlines()[0][:120]}",
        ) from None
    torch.cuda.synchronize()
    err = relative_error(torch, out, a.float() @ b.float().t())
    ctx.figure("deepgemm err", f"{err:.1e}", err)
    if err > DEEPGEMM_BOUND:
        raise Fail(
            "DeepGEMM fp8 GEMM vs float32", f"relative error <= {DEEPGEMM_BOUND}", f"{err:.3g}"
        )
    return ""


def _model_profile():
    """(profile, model folder) when a model is configured locally, else (None, reason)."""
    from sglkit import profile as profiles

    try:
        prof = profiles.load(os.environ.get("SGLKIT_SMOKE_PROFILE") or None)
    except Exception as e:
        return None, f"profile does not load ({e})"
    model = Path(os.environ.get("SGLKIT_SMOKE_MODEL") or prof.model_path)
    if not (model / "config.json").is_file():
        return None, (
            f"no local model: {model} has no config.json "
            "(set SGLKIT_SMOKE_MODEL or the profile's model.path)"
        )
    return prof, model


def _server(ctx: Context, prof, model: Path) -> None:
    """Start the profile's server on a free port, wait for it, send one request, stop it."""
    import importlib.util

    from sglkit.net import free_port, wait_for
    from sglkit.proc import spawn, terminate_group

    if importlib.util.find_spec("sglang") is None:
        raise Skip("sglang is not installed")
    port = free_port()
    argv = prof.server_argv()
    argv[argv.index("--model-path") + 1] = str(model)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    if "--host" in argv:
        argv[argv.index("--host") + 1] = "127.0.0.1"
    from sglkit.kernels import overlay

    overlay.prepare(prof)  # SGLANG_MOE_CONFIG_DIR must name a built overlay
    env = {**os.environ, **prof.environment()}
    import subprocess

    proc = spawn(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(
        target=lambda: [
            tail.append(line.decode(errors="replace").rstrip()) for line in proc.stdout
        ],
        daemon=True,
    )
    reader.start()
    base = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    try:
        try:
            wait_for(
                lambda: proc.poll() is not None or requests.get(f"{base}/health", timeout=5).ok,
                SERVER_TIMEOUT,
                1.0,
                what="the SGLang server's /health",
            )
        except TimeoutError:
            raise Fail(
                "SGLang server",
                f"ready within {SERVER_TIMEOUT:.0f}s",
                f"not ready; last line: {tail[-1] if tail else '-'}",
            ) from None
        if proc.poll() is not None:
            raise Fail(
                "SGLang server",
                "running",
                f"exited {proc.returncode}: {tail[-1] if tail else 'no output'}",
            )
        ready = time.monotonic() - start
        r = requests.post(
            f"{base}/generate",
            timeout=300,
            json={
                "text": "The capital of France is",
                "sampling_params": {"max_new_tokens": 8, "temperature": 0},
            },
        )
        if not r.ok or "text" not in r.json():
            raise Fail("SGLang /generate", "200 with text", f"{r.status_code}: {r.text[:120]}")
        ctx.figure("server ready", f"{ready:.0f} s", ready)
        ctx.note(f"server answered: {r.json()['text']!r}")
    finally:
        terminate_group(proc, grace=15)


def check_extras(ctx: Context) -> None:
    torch = cuda()
    reasons = []
    why = _deepgemm(ctx, torch)
    if why:
        reasons.append(why)
        ctx.note(f"DeepGEMM: SKIP ({why})")
    prof, model = _model_profile()
    if prof is None:
        reasons.append(model)
        ctx.note(f"server warm-up: SKIP ({model})")
    else:
        try:
            _server(ctx, prof, model)
        except Skip as e:
            reasons.append(e.reason)
            ctx.note(f"server warm-up: SKIP ({e.reason})")
    if len(reasons) == 2:
        raise Skip("; ".join(reasons))
