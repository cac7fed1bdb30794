"""Each failure of container.up ends with one clear line, a non-zero exit, and no container left."""

from __future__ import annotations

import json
import socket

import pytest

from sglkit import profile as profiles
from sglkit.containers import engine, lifecycle
from sglkit.errors import SglkitError
from sglkit.observability import manifest as manifests
from tests.e2e.helpers import containers_named, invoke, write_profile


def _error_line(res) -> str:
    """The one error line; no traceback anywhere in the output."""
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_no_docker_engine(tmp_path):
    prof = write_profile(tmp_path)
    dead = f"unix://{tmp_path}/no-dockerd.sock"
    res = invoke("container.up", "--profile", str(prof), env={"DOCKER_HOST": dead})
    assert res.returncode == 1
    line = _error_line(res)
    assert line.startswith(f"error: no Docker engine answers at {dead} (DOCKER_HOST)")
    for task in ("status", "down", "build"):
        res = invoke(f"container.{task}", "--profile", str(prof), env={"DOCKER_HOST": dead})
        assert res.returncode == 1
        assert "no Docker engine answers" in _error_line(res)


@pytest.mark.requires("docker", "debootstrap")
def test_gpu_requested_without_nvidia_runtime(docker_client, cpu_image, tmp_path):
    if engine.has_nvidia_runtime(docker_client.info()):
        pytest.skip("this engine has the NVIDIA runtime: the failure cannot happen here")
    prof = write_profile(tmp_path)
    name = json.loads(prof.read_text())["container"]["name"]
    res = invoke("container.up", "--profile", str(prof), "--gpus", "all")
    assert res.returncode == 1
    line = _error_line(res)
    # the engine's own words, and what to install
    assert 'could not select device driver "" with capabilities: [[gpu]]' in line
    assert "NVIDIA Container Toolkit" in line
    assert containers_named(docker_client, name) == []  # the `created` container was removed


