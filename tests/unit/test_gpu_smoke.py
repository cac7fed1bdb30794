"""The GPU smoke test's frame, without a GPU: a FAIL is reported, SKIPs carry reasons, the
judges and parsers hold up against real inputs (a real prometheus_client exposition)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from sglkit.errors import ConfigError
from sglkit.gpu import datasheet, smoke
from sglkit.gpu.checks import (
    FAIL,
    PASS,
    SKIP,
    Check,
    Fail,
    Skip,
    exit_status,
    format_result,
    run_check,
    summary_table,
)
from sglkit.gpu.exporter import memory_used_mib
from sglkit.gpu.host import cuda_version_text
from sglkit.gpu.moe import BOUNDS, Case, judge_errors

# ---------------------------------------------------------------- a tiny MoE layer in numpy


def _moe(x, w1, w2, ids, wts):
    """sum_j wts[t, j] * W2_e (silu(G_e x) * U_e x) with e = ids[t, j] (float32)."""
    out = np.zeros((x.shape[0], w2.shape[1]), dtype=np.float32)
    n = w2.shape[2]
    for t in range(x.shape[0]):
        for j, e in enumerate(ids[t]):
            h = w1[e] @ x[t]
            g, u = h[:n], h[n:]
            out[t] += wts[t, j] * (w2[e] @ (g / (1 + np.exp(-g)) * u))
    return out


def _bf16(a):
    """Round float32 to bfloat16 precision (truncate the low 16 bits with rounding)."""
    b = a.astype(np.float32).view(np.uint32)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.view(np.float32)


@pytest.fixture
def moe_case():
    rng = np.random.default_rng(0)
    E, N, K, M, topk = 8, 32, 64, 16, 2
    x = rng.standard_normal((M, K), dtype=np.float32)
    w1 = rng.standard_normal((E, 2 * N, K), dtype=np.float32) / np.sqrt(K)
    w2 = rng.standard_normal((E, K, N), dtype=np.float32) / np.sqrt(N)
    ids = np.stack([rng.choice(E, topk, replace=False) for _ in range(M)])
    wts = rng.random((M, topk), dtype=np.float32)
    return x, w1, w2, ids, wts


def _rel(out, ref):
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def test_kernel_check_fails_against_a_deliberately_wrong_reference(moe_case):
    x, w1, w2, ids, wts = moe_case
    kernel = _moe(_bf16(x), _bf16(w1), _bf16(w2), ids, wts)  # bf16 inputs, as the kernel sees
    wrong_ids = (ids + 1) % w1.shape[0]  # the reference routes every token to the wrong expert
    case = Case(
        "bf16 stand-in layer", "bf16", lambda: _rel(kernel, _moe(x, w1, w2, wrong_ids, wts))
    )
    r = run_check(Check(4, "moe", "SGLang fused-MoE kernel", lambda ctx: judge_errors(ctx, [case])))
    assert r.status == FAIL
    assert "bf16 stand-in layer vs float32 reference" in r.detail
    assert f"expected relative error <= {BOUNDS['bf16']:g}" in r.detail
    assert float(r.detail.rsplit("saw ", 1)[1]) > 0.5
    assert format_result(r).startswith("[FAIL] 4. SGLang fused-MoE kernel")
    assert exit_status([r]) == 1


def test_kernel_check_passes_against_the_right_reference(moe_case):
    x, w1, w2, ids, wts = moe_case
    kernel = _moe(_bf16(x), _bf16(w1), _bf16(w2), ids, wts)
    case = Case("bf16 stand-in layer", "bf16", lambda: _rel(kernel, _moe(x, w1, w2, ids, wts)))
    r = run_check(Check(4, "moe", "SGLang fused-MoE kernel", lambda ctx: judge_errors(ctx, [case])))
    assert r.status == PASS, r.detail
    assert 0 < r.data["bf16 err"] < BOUNDS["bf16"]
    assert exit_status([r]) == 0


def test_non_finite_error_fails():
    case = Case("nan layer", "fp8_w8a8", lambda: float("nan"))
    r = run_check(Check(4, "moe", "kernel", lambda ctx: judge_errors(ctx, [case])))
    assert r.status == FAIL and "saw nan" in r.detail


# ---------------------------------------------------------------- the frame


def test_skip_carries_its_reason_and_fails_when_required(monkeypatch):
    def no_gpu(ctx):
        raise Skip("no NVIDIA driver answers NVML", "gpu")

    check = Check(1, "driver", "driver and devices", no_gpu)
    monkeypatch.delenv("SGLKIT_REQUIRE", raising=False)
    r = run_check(check)
    assert (r.status, r.detail) == (SKIP, "no NVIDIA driver answers NVML")
    assert exit_status([r]) == 0
    monkeypatch.setenv("SGLKIT_REQUIRE", "docker,gpu")
    r = run_check(check)
    assert r.status == FAIL
    assert r.detail == "gpu is required (SGLKIT_REQUIRE) but absent: no NVIDIA driver answers NVML"


def test_a_crashing_check_is_a_fail_naming_the_exception():
    def crash(ctx):
        raise KeyError("BLOCK_SIZE_M")

    r = run_check(Check(3, "triton", "Triton", crash))
    assert r.status == FAIL
    assert r.detail.startswith("unexpected KeyError: 'BLOCK_SIZE_M'")


def test_main_exits_non_zero_and_prints_the_table_last(monkeypatch, capsys):
    def slow_copy(ctx):
        text, failure = datasheet.judge("copy bandwidth", 0.4, 4.8, "TB/s")
        ctx.figure("copy", text)
        raise Fail(*failure)

    def fine(ctx):
        ctx.figure("cc", "9.0")

    def absent(ctx):
        raise Skip("deep_gemm does not import (ModuleNotFoundError)")

    monkeypatch.setattr(
        smoke,
        "CHECKS",
        (
            Check(1, "driver", "driver and devices", fine),
            Check(2, "compute", "memory and compute", slow_copy),
            Check(7, "extras", "DeepGEMM and server warm-up", absent),
        ),
    )
    assert smoke.main([]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("[PASS] 1. driver and devices")
    assert out[1] == (
        "[FAIL] 2. memory and compute (0.0s): copy bandwidth: expected >= 50% of datasheet "
        "4.8 TB/s, saw 0.40 TB/s (8% of 4.8)"
    )
    assert out[-1] == "1 passed, 1 skipped, 1 failed"
    rows = {line.split()[0]: line for line in out if line[:1].isdigit() and "  " in line}
    assert "FAIL" in rows["2"] and "SKIP" in rows["7"] and "deep_gemm does not import" in rows["7"]


def test_only_rejects_an_unknown_check():
    with pytest.raises(ConfigError, match="--only: unknown check 'gpu'"):
        smoke.select(["gpu"])
    assert [c.key for c in smoke.select(["6", "triton"])] == ["exporter", "triton"]


def test_the_table_lists_every_check_in_order():
    results = [run_check(c) for c in (Check(2, "b", "second", lambda ctx: None),)]
    text = summary_table(results)
    assert text.splitlines()[0] == "GPU smoke summary"
    assert "0 passed" not in text and text.endswith("1 passed, 0 skipped, 0 failed")


def test_the_documented_checks_are_the_ones_that_run_in_that_order():
    """docs/gpu-smoke.md's table and `python -m sglkit.gpu`'s docstring describe what runs:
    each check's number, key and title, in run order; --only takes either the number or the key."""
    from sglkit import paths

    checks = smoke.CHECKS
    assert [c.number for c in checks] == list(range(1, len(checks) + 1))
    table = paths.home().joinpath("docs", "gpu-smoke.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| (\d+) \| ([^|]+?) \|", table, re.MULTILINE)
    assert [(int(n), title) for n, title in documented] == [(c.number, c.title) for c in checks]
    listed = re.findall(r"^    (\d+) (\w+) ", smoke.__doc__, re.MULTILINE)
    assert [(int(n), key) for n, key in listed] == [(c.number, c.key) for c in checks]
    for c in checks:
        assert smoke.select([str(c.number)]) == smoke.select([c.key]) == [c]


