"""End-to-end fixtures: a real Docker engine, the offline base image, the cpu image, test profiles.

Everything a test creates carries the label org.sglkit.test=<session label> (the session label
holds this pytest's pid); at the start of a session, labelled containers of sessions whose pid is
gone are removed, and at its end this session's own are.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from sglkit.containers import engine
from tests.e2e.helpers import CPU_IMAGE, invoke, write_profile


def _session_label() -> str:
    return f"e2e-{os.getpid()}-{secrets.token_hex(3)}"


def _pid_alive(label: str) -> bool:
    try:
        pid = int(label.split("-")[1])
    except (IndexError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists()


def _remove_labelled(client, keep=lambda label: False) -> None:
    for c in client.containers.list(all=True, filters={"label": engine.LABEL_TEST}):
        label = c.labels.get(engine.LABEL_TEST, "")
        if not keep(label):
            c.remove(force=True)


@pytest.fixture(scope="session")
def docker_client():
    """The engine (tests using it are marked requires("docker"): skipped or failed before this)."""
    return engine.client()


@pytest.fixture(scope="session")
def session_label(docker_client):
    label = _session_label()
    # leftovers of earlier sessions that died (their pid is gone)
    _remove_labelled(docker_client, keep=_pid_alive)
    mp = pytest.MonkeyPatch()
    mp.setenv("SGLKIT_TEST_LABEL", label)
    yield label
    mp.undo()
    _remove_labelled(docker_client, keep=lambda lab: lab != label)
    # images that rebuilds left untagged (ours only: the label says sglkit built them)
    docker_client.images.prune(filters={"dangling": True, "label": f"{engine.LABEL}=image"})


@pytest.fixture(scope="session")
def cpu_image(docker_client, session_label, tmp_path_factory):
    """The offline base image (built with debootstrap if missing) and the cpu image, once.

    Tests using it are marked requires("docker", "debootstrap").
    """
    base_missing = not engine.image_exists(docker_client, "sglkit/base:bookworm")
    res = invoke("container.base", "--offline")
    assert res.returncode == 0, res.stderr[-2000:]
    storage = tmp_path_factory.mktemp("build-storage")
    prof = write_profile(tmp_path_factory.mktemp("build-profile"), storage=storage)
    res = invoke("container.build", "--profile", str(prof))
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    image_id = res.stdout.strip().splitlines()[-1]
    assert docker_client.images.get(CPU_IMAGE).id == image_id
    record = json.loads((storage / "images" / "cpu.json").read_text())
    assert record["id"] == image_id
    return {"id": image_id, "build_log": res.stderr, "base_built": base_missing}
