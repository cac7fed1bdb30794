"""The test sandbox (tests/isolation.py): where defaults land, and the guard that fails a run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sglkit import profile as profiles
from tests import isolation

REPO = Path(__file__).resolve().parents[2]


def test_home_xdg_and_sglkit_roots_are_in_a_temporary_folder():
    home = Path(os.environ["HOME"])
    real = Path(os.environ[isolation.REAL_HOME_VAR])
    assert home != real
    assert home.is_relative_to(Path(tempfile.gettempdir()))
    assert Path(os.path.expanduser("~")) == home
    for var in (*isolation.XDG, *isolation.SGLKIT_ROOTS):
        assert Path(os.environ[var]).is_relative_to(home), var
    for var in isolation.UNSET:
        assert var not in os.environ, var
    # the default profile's roots resolve into the sandbox
    p = profiles.load("cpu-dev")
    assert Path(p.telemetry["root"]).is_relative_to(home)
    assert Path(p.data["cache"]["root"]).is_relative_to(home)


LEAK = """
from pathlib import Path

def test_writes(tmp_path):
    target = Path({target!r})
    target.mkdir(parents=True, exist_ok=True)
    (target / "manifest.json").write_text("{{}}")
"""


def _inner(tmp_path: Path, target: Path):
    """A pytest with only the isolation plugin, whose real HOME is tmp_path/home."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    test = tmp_path / "inner" / "test_inner.py"
    test.parent.mkdir(exist_ok=True)
    test.write_text(LEAK.format(target=str(target)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SGLKIT_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.isolation", "-p", "no:cacheprovider",
         "-q", "--rootdir", str(test.parent), str(test)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**env, "HOME": str(home)},
    )  # fmt: skip


def test_guard_fails_a_run_that_writes_a_run_folder_into_the_real_home(tmp_path):
    run = tmp_path / "home" / ".local/share/sglkit/telemetry/runs/leak"
    res = _inner(tmp_path, run)
    assert res.returncode == 1, res.stdout
    assert "1 passed" in res.stdout  # the test itself passed: the guard failed the run
    assert "touched the real HOME's sglkit folders" in res.stdout
    assert f"appeared: {run / 'manifest.json'}" in res.stdout


def test_guard_passes_a_run_that_writes_elsewhere(tmp_path):
    res = _inner(tmp_path, tmp_path / "elsewhere" / "runs" / "fine")
    assert res.returncode == 0, res.stdout
    assert "touched" not in res.stdout


def test_the_guard_watches_only_the_real_homes_folders(tmp_path):
    """A deployment's root outside HOME (the devcontainer's /telemetry, written by its own live
    run) is not the user's folder: watching it would fail gpu_smoke inside the container."""
    home = tmp_path / "home"
    env = {"SGLKIT_TELEMETRY_ROOT": "/telemetry", "SGLKIT_CACHE_ROOT": str(home / "c")}
    paths = isolation.watched(home, env)
    assert Path("/telemetry") not in paths
    assert home / "c" in paths and home / ".local/share/sglkit" in paths
    assert all(p.is_relative_to(home) for p in paths)
