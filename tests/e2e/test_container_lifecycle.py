"""The devcontainer on a real Docker engine: offline base, cpu build, up -> ready -> down -> up."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

from sglkit.containers import engine, render
from sglkit.observability import manifest as manifests
from sglkit.profile.schema import DEFAULT_USER
from tests.e2e.helpers import REPO, containers_named, invoke, write_profile

pytestmark = pytest.mark.requires("docker", "debootstrap")


def test_offline_base_image_is_debian_bookworm(docker_client, cpu_image, session_label):
    image = docker_client.images.get("sglkit/base:bookworm")
    assert image.labels.get("org.sglkit.managed") == "base"
    out = docker_client.containers.run(
        "sglkit/base:bookworm",
        ["cat", "/etc/debian_version"],
        remove=True,
        labels={"org.sglkit.test": session_label},
    )
    assert out.decode().startswith("12."), out


def test_build_streams_its_log_and_tags_the_image(docker_client, cpu_image, session_label):
    assert "Step 1/" in cpu_image["build_log"]
    assert "built sglkit/dev:cpu" in cpu_image["build_log"]
    image = docker_client.images.get("sglkit/dev:cpu")
    assert image.labels["org.sglkit.variant"] == "cpu"
    assert image.attrs["Config"]["User"] == DEFAULT_USER == "devuser"  # as the user's fork
    assert image.attrs["Config"]["WorkingDir"] == "/opt/sglkit/src"
    # rustup and oh-my-zsh are on by default and cannot be fetched here: one line each says so,
    # in the build's output when the step ran, and in the image's ~/.sglkit-build-notes always
    # (a build from the layer cache, as a second session's, prints nothing of the step)
    notes = (
        "note: oh-my-zsh skipped: github.com is not reachable from this build",
        "note: rustup skipped: sh.rustup.rs is not reachable from this build",
    )
    kept = docker_client.containers.run(
        "sglkit/dev:cpu", [f"/home/{DEFAULT_USER}/.sglkit-build-notes"], entrypoint=["cat"],
        remove=True, labels={"org.sglkit.test": session_label},
    ).decode()  # fmt: skip
    assert kept.splitlines() == list(notes), kept
    log = cpu_image["build_log"]
    if "note: rustup skipped" in log.replace('echo "note: rustup', ""):
        for note in notes:  # the step's output line, not the RUN line that holds the echo
            assert re.search(rf"^\s*{re.escape(note)}$", log, re.M), note
    assert image.attrs["Config"]["Entrypoint"][-2:] == ["-m", "sglkit.observability.init_run"]


PINS = dict(line.split("==") for line in render.requirements().splitlines())


def _node_exporter_up(prom_url: str, node_port: int) -> bool:
    r = requests.get(f"{prom_url}/api/v1/query", params={"query": "up"}, timeout=5)
    r.raise_for_status()
    for sample in r.json()["data"]["result"]:
        if sample["metric"].get("instance", "").endswith(f":{node_port}"):
            return sample["value"][1] == "1"
    return False


def test_up_ready_prometheus_sees_node_exporter_then_down_and_a_second_run(
    docker_client, cpu_image, tmp_path, wait_for
):
    prof = write_profile(tmp_path)
    data = json.loads(prof.read_text())
    name = data["container"]["name"]
    node_port = data["telemetry"]["ports"]["node_exporter"]
    telemetry = tmp_path / "telemetry"

    res = invoke("container.up", "--profile", str(prof), "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    first = json.loads(res.stdout)
    run_dir = telemetry / "runs" / first["run_id"]
    assert first["manifest"] == str(run_dir / "manifest.json")
    assert manifests.read(run_dir)["status"] == "ready"
    # published on the host's loopback, at the profile's ports ("same" host ports)
    prom = first["urls"]["prometheus"]
    assert prom == f"http://127.0.0.1:{data['telemetry']['ports']['prometheus']}"
    assert first["urls"]["node_exporter"].startswith(f"http://127.0.0.1:{node_port}/")
    # the host asks the container's Prometheus, which has scraped the container's node_exporter
    wait_for(lambda: _node_exporter_up(prom, node_port), timeout=90, interval=1, what="up{node}==1")

    st = invoke("container.status", "--profile", str(prof), "--json")
    assert st.returncode == 0, st.stderr
    info = json.loads(st.stdout)
    assert (info["state"], info["run_id"], info["manifest_status"]) == (
        "running",
        first["run_id"],
        "ready",
    )
    assert info["services"]["prometheus"]["url"] == prom

    cmd = (
        "id -un; sudo -n true && echo sudo-ok; uv --version; command -v python3; touch /cache/x;"
        " readlink ~/.cache/flashinfer; touch ~/.cache/flashinfer/probe;"
        " python3 -c 'import typer, ray; print(typer.__version__, ray.__version__)'"
    )
    sh = invoke("container.shell", "--profile", str(prof), "--command", cmd)
    assert sh.returncode == 0, sh.stdout + sh.stderr
    lines = sh.stdout.splitlines()
    assert lines[:2] == ["devuser", "sudo-ok"]  # the non-root dev user, with sudo
    assert lines[2].startswith(f"uv {PINS['uv']}")
    assert lines[3] == "/opt/sglkit/venv/bin/python3"  # a login shell keeps the kit's venv
    assert (tmp_path / "cache" / "x").exists()  # the cache mount is the host folder
    # FlashInfer's cache in HOME is the cache mount's, where FLASHINFER_WORKSPACE_BASE leads
    assert lines[4] == "/cache/flashinfer/.cache/flashinfer"
    assert (tmp_path / "cache" / "flashinfer" / ".cache" / "flashinfer" / "probe").exists()
    assert lines[5] == f"{PINS['typer']} {PINS['ray']}"
    assert invoke("container.shell", "--profile", str(prof), "--command", "exit 7").returncode == 7
    # the GPU smoke test runs inside the image, from the kit's own tests and noxfile there;
    # without a GPU every check skips with its reason and the session exits 0
    smoke = invoke("container.shell", "--profile", str(prof), "--command", "nox -s gpu_smoke")
    text = smoke.stdout + smoke.stderr
    assert smoke.returncode == 0, text[-3000:]
    assert "Session gpu_smoke was successful" in text, text[-3000:]
    counts = re.search(r"(\d+) passed, (\d+) skipped, (\d+) failed", text)
    assert counts and counts.group(1) == counts.group(3) == "0" and int(counts.group(2)) > 0
    # Grafana is not in the cpu image: absent, with the reason, like Jaeger
    grafana = manifests.read(run_dir)["services"]["grafana"]
    assert grafana["status"] == "absent" and "grafana, grafana-server" in grafana["reason"]

    lg = invoke("container.logs", "--profile", str(prof), "--tail", "50")
    assert lg.returncode == 0 and first["run_id"] in lg.stdout

    # logs -f follows until the container goes away
    follower = subprocess.Popen(
        [sys.executable, "-m", "invoke", "container.logs", "--profile", str(prof), "-f"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        down = invoke("container.down", "--profile", str(prof))
        assert down.returncode == 0, down.stderr
        followed, _ = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0 and first["run_id"] in followed
    assert containers_named(docker_client, name) == []
    gone = invoke("container.status", "--profile", str(prof))
    assert gone.returncode == 3 and "no such container" in gone.stdout
    # telemetry stays on the host, and init-run closed its manifest on SIGTERM
    assert manifests.read(run_dir)["status"] == "stopped"

    res2 = invoke("container.up", "--profile", str(prof), "--json")
    assert res2.returncode == 0, res2.stderr[-3000:]
    second = json.loads(res2.stdout)
    assert second["run_id"] != first["run_id"]
    runs = sorted(p.name for p in (telemetry / "runs").iterdir())
    assert runs == sorted([first["run_id"], second["run_id"]])
    assert (telemetry / "latest").resolve() == (telemetry / "runs" / second["run_id"]).resolve()
    assert invoke("container.down", "--profile", str(prof)).returncode == 0
    assert containers_named(docker_client, name) == []
    # down again: nothing to do, not an error
    again = invoke("container.down", "--profile", str(prof))
    assert again.returncode == 0 and "no such container" in again.stdout


def test_up_refuses_a_second_container_of_the_same_name(docker_client, cpu_image, tmp_path):
    prof = write_profile(tmp_path)
    name = json.loads(prof.read_text())["container"]["name"]
    assert invoke("container.up", "--profile", str(prof)).returncode == 0
    try:
        res = invoke("container.up", "--profile", str(prof))
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1].startswith(f"error: container {name} is already")
        assert len(containers_named(docker_client, name)) == 1
    finally:
        invoke("container.down", "--profile", str(prof))


def test_up_builds_a_missing_image_first(docker_client, cpu_image, tmp_path, session_label):
    """The README's first command on a machine without the image: up builds it, then runs it."""
    tag = f"sglkit/dev:{session_label}"
    prof = write_profile(tmp_path, image=tag)
    name = json.loads(prof.read_text())["container"]["name"]
    try:
        res = invoke("container.up", "--profile", str(prof))
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"image {tag} missing; building it first" in res.stderr
        assert f"built {tag}" in res.stderr
        assert docker_client.images.get(tag).labels["org.sglkit.variant"] == "cpu"
        assert "prometheus http://127.0.0.1:" in res.stdout
    finally:
        invoke("container.down", "--profile", str(prof))
        if engine.image_exists(docker_client, tag):
            docker_client.images.remove(tag)
    assert containers_named(docker_client, name) == []


def test_interactive_shell_on_a_terminal(docker_client, cpu_image, tmp_path):
    """container.shell on a pseudo-terminal: keystrokes in, output back, the shell's exit status."""
    import os
    import pty
    import select
    import time

    prof = write_profile(tmp_path)
    assert invoke("container.up", "--profile", str(prof)).returncode == 0
    try:
        pid, fd = pty.fork()
        if pid == 0:  # the child: invoke on the pty
            os.chdir(REPO)
            os.execv(
                sys.executable,
                [sys.executable, "-m", "invoke", "container.shell", "--profile", str(prof)],
            )
        os.write(fd, b"echo tty-$((40+2)) $(tty); exit 3\n")
        seen = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
        status = None
        while status is None and time.monotonic() < deadline + 30:
            done, st = os.waitpid(pid, os.WNOHANG)
            status = st if done else None
            time.sleep(0.1)
        if status is None:  # never hang the suite on a stuck child
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert b"tty-42 /dev/pts/" in seen, seen[-500:]
        assert status is not None and os.waitstatus_to_exitcode(status) == 3
    finally:
        invoke("container.down", "--profile", str(prof))
