"""The run-manifest contract: ids, folders, atomic writes, latest pointer, shell facts."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from sglkit.errors import ConfigError, SglkitError
from sglkit.observability import manifest as mf


def sample(run_dir, status="ready", **over):
    m = {
        "schema": 1,
        "run_id": run_dir.name,
        "status": status,
        "reasons": [],
        "profile": {"name": "cpu-dev", "path": "/p/cpu-dev.yaml", "hash": "ab" * 32},
        "host": "h",
        "pid": 1,
        "started_at": mf.utcnow(),
        "ready_at": None,
        "ended_at": None,
        "paths": {
            "run_dir": str(run_dir),
            "logs": str(run_dir / "logs"),
            "prometheus_data": str(run_dir / "prometheus" / "data"),
            "prometheus_config": str(run_dir / "prometheus" / "prometheus.yml"),
        },
        "services": {
            "prometheus": {"status": "running", "url": "http://127.0.0.1:9090", "pid": 5},
            "jaeger": {"status": "absent", "ui_url": None, "otlp_endpoint": None},
        },
        "versions": {"sglkit": "0.1.0"},
    }
    m.update(over)
    return m


def test_run_ids_are_unique_sortable_and_valid():
    ids = {mf.new_run_id() for _ in range(50)}
    assert len(ids) == 50
    for i in ids:
        assert re.match(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$", i)
        assert mf.check_run_id(i) == i


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "-x", ".hidden", "x" * 129, "a b"])
def test_run_id_that_could_escape_or_confuse_is_refused(bad, tmp_path):
    with pytest.raises(ConfigError, match="--run-id"):
        mf.run_dir(tmp_path, bad)


def test_run_dir_is_never_reused(tmp_path):
    d = mf.create_run_dir(tmp_path, "r1")
    (d / "keep").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        mf.create_run_dir(tmp_path, "r1")
    assert (d / "keep").read_text() == "mine"


def test_unwritable_root_is_one_line_naming_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SglkitError, match=r"^--root: cannot create") as e:
        mf.create_run_dir(blocker / "telemetry", "r1")
    assert "\n" not in str(e.value)


def test_write_read_roundtrip_leaves_no_temp_files(tmp_path):
    d = mf.create_run_dir(tmp_path, "r1")
    m = sample(d)
    mf.write(d, m)
    assert mf.read(d) == m
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json"]
    json.loads((d / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("status", "running", "status"),
        ("schema", 2, "schema"),
        ("reasons", "oops", "reasons"),
        ("services", {"prometheus": {"status": "bogus"}}, "services.prometheus.status"),
    ],
)
def test_write_refuses_a_manifest_that_breaks_the_contract(tmp_path, key, value, match):
    d = mf.create_run_dir(tmp_path, "r1")
    mf.write(d, sample(d))
    with pytest.raises(ValueError, match=match):
        mf.write(d, sample(d, **{key: value}))
    assert mf.read(d)["status"] == "ready"  # the good manifest is untouched


def test_latest_points_at_the_run_relatively(tmp_path):
    assert mf.latest_run_dir(tmp_path) is None
    a = mf.create_run_dir(tmp_path, "a")
    b = mf.create_run_dir(tmp_path, "b")
    mf.write(a, sample(a))
    mf.write(b, sample(b))
    mf.point_latest(tmp_path, a)
    assert os.readlink(tmp_path / "latest") == os.path.join("runs", "a")
    assert mf.latest_run_dir(tmp_path) == a.resolve()
    assert mf.latest_is(tmp_path, a) and not mf.latest_is(tmp_path, b)
    mf.point_latest(tmp_path, b)
    assert mf.latest_run_dir(tmp_path) == b.resolve()


def test_latest_falls_back_to_newest_manifest_without_a_link(tmp_path):
    a = mf.create_run_dir(tmp_path, "a")
    b = mf.create_run_dir(tmp_path, "b")
    mf.write(a, sample(a))
    mf.write(b, sample(b))
    os.utime(a / "manifest.json", (1, 1))
    assert mf.latest_run_dir(tmp_path) == b


def test_meta_env_is_what_a_real_shell_reads(tmp_path):
    d = mf.create_run_dir(tmp_path, "r1")
    m = sample(d, host="host with 'quotes' and $dollars")
    path = mf.write_meta_env(tmp_path, m)
    out = subprocess.run(
        ["bash", "-c", 'set -a; . "$1"; env -0', "_", str(path)],
        capture_output=True,
        check=True,
    ).stdout.decode()
    env = dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)
    assert env["SGLKIT_RUN_HOST"] == "host with 'quotes' and $dollars"
    assert env["SGLKIT_RUN_ID"] == "r1"
    assert env["SGLKIT_RUN_STATUS"] == "ready"
    assert env["SGLKIT_PROMETHEUS_URL"] == "http://127.0.0.1:9090"
    assert env["SGLKIT_JAEGER_STATUS"] == "absent"
    assert env["SGLKIT_OTLP_ENDPOINT"] == ""
    assert mf.read_meta_env(path) == mf.meta_env(m)


def test_a_secret_never_reaches_the_meta_env_file(tmp_path, monkeypatch):
    """Secrets in the caller's environment, or wherever a manifest might carry one, stay out of
    container_run_meta.env (a file every shell in the container sources)."""
    from sglkit.profile import SECRET_NAME

    secret = "hf_do_not_leak_0123456789"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("SGLKIT_API_KEY", secret)
    d = mf.create_run_dir(tmp_path, "r1")
    m = sample(d)
    m["env"] = {"HF_TOKEN": secret}
    m["profile"]["env"] = {"OPENAI_API_KEY": secret}
    m["services"]["prometheus"]["basic_auth_password"] = secret
    path = mf.write_meta_env(tmp_path, m)
    assert secret not in path.read_text(encoding="utf-8")
    shell = mf.read_meta_env(path)
    assert shell["SGLKIT_RUN_ID"] == "r1"
    assert not [k for k in shell if SECRET_NAME.search(k)]


def test_a_run_in_another_network_namespace_is_reached_on_its_published_host_ports():
    """Issue 18: obs.status asked 127.0.0.1:9090 (the port inside the container) for a run that
    container.up had published on another host port."""
    m = {
        "net_ns": "net:[1]",  # not ours: a container's
        "host_ports": {"9090": 41000, "9100": 41001},
        "services": {
            "prometheus": {"url": "http://127.0.0.1:9090"},
            "node_exporter": {"url": "http://127.0.0.1:9100/metrics"},
            "jaeger": {"url": None},
        },
    }
    assert mf.service_url(m, "prometheus") == "http://127.0.0.1:41000"
    assert mf.service_url(m, "node_exporter") == "http://127.0.0.1:41001/metrics"
    assert mf.service_url(m, "jaeger") is None
    # in the run's own network namespace (obs.status inside the container) the URL is as written
    assert mf.service_url({**m, "net_ns": mf.net_namespace()}, "prometheus") == (
        "http://127.0.0.1:9090"
    )
    # a bare-host run publishes nothing
    assert mf.service_url({**m, "host_ports": {}}, "prometheus") == "http://127.0.0.1:9090"


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_settle_marks_a_run_whose_init_run_is_gone_abandoned_and_keeps_its_history(tmp_path):
    root = tmp_path / "t"
    d = mf.create_run_dir(root, "r")
    dead = _dead_pid()
    here = {**mf.identity(), "pid": dead, "pid_start": 12345}
    history = [{"at": mf.utcnow(), "exit_code": 3, "reason": "exited with code 3"}]
    services = {
        "prometheus": {"status": "running", "pid": _dead_pid(), "restart_history": history},
        "jaeger": {"status": "absent", "pid": None},
    }
    mf.write(d, sample(d, **here, services=services, reasons=["kept"]))
    mf.point_latest(root, d)
    mf.write_meta_env(root, mf.read(d))

    m = mf.settle(d, by="obs.status")
    assert m["status"] == "abandoned" and m["abandoned_at"]
    assert m["reasons"][0] == "kept" and "marked abandoned by obs.status" in m["reasons"][1]
    assert m["services"]["prometheus"]["status"] == "stopped"
    assert m["services"]["prometheus"]["restart_history"] == history
    assert m["services"]["jaeger"]["status"] == "absent"
    assert mf.read(d) == m  # written, atomically
    assert mf.read_meta_env(root / mf.META_ENV)["SGLKIT_RUN_STATUS"] == "abandoned"
    assert mf.settle(d, by="obs.up") == m  # once


def test_settle_leaves_live_finished_and_unknowable_runs_alone(tmp_path):
    root = tmp_path / "t"
    cases = {
        "live": {**mf.identity()},
        "stopped": {**mf.identity(), "pid": _dead_pid(), "status": "stopped"},
        "container": {**mf.identity(), "pid": _dead_pid(), "pid_ns": "pid:[1]"},
    }
    for name, over in cases.items():
        d = mf.create_run_dir(root, name)
        status = over.pop("status", "ready")
        mf.write(d, sample(d, status=status, **over))
        before = (d / mf.MANIFEST).read_text()
        assert mf.settle(d, by="obs.status")["status"] == status
        assert (d / mf.MANIFEST).read_text() == before


def test_obs_report_settles_the_run_it_reads(tmp_path):
    d = mf.create_run_dir(tmp_path / "t", "r")
    mf.write(d, sample(d, **{**mf.identity(), "pid": _dead_pid()}))
    m = mf.read_run(d, by="obs.report")
    assert m["status"] == "abandoned"
    assert any("marked abandoned by obs.report" in r for r in m["reasons"])
