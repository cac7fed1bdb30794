"""host.setup's plan on every kind of system (pure), and the task on this machine (real)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglkit import host
from sglkit.errors import SglkitError

REPO = Path(__file__).resolve().parents[2]
DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nID=debian\n'
UBUNTU = 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\nID_LIKE=debian\n'
MINT = 'PRETTY_NAME="Linux Mint 22"\nID=linuxmint\nID_LIKE="ubuntu debian"\n'
FEDORA = 'PRETTY_NAME="Fedora Linux 41 (Workstation Edition)"\nID=fedora\n'
ALL = ("docker", "debootstrap", "prometheus", "node_exporter", "devcontainer")


def machine(os_release=DEBIAN, have=(), engine_up=False, **kw) -> host.Host:
    rel = host.parse_os_release(os_release)
    return host.Host(
        os_id=rel["ID"],
        os_like=tuple(rel.get("ID_LIKE", "").split()),
        os_name=rel["PRETTY_NAME"],
        installed={k: k in have for k in ALL},
        engine_error=None if engine_up else "no Docker engine answers at unix:///x",
        **kw,
    )


def test_fresh_debian_installs_the_engine_and_debootstrap_then_starts_it():
    steps = host.plan(machine(), tests=False)
    assert [s.shown() for s in steps] == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends docker.io debootstrap",
        "start the Docker engine (dockerd)",
    ]
    assert dict(steps[1].env) == {"DEBIAN_FRONTEND": "noninteractive"}


def test_tests_add_prometheus_node_exporter_and_the_devcontainer_cli():
    steps = host.plan(machine(UBUNTU, have=("docker", "debootstrap"), engine_up=True), tests=True)
    assert [s.shown() for s in steps] == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends prometheus prometheus-node-exporter"
        " npm ca-certificates",
        f"npm install -g --no-fund --no-audit {host.DEVCONTAINER_CLI}",
    ]
    with_npm = host.plan(
        machine(MINT, have=("docker", "debootstrap"), engine_up=True, npm=True), tests=True
    )
    assert "npm" not in with_npm[1].argv


def test_nothing_to_do_where_everything_is_there_on_any_system():
    for rel in (DEBIAN, UBUNTU, FEDORA):
        assert host.plan(machine(rel, have=ALL, engine_up=True), tests=True) == []
    # without --tests, the test-only components are not asked for
    assert host.plan(machine(FEDORA, have=("docker", "debootstrap"), engine_up=True)) == []


def test_installed_engine_that_is_stopped_is_only_started():
    steps = host.plan(machine(have=ALL, systemd=True), tests=True)
    assert [s.shown() for s in steps] == ["start the Docker engine (systemctl)"]


def test_other_systems_get_one_line_naming_what_to_install():
    with pytest.raises(SglkitError) as err:
        host.plan(machine(FEDORA, have=("debootstrap",)), tests=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(
        "host.setup: Fedora Linux 41 (Workstation Edition) is not Debian or Ubuntu"
    )
    for what in ("the Docker engine", "Prometheus", "node_exporter", "@devcontainers/cli@0.89.0"):
        assert what in msg
    assert "debootstrap" not in msg  # it is there
    assert "start the Docker engine" in msg


def test_not_root_uses_sudo_or_says_so():
    steps = host.plan(machine(root=False, sudo=True))
    assert all(s.argv[0] == "sudo" for s in steps if s.argv)
    with pytest.raises(SglkitError, match="run it as root, or install sudo"):
        host.plan(machine(root=False, sudo=False))


def test_engine_running_but_socket_closed_to_this_user():
    h = machine(have=ALL)
    h.engine_error = "no Docker engine answers (... Permission denied)"
    with pytest.raises(SglkitError, match=r"usermod -aG docker"):
        host.plan(h)


def test_a_docker_host_that_does_not_answer_is_not_papered_over():
    h = machine(have=ALL, docker_host="tcp://10.0.0.9:2375")
    with pytest.raises(SglkitError, match=r"DOCKER_HOST=tcp://10.0.0.9:2375 does not answer"):
        host.plan(h)


def test_os_release_parsing():
    rel = host.parse_os_release("# comment\nID='debian'\nPRETTY_NAME=\"A B\"\nbad line\n")
    assert rel == {"ID": "debian", "PRETTY_NAME": "A B"}
    assert machine(MINT).debian_like and not machine(FEDORA).debian_like


def _shims(folder: Path) -> tuple[Path, Path]:
    """apt-get, npm, sudo and systemctl that record being called and fail."""
    bin_dir, record = folder / "bin", folder / "called"
    bin_dir.mkdir()
    for name in ("apt-get", "npm", "sudo", "systemctl"):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> {record}\nexit 1\n')
        shim.chmod(0o755)
    return bin_dir, record


def _setup(*args: str, path: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "invoke", "host.setup", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": path, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    bin_dir, record = _shims(tmp_path)
    # a PATH without the components, and an engine that does not answer
    res = _setup(
        "--tests", "--dry-run", path=str(bin_dir), env={"DOCKER_HOST": "unix:///nonexistent"}
    )
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    if not host.probe().debian_like:
        pytest.skip("this machine is not Debian-like")
    assert lines[1] == (
        "host.setup: [2/4] would run: apt-get install -y -q --no-install-recommends docker.io "
        "debootstrap prometheus prometheus-node-exporter"  # npm: the shim is on PATH
    )
    assert lines[3] == "host.setup: [4/4] would run: start the Docker engine (dockerd)"
    assert not record.exists()


@pytest.mark.requires("docker", "debootstrap", "prometheus", "node_exporter", "devcontainer")
def test_a_set_up_machine_is_a_no_op(tmp_path):
    """What CI and a second run see: nothing is installed or started, and it says so."""
    bin_dir, record = _shims(tmp_path)
    res = _setup("--tests", path=f"{bin_dir}:{os.environ['PATH']}")
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("host.setup: nothing to do (docker, debootstrap, prometheus,")
    assert not record.exists(), record.read_text()


def test_a_started_dockerd_writes_to_the_system_log_not_a_users_folder(tmp_path):
    """It writes for as long as it runs: under HOME it kept changing the user's sglkit folder
    (the test guard caught it during the e2e session)."""
    assert Path("/var/log/sglkit-dockerd.log") == host.DOCKERD_LOG
    argv = host.dockerd_argv(["sudo"], "/usr/sbin/dockerd")
    assert argv[0] == "sudo" and argv[-2:] == ["/usr/sbin/dockerd", "/var/log/sglkit-dockerd.log"]
    # the wrapper really sends the daemon's output there (a stand-in daemon, a temporary log)
    daemon = tmp_path / "dockerd"
    daemon.write_text("#!/bin/sh\necho daemon says hi\necho and complains >&2\n")
    daemon.chmod(0o755)
    log = tmp_path / "dockerd.log"
    r = subprocess.run(host.dockerd_argv([], str(daemon), log), capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert log.read_text() == "daemon says hi\nand complains\n"
