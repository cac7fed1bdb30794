"""Tests never touch a user's folders: a sandboxed HOME for the session, and a guard.

At configure time (before any test module is imported or any fixture runs), HOME, the XDG base
folders and every SGLKIT_* root point into one temporary folder, so that defaults such as
`~/.local/share/sglkit/telemetry` land there; subprocesses inherit it. `SGLKIT_PROFILE` and the
overrides that would beat a test profile's own folders (SGLKIT_MODELS_ROOT,
SGLKIT_TRITON_CACHE_DIR) are unset, so a user's environment does not change what tests use.

The guard snapshots the real HOME's sglkit folders (and the real XDG and SGLKIT_* roots, where
set and inside that HOME) before the session and compares at its end: anything that appeared, changed or went away
fails the run, with the paths listed.

Loaded by tests/conftest.py; `pytest -p tests.isolation` loads it alone (its own test does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

XDG = {
    "XDG_CONFIG_HOME": ".config",
    "XDG_CACHE_HOME": ".cache",
    "XDG_DATA_HOME": ".local/share",
    "XDG_STATE_HOME": ".local/state",
}
# the roots behind the profiles' defaults (sglkit/profile/schema.py): set into the sandbox
SGLKIT_ROOTS = {
    "SGLKIT_CACHE_ROOT": ".cache/sglkit",
    "SGLKIT_TELEMETRY_ROOT": ".local/share/sglkit/telemetry",
    "SGLKIT_STORAGE": "sglkit-data",
}
# overrides that win over a profile's own folders (and the default profile): unset, so that a
# test's profile decides, and its folders are the test's temporary ones
SGLKIT_OVERRIDES = ("SGLKIT_MODELS_ROOT", "SGLKIT_TRITON_CACHE_DIR")
UNSET = ("SGLKIT_PROFILE", *SGLKIT_OVERRIDES)
REAL_HOME_VAR = "SGLKIT_TEST_REAL_HOME"

_state: dict = {}


def watched(home: Path, env: dict[str, str]) -> list[Path]:
    """The real folders the kit would write to by default, for this HOME and environment."""
    paths = [
        home / ".cache/sglkit",
        home / ".local/share/sglkit",
        home / ".local/state/sglkit",
        home / ".config/sglkit",
        home / "sglkit-data",
    ]
    paths += [Path(env[k]) / "sglkit" for k in XDG if env.get(k)]
    paths += [Path(env[k]) for k in (*SGLKIT_ROOTS, *SGLKIT_OVERRIDES) if env.get(k)]
    # only what lies in the user's HOME: a root outside it is a deployment's (in the devcontainer
    # SGLKIT_TELEMETRY_ROOT=/telemetry, where the container's own live run writes all the time),
    # and the sandbox points every SGLKIT_* root away from it anyway
    return sorted({p for p in paths if p.is_relative_to(home)})


def snapshot(paths: list[Path]) -> dict[str, tuple]:
    """path -> (kind, size, mtime_ns) for every watched path and everything under it."""
    seen: dict[str, tuple] = {}

    def add(p: Path) -> None:
        try:
            st = p.lstat()
        except OSError:
            return
        kind = "dir" if p.is_dir() and not p.is_symlink() else "file"
        seen[str(p)] = (kind, st.st_size if kind == "file" else 0, st.st_mtime_ns)

    for root in paths:
        add(root)
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in os.walk(root):
                for name in dirnames + filenames:
                    add(Path(dirpath) / name)
    return seen


def differences(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    out = [f"appeared: {p}" for p in sorted(after.keys() - before.keys())]
    out += [f"changed:  {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    out += [f"removed:  {p}" for p in sorted(before.keys() - after.keys())]
    return out


def pytest_configure(config: pytest.Config) -> None:
    if _state:  # loaded twice (conftest and -p): configure once
        return
    real_env = dict(os.environ)
    real_home = Path(real_env.get("HOME") or os.path.expanduser("~"))
    paths = watched(real_home, real_env)
    sandbox = Path(tempfile.mkdtemp(prefix="sglkit-test-home-"))
    _state.update(paths=paths, before=snapshot(paths), sandbox=sandbox, env=real_env)
    os.environ["HOME"] = str(sandbox)
    os.environ[REAL_HOME_VAR] = str(real_home)
    for var, rel in {**XDG, **SGLKIT_ROOTS}.items():
        os.environ[var] = str(sandbox / rel)
    for var in UNSET:
        os.environ.pop(var, None)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _state or "diff" in _state:
        return
    _state["diff"] = differences(_state["before"], snapshot(_state["paths"]))
    if _state["diff"]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    diff = _state.get("diff")
    if diff:
        terminalreporter.section(
            "sglkit: the tests touched the real HOME's sglkit folders", red=True
        )
        for line in diff:
            terminalreporter.line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    sandbox = _state.get("sandbox")
    if sandbox is not None and "diff" in _state:
        shutil.rmtree(sandbox, ignore_errors=True)
        real = _state["env"]
        for var in (*XDG, *SGLKIT_ROOTS, *UNSET, "HOME", REAL_HOME_VAR):
            if var in real:
                os.environ[var] = real[var]
            else:
                os.environ.pop(var, None)
        _state.clear()
