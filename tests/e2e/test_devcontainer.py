"""devcontainer.json checked by the reference CLI (@devcontainers/cli), and `devcontainer up`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from sglkit.containers import devcontainer
from sglkit.errors import SglkitError
from sglkit.observability import manifest as manifests
from tests.e2e.helpers import invoke, write_profile


@pytest.mark.requires("devcontainer")
@pytest.mark.parametrize("profile", ["cpu-dev", "qwen3-30b-a3b-gh200", "deepseek-v3-gh200"])
def test_generated_devcontainer_json_passes_read_configuration(tmp_path, profile):
    out = tmp_path / ".devcontainer" / "devcontainer.json"
    res = invoke("container.devcontainer", "--profile", profile, "--output", str(out), "--check")
    assert res.returncode == 0, res.stderr
    assert "read-configuration: ok" in res.stdout
    data = json.loads(out.read_text())
    assert data["postCreateCommand"][-1].endswith("post-create.sh")


@pytest.mark.requires("devcontainer")
def test_check_fails_where_the_cli_reads_something_else(tmp_path):
    with pytest.raises(SglkitError, match=r"read-configuration rejected .*not found"):
        devcontainer.read_configuration(tmp_path / "absent.json", workspace=tmp_path)
    # the CLI's JSONC parser is lenient (a truncated file reads as something), so check() also
    # needs valid JSON, and compares what the CLI read with what was written
    bad = tmp_path / "devcontainer.json"
    bad.write_text('{"image": "x", "mounts": ["type=bind,source=/a,target=/b"')
    with pytest.raises(SglkitError, match="not valid JSON"):
        devcontainer.check(bad, workspace=tmp_path)
    # the CLI substitutes ${localEnv:...}: a value that would not reach the container as written
    bad.write_text(json.dumps({"image": "x", "containerEnv": {"A": "${localEnv:HOME}"}}))
    with pytest.raises(SglkitError, match="containerEnv reads back as"):
        devcontainer.check(bad, workspace=tmp_path)


@pytest.mark.requires("docker", "debootstrap", "devcontainer")
def test_devcontainer_up_runs_init_run_and_post_create(
    docker_client, cpu_image, tmp_path, session_label, wait_for
):
    prof = write_profile(tmp_path)
    out = tmp_path / "ws" / ".devcontainer" / "devcontainer.json"
    res = invoke("container.devcontainer", "--profile", str(prof), "--output", str(out))
    assert res.returncode == 0, res.stderr
    # the CLI finds (and we clean) the container by this label
    id_label = f"org.sglkit.test={session_label}"
    argv = [
        shutil.which("devcontainer"),
        "up",
        "--workspace-folder",
        str(tmp_path / "ws"),
        "--config",
        str(out),
        "--id-label",
        id_label,
        "--log-format",
        "text",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        outcome = json.loads(proc.stdout.strip().splitlines()[-1])
        assert outcome["outcome"] == "success" and outcome["remoteUser"] == "devuser"
        assert "post-create: profile" in proc.stdout + proc.stderr
        # the image's entrypoint (init-run) runs under the CLI and writes its run to /telemetry
        root = tmp_path / "telemetry"
        run_dir = wait_for(
            lambda: manifests.latest_run_dir(root), timeout=60, what="a run in /telemetry"
        )
        wait_for(lambda: manifests.read(run_dir)["status"] == "ready", timeout=60, what="ready run")
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": id_label}):
            if c.labels.get("org.sglkit.managed") == "devcontainer":
                c.remove(force=True)
