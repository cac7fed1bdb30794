"""server.* and the one server runner against a real child process: the STAND-IN SGLang server
(tests/fixtures/standin_sglang_server.py; a real SGLang server needs a GPU, and its real path is
tests/gpu/test_server.py on the device).

Every failure path ends with a one-line error, a non-zero exit and no process of the server's
group left (checked by process group id through /proc).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from sglkit.observability import manifest as mf
from sglkit.proc import group_members

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fixtures" / "standin_sglang_server.py"
INVOKE = [sys.executable, "-m", "invoke"]
SLOW = 90


def write_profile(tmp_path: Path, port: int, mode: str = "ready", ready_after: float = 0.3,
                  name: str = "standin", **extra) -> Path:  # fmt: skip
    data = {
        "name": name,
        "model": {"path": "org/standin-model"},
        "server": {
            "launcher": [
                sys.executable,
                str(STANDIN),
                "--standin-mode",
                mode,
                "--standin-ready-after",
                str(ready_after),
            ],
            "context_length": 4096,
            "host": "127.0.0.1",
            "port": port,
        },
        "cache": {"root": str(tmp_path / "cache")},
        "telemetry": {"root": str(tmp_path / "telemetry"), **extra.pop("telemetry", {})},
        **extra,
    }
    path = tmp_path / f"{name}-{mode}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, PYTHONPATH=str(REPO), SGLKIT_STATE_DIR=str(tmp_path / "state"))
    yield e
    # a failed test must not leave a detached stand-in behind
    for st in (tmp_path / "state" / "servers").glob("*.json"):
        pid = json.loads(st.read_text()).get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def inv(env, *args, timeout=SLOW):
    t0 = time.monotonic()
    r = subprocess.run([*INVOKE, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)  # fmt: skip
    return r.returncode, r.stdout, r.stderr, time.monotonic() - t0


def pgid_of(text: str) -> int:
    m = re.search(r"process group (\d+)", text)
    assert m, text
    return int(m.group(1))


def assert_gone(pgid: int, wait_for) -> None:
    wait_for(lambda: not group_members(pgid), timeout=15, what=f"group {pgid} gone")


def one_error_line(stderr: str) -> str:
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


# ---- the happy path, the way a user drives it ------------------------------------------------
def test_up_detach_status_bench_trace_flush_down(tmp_path, env, free_port, wait_for):
    port = free_port()
    prof = write_profile(tmp_path, port)
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    assert rc == 0, out + err
    assert f"server.up: ready: http://127.0.0.1:{port} serves org/standin-model" in out
    pgid = pgid_of(out)
    assert group_members(pgid), "the detached server is not running"

    rc, out, err, _ = inv(env, "server.status", "-p", str(prof), "--json")
    assert rc == 0, out + err
    st = json.loads(out)
    assert (st["status"], st["health"], st["pid"]) == ("up", 200, pgid)
    assert st["model"] == "org/standin-model" and st["figures"]["max_total_num_tokens"] == 4096

    rc, out, err, _ = inv(env, "server.bench", "-p", str(prof), "--requests", "12",
                          "--concurrency", "3", "--output-len", "5", "--json")  # fmt: skip
    assert rc == 0, out + err
    s = json.loads(out)
    assert (s["completed"], s["failed"], s["concurrency"]) == (12, 0, 3)
    assert s["output_throughput"] > 0 and 0 < s["ttft_p50_s"] <= s["e2e_p50_s"]

    traces = tmp_path / "traces"
    rc, out, err, _ = inv(env, "server.trace", "-p", str(prof), "--seconds", "0.2",
                          "--output", str(traces))  # fmt: skip
    assert rc == 0, out + err
    assert (traces / "standin-TP-0.trace.json.gz").read_bytes() == b"standin trace"

    rc, out, err, _ = inv(env, "server.flush-cache", "-p", str(prof))
    assert rc == 0 and "flushed" in out, out + err

    rc, out, err, _ = inv(env, "server.down", "-p", str(prof))
    assert rc == 0 and f"stopped pid {pgid}" in out, out + err
    assert_gone(pgid, wait_for)
    rc, out, err, _ = inv(env, "server.status", "-p", str(prof))
    assert rc == 3, out + err
    assert not (tmp_path / "state" / "servers" / "standin.json").exists()


def test_stop_is_graceful_sigterm_to_the_main_process_first(tmp_path, env, free_port, wait_for):
    """SGLang logs 'Subprocess scheduler_0 crashed with exit code -15' when its scheduler gets
    SIGTERM directly (the whole group at once). The stand-in's helper tells the two apart."""
    prof = write_profile(tmp_path, free_port())
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    assert rc == 0, out + err
    pgid = pgid_of(out)
    rc, out, err, elapsed = inv(env, "server.down", "-p", str(prof), "--grace", "20")
    assert rc == 0, out + err
    assert_gone(pgid, wait_for)
    log = (tmp_path / "state" / "servers" / "standin.log").read_text()
    assert "SIGTERM: draining" in log
    assert "helper got SIGTERM by the server's drain" in log
    assert "directly" not in log
    assert elapsed < 15  # the drain ended it, not the 20 s grace


