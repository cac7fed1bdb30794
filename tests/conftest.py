"""Test scheme: real components behind `@pytest.mark.requires(...)`.

A test that needs a binary or daemon is marked `requires("prometheus")`; where the component is
absent it is skipped with the reason, unless SGLKIT_REQUIRE names it (CI does), and then it fails.

Every test runs with HOME, the XDG folders and the SGLKIT_* roots in a temporary folder, and the
session fails if anything under the real HOME's sglkit folders changes (tests/isolation.py).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from sglkit.net import free_port as _free_port
from sglkit.net import wait_for as _wait_for

# HOME, XDG and SGLKIT_* roots in a temporary folder; the session fails if the real ones change
from tests.isolation import (  # noqa: F401  (hooks, found by name)
    pytest_configure,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_unconfigure,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _binary(*names: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        missing = [n for n in names if not shutil.which(n)]
        return f"{', '.join(missing)} not on PATH" if missing else None

    return probe


def _any_binary(*names: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        if any(shutil.which(n) for n in names):
            return None
        return f"none of {', '.join(names)} on PATH"

    return probe


def _docker() -> str | None:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as e:
        return f"no Docker engine answers ({type(e).__name__}: {e})"
    return None


def _import(module: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        try:
            __import__(module)
        except Exception as e:
            return f"{module} does not import ({type(e).__name__})"
        return None

    return probe


def _gpu() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as e:
        return f"no NVIDIA GPU answers NVML ({type(e).__name__})"
    return None if count else "NVML reports no GPU"


PROBES: dict[str, Callable[[], str | None]] = {
    "docker": _docker,
    "prometheus": _binary("prometheus", "promtool"),
    "node_exporter": _any_binary("prometheus-node-exporter", "node_exporter"),
    "debootstrap": _binary("debootstrap"),
    "devcontainer": _binary("devcontainer"),
    "chromium": _any_binary("chromium", "chromium-browser"),
    "gpu": _gpu,
    "sglang": _import("sglang"),
}


@functools.cache
def missing(name: str) -> str | None:
    """Why component `name` is unusable here, or None when it is present."""
    if name not in PROBES:
        raise KeyError(f"unknown requirement {name!r}; known: {', '.join(PROBES)}")
    return PROBES[name]()


def required_here() -> set[str]:
    return {n.strip() for n in os.environ.get("SGLKIT_REQUIRE", "").split(",") if n.strip()}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires"):
        for name in marker.args:
            reason = missing(name)
            if reason is None:
                continue
            if name in required_here():
                pytest.fail(f"{name} is required (SGLKIT_REQUIRE) but absent: {reason}")
            pytest.skip(f"needs {name}: {reason}")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Call it for a free loopback port."""
    return _free_port


@pytest.fixture
def wait_for():
    """wait_for(condition, timeout, what=...) -> value; TimeoutError at the deadline."""
    return _wait_for


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def _sigint_as_at_a_terminal() -> None:  # runs in the child between fork and exec
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def ctrl_c_able():
    """preexec_fn for a child that a test stops with SIGINT, as Ctrl-C at a terminal does.

    A test run started in the background of a non-interactive shell (a CI script, nohup) has
    SIGINT ignored, its children inherit that, and Python then installs no KeyboardInterrupt
    handler: the child would never see the signal the test sends."""
    return _sigint_as_at_a_terminal
