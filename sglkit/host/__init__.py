"""Host set-up: what `container.up` (and, with tests=True, the tests) need on this machine.

`probe()` looks at the machine (nothing changes), `plan()` turns what is missing into steps (pure,
so every system is testable), `run()` carries them out with progress on the console and the
commands' full output in the log (`sglkit.logs`, name `host-setup`).

On Debian and Ubuntu the steps are apt-get (Docker engine, debootstrap, Prometheus,
node_exporter), npm (the devcontainer CLI) and starting the engine (systemd where it runs, else
`dockerd` in its own session). Elsewhere the plan is one line that says what to install.
Where everything is there, the plan is empty and nothing runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sglkit import logs
from sglkit.errors import SglkitError

DEVCONTAINER_CLI = "@devcontainers/cli@0.89.0"
ENGINE_START_TIMEOUT = 90.0
LOG = "host-setup"


NOT_YOURS = (
    "host.setup: the Docker engine runs but its socket is closed to you: "
    "sudo usermod -aG docker $USER, then log in again"
)


def _denied(error: str | None) -> bool:
    return bool(error) and "permission denied" in error.lower()


@dataclass(frozen=True)
class Need:
    key: str
    what: str
    apt: tuple[str, ...]
    tests_only: bool = False


NEEDS = (
    Need("docker", "the Docker engine", ("docker.io",)),
    Need("debootstrap", "debootstrap", ("debootstrap",)),
    Need("prometheus", "Prometheus (prometheus, promtool)", ("prometheus",), tests_only=True),
    Need("node_exporter", "node_exporter", ("prometheus-node-exporter",), tests_only=True),
    Need("devcontainer", f"the devcontainer CLI ({DEVCONTAINER_CLI})", (), tests_only=True),
)


@dataclass
class Host:
    """What set-up needs to know about this machine."""

    os_id: str = ""
    os_like: tuple[str, ...] = ()
    os_name: str = "this system"
    installed: dict[str, bool] = field(default_factory=dict)  # per Need.key
    engine_error: str | None = None  # None: an engine answers
    docker_host: str | None = None  # $DOCKER_HOST, where set
    npm: bool = False
    root: bool = True
    sudo: bool = False
    systemd: bool = False

    @property
    def debian_like(self) -> bool:
        return self.os_id in ("debian", "ubuntu") or bool({"debian", "ubuntu"} & set(self.os_like))


@dataclass(frozen=True)
class Step:
    title: str
    argv: tuple[str, ...] = ()  # empty: an action of this module (start_engine)
    env: tuple[tuple[str, str], ...] = ()

    def shown(self) -> str:
        return shlex.join(self.argv) if self.argv else self.title


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value.strip().strip("\"'")
    return out


def probe(os_release: Path = Path("/etc/os-release")) -> Host:
    """Look at this machine; change nothing."""
    try:
        rel = parse_os_release(os_release.read_text())
    except OSError:
        rel = {}
    which = shutil.which
    installed = {
        "docker": bool(which("dockerd")),
        "debootstrap": bool(which("debootstrap")),
        "prometheus": bool(which("prometheus") and which("promtool")),
        "node_exporter": bool(which("prometheus-node-exporter") or which("node_exporter")),
        "devcontainer": bool(which("devcontainer")),
    }
    engine_error = _engine_error()
    if engine_error is None:
        installed["docker"] = True  # an engine answers (maybe remote, or Docker Desktop)
    return Host(
        os_id=rel.get("ID", "").lower(),
        os_like=tuple(rel.get("ID_LIKE", "").lower().split()),
        os_name=rel.get("PRETTY_NAME") or rel.get("NAME") or "this system",
        installed=installed,
        engine_error=engine_error,
        docker_host=os.environ.get("DOCKER_HOST") or None,
        npm=bool(which("npm")),
        root=os.geteuid() == 0,
        sudo=bool(which("sudo")),
        systemd=Path("/run/systemd/system").is_dir() and bool(which("systemctl")),
    )


def _engine_error() -> str | None:
    from sglkit.containers import engine

    try:
        engine.client(timeout=5)
    except SglkitError as e:
        return str(e)
    return None


def needs(tests: bool) -> list[Need]:
    return [n for n in NEEDS if tests or not n.tests_only]


def missing(host: Host, tests: bool) -> list[Need]:
    return [n for n in needs(tests) if not host.installed.get(n.key)]


def plan(host: Host, tests: bool = False) -> list[Step]:
    """The steps that bring this host to what container.up (and the tests) need; [] if none."""
    lacking = missing(host, tests)
    start_engine = host.engine_error is not None
    if not lacking and not start_engine:
        return []
    if start_engine and _denied(host.engine_error):
        raise SglkitError(NOT_YOURS)
    if start_engine and host.docker_host and host.installed.get("docker"):
        raise SglkitError(
            f"host.setup: DOCKER_HOST={host.docker_host} does not answer; host.setup starts only "
            "the local engine: unset DOCKER_HOST, or start that engine"
        )
    if lacking and not host.debian_like:
        what = ", ".join(n.what for n in lacking)
        raise SglkitError(
            f"host.setup: {host.os_name} is not Debian or Ubuntu, so install {what} yourself"
            f"{', start the Docker engine' if start_engine else ''}, then run it again"
        )
    prefix: tuple[str, ...] = ()
    if not host.root:
        if not host.sudo:
            raise SglkitError(
                "host.setup: installing and starting need root: run it as root, or install sudo"
            )
        prefix = ("sudo",)
    steps: list[Step] = []
    apt = [p for n in lacking for p in n.apt]
    cli = any(n.key == "devcontainer" for n in lacking)
    if cli and not host.npm:
        apt += ["npm", "ca-certificates"]
    if apt:
        env = (("DEBIAN_FRONTEND", "noninteractive"),)
        steps.append(Step("apt-get update", (*prefix, "apt-get", "update", "-q"), env))
        steps.append(
            Step(
                f"install {' '.join(apt)}",
                (*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *apt),
                env,
            )
        )
    if cli:
        steps.append(
            Step(
                f"install the devcontainer CLI ({DEVCONTAINER_CLI})",
                (*prefix, "npm", "install", "-g", "--no-fund", "--no-audit", DEVCONTAINER_CLI),
            )
        )
    if start_engine:
        how = "systemctl" if host.systemd else "dockerd"
        steps.append(Step(f"start the Docker engine ({how})"))
    return steps


def run(steps: list[Step], host: Host, say: Callable[[str], None], status=None) -> float:
    """Carry out `steps`; say() one line per step start and end; return the seconds taken."""
    t0 = time.monotonic()
    for i, step in enumerate(steps, 1):
        tag = f"[{i}/{len(steps)}]"
        say(f"host.setup: {tag} {step.title}")
        t_step = time.monotonic()
        if step.argv:
            _run_logged(step, status)
        else:
            start_engine(host, status)
        say(f"host.setup: {tag} done in {time.monotonic() - t_step:.0f}s")
    return time.monotonic() - t0


def _run_logged(step: Step, status=None) -> None:
    log = logs.append(LOG, step.shown())
    env = {**os.environ, **dict(step.env)}
    argv = list(step.argv)
    if step.env and argv[:1] == ["sudo"]:  # sudo drops the environment: pass it explicitly
        argv = ["sudo", "env", *(f"{k}={v}" for k, v in step.env), *argv[1:]]
    tail: list[str] = []
    with log.open("a", encoding="utf-8") as f:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            line = line.rstrip()
            if line:
                tail = [*tail[-19:], line]
                if status is not None:
                    status.update(f"{step.title}: {line[:100]}")
        rc = proc.wait()
    if rc != 0:
        errors = [ln for ln in tail if ln.startswith(("E:", "npm ERR!", "npm error"))] or tail
        last = errors[-1] if errors else "no output"
        raise SglkitError(f"host.setup: `{step.shown()}` exited {rc}: {last} (log: {log})")


# Where a dockerd that host.setup starts (no systemd) writes: the system's log folder, as the
# journal would hold it under systemd, never a user's folder (it writes for as long as it runs)
DOCKERD_LOG = Path("/var/log/sglkit-dockerd.log")


def dockerd_argv(prefix: list[str], dockerd: str, log: Path = DOCKERD_LOG) -> list[str]:
    """dockerd with its output appended to `log`, opened by the daemon's own (root) shell."""
    return [*prefix, "sh", "-c", 'exec "$0" >>"$1" 2>&1', dockerd, str(log)]


