"""Check 7: DeepGEMM (where `deep_gemm` imports) and an SGLang server warm-up (where a model
is configured locally). Each part runs where it can; the check SKIPs with both reasons when
neither can.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

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
    """Start the profile's server on a free loopback port through the kit's one server runner,
    wait for it, check its model, send one request, stop it gracefully."""
    import importlib.util
    import tempfile

    from sglkit.net import free_port
    from sglkit.server import spec as server_spec
    from sglkit.server.runner import Reporter, Server, running

    if importlib.util.find_spec("sglang") is None:
        raise Skip("sglang is not installed")
    spec = server_spec.build(
        prof, server_spec.Overrides(model_path=str(model), host="127.0.0.1", port=free_port())
    )
    no_tokenizer = spec.flag_values({"--skip-tokenizer-init"})
    request = {"sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    request.update({"input_ids": [1, 2, 3, 4]} if no_tokenizer else {"text": "The capital of"})
    log = Path(tempfile.mkdtemp(prefix="sglkit-smoke-")) / "server.log"
    rep = Reporter("check 7", echo=False)
    try:
        with running(Server(spec, log_path=log, reporter=rep, grace=60)) as srv:
            deadline = time.monotonic() + SERVER_TIMEOUT
            ready = srv.wait_ready(deadline)
            srv.check_model(deadline)
            t0 = time.monotonic()
            out = srv.post("/generate", request, deadline)
            first = time.monotonic() - t0
    except Exception as e:
        raise Fail("SGLang server", "ready, serving the profile's model, answering /generate",
                   str(e)) from None  # fmt: skip
    got = out.get("output_ids") if no_tokenizer else out.get("text")
    if not got:
        raise Fail("SGLang /generate", "generated tokens", repr(out)[:120])
    ctx.figure("server ready", f"{ready:.0f} s", ready)
    ctx.figure("first generate", f"{first:.2f} s", first)
    ctx.note(f"server answered: {got!r}")


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
