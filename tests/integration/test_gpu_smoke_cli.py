"""The smoke test and cache.triton as a user runs them, on a host without a GPU.

`nox -s gpu_smoke` runs `python3 -m pytest tests/gpu ...`; here every check must SKIP with a
reason, the exit status must be 0 and the summary table must come last. cache.triton must refuse
with one line and a non-zero status, touching nothing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_GPU = importlib.util.find_spec("torch") is None and importlib.util.find_spec("pynvml") is None

pytestmark = pytest.mark.skipif(not NO_GPU, reason="this host has torch or NVML: not the CPU case")


def _run(argv, **env):
    e = {k: v for k, v in os.environ.items() if k != "SGLKIT_REQUIRE"} | env
    return subprocess.run(argv, cwd=ROOT, env=e, capture_output=True, text=True, timeout=240)


def test_gpu_smoke_session_skips_every_check_with_a_reason_and_exits_0(tmp_path):
    out = tmp_path / "smoke.json"
    p = _run(
        [sys.executable, "-m", "pytest", "tests/gpu/test_smoke.py", "-p", "no:cacheprovider"],
        SGLKIT_GPU_SMOKE_JSON=str(out),
    )
    assert p.returncode == 0, p.stdout[-2000:]
    lines = p.stdout.strip().splitlines()
    assert lines[-1] == "0 passed, 7 skipped, 0 failed"
    table = lines[lines.index("GPU smoke summary") :]
    rows = [r for r in table if r[:1].isdigit() and "SKIP" in r]
    assert len(rows) == 7
    assert all(r.split("SKIP", 1)[1].split("s  ", 1)[1].strip() for r in rows)  # a reason each
    import json

    results = json.loads(out.read_text())
    assert [r["status"] for r in results] == ["SKIP"] * 7
    assert all(r["detail"] for r in results)


def test_required_gpu_turns_the_skips_into_failures():
    p = _run(
        [sys.executable, "-m", "sglkit.gpu", "--only", "driver", "--only", "compute"],
        SGLKIT_REQUIRE="gpu",
    )
    assert p.returncode == 1
    assert "[FAIL] 1. driver and devices" in p.stdout
    assert "gpu is required (SGLKIT_REQUIRE) but absent" in p.stdout
    assert p.stdout.strip().splitlines()[-1] == "0 passed, 0 skipped, 2 failed"


def test_python_m_sglkit_gpu_rejects_an_unknown_check():
    p = _run([sys.executable, "-m", "sglkit.gpu", "--only", "nvlink"])
    assert p.returncode == 2
    assert p.stderr.strip() == (
        "error: --only: unknown check 'nvlink' (known: driver, compute, triton, moe, tuner, "
        "exporter, extras)"
    )


def test_cache_triton_refuses_without_a_gpu_and_writes_nothing(tmp_path):
    p = _run(
        ["invoke", "cache.triton", "--profile", "cpu-dev"],
        SGLKIT_CACHE_ROOT=str(tmp_path / "cache"),
    )
    assert p.returncode == 1
    assert p.stderr.strip() == (
        "error: cache.triton runs on a GPU host: torch does not import (ModuleNotFoundError)"
    )
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-tokens", "0", "error: --max-tokens: expected a positive integer"),
        ("--max-tokens", "many", "error: --max-tokens: expected an integer, got 'many'"),
        ("--lock-timeout", "soon", "error: --lock-timeout: expected seconds, got 'soon'"),
    ],
)
def test_cache_triton_bad_flags_are_one_line_exit_2(flag, value, message):
    p = _run(["invoke", "cache.triton", flag, value])
    assert (p.returncode, p.stderr.strip()) == (2, message)
