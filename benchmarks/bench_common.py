"""What the benchmarks that run the kit's tasks share: the card, the task runner, the server's
status record, and the rotated order of the variants compared (so drift on a shared machine
spreads evenly over them). Imported by the scripts beside it (`python3 benchmarks/<name>.py`
puts this folder on sys.path)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
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


STOP_WAIT = 120.0  # seconds a task gets to stop what it started, once we are told to stop


def invoke(env: dict[str, str], *args: str, timeout: float) -> tuple[int, str, str]:
    """`python3 -m invoke ARGS` in the repository: (exit status, stdout, stderr).

    Past `timeout`, or when we are interrupted (Ctrl-C, or SIGTERM through `run_main`), the task
    gets SIGTERM and up to STOP_WAIT seconds to stop the server it was starting, never a bare
    SIGKILL that would leave that server running; then the exception goes on."""
    argv = [sys.executable, "-m", "invoke", *args]
    pipe = subprocess.PIPE
    with subprocess.Popen(argv, cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except BaseException:
            p.send_signal(signal.SIGTERM)
            try:
                p.communicate(timeout=STOP_WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
            raise
    return p.returncode, out, err


def run_main(main: Callable[[], int]) -> int:
    """`main()` with SIGTERM taken as Ctrl-C, so that its `finally` blocks stop the servers it
    started (a supervisor's `timeout` must not leave one running): 130 when interrupted, 124
    where a task ran past the script's --timeout, each with one line."""
    from sglkit.server.runner import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            return main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except subprocess.TimeoutExpired as e:
        task = " ".join(e.cmd[3:]) if isinstance(e.cmd, list) else str(e.cmd)
        print(f"error: `invoke {task}` ran past --timeout ({e.timeout:g} s)", file=sys.stderr)
        return 124


def server_down(env: dict[str, str], profile: str) -> None:
    """`server.down` of the profile's server; says so where it fails (the caller goes on)."""
    rc, out, err = invoke(env, "server.down", "-p", profile, timeout=300)
    if rc != 0:
        print(f"server.down failed ({rc}): {(out + err).strip()[-1000:]}", file=sys.stderr)


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
