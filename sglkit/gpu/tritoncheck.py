"""Check 3: Triton compiles a small kernel into a fresh TRITON_CACHE_DIR, a second process loads it.

Both runs are fresh processes; the second must find everything in the cache (no new cache
entries) and both must compute the right answer. Both first-call times are reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sglkit.gpu.checks import Context, Fail, Skip
from sglkit.gpu.compute import cuda

CHILD_TIMEOUT = 300


def child_env(cache_dir: str | os.PathLike) -> dict[str, str]:
    """The caller's environment with TRITON_CACHE_DIR set and sglkit importable."""
    env = dict(os.environ)
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_child(
    module: str, env: dict[str, str], args: list[str] | None = None, timeout: float = CHILD_TIMEOUT
) -> dict:
    """Run `python -m module` fresh; its last stdout line is JSON. A crash is a Fail."""
    argv = [sys.executable, "-m", module, *(args or [])]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail(f"{module} child", f"done within {timeout:.0f}s", "still running") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise Fail(f"{module} child", "exit status 0", f"{proc.returncode}: {tail}")
    return json.loads(lines[-1])


def cache_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def check_triton(ctx: Context) -> None:
    cuda()
    try:
        import triton
    except Exception as e:
        raise Skip(f"triton does not import ({type(e).__name__})", "gpu") from None
    with tempfile.TemporaryDirectory(prefix="sglkit-triton-") as tmp:
        root = Path(tmp)
        env = child_env(root)
        cold = run_child("sglkit.gpu.triton_probe", env)
        after_cold = cache_files(root)
        warm = run_child("sglkit.gpu.triton_probe", env)
        new = cache_files(root) - after_cold
    ctx.note(
        f"triton {triton.__version__}, cache entries written by the cold run: {len(after_cold)}"
    )
    ctx.figure("cold", f"{cold['first_call_s'] * 1e3:.0f} ms", cold["first_call_s"])
    ctx.figure("warm", f"{warm['first_call_s'] * 1e3:.0f} ms", warm["first_call_s"])
    if not (cold["ok"] and warm["ok"]):
        raise Fail("Triton axpy result", "equal to torch's", "different values")
    if not after_cold:
        raise Fail("TRITON_CACHE_DIR after the cold run", "compiled kernel files", "empty")
    if new:
        raise Fail(
            "second process",
            "a cache hit (no new entries)",
            f"{len(new)} new entries, e.g. {sorted(new)[0]}",
        )
