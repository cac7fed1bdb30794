"""Runs that never lie (issue 18): a failed start, a bad bind, a full disk, a killed init-run,
an exposed bind, and a Prometheus on the run's port that is not the run's own.

Real prometheus and prometheus-node-exporter, real init-run processes, real invoke commands.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from sglkit.net import free_port, wait_for
from sglkit.observability import manifest as mf
from tests.integration.test_obs_stack import (
    INVOKE,
    REPO,
    SLOW,
    Stack,
    alive,
    make_profile,
    start,
)

pytestmark = pytest.mark.requires("prometheus", "node_exporter")


@pytest.fixture
def stacks():
    started: list[Stack] = []
    yield started
    for s in started:
        s.kill_leftovers()


def invoke(*args: str, timeout: float = SLOW) -> subprocess.CompletedProcess:
    """Run invoke like a user; a command that does not end by `timeout` fails the test (killed)."""
    try:
        return subprocess.run(
            [*INVOKE, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200"},
        )
    except subprocess.TimeoutExpired as e:  # subprocess.run killed it
        pytest.fail(f"{' '.join(args[:1])} did not end within {timeout:g}s: {e.stderr!r:.600}")


def fixed_ports_profile(tmp_path: Path, **telemetry) -> Path:
    ports = {n: free_port() for n in ("prometheus", "node_exporter", "gpu_exporter", "jaeger_ui")}
    ports["jaeger_otlp"] = free_port()
    return make_profile(tmp_path, ports=ports, **telemetry)[0]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    return lines[0]


# ---- 2. a second start on the same ports -------------------------------------------------------
def test_second_start_on_the_same_ports_fails_and_leaves_latest_to_the_healthy_run(
    tmp_path, stacks
):
    profile = fixed_ports_profile(tmp_path)
    a = start(stacks, tmp_path, "--run-id", "healthy", profile=profile)
    ma = a.wait(lambda m: m["status"] == "ready", "run a ready")
    # init-run writes the ready manifest, then the meta env, then moves latest
    wait_for(lambda: os.path.lexists(a.root / "latest"), SLOW, what="latest to point at run a")
    meta_before = (a.root / mf.META_ENV).read_text()

    r = invoke("obs.up", "--profile", str(profile), "--root", str(a.root), "--run-id", "second")
    assert r.returncode == 1, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: run second failed: no service is running:"), line
    assert f"port {ma['services']['prometheus']['port']} (prometheus) already in use" in line
    assert "marked failed" in line
    # the healthy run keeps latest and the meta env; the failed one is recorded as failed
    assert os.readlink(a.root / "latest") == os.path.join("runs", "healthy")
    assert (a.root / mf.META_ENV).read_text() == meta_before
    second = mf.read(a.root / "runs" / "second")
    assert second["status"] == "failed" and second["ended_at"]
    assert any("already in use" in x for x in second["reasons"])
    assert not (a.root / "runs" / "second" / ".manifest-reserve").exists()
    # obs.status reports the healthy run, which is still up
    s = invoke("obs.status", "--root", str(a.root), "--json")
    assert json.loads(s.stdout)["manifest"]["run_id"] == "healthy", s.stdout + s.stderr
    assert alive(ma["services"]["prometheus"]["pid"])
    assert a.stop() == 0


# ---- 3. bind errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("bind", "words"),
    [
        ("not_a_host", "--bind: cannot resolve 'not_a_host'"),
        ("10.255.255.1", "--bind: cannot listen on 10.255.255.1"),
    ],
)
def test_a_bind_address_that_cannot_be_used_is_one_line_and_creates_nothing(tmp_path, bind, words):
    root = tmp_path / "telemetry"
    profile = fixed_ports_profile(tmp_path)
    r = invoke("obs.up", "--profile", str(profile), "--root", str(root), "--bind", bind)
    assert r.returncode == 2, r.stderr[-2000:]
    assert one_line(r.stderr).startswith(f"error: {words}")
    assert not root.exists() or not any(root.rglob("*")), list(root.rglob("*"))


def test_a_bad_telemetry_bind_in_the_profile_names_the_field(tmp_path):
    profile = fixed_ports_profile(tmp_path, bind="not_a_host")
    r = invoke("obs.up", "--profile", str(profile), "--root", str(tmp_path / "t"))
    assert r.returncode == 2
    assert one_line(r.stderr).startswith(f"error: {profile}: telemetry.bind: cannot resolve")


# ---- 3. a full disk -----------------------------------------------------------------------------
FULL_DISK = r"""
set -u
mount -t tmpfs -o size=8k,mode=0755 tmpfs "$ROOT" || exit 90
"$PY" -m sglkit.observability.init_run --profile "$PROFILE" --root "$ROOT" --ports auto \
    --ready-timeout 20 >"$OUT/stdout" 2>"$OUT/stderr"
