"""cache.deepgemm's lifecycle against a real child process: the stand-in SGLang server
(tests/fixtures/standin_sglang_server.py), run through `python -m sglkit.cache` and `invoke`.

Each test checks the exit status, what was printed, whether the marker was written, and that no
process of the child's process group is left (by process group id).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sglkit.cache import store
from sglkit.proc import group_members

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fixtures" / "standin_sglang_server.py"


def write_profile(tmp_path: Path, port: int, mode: str = "ready", ready_after: float = 0.5,
                  context_length: int | None = 4096, root: Path | None = None) -> Path:  # fmt: skip
    server = {
        "launcher": [sys.executable, str(STANDIN), "--standin-mode", mode,
                     "--standin-ready-after", str(ready_after)],
        "tp": 1,
        "chunked_prefill_size": 2048,
        "host": "127.0.0.1",
        "port": port,
    }  # fmt: skip
    if context_length is not None:
        server["context_length"] = context_length
    data = {
        "name": f"standin-{mode}",
        "model": {
            "path": "Qwen/Qwen3-30B-A3B",
            "config": str(REPO / "profiles/models/Qwen3-30B-A3B/config.json"),
        },
        "server": server,
        "cache": {"root": str(root or tmp_path / "cache")},
    }
    path = tmp_path / f"standin-{mode}-{port}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def env_for(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["STANDIN_RECORD"] = str(tmp_path / "standin-record.json")
    env["PYTHONPATH"] = str(REPO)
    env.pop("SGLKIT_CACHE_ROOT", None)
    return env


def warm(
    tmp_path: Path, profile: Path, *extra: str, timeout: float = 120
) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "sglkit.cache", "deepgemm", "--profile", str(profile), "--grace", "3", *extra],
        cwd=REPO, env=env_for(tmp_path), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return r.returncode, r.stdout + r.stderr, time.monotonic() - t0


def pgid_of(output: str) -> int:
    m = re.search(r"process group (\d+)", output)
    assert m, f"no process group reported:\n{output}"
    return int(m.group(1))


def assert_group_gone(pgid: int, wait_for) -> None:
    wait_for(lambda: not group_members(pgid), timeout=15, what=f"process group {pgid} to be empty")
    assert group_members(pgid) == []


def tail_section(output: str) -> str:
    _, sep, tail = output.partition("lines of its output:")
    assert sep, f"no log tail printed:\n{output}"
    return tail


def test_ready_server_warms_writes_marker_then_second_run_is_already_warm(
    tmp_path, free_port, wait_for
):
    profile = write_profile(tmp_path, free_port(), "ready", ready_after=1.0)
    rc, out, _ = warm(tmp_path, profile)
    assert rc == 0, out
    pgid = pgid_of(out)
    assert_group_gone(pgid, wait_for)
    folder = tmp_path / "cache" / "deepgemm"
    marker = store.read_marker(folder)
    assert marker is not None and marker["kind"] == "deepgemm"
    # the child got the cache environment (it "compiled" into SGLANG_DG_CACHE_DIR) ...
    assert (folder / "cache" / "kernel.standin.cubin").stat().st_size == 4096
    record = json.loads((tmp_path / "standin-record.json").read_text())
    for var in ("SGLANG_DG_CACHE_DIR", "DG_JIT_CACHE_DIR"):
        assert record["env"][var] == str(folder)
    assert record["env"]["SGLANG_IN_DEEPGEMM_PRECOMPILE_STAGE"] == "1"
    # ... and exactly the serving argv plus the warm flags
    from sglkit import profile as profiles
    from sglkit.cache.deepgemm import warm_overrides
    from sglkit.server import spec as server_spec

    p = profiles.load(profile)
    serve = server_spec.build(p).argv()
    warm_argv = server_spec.build(p, server_spec.Overrides(**warm_overrides(3600.0))).argv()
    assert warm_argv[: len(serve)] == serve and len(warm_argv) > len(serve)
    assert record["argv"][1:] == warm_argv[2:]
    assert marker["argv"] == warm_argv
    assert "sglang_version" in marker["fingerprint"]["unknown"]  # no SGLang here

    # second run through invoke: "already warm", exit 0, no server started
    t0 = time.monotonic()
    r = subprocess.run(
        ["invoke", "cache.deepgemm", "--profile", str(profile)],
        cwd=REPO, env=env_for(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert "already warm" in r.stdout
    assert "server pid" not in r.stdout
    assert elapsed < 5  # generous: it is well under a second unloaded (docs/caching.md)

    # --force warms again
    rc, out, _ = warm(tmp_path, profile, "--force")
    assert rc == 0, out
    assert "phase: starting the server" in out
    assert_group_gone(pgid_of(out), wait_for)


def test_exit_at_start_reports_status_and_last_50_lines(tmp_path, free_port, wait_for):
    profile = write_profile(tmp_path, free_port(), "exit-at-start")
    rc, out, elapsed = warm(tmp_path, profile)
    assert rc == 1, out
    assert "exited with status 3" in out
    tail = tail_section(out)
    # the child printed a header, 60 numbered lines and an error line (62): the tail is lines 12-60 + error
    assert "simulated failure at start" in tail
    assert "startup line 60" in tail and "startup line 12\n" in tail
    assert "startup line 11\n" not in tail
    assert len([ln for ln in tail.splitlines() if ln.startswith("  | ")]) == 50
    assert store.read_marker(tmp_path / "cache" / "deepgemm") is None
    assert_group_gone(pgid_of(out), wait_for)
    assert elapsed < 30


def test_crash_during_warmup_request_gives_up_fast_and_kills_the_group(
    tmp_path, free_port, wait_for
):
    profile = write_profile(tmp_path, free_port(), "crash")
    rc, out, _ = warm(tmp_path, profile)
    assert rc == 1, out
    assert "exited with status 7" in out
    assert "simulated crash mid-request" in tail_section(out)
    stamps = {
        m.group(2): float(m.group(1)) for m in re.finditer(r"\[\s*([\d.]+)s\] phase: (\w+)", out)
    }
    # from sending the request (the child dies inside it) to stopping the group: within 2 s
    # unloaded; the bound here is generous for a shared 2-core machine
    assert stamps["stopping"] - stamps["sending"] < 6, out
    # the helper child (SGLang's scheduler stand-in) outlived the leader: the group kill got it
    assert_group_gone(pgid_of(out), wait_for)
    assert store.read_marker(tmp_path / "cache" / "deepgemm") is None


def test_hang_gives_up_at_the_deadline(tmp_path, free_port, wait_for):
    profile = write_profile(tmp_path, free_port(), "hang")
    rc, out, elapsed = warm(tmp_path, profile, "--timeout", "3")
    assert rc == 124, out
    assert "gave up at the deadline" in out
    assert "hanging forever" in tail_section(out)
    assert 3 <= elapsed < 40
    assert_group_gone(pgid_of(out), wait_for)
    assert store.read_marker(tmp_path / "cache" / "deepgemm") is None


def test_server_that_ignores_sigterm_is_killed(tmp_path, free_port, wait_for):
    profile = write_profile(tmp_path, free_port(), "ignore-term")
    rc, out, _ = warm(tmp_path, profile, "--grace", "1")
    assert rc == 0, out
    assert_group_gone(pgid_of(out), wait_for)
    assert store.read_marker(tmp_path / "cache" / "deepgemm") is not None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stopping_the_warm_cleans_up_the_group(tmp_path, free_port, wait_for, sig, ctrl_c_able):
    profile = write_profile(tmp_path, free_port(), "hang")
    log = open(tmp_path / "out.txt", "w+")  # noqa: SIM115 (closed in finally, after the child)
    p = subprocess.Popen(
        [sys.executable, "-m", "sglkit.cache", "deepgemm", "--profile", str(profile), "--grace", "2"],
        cwd=REPO, env=env_for(tmp_path), stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=ctrl_c_able,
    )  # fmt: skip
    try:
        wait_for(lambda: "hanging forever" in (tmp_path / "out.txt").read_text(), timeout=60,
                 what="the stand-in to start")  # fmt: skip
        p.send_signal(sig)
        assert p.wait(timeout=60) == 130
    finally:
        if p.poll() is None:
            p.kill()
        log.close()
    out = (tmp_path / "out.txt").read_text()
    assert "interrupted" in out
    assert_group_gone(pgid_of(out), wait_for)


def test_missing_context_length_refuses_before_starting_anything(tmp_path, free_port):
    profile = write_profile(tmp_path, free_port(), context_length=None)
    rc, out, _ = warm(tmp_path, profile)
    assert rc == 2, out
    assert "server.context_length" in out and "--context-length" in out
    assert len(out.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()
    # --context-length supplies it
    rc, out, _ = warm(tmp_path, profile, "--context-length", "4096")
    assert rc == 0, out
    assert "--context-length 4096" in out


def test_unwritable_cache_folder_refuses_before_starting_anything(tmp_path, free_port):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache root should be")
    profile = write_profile(tmp_path, free_port(), root=blocker / "cache")
    rc, out, _ = warm(tmp_path, profile)
    assert rc == 2, out
    assert "not writable" in out and "cache.dirs.deepgemm" in out
    assert "server pid" not in out
    assert blocker.read_text() == "a file where the cache root should be"


def _immutable(path: Path) -> bool:
    chattr = shutil.which("chattr")
    return (
        bool(chattr)
        and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0
    )


def test_existing_but_read_only_cache_folder(tmp_path, free_port):
    folder = tmp_path / "cache" / "deepgemm"
    folder.mkdir(parents=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
    elif not _immutable(folder):
        pytest.skip(
            "running as root and chattr +i is not permitted here: cannot make a folder read-only"
        )
    try:
        rc, out, _ = warm(tmp_path, write_profile(tmp_path, free_port()))
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        else:
            folder.chmod(0o755)
    assert rc == 2, out
    assert f"cache folder {folder} is not writable" in out
    assert "server pid" not in out


def test_two_concurrent_warms_of_one_folder(tmp_path, free_port, wait_for):
    port = free_port()
    slow = write_profile(tmp_path, port, "ready", ready_after=4.0)
    # a second profile for the same folder, on another port
    other = write_profile(tmp_path, free_port(), "ready", root=tmp_path / "cache")
    out_a = open(tmp_path / "a.txt", "w+")  # noqa: SIM115 (closed in finally, after the child)
    a = subprocess.Popen(
        [sys.executable, "-m", "sglkit.cache", "deepgemm", "--profile", str(slow), "--grace", "3"],
        cwd=REPO, env=env_for(tmp_path), stdout=out_a, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: "server pid" in (tmp_path / "a.txt").read_text(), timeout=60,
                 what="the first warm to hold the lock")  # fmt: skip
        rc, out, _ = warm(tmp_path, other)  # fails at once, naming the holder
        assert rc == 75, out
        assert f"pid {a.pid}" in out and "busy" in out
        assert len(out.strip().splitlines()) == 1
        # a third one that waits sees the first one's marker and does not warm again
        rc, out, _ = warm(tmp_path, other, "--lock-timeout", "90")
        assert rc == 0, out
        assert "already warm" in out and "server pid" not in out
        assert a.wait(timeout=90) == 0
    finally:
        if a.poll() is None:
            a.kill()
        out_a.close()
    assert store.read_marker(tmp_path / "cache" / "deepgemm") is not None


def test_launcher_that_does_not_exist_is_one_line(tmp_path, free_port):
    profile = write_profile(tmp_path, free_port())
    rc, out, _ = warm(tmp_path, profile, "--launcher", "/nonexistent/sglang-launcher")
    assert rc == 2, out
    assert "server.launcher: cannot start '/nonexistent/sglang-launcher'" in out
    assert "Traceback" not in out


def test_port_in_use_refuses_and_keeps_the_marker(tmp_path, free_port, wait_for):
    import socket

    port = free_port()
    profile = write_profile(tmp_path, port)
    assert warm(tmp_path, profile)[0] == 0
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the first server's TIME_WAIT
        s.bind(("127.0.0.1", port))
        s.listen()
        rc, out, _ = warm(tmp_path, profile, "--force")
    assert rc == 1, out
    assert f"server.port: 127.0.0.1:{port} is already in use" in out
    assert store.read_marker(tmp_path / "cache" / "deepgemm") is not None


def test_the_triton_step_says_why_it_is_skipped_or_off(tmp_path, free_port, wait_for):
    """--triton auto (the default) warms the MoE kernels only where SGLang's kernel runs on a
    GPU here; on this CPU host it says why not, in one line, and the warm still succeeds."""
    profile = write_profile(tmp_path, free_port())
    rc, out, _ = warm(tmp_path, profile)
    assert rc == 0, out
    assert_group_gone(pgid_of(out), wait_for)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("triton: ")]
    if importlib.util.find_spec("torch") is None:  # this CPU host: said why, in one line
        assert line.startswith("triton: skipped (cache.triton runs on a GPU host: torch does not")
    assert store.read_marker(tmp_path / "cache" / "deepgemm") is not None
    rc, out, _ = warm(tmp_path, profile, "--triton", "off")
    assert rc == 0, out
    assert "already warm" in out and "triton: off (--triton off)" in out, out


def test_triton_on_where_it_cannot_run_fails_before_the_server_starts(tmp_path, free_port):
    profile = write_profile(tmp_path, free_port())
    rc, out, _ = warm(tmp_path, profile, "--triton", "on")
    assert rc == 1, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --triton on: "), out
    assert "server pid" not in out and not (tmp_path / "standin-record.json").exists()
    assert store.read_marker(tmp_path / "cache" / "deepgemm") is None


def test_an_unknown_triton_choice_is_one_line_naming_the_flag(tmp_path, free_port):
    profile = write_profile(tmp_path, free_port())
    r = subprocess.run(
        ["invoke", "cache.deepgemm", "--profile", str(profile), "--triton", "sometimes"],
        cwd=REPO, env=env_for(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: --triton: expected one of auto")
    assert not (tmp_path / "standin-record.json").exists()


def test_a_marker_from_a_warm_without_cuda_graphs_is_warmed_again(tmp_path, free_port, wait_for):
    """Markers written before the warm kept CUDA graphs on have no recipe: their DeepGEMM kernels
    serve (server.up still skips the sweep), but the warm runs again for the Triton kernels."""
    profile = write_profile(tmp_path, free_port())
    rc, out, _ = warm(tmp_path, profile, "--triton", "off")
    assert rc == 0, out
    assert_group_gone(pgid_of(out), wait_for)
    folder = tmp_path / "cache" / "deepgemm"
    marker = store.read_marker(folder)
    assert marker["recipe"] == "cuda-graphs-captured"
    del marker["recipe"]
    store.write_marker(folder, marker)
    rc, out, _ = warm(tmp_path, profile, "--triton", "off")
    assert rc == 0, out
    assert "marker differs, warming again: warmed by an older warm, without CUDA graphs" in out
    assert_group_gone(pgid_of(out), wait_for)
    assert store.read_marker(folder)["recipe"] == "cuda-graphs-captured"
