"""A container run seen from the host (issue 18): obs.status asks the ports container.up
published, and only the secrets the profile names go into the container."""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import invoke, write_profile

pytestmark = pytest.mark.requires("docker", "debootstrap")


def test_auto_host_ports_obs_status_and_only_named_secrets(
    docker_client, cpu_image, tmp_path, wait_for
):
    prof = write_profile(tmp_path)
    data = json.loads(prof.read_text())
    inside = data["telemetry"]["ports"]["prometheus"]  # the port init-run listens on inside
    env = {"HF_TOKEN": "hf-e2e-value-18", "UNRELATED_TOKEN": "unrelated-e2e-value-18"}
    res = invoke("container.up", "--profile", str(prof), "--host-ports", "auto", "--json", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    up = json.loads(res.stdout)
    try:
        published = up["urls"]["prometheus"]
        assert published.startswith("http://127.0.0.1:")
        assert not published.endswith(f":{inside}"), "auto host ports should differ here"

        # 9. only HF_TOKEN (the default container.secrets) went in; named, never shown
        container = docker_client.containers.get(up["name"])
        names = {e.split("=", 1)[0]: e for e in container.attrs["Config"]["Env"]}
        assert names.get("HF_TOKEN") == "HF_TOKEN=hf-e2e-value-18"
        assert "UNRELATED_TOKEN" not in names
        said = res.stdout + res.stderr
        assert "secrets passed in (container.secrets): HF_TOKEN" in said
        assert "hf-e2e-value-18" not in said and "UNRELATED" not in said

        # 4. obs.status on the host reads the manifest's published port and checks the run id
        def healthy():
            st = invoke("obs.status", "--root", str(tmp_path / "telemetry"), "--json")
            return st if st.returncode == 0 else None

        st = wait_for(healthy, timeout=90, interval=1, what="obs.status exit 0 on the host")
        out = json.loads(st.stdout)
        assert out["prometheus_url"] == published
        assert out["manifest"]["run_id"] == up["run_id"]
        assert out["manifest"]["host_ports"][str(inside)] == int(published.rsplit(":", 1)[1])
        assert {t["job"] for t in out["targets"]} >= {"prometheus", "node"}
    finally:
        assert invoke("container.down", "--profile", str(prof)).returncode == 0