def start_engine(host: Host, status=None) -> None:
    """Start the local engine (systemd where it runs, else dockerd) and wait until it answers."""
    from sglkit.net import wait_for

    prefix = [] if host.root else ["sudo"]
    log = logs.append(LOG, "start the Docker engine")
    if _engine_error() is None:  # installing it started it (systemd hosts)
        return
    if host.systemd:
        res = subprocess.run(
            [*prefix, "systemctl", "enable", "--now", "docker.service"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        logs.append(LOG, "systemctl enable --now docker.service", res.stdout + res.stderr)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise SglkitError(f"host.setup: systemctl could not start docker: {last} (log: {log})")
    else:
        dockerd = shutil.which("dockerd") or "dockerd"
        logs.append(LOG, f"dockerd started; its own output goes to {DOCKERD_LOG}")
        subprocess.Popen(
            dockerd_argv(prefix, dockerd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command, as a service would
        )
    if status is not None:
        status.update("waiting for the Docker engine to answer")

    def answered() -> str | None:  # "ok", "denied", or None (not yet)
        error = _engine_error()
        if error is None:
            return "ok"
        return "denied" if _denied(error) else None

    try:
        got = wait_for(answered, timeout=ENGINE_START_TIMEOUT, interval=0.5, what="the engine")
    except TimeoutError:
        last = _engine_error() or ""
        raise SglkitError(
            f"host.setup: the Docker engine did not answer within {ENGINE_START_TIMEOUT:.0f}s "
            f"({last}); see {log}"
        ) from None
    if got == "denied":
        raise SglkitError(NOT_YOURS)


def engine_version() -> str:
    from sglkit.containers import engine

    try:
        return engine.client(timeout=5).version().get("Version", "?")
    except Exception:
        return "?"
