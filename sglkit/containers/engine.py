"""The Docker engine, through the docker SDK: one client, one-line errors, test labels."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from sglkit.errors import SglkitError

# Every container and image the kit creates carries this label; tests add LABEL_TEST=<id> so that
# parallel runs and leftovers can be told apart and cleaned.
LABEL = "org.sglkit.managed"
LABEL_PROFILE = "org.sglkit.profile"
LABEL_RUN = "org.sglkit.run-id"
LABEL_VARIANT = "org.sglkit.variant"
LABEL_TEST = "org.sglkit.test"


def engine_url() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def client(timeout: float = 30):
    """A docker client that has answered a ping; SglkitError naming DOCKER_HOST otherwise."""
    import docker
    from docker.errors import DockerException

    try:
        c = docker.from_env(timeout=int(timeout))
        c.ping()
    except (DockerException, OSError) as e:
        raise SglkitError(
            f"no Docker engine answers at {engine_url()} (DOCKER_HOST): {_short(e)}; "
            "start dockerd (or Docker Desktop) or point DOCKER_HOST at a running engine"
        ) from None
    except Exception as e:  # requests' ConnectionError and friends
        raise SglkitError(
            f"no Docker engine answers at {engine_url()} (DOCKER_HOST): {_short(e)}; "
            "start dockerd or point DOCKER_HOST at a running engine"
        ) from None
    return c


def has_nvidia_runtime(info: dict[str, Any]) -> bool:
    """Whether `docker info` shows the NVIDIA container runtime (what --gpus needs)."""
    runtimes = info.get("Runtimes") or {}
    return "nvidia" in runtimes or info.get("DefaultRuntime") == "nvidia"


def image_exists(c, ref: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        c.images.get(ref)
    except ImageNotFound:
        return False
    return True


def test_labels() -> dict[str, str]:
    """Labels to add to what we create: SGLKIT_TEST_LABEL=<id> marks a test's containers."""
    tag = os.environ.get("SGLKIT_TEST_LABEL")
    return {LABEL_TEST: tag} if tag else {}


def stream_lines(chunks: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Build/pull JSON chunks -> text lines; an error chunk raises SglkitError with its message."""
    buf = ""
    for chunk in chunks:
        if "error" in chunk:
            detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
            raise BuildFailed(detail.strip().splitlines()[-1] if detail.strip() else "build failed")
        text = chunk.get("stream") or chunk.get("status") or ""
        buf += text
        while "\n" in buf:
            line, buf = buf.split("\n", 1)
            yield line
    if buf:
        yield buf


class BuildFailed(SglkitError):
    pass


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[-1] if text else type(e).__name__
    return line if len(line) < 300 else line[:297] + "..."