def test_readiness_polls_health_about_once_a_second(tmp_path, env, free_port):
    prof = write_profile(tmp_path, free_port(), ready_after=5.0)
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    assert rc == 0, out + err
    inv(env, "server.down", "-p", str(prof))
    log = (tmp_path / "state" / "servers" / "standin.log").read_text()
    polls = len(re.findall(r'"GET /health HTTP/1.1" 503', log))
    # 5 s of 503s at about one request a second; the old 0.25 s loop made about 20
    assert 3 <= polls <= 8, polls


# ---- failure paths: one line, non-zero, nothing left ------------------------------------------
def test_crash_at_start(tmp_path, env, free_port, wait_for):
    prof = write_profile(tmp_path, free_port(), "exit-at-start")
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    assert rc == 1, out + err
    line = one_error_line(err)
    assert "exited with status 3" in line
    assert "simulated failure at start" in out  # the log's tail is shown before the line
    assert_gone(pgid_of(out), wait_for)
    assert not (tmp_path / "state" / "servers" / "standin.json").exists()


def test_death_while_starting_is_seen_within_half_a_second(tmp_path, env, free_port):
    prof = write_profile(tmp_path, free_port(), "die-starting", ready_after=2.5)
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    seen = time.time()
    assert rc == 1, out + err
    assert "exited with status 5" in one_error_line(err)
    died = float(re.search(r"standin: dying at ([\d.]+)", out).group(1))
    # the runner checks the child every 0.25 s; the rest is printing the tail and exiting
    assert seen - died < 2.0, seen - died
    m = re.search(r"\[\s*([\d.]+)s\] phase: stopping", out)
    start = re.search(r"\[\s*([\d.]+)s\] server pid", out)
    assert float(m.group(1)) - float(start.group(1)) < 2.5 + 0.5 + 0.3, out


def test_crash_during_a_request(tmp_path, free_port, wait_for):
    """The runner's post(): the child dies inside /generate; reported as its death."""
    from sglkit import profile as profiles
    from sglkit.errors import SglkitError
    from sglkit.server import spec as server_spec
    from sglkit.server.runner import Reporter, Server, running

    prof = profiles.load(write_profile(tmp_path, free_port(), "crash"))
    srv = Server(server_spec.build(prof), log_path=tmp_path / "s.log",
                 reporter=Reporter("test", echo=False), grace=5)  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(SglkitError) as e, running(srv) as s:
        deadline = time.monotonic() + SLOW
        s.wait_ready(deadline)
        s.post("/generate", {"input_ids": [1, 2]}, deadline)
    assert "exited with status 7" in str(e.value) and "\n" not in str(e.value)
    assert time.monotonic() - t0 < 30
    assert_gone(srv.proc.pid, wait_for)


def test_hang_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, env, free_port, wait_for):
    prof = write_profile(tmp_path, free_port(), "ignore-term")
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    assert rc == 0, out + err
    pgid = pgid_of(out)
    rc, out, err, elapsed = inv(env, "server.down", "-p", str(prof), "--grace", "2")
    assert rc == 0, out + err
    assert group_members(pgid) == []
    assert elapsed >= 2  # it waited the grace before killing


