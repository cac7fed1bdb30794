"""GPU tests: the smoke checks' results, and their summary table printed last."""

from __future__ import annotations

import os

import pytest

from sglkit.gpu.checks import summary_table, write_json

_RESULTS: list = []


@pytest.fixture
def smoke_results() -> list:
    return _RESULTS


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _RESULTS:
        return
    path = os.environ.get("SGLKIT_GPU_SMOKE_JSON")
    if path:
        write_json(path, _RESULTS)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    text = summary_table(sorted(_RESULTS, key=lambda r: r.number))
    if reporter is not None:
        reporter.write_line("")
        for line in text.splitlines():
            reporter.write_line(line)
    else:
        print("\n" + text)
