"""Sessions: lint, tests, e2e (real Docker engine), gpu_smoke (the current interpreter's GPU stack).

Every session installs from pyproject.toml, the one pinned dependency source.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _pinned(name: str) -> str:
    for req in PYPROJECT["project"]["optional-dependencies"]["dev"]:
        if req.split("==")[0].lower() == name:
            return req
    raise LookupError(f"{name} is not pinned in pyproject.toml's dev extra")


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check over everything, tasks.py and noxfile.py included."""
    session.install(_pinned("ruff"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests (real prometheus, node_exporter, processes); posargs to pytest."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests", "--ignore=tests/e2e", "--ignore=tests/gpu", *session.posargs)


@nox.session(default=False)
def e2e(session: nox.Session) -> None:
    """End-to-end tests against a real Docker engine: base image, build, container.up/down."""
    session.install("-e", ".[dev]")
    session.run("pytest", "tests/e2e", *session.posargs)


@nox.session(venv_backend="none", default=False)
def gpu_smoke(session: nox.Session) -> None:
    """Can this GPU host serve? Layered GPU checks in the current interpreter (no venv)."""
    session.run("python3", "-m", "pytest", "tests/gpu", "-p", "no:cacheprovider", *session.posargs)