def test_wrong_model_served(tmp_path, env, free_port, wait_for):
    prof = write_profile(tmp_path, free_port(), "wrong-model")
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    assert rc == 1, out + err
    line = one_error_line(err)
    assert "serves model 'some/other-model', not 'org/standin-model'" in line
    assert_gone(pgid_of(out), wait_for)


def test_port_already_taken_starts_nothing(tmp_path, env, free_port):
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        rc, out, err, _ = inv(env, "server.up", "-p", str(write_profile(tmp_path, port)))
    assert rc == 1, out + err
    assert f"server.port: 127.0.0.1:{port} is already in use" in one_error_line(err)
    assert "server pid" not in out


def test_a_second_server_of_the_kit_is_refused(tmp_path, env, free_port, wait_for):
    first = write_profile(tmp_path, free_port(), name="first")
    rc, out, err, _ = inv(env, "server.up", "-p", str(first), "--detach")
    assert rc == 0, out + err
    pgid = pgid_of(out)
    try:
        second = write_profile(tmp_path, free_port(), name="second")
        rc, out2, err2, _ = inv(env, "server.up", "-p", str(second), "--detach")
        assert rc == 1, out2 + err2
        assert "already up (profile first" in one_error_line(err2)
        assert "server pid" not in out2
    finally:
        inv(env, "server.down", "-p", str(first))
    assert_gone(pgid, wait_for)


