"""init-run with the real prometheus, promtool and prometheus-node-exporter binaries.

Each test starts `python -m sglkit.observability.init_run` as a real process on free loopback ports,
watches manifest.json and Prometheus' HTTP API, and checks that no child outlives the run.
Fault injectors (tests/fixtures/obs_faults/) stand in for an exporter that crashes or hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from sglkit import paths
from sglkit import profile as profiles
from sglkit.net import free_port, wait_for
from sglkit.observability import config as promconfig
from sglkit.observability import manifest as mf
from sglkit.observability import tracing
from sglkit.observability.services import PORT_NAMES
from sglkit.server import spec as server_spec

pytestmark = pytest.mark.requires("prometheus", "node_exporter")

REPO = paths.home()
FAULTS = Path(__file__).parent.parent / "fixtures" / "obs_faults"
STANDIN = Path(__file__).parent.parent / "fixtures" / "standin_sglang_metrics.py"
STANDIN_JAEGER = Path(__file__).parent.parent / "fixtures" / "standin_jaeger.py"
INVOKE = [sys.executable, "-m", "invoke"]
SLOW = 90  # deadlines: generous, the machine is shared and has 2 cores


def make_profile(tmp_path: Path, **telemetry) -> tuple[Path, int]:
    """cpu-dev with a 1 s scrape interval and a server port nobody uses; returns (path, port)."""
    src = profiles.resolve_path("cpu-dev")
    data = yaml.safe_load(src.read_text())
    data["model"]["config"] = str(src.parent / data["model"]["config"])
    server_port = free_port()
    data["server"]["port"] = server_port
    data["telemetry"].update({"scrape_interval": "1s", "ready_timeout": SLOW, **telemetry})
    p = tmp_path / "obs-test.yaml"
    p.write_text(yaml.safe_dump(data))
    return p, server_port


class Stack:
    """One init-run process and what it wrote."""

    def __init__(
        self, tmp_path: Path, *args: str, path_env: str | None = None, profile=None, env=None
    ):
        self.root = tmp_path / "telemetry"
        self.profile = profile or make_profile(tmp_path)[0]
        self.stderr_path = tmp_path / f"init-run-{len(list(tmp_path.glob('init-run-*')))}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        if path_env is not None:
            env["PATH"] = path_env
        argv = [sys.executable, "-m", "sglkit.observability.init_run"]
        argv += ["--profile", str(self.profile), "--root", str(self.root), *args]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT
            )
        self.seen_pids: set[int] = set()

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def manifest(self) -> dict | None:
        run = mf.latest_run_dir(self.root)
        if run is None:
            return None
        m = mf.read(run)
        for s in m["services"].values():
            if s.get("pid"):
                self.seen_pids.add(s["pid"])
        return m

    def wait(self, cond, what: str, timeout: float = SLOW):
        def check():
            if self.proc.poll() is not None:
                raise AssertionError(f"init-run exited {self.proc.returncode}:\n{self.log()}")
            m = self.manifest()
            return m if m and cond(m) else None

        try:
            return wait_for(check, timeout, interval=0.1, what=what)
        except TimeoutError as e:
            raise AssertionError(f"{e}\nmanifest: {self.manifest()}\nlog:\n{self.log()}") from None

    def targets(self, m: dict) -> dict[str, str]:
        url = m["services"]["prometheus"]["url"]
        body = requests.get(f"{url}/api/v1/targets", timeout=5).json()
        return {t["labels"]["job"]: t["health"] for t in body["data"]["activeTargets"]}

    def wait_targets(self, m: dict, expect: dict[str, str], timeout: float = SLOW):
        return wait_for(
            lambda: self.targets(m) == expect, timeout, 0.2, what=f"Prometheus targets {expect}"
        )

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill_leftovers(self) -> None:
        """Teardown: a failed test must not leave processes behind for the next one."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pid in self.seen_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def stacks():
    started: list[Stack] = []
    yield started
    for s in started:
        s.kill_leftovers()