# ---------------------------------------------------------------- judges and parsers


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA GH200 144G HBM3e", "GH200 144G"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
    ],
)
def test_datasheet_lookup_prefers_the_specific_name(name, key):
    assert datasheet.lookup(name).key == key


def test_datasheet_judge_fails_only_below_the_floor():
    assert datasheet.judge("bf16", 790.0, 989.0, "TFLOP/s") == ("790.00 TFLOP/s (80% of 989)", None)
    _text, failure = datasheet.judge("bf16", 400.0, 989.0, "TFLOP/s")
    assert failure == ("bf16", ">= 50% of datasheet 989 TFLOP/s", "400.00 TFLOP/s (40% of 989)")
    assert datasheet.judge("bf16", 1.0, None, "TFLOP/s") == (
        "1.00 TFLOP/s (no datasheet entry)",
        None,
    )
    assert datasheet.lookup("Tesla T4") is None


def test_cuda_version_text():
    assert cuda_version_text(13000) == "13.0"
    assert cuda_version_text(12080) == "12.8"


def _exposition(values: dict[tuple[str, str], float]) -> str:
    """What nvitop-exporter serves: a real prometheus_client Gauge declared as it declares it."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    reg = CollectorRegistry()
    g = Gauge(
        name="gpu_memory_used",
        documentation="GPU memory used (MiB).",
        unit="MiB",
        labelnames=["hostname", "index", "devicename", "uuid"],
        registry=reg,
    )
    for (index, uuid), v in values.items():
        g.labels(hostname="h", index=index, devicename="NVIDIA H200", uuid=uuid).set(v)
    return generate_latest(reg).decode()


def test_memory_used_is_read_from_a_real_exposition():
    names = ("gpu_memory_used_MiB", "gpu_memory_used")
    text = _exposition({("0", "GPU-aaa"): 1024.0, ("1", "GPU-bbb"): 2048.0})
    assert "gpu_memory_used_MiB{" in text
    assert memory_used_mib(text, names, "uuid", "GPU-bbb") == 2048.0
    assert memory_used_mib(text, names, "uuid", "GPU-zzz") is None  # two GPUs, none is ours
    one = _exposition({("0", "GPU-aaa"): 512.0})
    assert memory_used_mib(one, names, "uuid", None) == 512.0
    assert memory_used_mib("# nothing\n", names, "uuid", "GPU-aaa") is None


def test_format_result_indents_notes():
    def noted(ctx):
        ctx.note("GPU 0: NVIDIA H200, compute capability 9.0")
        ctx.figure("cc", "9.0")

    text = format_result(run_check(Check(1, "driver", "driver and devices", noted)))
    first, second = text.splitlines()
    assert first.startswith("[PASS] 1. driver and devices") and first.endswith("cc 9.0")
    assert second == "       GPU 0: NVIDIA H200, compute capability 9.0"


def test_run_all_prints_each_result_as_it_finishes():
    buf = io.StringIO()
    smoke.run_all([Check(5, "tuner", "tuner", lambda ctx: None)], out=buf)
    assert buf.getvalue().startswith("[PASS] 5. tuner")


def test_cpu_model_names_grace_and_x86():
    from sglkit.gpu.host import cpu_model

    grace = "processor\t: 0\nBogoMIPS\t: 2000.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd4f\n"
    assert cpu_model(grace, "aarch64") == "aarch64 Neoverse-V2 (NVIDIA Grace)"
    xeon = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    assert cpu_model(xeon, "x86_64") == "Intel(R) Xeon(R) Processor"
    assert cpu_model("processor\t: 0\nCPU part\t: 0xd0c\n", "aarch64") == "aarch64"


def test_a_long_reason_is_cut_in_the_table_but_whole_in_the_line():
    reason = "no local model: " + "x" * 200

    def absent(ctx):
        raise Skip(reason)

    r = run_check(Check(7, "extras", "extras", absent))
    assert reason in format_result(r)
    row = next(line for line in summary_table([r]).splitlines() if line.startswith("7 "))
    assert row.endswith("...") and reason[:50] in row and reason not in row
