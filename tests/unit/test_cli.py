"""CLI conventions for every task of the collection: `-h` is help, output is never wrapped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _task_names() -> list[str]:
    import tasks

    return sorted(tasks.ns.task_names)


TASKS = _task_names()


def test_the_collection_has_every_concern():
    concerns = {name.split(".")[0] for name in TASKS}
    assert {"container", "obs", "cache", "kernels", "profile", "host"} <= concerns


@pytest.mark.parametrize("name", TASKS)
def test_no_task_takes_h_as_a_short_flag(name):
    import tasks

    task = tasks.ns[name]
    owners = [a.name for a in task.get_arguments(ignore_unknown_help=True) if "h" in a.names]
    assert owners == ["help"], f"{name}: -h is the task's help, not {owners}"


@pytest.mark.parametrize("name", TASKS)
def test_dash_h_shows_the_tasks_help(name):
    res = subprocess.run(
        [sys.executable, "-m", "invoke", name, "-h"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"Usage: inv[oke] [--core-opts] {name} "), res.stdout[:300]
    assert "Docstring:" in res.stdout
    assert "error" not in res.stderr


def test_help_also_when_positional_arguments_are_missing_or_given():
    """invoke hands a missing positional the next token; -h still means help, and a task that
    lacks its positional arguments without -h still says so."""
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "invoke", *a], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    for argv in (("obs.compare", "--help"), ("obs.compare", "run-a", "-h")):
        res = run(*argv)
        assert res.returncode == 0 and res.stdout.startswith("Usage:"), (argv, res.stderr)
    res = run("obs.compare", "run-a")
    assert res.returncode != 0
    assert "did not receive required positional arguments: 'run_b'" in res.stderr


LONG = "/srv/" + "/".join(f"folder-{i:03d}" for i in range(30)) + "/manifest.json"


@pytest.mark.parametrize("stderr", [False, True])
def test_the_console_never_wraps_on_a_pipe(stderr):
    """Piped (as in CI or `| tee`), a long line, a table row and a status message stay whole."""
    code = f"""
from rich.table import Table
from sglkit.console import console, echo
con = console(stderr={stderr})
con.print("[bold]up[/]: " + {LONG!r})
t = Table("kind", "folder")
t.add_row("triton", {LONG!r})
con.print(t)
echo("plain", {LONG!r}, stderr={stderr})
"""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr
    text = res.stderr if stderr else res.stdout
    assert len(LONG) > 200
    lines = [ln for ln in text.splitlines() if LONG in ln]
    assert len(lines) == 3, text
    assert lines[0] == "up: " + LONG
    assert lines[2] == "plain " + LONG
    assert all(len(ln) == len(ln.rstrip()) for ln in text.splitlines()), "no padding"


def test_every_console_is_the_kits_console():
    """One console: no module but sglkit/console.py builds a rich Console of its own."""
    offenders = []
    for path in (REPO / "sglkit").rglob("*.py"):
        if path.name == "console.py" and path.parent.name == "sglkit":
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if "Console(" in line and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert offenders == []


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [ln.strip() for ln in section.splitlines() if ln.startswith("    ") and ln.strip()]


def test_readme_commands_and_ci_run_agree():
    """The README's first command sets the host up and runs container.up; .ci/run runs its second
    command (the tests) verbatim, fails on any failure and prints failing test names."""
    first, second = _readme_commands()[:2]
    assert first == "python3 -m pip install -e . && invoke host.setup && invoke container.up"
    assert second.startswith("invoke host.setup --tests && ")
    assert "nox -s lint tests e2e -- -rf" in second
    ci = (REPO / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert [ln for ln in ci.splitlines() if ln == second] == [second]
    assert ci.rstrip().splitlines()[-1] == second  # its status is the script's status
    assert os.access(REPO / ".ci" / "run", os.X_OK)
    res = subprocess.run(["bash", "-n", str(REPO / ".ci" / "run")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_no_task_flag_has_a_numeric_default():
    """invoke casts a flag whose default is a number before the task runs: `--timeout abc` would
    end in its ValueError traceback instead of a line naming the flag (sglkit.cli.number)."""
    import inspect

    import tasks

    numeric = [
        f"{cname}.{tname} --{p.name.replace('_', '-')}"
        for cname, coll in tasks.ns.collections.items()
        for tname, t in coll.tasks.items()
        for p in inspect.signature(t.body).parameters.values()
        if isinstance(p.default, int | float) and not isinstance(p.default, bool)
    ]
    assert numeric == []


@pytest.mark.parametrize(
    "argv",
    [
        ["cache.deepgemm", "--timeout", "abc"],
        ["server.bench", "--requests", "many"],
        ["server.down", "--grace", "x"],
        ["container.down", "--grace", "x"],
    ],
)
def test_a_bad_number_is_one_line_naming_the_flag(argv, tmp_path):
    r = subprocess.run([sys.executable, "-m", "invoke", *argv], cwd=REPO, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "Traceback" not in r.stderr
    assert f"error: {argv[1]}: expected a number" in r.stderr