echo $? >"$OUT/rc"
cp -a "$ROOT/." "$OUT/copy/"
"""


def test_a_full_disk_is_one_line_the_run_is_marked_failed_and_latest_unmoved(tmp_path):
    """The issue's 8 KB tmpfs as the root, in a private mount namespace (gone with the test)."""
    unshare = shutil.which("unshare")
    if not unshare or os.geteuid() != 0:
        pytest.skip("needs root and util-linux unshare to mount a private 8 KB tmpfs")
    probe = subprocess.run([unshare, "--mount", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode()[:200]}")
    root, out = tmp_path / "root", tmp_path / "out"
    root.mkdir()
    (out / "copy").mkdir(parents=True)
    profile = fixed_ports_profile(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ROOT": str(root),
        "OUT": str(out),
        "PY": sys.executable,
        "PROFILE": str(profile),
    }
    r = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", FULL_DISK],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SLOW,
    )
    assert r.returncode == 0, r.stderr
    rc = int((out / "rc").read_text())
    err = (out / "stderr").read_text()
    error_lines = [ln for ln in err.splitlines() if not ln.startswith("[init-run")]
    assert rc == 1, err[-2000:]
    assert len(error_lines) == 1, err[-2000:]
    assert "No space left on device" in error_lines[0], error_lines[0]
    assert "marked failed" in error_lines[0], error_lines[0]
    copy = out / "copy"
    assert not (copy / "latest").exists() and not (copy / "latest").is_symlink()
    assert not (copy / mf.META_ENV).exists()
    (run,) = (copy / "runs").iterdir()
    m = json.loads((run / "manifest.json").read_text())  # whole JSON: never half-written
    assert m["status"] == "failed" and m["ended_at"]
    assert any("No space left on device" in x for x in m["reasons"])
    assert not [p for p in run.rglob("*.tmp")], "a temp file was left behind"
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(root) in " ".join(p.info["cmdline"] or [])
    ], "a service of the failed run outlived it"


