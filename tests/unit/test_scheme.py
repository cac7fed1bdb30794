"""The test scheme itself: a missing component skips, or fails when SGLKIT_REQUIRE names it."""

import time
from pathlib import Path

import pytest

from sglkit.net import free_port, port_in_use, wait_for

pytest_plugins = ["pytester"]

BODY = """
import pytest

@pytest.mark.requires("debootstrap")
def test_needs_it():
    pass
"""


def test_missing_component_skips_then_fails_when_required(pytester, monkeypatch):
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makepyfile(BODY)
    monkeypatch.setenv("PATH", str(pytester.path))  # nothing on PATH: debootstrap is absent
    monkeypatch.delenv("SGLKIT_REQUIRE", raising=False)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(skipped=1)
    monkeypatch.setenv("SGLKIT_REQUIRE", "docker,debootstrap")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(errors=1)


def test_wait_for_returns_value_or_times_out():
    t0 = time.monotonic()
    state = {"n": 0}

    def later():
        state["n"] += 1
        return state["n"] if state["n"] >= 3 else None

    assert wait_for(later, timeout=5, interval=0.001) == 3
    with pytest.raises(TimeoutError, match="the sky"):
        wait_for(lambda: 1 / 0, timeout=0.2, what="the sky")
    assert time.monotonic() - t0 < 5


def test_free_port_is_free_and_bound_port_is_not():
    import socket

    port = free_port()
    assert not port_in_use(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert port_in_use(port)


def test_a_wildcard_bind_checks_its_port_on_every_interface_but_is_reached_on_loopback():
    """init-run checks the ports of a 0.0.0.0 listener on 0.0.0.0 (net.probe_host), so a port
    another process holds on loopback alone counts as taken; clients reach it on loopback
    (net.client_host), as the run's Prometheus scrapes it."""
    import socket

    from sglkit.net import client_host, probe_host

    assert client_host("0.0.0.0") == "127.0.0.1" and probe_host("0.0.0.0") == "0.0.0.0"
    assert probe_host("::") == probe_host("") == client_host("::") == "127.0.0.1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert port_in_use(s.getsockname()[1], probe_host("0.0.0.0"))