def start(stacks, tmp_path, *args, **kw) -> Stack:
    s = Stack(tmp_path, *args, **kw)
    stacks.append(s)
    return s


def only_on_path(tmp_path: Path, links: dict[str, str]) -> str:
    """A PATH of one folder holding exactly `links` (name -> target binary)."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for name, target in links.items():
        (d / name).symlink_to(target)
    return str(d)


def which(name: str) -> str:
    import shutil

    found = shutil.which(name)
    assert found, name
    return found


# ---- the whole life of a run ----------------------------------------------------------------------
def test_run_lifecycle_ready_targets_restart_and_clean_stop(tmp_path, stacks):
    s = start(stacks, tmp_path, "--ports", "auto")
    m = s.wait(lambda m: m["status"] == "ready", "manifest status ready")
    run = Path(m["paths"]["run_dir"])
    assert run.parent == s.root / "runs" and run.name == m["run_id"]
    assert m["ready_at"] and m["started_at"] and m["ended_at"] is None
    assert m["reasons"] == []
    svc = m["services"]
    assert svc["prometheus"]["status"] == svc["node_exporter"]["status"] == "running"
    assert svc["gpu_exporter"]["status"] == "absent" and svc["gpu_exporter"]["reason"]
    assert svc["jaeger"]["status"] == "absent" and svc["jaeger"]["ui_url"] is None
    assert m["versions"]["prometheus"].startswith("prometheus, version")
    assert m["versions"]["node_exporter"].startswith("node_exporter, version")
    assert Path(m["paths"]["prometheus_data"]).is_relative_to(run)
    # init-run writes the ready manifest, then the meta env, then moves latest
    wait_for(
        lambda: os.readlink(s.root / "latest") == os.path.join("runs", m["run_id"]),
        SLOW,
        what="latest to point at the run",
    )
    meta = mf.read_meta_env(s.root / mf.META_ENV)
    assert meta["SGLKIT_RUN_ID"] == m["run_id"]
    assert meta["SGLKIT_PROMETHEUS_URL"] == svc["prometheus"]["url"]
    # every listener is on loopback
    for name in ("prometheus", "node_exporter"):
        assert svc[name]["url"].startswith("http://127.0.0.1:")
    # the rendered config is what Prometheus runs with, and promtool accepts it
    promconfig.promtool_check(m["paths"]["prometheus_config"])

    s.wait_targets(m, {"prometheus": "up", "node": "up"})

    # node_exporter dies: it is restarted and the restart recorded
    old = svc["node_exporter"]["pid"]
    os.kill(old, signal.SIGKILL)
    m = s.wait(
        lambda m: (
            m["services"]["node_exporter"]["restarts"] == 1
            and m["services"]["node_exporter"]["status"] == "running"
        ),
        "node_exporter restarted",
    )
    ne = m["services"]["node_exporter"]
    assert ne["pid"] != old
    assert ne["restart_history"][0]["exit_code"] == -signal.SIGKILL
    assert ne["restart_history"][0]["at"].endswith("Z")
    assert ne["restart_history"][0]["reason"] == "exited with code -9"
    assert ne["reason"] is None  # running again; the history says why it restarted
    assert m["status"] == "ready"
    s.wait_targets(m, {"prometheus": "up", "node": "up"})

    pids = set(s.seen_pids)
    assert s.stop(signal.SIGTERM) == 0, s.log()
    m = mf.read(run)
    assert m["status"] == "stopped" and m["ended_at"]
    assert {v["status"] for v in m["services"].values()} <= {"stopped", "absent"}
    assert not [p for p in pids if alive(p)], "a child outlived init-run"
    assert mf.read_meta_env(s.root / mf.META_ENV)["SGLKIT_RUN_STATUS"] == "stopped"
    # Prometheus kept its TSDB in the run folder for a later report
    assert any(Path(m["paths"]["prometheus_data"]).iterdir())


def test_status_task_and_catalog_check_against_a_scraped_server(tmp_path, stacks):
    profile, server_port = make_profile(tmp_path)
    s = start(stacks, tmp_path, "--ports", "auto", "--server-metrics", "on", profile=profile)
    m = s.wait(lambda m: m["status"] == "ready", "ready")
    s.wait_targets(m, {"prometheus": "up", "node": "up", "sglang": "down"})
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        [*INVOKE, "obs.status", "--root", str(s.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "sglang" in r.stderr and "down" in r.stderr
    assert r.stderr.count("\n") == 1  # one line

    standin = subprocess.Popen(
        [sys.executable, str(STANDIN), "--port", str(server_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        s.wait_targets(m, {"prometheus": "up", "node": "up", "sglang": "up"})
        r = subprocess.run(
            [*INVOKE, "obs.status", "--root", str(s.root), "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(r.stdout)
        assert out["problems"] == []
        assert {t["job"] for t in out["targets"]} == {"prometheus", "node", "sglang"}
        r = subprocess.run(
            [*INVOKE, "obs.catalog", "--check", f"http://127.0.0.1:{server_port}/metrics"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "missing core metrics (0)" in r.stdout
        assert "sglang:standin_only_metric" in r.stdout.split("not in the catalog")[1]
    finally:
        standin.terminate()
        standin.wait(timeout=30)
    assert s.stop(signal.SIGINT) == 0
    r = subprocess.run(
        [*INVOKE, "obs.status", "--root", str(s.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 1
    assert f"run {m['run_id']} is stopped" in r.stderr


# ---- faults ---------------------------------------------------------------------------------------
def test_crashing_service_hits_the_restart_limit_and_degrades(tmp_path, stacks):
    path = only_on_path(
        tmp_path,
        {"prometheus": which("prometheus"), "prometheus-node-exporter": str(FAULTS / "crash.sh")},
    )
    s = start(
        stacks,
        tmp_path,
        "--ports",
        "auto",
        "--max-restarts",
        "2",
        "--backoff",
        "0.2",
        path_env=path,
    )
    m = s.wait(
        lambda m: (
            m["services"]["node_exporter"]["status"] == "failed" and m["status"] != "starting"
        ),
        "node_exporter given up",
    )
    ne = m["services"]["node_exporter"]
    assert m["status"] == "degraded"
    assert "restart limit reached" in ne["reason"]
    assert any(r.startswith("node_exporter:") and "restart limit" in r for r in m["reasons"])
    assert [h["exit_code"] for h in ne["restart_history"]] == [3, 3, 3]
    assert ne["restarts"] == 2 and ne["pid"] is None
    assert m["services"]["prometheus"]["status"] == "running"  # the rest keep running
    log = Path(ne["log"]).read_text()
    assert log.count("crashing with status 3") == 3
    assert s.stop(signal.SIGINT) == 0, s.log()
    m = s.manifest()
    assert m["status"] == "stopped"
    assert len(m["services"]["node_exporter"]["restart_history"]) == 3  # no storm, ever
    assert m["services"]["node_exporter"]["status"] == "failed"
    assert not [p for p in s.seen_pids if alive(p)]


def test_missing_binary_fails_that_service_only(tmp_path, stacks):
    path = only_on_path(tmp_path, {"prometheus": which("prometheus")})
    s = start(stacks, tmp_path, "--ports", "auto", path_env=path)
    m = s.wait(lambda m: m["status"] != "starting", "start-up to finish")
    assert m["status"] == "degraded"
    ne = m["services"]["node_exporter"]
    assert ne["status"] == "failed" and ne["restart_history"] == []
    assert "binary not found on PATH" in ne["reason"]
    assert m["reasons"] == [f"node_exporter: {ne['reason']}"]
    # no node job is configured for a service that does not exist
    s.wait_targets(m, {"prometheus": "up"})
    assert s.stop() == 0
    assert not [p for p in s.seen_pids if alive(p)]


def test_port_in_use_fails_that_service_with_the_port_named(tmp_path, stacks):
    ports = {name: free_port() for name in PORT_NAMES if name != "jaeger_admin"}
    profile, _ = make_profile(tmp_path, ports=ports)
    holder = socket.socket()
    holder.bind(("127.0.0.1", ports["node_exporter"]))
    holder.listen(1)
    try:
        s = start(stacks, tmp_path, profile=profile)
        m = s.wait(lambda m: m["status"] != "starting", "start-up to finish")
        ne = m["services"]["node_exporter"]
        assert m["status"] == "degraded"
        assert ne["status"] == "failed"
        assert f"port {ports['node_exporter']} (node_exporter) already in use" in ne["reason"]
        assert m["services"]["prometheus"]["port"] == ports["prometheus"]
        assert m["services"]["prometheus"]["status"] == "running"
        assert s.stop() == 0
    finally:
        holder.close()
    assert not [p for p in s.seen_pids if alive(p)]


def test_sigterm_during_startup_stops_a_child_that_ignores_term(tmp_path, stacks):
    path = only_on_path(
        tmp_path,
        {
            "prometheus": which("prometheus"),
            "prometheus-node-exporter": str(FAULTS / "hang-ignore-term.sh"),
        },
    )
    s = start(stacks, tmp_path, "--ports", "auto", "--grace", "1", path_env=path)
    m = s.wait(
        lambda m: m["status"] == "starting" and m["services"]["node_exporter"]["pid"],
        "node_exporter spawned while the run is starting",
    )
    pgid = m["services"]["node_exporter"]["pid"]
    wait_for(lambda: len(psutil.Process(pgid).children()) >= 1, 30, what="the hang's child")
    group = [pgid, *(c.pid for c in psutil.Process(pgid).children(recursive=True))]
    assert s.stop(signal.SIGTERM) == 0, s.log()
    m = s.manifest()
    assert m["status"] == "stopped" and m["ready_at"] is None and m["ended_at"]
    assert not [p for p in group + list(s.seen_pids) if alive(p)], "a child outlived init-run"
    assert "SIGKILL" in s.log()


def run_init(tmp_path, *args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "sglkit.observability.init_run", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_unwritable_root_is_one_line_and_starts_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = run_init(tmp_path, "--root", str(blocker / "telemetry"), "--ports", "auto")
    assert r.returncode != 0
    assert r.stderr.startswith("error: --root: cannot create")
    assert r.stderr.count("\n") == 1
    assert blocker.read_text() == "x"


def test_existing_run_id_is_refused_and_left_alone(tmp_path):
    root = tmp_path / "telemetry"
    old = mf.create_run_dir(root, "taken")
    (old / "manifest.json").write_text('{"mine": true}')
    r = run_init(tmp_path, "--root", str(root), "--run-id", "taken", "--ports", "auto")
    assert r.returncode == 2
    assert "--run-id: run taken already exists" in r.stderr
    assert (old / "manifest.json").read_text() == '{"mine": true}'
    assert not (root / "latest").exists()


def test_template_variable_missing_is_named_and_no_run_is_created(tmp_path):
    t = tmp_path / "bad.yml.j2"
    t.write_text("global:\n  scrape_interval: {{ scrape_every }}\n")
    root = tmp_path / "telemetry"
    r = run_init(tmp_path, "--root", str(root), "--ports", "auto", "--template", str(t))
    assert r.returncode == 2
    assert "scrape_every" in r.stderr and str(t) in r.stderr
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


def test_bad_ports_option_is_named(tmp_path):
    r = run_init(tmp_path, "--root", str(tmp_path / "t"), "--ports", "9090")
    assert r.returncode == 2 and r.stderr.startswith("error: --ports:")


def test_invoke_obs_up_runs_in_the_foreground_and_stops_on_ctrl_c(tmp_path):
    root = tmp_path / "telemetry"
    profile, _ = make_profile(tmp_path)
    proc = subprocess.Popen(
        [*INVOKE, "obs.up", "--profile", str(profile), "--root", str(root), "--ports", "auto"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: set[int] = set()
    try:

        def ready():
            run = mf.latest_run_dir(root)
            m = mf.read(run) if run else None
            if m:
                seen.update(s["pid"] for s in m["services"].values() if s.get("pid"))
            return m if m and m["status"] == "ready" else None

        m = wait_for(ready, SLOW, 0.1, what="obs.up ready")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert mf.read(Path(m["paths"]["run_dir"]))["status"] == "stopped"
        assert not [p for p in seen if alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_bind_all_interfaces_records_loopback_urls(tmp_path, stacks):
    s = start(stacks, tmp_path, "--ports", "auto", "--bind", "0.0.0.0")
    m = s.wait(lambda m: m["status"] == "ready", "ready")
    assert m["bind"] == "0.0.0.0"
    prom = m["services"]["prometheus"]
    assert prom["url"].startswith("http://127.0.0.1:")
    assert f"--web.listen-address=0.0.0.0:{prom['port']}" in prom["argv"]
    listening = {
        c.laddr.ip
        for c in psutil.Process(prom["pid"]).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == prom["port"]
    }
    assert listening <= {"0.0.0.0", "::"} and listening
    s.wait_targets(m, {"prometheus": "up", "node": "up"})
    assert s.stop() == 0


@pytest.mark.skipif(not __import__("shutil").which("unshare"), reason="needs util-linux unshare")
def test_as_pid_1_it_reaps_orphans_a_service_leaves(tmp_path):
    """The container entrypoint case without --init: init-run is PID 1 of a pid namespace."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False)
    if probe.returncode != 0:
        pytest.skip("cannot create a pid namespace here")
    path = only_on_path(
        tmp_path,
        {
            "prometheus": which("prometheus"),
            "prometheus-node-exporter": str(FAULTS / "orphan-then-crash.sh"),
        },
    )
    profile, _ = make_profile(tmp_path)
    root = tmp_path / "telemetry"
    argv = [which("unshare"), "--pid", "--fork", "--mount-proc", sys.executable]
    argv += ["-m", "sglkit.observability.init_run", "--profile", str(profile), "--root", str(root)]
    argv += ["--ports", "auto", "--max-restarts", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": path}
    outer = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        init = wait_for(lambda: psutil.Process(outer.pid).children(), 30, what="init-run")[0]

        def orphan():
            return [c for c in init.children() if c.name() == "sleep"]

        m = wait_for(
            lambda: (
                (run := mf.latest_run_dir(root))
                and (x := mf.read(run))["services"]["node_exporter"]["status"] == "failed"
                and x
            ),
            SLOW,
            what="node_exporter given up",
        )
        assert m["pid"] == 1
        # the orphan was re-parented to init-run, lives 2 s, and is then reaped (no zombie)
        wait_for(orphan, 30, what="the orphan re-parented to init-run")
        wait_for(lambda: not orphan(), 30, what="the orphan reaped, not left a zombie")
        init.send_signal(signal.SIGTERM)
        _, err = outer.communicate(timeout=60)
        assert outer.returncode == 0, err
        assert mf.read(Path(m["paths"]["run_dir"]))["status"] == "stopped"
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait(timeout=30)


def test_tracing_wires_jaeger_into_the_run_and_the_server_argv(tmp_path, stacks):
    """Jaeger cannot be installed here: a stand-in takes its place to check the wiring."""
    profile, _ = make_profile(tmp_path, tracing=True)
    bindir = tmp_path / "jaeger-bin"
    bindir.mkdir()
    (bindir / "jaeger-all-in-one").symlink_to(STANDIN_JAEGER)
    record = tmp_path / "jaeger-argv.json"
    s = start(
        stacks,
        tmp_path,
        "--ports",
        "auto",
        profile=profile,
        path_env=f"{bindir}{os.pathsep}{os.environ['PATH']}",
        env={"STANDIN_JAEGER_RECORD": str(record)},
    )
    m = s.wait(lambda m: m["status"] == "ready", "ready with jaeger")
    j = m["services"]["jaeger"]
    assert j["status"] == "running" and j["kind"] == "jaeger"
    assert j["ui_url"] == j["url"] and j["ui_url"].startswith("http://127.0.0.1:")
    host, port = j["otlp_endpoint"].rsplit(":", 1)
    assert host == "127.0.0.1"
    socket.create_connection((host, int(port)), timeout=5).close()
    argv = json.loads(record.read_text())
    listeners = [a.split("=", 1)[1] for a in argv if "host-port=" in a]
    assert listeners and all(hp.startswith("127.0.0.1:") for hp in listeners)
    assert f"--collector.otlp.grpc.host-port={j['otlp_endpoint']}" in argv
    assert m["versions"]["jaeger"] == "standin-jaeger (not Jaeger)"
    s.wait_targets(m, {"prometheus": "up", "node": "up", "jaeger": "up"})
    p = profiles.load(profile)
    endpoint = tracing.endpoint(p, m)
    server = server_spec.build(p, server_spec.Overrides(tracing_endpoint=endpoint)).argv()
    assert server[-3:] == ["--enable-trace", "--otlp-traces-endpoint", j["otlp_endpoint"]]
    meta = mf.read_meta_env(s.root / mf.META_ENV)
    assert meta["SGLKIT_OTLP_ENDPOINT"] == j["otlp_endpoint"]
    assert meta["SGLKIT_JAEGER_UI_URL"] == j["ui_url"]
    assert s.stop() == 0
    m = s.manifest()
    assert m["services"]["jaeger"]["status"] == "stopped"
    assert tracing.otlp_endpoint(m) is None  # a stopped run gives no endpoint
    assert not [p for p in s.seen_pids if alive(p)]


def test_two_runs_on_one_root_never_touch_each_other(tmp_path, stacks):
    profile, _ = make_profile(tmp_path)
    a = start(stacks, tmp_path, "--ports", "auto", "--run-id", "run-a", profile=profile)
    ma = a.wait(lambda m: m["status"] == "ready", "run a ready")
    b = start(stacks, tmp_path, "--ports", "auto", "--run-id", "run-b", profile=profile)
    wait_for(
        lambda: (
            (b.root / "runs" / "run-b" / "manifest.json").is_file()
            and mf.read(b.root / "runs" / "run-b")["status"] == "ready"
        ),
        SLOW,
        what="run b ready",
    )
    wait_for(
        lambda: os.readlink(a.root / "latest") == os.path.join("runs", "run-b"),
        SLOW,
        what="latest to point at run b",
    )
    # run a keeps supervising its own services and writes only its own manifest
    os.kill(ma["services"]["node_exporter"]["pid"], signal.SIGKILL)
    wait_for(
        lambda: mf.read(a.root / "runs" / "run-a")["services"]["node_exporter"]["restarts"] == 1,
        SLOW,
        what="run a restarted its node_exporter",
    )
    meta = mf.read_meta_env(a.root / mf.META_ENV)
    assert meta["SGLKIT_RUN_ID"] == "run-b"
    assert mf.read(a.root / "runs" / "run-b")["services"]["node_exporter"]["restarts"] == 0
    assert a.stop() == 0 and b.stop() == 0
    assert mf.read_meta_env(a.root / mf.META_ENV)["SGLKIT_RUN_STATUS"] == "stopped"
    assert mf.read(a.root / "runs" / "run-a")["status"] == "stopped"