# ---- 5. exposure ---------------------------------------------------------------------------------
def test_a_bind_beyond_loopback_warns_and_turns_the_lifecycle_api_off(tmp_path, stacks):
    s = start(stacks, tmp_path, "--ports", "auto", "--bind", "0.0.0.0", "--quiet")
    m = s.wait(lambda m: m["status"] == "ready", "ready on 0.0.0.0")
    prom = m["services"]["prometheus"]
    assert "--web.enable-lifecycle" not in prom["argv"]
    assert m["lifecycle_api"] is False
    warnings = [ln for ln in s.log().splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "--bind 0.0.0.0 is not loopback" in warnings[0]
    assert "lifecycle API is off" in warnings[0]
    # /-/quit is refused, and Prometheus keeps running
    r = requests.post(f"{prom['url']}/-/quit", timeout=5)
    assert r.status_code == 403, r.text
    assert alive(prom["pid"])
    assert requests.get(f"{prom['url']}/-/ready", timeout=5).status_code == 200
    assert s.stop() == 0


def test_the_profile_can_keep_the_lifecycle_api_and_loopback_keeps_it_quietly(tmp_path, stacks):
    keep = make_profile(tmp_path, lifecycle_api=True)[0]
    s = start(stacks, tmp_path, "--ports", "auto", "--bind", "0.0.0.0", profile=keep)
    m = s.wait(lambda m: m["status"] == "ready", "ready")
    assert "--web.enable-lifecycle" in m["services"]["prometheus"]["argv"]
    assert "lifecycle API (/-/quit, /-/reload) stays on" in s.log()
    assert s.stop() == 0
    (tmp_path / "loop").mkdir()
    loop = start(stacks, tmp_path / "loop", "--ports", "auto")
    m = loop.wait(lambda m: m["status"] == "ready", "ready on loopback")
    assert "--web.enable-lifecycle" in m["services"]["prometheus"]["argv"]
    assert "warning:" not in loop.log()
    assert loop.stop() == 0


# ---- 6. a killed init-run -------------------------------------------------------------------------
def kill_init_run(s: Stack, m: dict) -> None:
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait(timeout=30)
    # its children get SIGTERM through PDEATHSIG
    wait_for(
        lambda: not any(alive(x["pid"]) for x in m["services"].values() if x.get("pid")),
        SLOW,
        what="the services to follow init-run",
    )


def test_a_killed_run_is_marked_abandoned_by_obs_status_keeping_its_history(tmp_path, stacks):
    s = start(stacks, tmp_path, "--ports", "auto")
    m = s.wait(lambda m: m["status"] == "ready", "ready")
    kill_init_run(s, m)
    assert mf.read(Path(m["paths"]["run_dir"]))["status"] == "ready"  # the lie, before

    r = invoke("obs.status", "--root", str(s.root))
    assert r.returncode == 1
    assert one_line(r.stderr) == (
        f"not healthy: run {m['run_id']} is abandoned: its init-run (pid {m['pid']}) is gone "
        "and never finalized the manifest"
    )
    after = mf.read(Path(m["paths"]["run_dir"]))
    assert after["status"] == "abandoned" and after["abandoned_at"]
    assert "marked abandoned by obs.status" in after["reasons"][-1]
    for key in ("run_id", "started_at", "ready_at", "paths", "versions", "profile"):
        assert after[key] == m[key], key
    for name in ("prometheus", "node_exporter"):
        svc = after["services"][name]
        assert svc["status"] == "stopped" and svc["pid"] is None
        assert svc["argv"] == m["services"][name]["argv"]
    assert mf.read_meta_env(s.root / mf.META_ENV)["SGLKIT_RUN_STATUS"] == "abandoned"


def test_obs_up_on_the_same_root_marks_a_killed_run_abandoned(tmp_path, stacks):
    profile = make_profile(tmp_path)[0]
    old = start(stacks, tmp_path, "--ports", "auto", "--run-id", "old", profile=profile)
    m = old.wait(lambda m: m["status"] == "ready", "old ready")
    kill_init_run(old, m)
    new = start(stacks, tmp_path, "--ports", "auto", "--run-id", "new", profile=profile)
    wait_for(
        lambda: mf.read(old.root / "runs" / "new")["status"] == "ready",
        SLOW,
        what="the new run ready",
    )
    got = mf.read(old.root / "runs" / "old")
    assert got["status"] == "abandoned"
    assert "marked abandoned by obs.up" in got["reasons"][-1]
    # latest moves right after the ready manifest is written (meta env first, then the link)
    wait_for(
        lambda: os.readlink(old.root / "latest") == os.path.join("runs", "new"),
        SLOW,
        what="latest to point at the new run",
    )
    assert new.stop() == 0


# ---- 4. a Prometheus on the run's port that is not the run's -------------------------------------
def test_obs_status_does_not_trust_another_run_s_prometheus_on_the_port(tmp_path, stacks):
    """Run b lives in its own pid namespace (as in a container), so its death cannot be seen
    from here; run a then takes the same ports. obs.status on b's root must not report a's."""
    unshare = shutil.which("unshare")
    if not unshare or os.geteuid() != 0:
        pytest.skip("needs root and util-linux unshare for a pid namespace")
    profile = fixed_ports_profile(tmp_path)
    root_b = tmp_path / "b"
    argv = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable]
    argv += ["-m", "sglkit.observability.init_run", "--profile", str(profile)]
    argv += ["--root", str(root_b), "--run-id", "b", "--quiet"]
    b = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(
            lambda: (
                (root_b / "runs/b/manifest.json").is_file()
                and mf.read(root_b / "runs/b")["status"] == "ready"
            ),
            SLOW,
            what="run b ready",
        )
    finally:
        b.kill()  # --kill-child: the namespace's init dies, and with it every process in it
        b.wait(timeout=30)
    mb = mf.read(root_b / "runs/b")
    assert mb["status"] == "ready" and mb["pid"] == 1  # seen from here: cannot tell it is gone
    port = mb["services"]["prometheus"]["port"]
    wait_for(lambda: not _listening(port), SLOW, what=f"port {port} free again")

    a = start(stacks, tmp_path, "--run-id", "a", profile=profile)
    a.wait(lambda m: m["status"] == "ready", "run a ready on the same ports")
    r = invoke("obs.status", "--root", str(root_b))
    assert r.returncode == 1, r.stdout
    assert one_line(r.stderr) == (
        f"not healthy: prometheus at http://127.0.0.1:{port} serves run a, not run b: "
        "its data is not this run's"
    )
    assert a.stop() == 0


def _listening(port: int) -> bool:
    return any(
        c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections(kind="tcp")
    )