def test_a_server_whose_main_process_was_killed_is_stopped_by_down_not_forgotten(
    tmp_path, env, free_port, wait_for
):
    """SIGKILL to SGLang's launcher leaves its scheduler running, holding the GPU. The kit keeps
    the record of such a group: server.up refuses beside it, server.down stops what is left."""
    prof = write_profile(tmp_path, free_port(), name="first")
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    assert rc == 0, out + err
    pgid = pgid_of(out)
    try:
        os.kill(pgid, signal.SIGKILL)  # the main process alone; its helper lives on
        wait_for(lambda: mf.process_start(pgid) is None, timeout=15, what="main process gone")
        (helper,) = group_members(pgid)

        second = write_profile(tmp_path, free_port(), name="second")
        rc, out2, err2, _ = inv(env, "server.up", "-p", str(second), "--detach")
        assert rc == 1, out2 + err2
        line = one_error_line(err2)
        assert f"group {pgid}: pids [{helper}]" in line and "server.down" in line, line

        rc, out, err, _ = inv(env, "server.status", "-p", str(prof), "--json")
        assert rc == 3, out + err  # down: nothing answers, but part of its group holds on
        assert json.loads(out)["leftover_pids"] == [helper], out
        rc, out, err, _ = inv(env, "server.flush-cache", "-p", str(prof))
        assert rc == 3 and "server.down --profile" in one_error_line(err), out + err

        rc, out, err, _ = inv(env, "server.down", "-p", str(prof))
        assert rc == 0, out + err
        assert f"stopped the 1 process(es) left of its group: [{helper}]" in out, out
        assert group_members(pgid) == []
        assert not (tmp_path / "state" / "servers" / "first.json").exists()
        rc, out, err, _ = inv(env, "server.down", "-p", str(prof))
        assert rc == 0 and "no server of profile first is up" in out, out + err
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def test_sigterm_to_server_down_mid_stop_still_stops_the_whole_group(
    tmp_path, env, free_port, wait_for
):
    """A supervisor's `timeout` TERMs server.down while it waits out the server's grace: the stop
    goes on to KILL, and the record goes, instead of a half-stopped group being left behind."""
    prof = write_profile(tmp_path, free_port(), "ignore-term")
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    assert rc == 0, out + err
    pgid = pgid_of(out)
    log = tmp_path / "state" / "servers" / "standin.log"
    # a grace far past the wait below, so that the TERM lands while server.down waits it out
    down = subprocess.Popen([*INVOKE, "server.down", "-p", str(prof), "--grace", "10"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: "standin: SIGTERM ignored" in log.read_text(), timeout=SLOW,
                 what="server.down's SIGTERM reached the server")  # fmt: skip
        assert down.poll() is None, "server.down ended before it was TERMed"
        down.send_signal(signal.SIGTERM)
        out, err = down.communicate(timeout=SLOW)
        assert down.returncode == 0, out + err
        assert f"stopped pid {pgid}" in out, out + err
        assert group_members(pgid) == []
        assert not (tmp_path / "state" / "servers" / "standin.json").exists()
    finally:
        down.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def test_ctrl_c_during_start(tmp_path, env, free_port, wait_for, ctrl_c_able):
    prof = write_profile(tmp_path, free_port(), ready_after=60)
    p = subprocess.Popen([*INVOKE, "server.up", "-p", str(prof)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=ctrl_c_able)  # fmt: skip
    log = tmp_path / "state" / "servers" / "standin.log"
    wait_for(lambda: log.exists() and "serving on" in log.read_text(), timeout=SLOW,
             what="the stand-in to listen")  # fmt: skip
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=SLOW)
    assert p.returncode == 130, out + err
    assert "interrupted" in one_error_line(err)
    assert_gone(pgid_of(out), wait_for)


def test_foreground_server_stops_on_ctrl_c_with_status_0(
    tmp_path, env, free_port, wait_for, ctrl_c_able
):
    prof = write_profile(tmp_path, free_port())
    p = subprocess.Popen([*INVOKE, "server.up", "-p", str(prof)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=ctrl_c_able)  # fmt: skip
    state = tmp_path / "state" / "servers" / "standin.json"
    wait_for(state.exists, timeout=SLOW, what="the server to be ready")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=SLOW)
    assert p.returncode == 0, out + err
    assert_gone(pgid_of(out), wait_for)
    assert not state.exists()


# ---- inside a live telemetry run (real Prometheus, node_exporter) ------------------------------
@pytest.mark.requires("prometheus", "node_exporter")
def test_server_joins_the_live_run_manifest_prometheus_and_tracing(
    tmp_path, env, free_port, wait_for
):
    """...and is traced: the profile turns tracing on and the run has Jaeger (its STAND-IN,
    tests/fixtures/standin_jaeger.py: Jaeger cannot be installed here)."""
    profile_port = free_port()
    prof = write_profile(tmp_path, profile_port, telemetry={"scrape_interval": "1s",
                                                            "ready_timeout": SLOW,
                                                            "tracing": True})  # fmt: skip
    root = tmp_path / "telemetry"
    bindir = tmp_path / "jaeger-bin"
    bindir.mkdir()
    (bindir / "jaeger-all-in-one").symlink_to(REPO / "tests" / "fixtures" / "standin_jaeger.py")
    record = tmp_path / "standin-argv.json"
    env = dict(env, PATH=f"{bindir}{os.pathsep}{env['PATH']}", STANDIN_RECORD=str(record))
    init = subprocess.Popen(
        [sys.executable, "-m", "sglkit.observability.init_run", "--profile", str(prof),
         "--root", str(root), "--ports", "auto", "--server-metrics", "off"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        run = wait_for(lambda: (mf.latest_run_dir(root) if mf.latest_run_dir(root) and
                                mf.read(mf.latest_run_dir(root))["status"] == "ready" else None),
                       timeout=SLOW, what="the run to be ready")  # fmt: skip
        port = free_port()  # another port than the profile's: added through file_sd
        rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach", "--port", str(port))
        assert rc == 0, out + err
        assert f"run: {run}" in out
        m = mf.read(run)
        otlp = m["services"]["jaeger"]["otlp_endpoint"]
        argv = json.loads(record.read_text())["argv"]
        assert argv[-3:] == ["--enable-trace", "--otlp-traces-endpoint", otlp], argv
        assert m["server"]["url"] == f"http://127.0.0.1:{port}"
        assert m["server"]["status"] == "running"
        assert (run / "logs" / "sglang.log").read_text().count("standin: serving on") == 1
        prom = m["services"]["prometheus"]["url"]

        def sglang_target_up():
            body = requests.get(f"{prom}/api/v1/targets", timeout=5).json()
            return [
                t
                for t in body["data"]["activeTargets"]
                if t["labels"]["job"] == "sglang"
                and t["health"] == "up"
                and t["labels"]["instance"] == f"127.0.0.1:{port}"
            ]

        wait_for(sglang_target_up, timeout=SLOW, what="Prometheus to scrape the server")
        rc, out, err, _ = inv(env, "server.down", "-p", str(prof))
        assert rc == 0, out + err
        m = mf.read(run)
        assert m["server"]["status"] == "stopped"
        assert not (run / "prometheus" / "targets" / "sglang.json").exists()
        # init-run's own later writes keep the record
        init.send_signal(signal.SIGTERM)
        assert init.wait(timeout=SLOW) == 0
        m = mf.read(run)
        assert m["status"] == "stopped" and m["server"]["status"] == "stopped"
    finally:
        if init.poll() is None:
            init.kill()
            init.wait(timeout=30)


# ---- the DeepGEMM sweep at start: skipped only where the warm matches ----------------------------
def up_and_down(env, prof: Path, record: Path, *extra: str) -> tuple[str, dict[str, str]]:
    """server.up --detach, then server.down: up's output and the environment the stand-in
    recorded (env must carry STANDIN_RECORD=record)."""
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach", *extra)
    assert rc == 0, out + err
    inv(env, "server.down", "-p", str(prof))
    return out, json.loads(record.read_text())["env"]


def test_precompile_is_off_only_where_the_deepgemm_marker_matches(tmp_path, env, free_port):
    prof = write_profile(tmp_path, free_port())
    record = tmp_path / "record.json"
    env = dict(env, STANDIN_RECORD=str(record))

    def up(*extra):
        return up_and_down(env, prof, record, *extra)

    out, seen = up()
    assert (
        "precompile: SGLang's default (DeepGEMM cache not warm for this server: no completion marker)"
        in out
    )
    assert "SGLANG_JIT_DEEPGEMM_PRECOMPILE" not in seen

    rc, out, err, _ = inv(env, "cache.deepgemm", "-p", str(prof))
    assert rc == 0, out + err
    out, seen = up()
    assert "precompile: off: " in out and "matches" in out
    assert seen["SGLANG_JIT_DEEPGEMM_PRECOMPILE"] == "0"
    assert "SGL_JIT_DEEPGEMM_PRECOMPILE" not in seen  # no SGLang here: the newest names

    out, seen = up("--precompile", "on")
    assert "precompile: on (forced)" in out and seen["SGLANG_JIT_DEEPGEMM_PRECOMPILE"] == "1"

    # a server whose kernel shapes differ from the warm's (another context length) sweeps
    data = yaml.safe_load(prof.read_text())
    data["server"]["context_length"] = 8192
    prof.write_text(yaml.safe_dump(data))
    out, seen = up()
    assert "not warm for this server: server_args: --context-length '4096' -> '8192'" in out, out
    assert "SGLANG_JIT_DEEPGEMM_PRECOMPILE" not in seen


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--precompile", "sometimes", "error: --precompile: expected one of auto, on, off"),
        ("--moe-configs", "shipped", "error: --moe-configs: expected one of kit, sglang, none"),
    ],
)
def test_an_unknown_choice_is_checked_before_anything_starts(
    tmp_path, env, free_port, flag, value, error
):
    rc, out, err, _ = inv(env, "server.up", "-p", str(write_profile(tmp_path, free_port())),
                          flag, value)  # fmt: skip
    assert rc == 2, out + err
    assert one_error_line(err).startswith(error)
    assert "server pid" not in out


def test_up_says_where_the_start_went_from_sglangs_stamped_lines(tmp_path, env, free_port):
    prof = write_profile(tmp_path, free_port(), ready_after=2.0)
    env = dict(env, STANDIN_SGLANG_LOG="1")
    rc, out, err, _ = inv(env, "server.up", "-p", str(prof), "--detach")
    try:
        assert rc == 0, out + err
        m = re.search(r"server\.up: start: launcher imports (\d+) s, warm-up (\d+) s\n", out)
        assert m, out
        # the stand-in stamps its first line at once and turns ready 2 s later (stamps are
        # whole seconds, so the warm-up reads 1 to 3 s)
        assert int(m.group(1)) <= 5 and 1 <= int(m.group(2)) <= 3, m.group(0)
        rc, out, err, _ = inv(env, "server.status", "-p", str(prof), "--json")
        assert rc == 0, out + err
        st = json.loads(out[out.index("{") :])
        assert [name for name, _ in st["start_phases"]] == ["launcher imports", "warm-up"], st
    finally:
        inv(env, "server.down", "-p", str(prof))


def test_moe_configs_choose_the_files_the_started_server_reads(tmp_path, env, free_port):
    """--moe-configs kit (default): the kit's store in the overlay; none: an empty overlay, so
    SGLang runs its default config (the baseline of docs/tuning-e2e.md)."""
    prof = write_profile(tmp_path, free_port())
    record = tmp_path / "record.json"
    env = dict(env, STANDIN_RECORD=str(record))

    def up(*extra):
        _, seen = up_and_down(env, prof, record, *extra)
        folder = Path(seen["SGLANG_MOE_CONFIG_DIR"])
        assert (folder / "configs").is_dir()
        return json.loads((folder / "sources.json").read_text())

    kit = up()
    assert kit and {e["source"] for e in kit.values()} >= {"kit"}
    assert all(Path(e["path"]).is_relative_to(REPO / "kernels") for e in kit.values()
               if e["source"] == "kit")  # fmt: skip
    assert up("--moe-configs", "none") == {}
    none_dir = json.loads(record.read_text())["env"]["SGLANG_MOE_CONFIG_DIR"]
    assert none_dir == str(tmp_path / "cache" / "moe-configs-none")
    # the kit's overlay, which another server of this cache root may be reading, is untouched
    assert json.loads((tmp_path / "cache" / "moe-configs" / "sources.json").read_text()) == kit
    assert up("--moe-configs", "kit") == kit


# ---- a server over several nodes: rank 0 serves, every node polls it, each marks its own ------
def test_a_node_other_than_rank_0_warms_against_the_leader_and_marks_its_own(
    tmp_path, env, free_port, wait_for
):
    """The leader (rank 0) is a stand-in already serving; this node (rank 1) runs its own
    stand-in in `hang` mode, as SGLang's non-leader nodes serve no HTTP. The warm polls the
    leader, sends the warm-up request there, and writes the marker of node 1 only."""
    leader_port = free_port()
    leader = subprocess.Popen(
        [sys.executable, str(STANDIN), "--model-path", "org/standin-model", "--port",
         str(leader_port), "--standin-ready-after", "0.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        prof = write_profile(tmp_path, leader_port, "hang", name="two-nodes")
        data = yaml.safe_load(prof.read_text())
        data["server"].update(nnodes=2, dist_init_addr=f"127.0.0.1:{free_port()}")
        prof.write_text(yaml.safe_dump(data))
        rc, out, err, _ = inv(env, "cache.deepgemm", "-p", str(prof))
        assert rc == 2 and "--node-rank: required where server.nnodes is 2" in err, out + err
        rc, out, err, _ = inv(env, "cache.deepgemm", "-p", str(prof), "--node-rank", "1",
                              "--grace", "2")  # fmt: skip
        assert rc == 0, out + err
        assert "--nnodes 2" in out and "--node-rank 1" in out
        assert f"waiting for http://127.0.0.1:{leader_port}/health" in out
        folder = tmp_path / "cache" / "deepgemm"
        assert (folder / ".sglkit-marker.node-1.json").is_file()
        assert not (folder / ".sglkit-marker.json").exists()
        assert_gone(pgid_of(out), wait_for)  # this node's server group, not the leader
        assert leader.poll() is None
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait(timeout=30)


def test_a_foreground_server_that_dies_while_serving_leaves_no_state(tmp_path, env, free_port,
                                                                     wait_for):  # fmt: skip
    prof = write_profile(tmp_path, free_port())
    p = subprocess.Popen([*INVOKE, "server.up", "-p", str(prof)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    state = tmp_path / "state" / "servers" / "standin.json"
    wait_for(state.exists, timeout=SLOW, what="the server to be ready")
    os.kill(json.loads(state.read_text())["pid"], signal.SIGKILL)
    out, err = p.communicate(timeout=SLOW)
    assert p.returncode == 1, out + err
    assert "was killed by SIGKILL" in one_error_line(err)
    assert not state.exists()
    assert_gone(pgid_of(out), wait_for)
