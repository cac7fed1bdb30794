"""What the benchmarks that run the kit's tasks share: the card, the task runner, the server's
status record, and the rotated order of the variants compared (so drift on a shared machine
spreads evenly over them). Imported by the scripts beside it (`python3 benchmarks/<name>.py`
puts this folder on sys.path)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def card() -> str:
    """GPU 0's name (sglkit.nvml), or why it is unknown."""
    try:
        from sglkit import nvml

        return nvml.gpu0()[0]
    except Exception as e:  # no NVML here
        return f"unknown ({type(e).__name__})"


def task_env(**extra: str) -> dict[str, str]:
    """This process's environment for the kit's tasks: the repository first on PYTHONPATH, then
    whatever the caller's PYTHONPATH holds (SGLang, where it is installed under a folder)."""
    import os

    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return dict(os.environ, PYTHONPATH=path, **extra)


def invoke(env: dict[str, str], *args: str, timeout: float) -> tuple[int, str, str]:
    """`python3 -m invoke ARGS` in the repository: (exit status, stdout, stderr)."""
    r = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return r.returncode, r.stdout, r.stderr


def server_status(env: dict[str, str], profile: str, who: str = "") -> dict:
    """`server.status --json` of the profile's server; exits (status 1) where it fails."""
    rc, out, err = invoke(env, "server.status", "-p", profile, "--json", timeout=120)
    try:
        if rc == 0:
            return json.loads(out[out.index("{") :])
    except ValueError:
        pass
    raise SystemExit(f"{who}server.status failed ({rc}): {(out + err).strip()[-2000:]}")


def rotated(items: Sequence[str], repeat: int) -> list[str]:
    """`items` in the order of repeat number `repeat`: each repeat starts one later."""
    k = repeat % len(items)
    return [*items[k:], *items[:k]]
