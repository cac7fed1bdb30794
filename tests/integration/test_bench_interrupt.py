"""A benchmark that starts servers, stopped by a supervisor (`timeout`, Ctrl-C), stops them
first: benchmarks/serve_start.py against the STAND-IN SGLang server (a real one needs a GPU),
TERMed while `server.up` waits for the server to turn ready."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from sglkit.proc import group_members
from tests.integration.test_server import write_profile

REPO = Path(__file__).resolve().parents[2]
SLOW = 90


def test_sigterm_to_serve_start_mid_start_leaves_no_server(tmp_path, free_port, wait_for):
    prof = write_profile(tmp_path, free_port(), ready_after=120)
    record = tmp_path / "standin.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), STANDIN_RECORD=str(record))
    bench = subprocess.Popen(
        [sys.executable, "benchmarks/serve_start.py", "--profile", str(prof), "--floor-profile",
         str(prof), "--states", "floor", "--runs", "1", "--work", str(tmp_path / "work")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid = None
    try:
        wait_for(lambda: bench.poll() is not None or (record.is_file() and record.stat().st_size),
                 timeout=SLOW, what="the stand-in server started")  # fmt: skip
        assert bench.poll() is None, f"serve_start exited first: {bench.communicate()}"
        pid = json.loads(record.read_text())["pid"]
        assert group_members(pid), "the stand-in is not running"
        bench.terminate()
        out, err = bench.communicate(timeout=SLOW)
        assert bench.returncode == 130, out + err
        assert err.strip().splitlines()[-1] == "interrupted", err
        assert group_members(pid) == []
        assert not list((tmp_path / "work" / "state" / "servers").glob("*.json"))
    finally:
        bench.kill()
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def test_a_task_past_serve_starts_timeout_is_one_line_and_stops_its_server(tmp_path, free_port):
    prof = write_profile(tmp_path, free_port(), ready_after=120)
    record = tmp_path / "standin.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), STANDIN_RECORD=str(record))
    r = subprocess.run(
        [sys.executable, "benchmarks/serve_start.py", "--profile", str(prof), "--floor-profile",
         str(prof), "--states", "floor", "--runs", "1", "--timeout", "6",
         "--work", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=SLOW,
    )  # fmt: skip
    assert r.returncode == 124, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: `invoke server.up -p ") and "ran past --timeout (6 s)" in last
    assert "Traceback" not in r.stderr, r.stderr
    if record.is_file():  # the stand-in had started within the 6 s: it must be gone
        assert group_members(json.loads(record.read_text())["pid"]) == []
    assert not list((tmp_path / "work" / "state" / "servers").glob("*.json"))