@pytest.mark.requires("docker", "debootstrap")
def test_port_in_use_is_named_by_its_profile_field(docker_client, cpu_image, tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        prof = write_profile(tmp_path, ports={"node_exporter": port})
        name = json.loads(prof.read_text())["container"]["name"]
        res = invoke("container.up", "--profile", str(prof))
        assert res.returncode == 1
        line = _error_line(res)
        assert line.startswith(f"error: telemetry.ports.node_exporter: port {port} on 127.0.0.1")
        assert "--host-ports auto" in line
        assert containers_named(docker_client, name) == []


@pytest.mark.requires("docker", "debootstrap")
def test_port_taken_when_the_engine_publishes_it(docker_client, cpu_image, tmp_path):
    """The engine's own refusal (a race past the pre-check): the created container is removed."""
    prof = profiles.load(write_profile(tmp_path))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        ports = {p: p for p in lifecycle.container_ports(prof).values()}
        ports[prof.telemetry["ports"]["prometheus"]] = port
        plan = lifecycle.plan(prof, run_id=manifests.new_run_id(), gpus=False, host_ports=ports)
        lifecycle.prepare_storage(plan.host_dirs, 1000, 1000)
        with pytest.raises(SglkitError) as err:
            lifecycle.create_and_start(docker_client, plan)
    msg = str(err.value)
    assert msg.startswith(f"telemetry.ports.prometheus: port {port} on 127.0.0.1 is in use")
    assert "\n" not in msg
    assert containers_named(docker_client, plan.name) == []


@pytest.mark.requires("docker", "debootstrap")
def test_image_that_does_not_exist(docker_client, cpu_image, tmp_path, session_label):
    missing = f"sglkit/e2e-missing:{session_label}"
    prof = write_profile(tmp_path, image=missing)
    name = json.loads(prof.read_text())["container"]["name"]
    res = invoke("container.up", "--profile", str(prof), "--no-build")
    assert res.returncode == 1
    assert _error_line(res).startswith(f"error: container.image: image {missing} not found")
    res = invoke("container.up", "--profile", str(prof), "--image", missing + "-other")
    assert res.returncode == 1
    assert "not found on this engine" in _error_line(res)
    assert containers_named(docker_client, name) == []


@pytest.mark.requires("docker", "debootstrap")
def test_manifest_never_ready(docker_client, cpu_image, tmp_path):
    """init-run runs, but writes its run elsewhere: the host's manifest never appears."""
    prof = profiles.load(write_profile(tmp_path))
    run_id = manifests.new_run_id()
    plan = lifecycle.plan(
        prof,
        run_id=run_id,
        gpus=False,
        command=["--profile", f"/profiles/{prof.path.name}", "--root", "/tmp/elsewhere",
                 "--run-id", run_id, "--bind", "0.0.0.0"],
    )  # fmt: skip
    lifecycle.prepare_storage(plan.host_dirs, 1000, 1000)
    said: list[str] = []
    with pytest.raises(SglkitError) as err:
        lifecycle.up(docker_client, plan, timeout=15, say=said.append, grace=5)
    msg = str(err.value)
    assert "the run was not ready within 15s (no manifest yet)" in msg
    assert f"container {plan.name} stopped and removed" in msg
    assert any("init-run" in line for line in said), said  # the container's last log lines
    assert containers_named(docker_client, plan.name) == []


@pytest.mark.requires("docker", "debootstrap")
def test_container_that_exits_before_ready(docker_client, cpu_image, tmp_path):
    prof = profiles.load(write_profile(tmp_path))
    plan = lifecycle.plan(
        prof,
        run_id=manifests.new_run_id(),
        gpus=False,
        command=["--profile", "/profiles/no-such-profile.yaml", "--root", "/telemetry"],
    )
    lifecycle.prepare_storage(plan.host_dirs, 1000, 1000)
    said: list[str] = []
    with pytest.raises(SglkitError, match=r"the container exited \(status 2\)"):
        lifecycle.up(docker_client, plan, timeout=60, say=said.append, grace=5)
    assert any("profile not found" in line for line in said), said
    assert containers_named(docker_client, plan.name) == []


@pytest.mark.requires("docker", "debootstrap")
def test_unreadable_profile_folder_is_refused_before_anything_starts(
    docker_client, cpu_image, tmp_path
):
    prof = write_profile(tmp_path)
    name = json.loads(prof.read_text())["container"]["name"]
    prof.parent.chmod(0o700)
    res = invoke("container.up", "--profile", str(prof))
    assert res.returncode == 1
    assert "is not readable by the container's user" in _error_line(res)
    assert containers_named(docker_client, name) == []


@pytest.mark.requires("docker", "debootstrap")
def test_offline_base_with_an_unreachable_mirror(docker_client, session_label, tmp_path):
    import glob
    import tempfile

    tag = f"sglkit/base:{session_label}"
    work = sorted(glob.glob(f"{tempfile.gettempdir()}/sglkit-base-*"))
    res = invoke(
        "container.base", "--offline", "--rebuild", "--tag", tag,
        "--mirror", "http://127.0.0.1:1/debian",
    )  # fmt: skip
    assert res.returncode == 1
    line = _error_line(res)
    assert line.startswith("error: container.base --offline: debootstrap")
    assert not engine.image_exists(docker_client, tag)
    # its temporary root is gone (others' may come and go: compare only what we could have made)
    assert set(glob.glob(f"{tempfile.gettempdir()}/sglkit-base-*")) <= set(work)


@pytest.mark.requires("docker")
def test_base_without_offline_where_no_registry_answers(docker_client, session_label):
    tag = f"sglkit/base:pull-{session_label}"
    res = invoke("container.base", "--tag", tag)
    if res.returncode == 0:  # a registry answered: the pulled image is tagged
        assert engine.image_exists(docker_client, tag)
        docker_client.images.remove(tag)
        return
    assert res.returncode == 1
    line = _error_line(res)
    assert line.startswith("error: container.base: cannot pull debian:bookworm")
    assert line.endswith("run `invoke container.base --offline`")
    assert not engine.image_exists(docker_client, tag)
