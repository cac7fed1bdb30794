"""init-run: provision a telemetry run, start its services, supervise them, record everything.

    python -m sglkit.observability.init_run --profile P --root R [--run-id ID] [--bind ADDR]
                                            [--ports auto]

Creates <root>/runs/<run_id>/ (refusing an existing id), renders the Prometheus config into it,
starts Prometheus, node_exporter, the GPU exporter and Jaeger where each exists, and runs in the
foreground: a service that exits is restarted with backoff and the restart recorded; one that
cannot start, or keeps crashing, is `failed` and the run `degraded`; the rest keep running.
manifest.json goes starting -> ready once every started service answers its health endpoint;
<root>/latest moves to the run only then. SIGTERM or SIGINT stops the children (TERM, then KILL
after a grace period), finalizes the manifest as `stopped` and exits 0. A run with no service
left running, or whose record the disk refuses, ends `failed` with one line and exit 1.
Children also get SIGTERM if this process dies (PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

import sglkit
from sglkit import profile as profiles
from sglkit.cli import PROFILE_HELP, ROOT_HELP, main_guard
from sglkit.errors import ConfigError, SglkitError
from sglkit.fsutil import atomic_write_text
from sglkit.net import free_port, port_in_use, probe_host
from sglkit.observability import config as promconfig
from sglkit.observability import grafana as grafanas
from sglkit.observability import manifest as mf
from sglkit.observability import services as svcs
from sglkit.proc import group_members, spawn

SERVER_METRICS = ("auto", "on", "off")


@dataclass
class Options:
    profile: str | None = None
    root: str | None = None
    run_id: str | None = None
    bind: str | None = None
    ports: str | None = None  # "auto" or None (the profile's ports)
    template: str | None = None
    server_metrics: str = "auto"  # scrape the SGLang server: auto = GPU profiles only
    max_restarts: int = 5  # consecutive failed starts before a service is given up
    backoff: float = 0.5  # seconds before the first restart; doubles, capped at max_backoff
    max_backoff: float = 30.0
    stable_after: float = 60.0  # a service up this long has its failure count reset
    grace: float = 5.0  # TERM -> KILL
    ready_timeout: float | None = None  # default: the profile's telemetry.ready_timeout
    quiet: bool = False
    # container port -> host port where the host publishes this run's listeners (container.up)
    host_ports: dict[int, int] = field(default_factory=dict)


@dataclass
class Service:
    spec: svcs.ServiceSpec
    log: Path
    status: str = "starting"
    proc: subprocess.Popen | None = None
    pid: int | None = None
    healthy: bool = False
    restarts: int = 0
    failures: int = 0  # consecutive
    history: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    next_start: float = 0.0
    started_mono: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def entry(self) -> dict[str, Any]:
        s = self.spec
        present = s.argv is not None
        e: dict[str, Any] = {
            "status": self.status,
            "pid": self.pid,
            "url": s.url if present else None,
            "port": s.port if present else None,
            "health_url": s.health_url if present else None,
            "log": str(self.log) if present else None,
            "restarts": self.restarts,
            "restart_history": list(self.history),
            "reason": self.reason,
            "kind": s.kind,
        }
        if s.name == "jaeger":
            e["ui_url"] = s.extra["ui_url"] if present else None
            e["otlp_endpoint"] = s.extra["otlp_endpoint"] if present else None
        if s.argv is not None:
            e["argv"] = list(s.argv)
        return e


def parse_args(argv: list[str] | None) -> Options:
    ap = argparse.ArgumentParser(
        prog="python -m sglkit.observability.init_run",
        description="Start a per-run telemetry stack and supervise it until SIGTERM/SIGINT.",
    )
    ap.add_argument("--profile", help=PROFILE_HELP)
    ap.add_argument("--root", help=ROOT_HELP)
    ap.add_argument("--run-id", help="run id (default: a new one); an existing id is refused")
    ap.add_argument("--bind", help="listen address (default: the profile's telemetry.bind)")
    ap.add_argument("--ports", help="'auto': free ports on the bind address (default: profile)")
    ap.add_argument("--template", help="Prometheus config template (default: observability/)")
    ap.add_argument(
        "--server-metrics",
        default="auto",
        help="scrape the SGLang server's /metrics: auto (GPU profiles), on, off",
    )
    ap.add_argument("--max-restarts", type=int, default=5, help="restart limit (default 5)")
    ap.add_argument("--backoff", type=float, default=0.5, help="first restart delay, seconds")
    ap.add_argument("--grace", type=float, default=5.0, help="TERM -> KILL grace, seconds")
    ap.add_argument("--ready-timeout", type=float, help="seconds (default: the profile's)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument(
        "--host-ports",
        default="",
        help="CPORT=HPORT,...: where the host publishes these listeners (set by container.up)",
    )
    a = ap.parse_args(argv)
    return Options(
        profile=a.profile,
        root=a.root,
        run_id=a.run_id,
        bind=a.bind,
        ports=a.ports,
        template=a.template,
        server_metrics=a.server_metrics,
        max_restarts=a.max_restarts,
        backoff=a.backoff,
        grace=a.grace,
        ready_timeout=a.ready_timeout,
        quiet=a.quiet,
        host_ports=parse_host_ports(a.host_ports),
    )


def parse_host_ports(text: str) -> dict[int, int]:
    """'9090=41000,9100=41001' -> {9090: 41000, 9100: 41001}; ConfigError naming the flag."""
    out: dict[int, int] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        c, sep, h = item.partition("=")
        if not (sep and c.isdigit() and h.isdigit() and 0 < int(c) < 65536 and 0 < int(h) < 65536):
            raise ConfigError("--host-ports: expected CPORT=HPORT pairs separated by commas")
        out[int(c)] = int(h)
    return out


def check_bind(bind: str, flag: str) -> None:
    """Refuse, before anything is created, an address this host cannot listen on."""
    shown = bind if len(bind) <= 64 and bind.isprintable() else "the address given"
    try:
        infos = socket.getaddrinfo(
            bind or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError, ValueError):
        raise ConfigError(f"{flag}: cannot resolve {shown!r} to an address") from None
    family, _, _, _, addr = infos[0]
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind(addr[:2] if family == socket.AF_INET else addr)
    except OSError as e:
        raise ConfigError(
            f"{flag}: cannot listen on {shown}: {e.strerror or e} (not an address of this host?)"
        ) from None


def is_loopback(bind: str) -> bool:
    """True when every address `bind` resolves to is a loopback one (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(
            bind or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError, ValueError):
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def check_options(o: Options) -> None:
    if o.ports not in (None, "auto", "profile"):
        raise ConfigError(f"--ports: expected 'auto' or 'profile', got {o.ports!r}")
    if o.server_metrics not in SERVER_METRICS:
        raise ConfigError(f"--server-metrics: expected one of {SERVER_METRICS}")
    if o.max_restarts < 0:
        raise ConfigError("--max-restarts: must be 0 or more")
    if o.backoff <= 0 or o.grace <= 0:
        raise ConfigError("--backoff/--grace: must be positive")
    if o.ready_timeout is not None and o.ready_timeout <= 0:
        raise ConfigError("--ready-timeout: must be positive")


def choose_ports(profile, bind: str, mode: str | None) -> dict[str, int]:
    if mode == "auto":
        host = probe_host(bind)
        chosen: dict[str, int] = {}
        while len(chosen) < len(svcs.PORT_NAMES):
            p = free_port(host)
            if p not in chosen.values():
                chosen[svcs.PORT_NAMES[len(chosen)]] = p
        return chosen
    ports = dict(profile.telemetry["ports"])
    ports.setdefault("jaeger_admin", svcs.DEFAULT_JAEGER_ADMIN)
    return ports


class Stop(Exception):
    pass


class RecordError(SglkitError):
    """The run's record (manifest, meta env) cannot be written: the run cannot go on honestly."""


# Room kept in each run folder (a file of zeros) so that a full disk still lets init-run write the
# manifest that says `failed`: the file is deleted just before that write.
RESERVE_BYTES = 64 * 1024
RESERVE = ".manifest-reserve"


class InitRun:
    """One run: its folder, its services, its manifest; `run()` supervises until a signal."""

    def __init__(self, o: Options):
        check_options(o)
        self.o = o
        self.profile = profiles.load(o.profile)
        tel = self.profile.telemetry
        self.bind = o.bind or tel["bind"]
        check_bind(self.bind, "--bind" if o.bind else f"{self.profile.path}: telemetry.bind")
        self.exposed = not is_loopback(self.bind)
        keep = tel["lifecycle_api"]
        self.lifecycle_api = (not self.exposed) if keep is None else bool(keep)
        self.root = profiles.telemetry_root(self.profile, o.root)
        self.run_id = mf.check_run_id(o.run_id) if o.run_id else mf.new_run_id()
        self.run_dir = mf.run_dir(self.root, self.run_id)
        if self.run_dir.exists():
            raise ConfigError(
                f"--run-id: run {self.run_id} already exists at {self.run_dir} (never reused)"
            )
        self.ready_timeout = o.ready_timeout or float(tel["ready_timeout"])
        self.host = mf.hostname()
        self.identity = mf.identity()
        self.ports = choose_ports(self.profile, self.bind, o.ports)
        self.logs = self.run_dir / "logs"
        self.prom_dir = self.run_dir / "prometheus"
        self.prom_config = self.prom_dir / "prometheus.yml"
        self.prom_data = self.prom_dir / "data"
        self.specs = svcs.plan(
            bind=self.bind,
            ports=self.ports,
            prometheus_config=self.prom_config,
            prometheus_data=self.prom_data,
            jaeger_wanted=bool(tel["tracing"]),
            lifecycle_api=self.lifecycle_api,
            grafana_config=grafanas.layout(self.run_dir)["ini"],
        )
        sm = o.server_metrics
        self.scrape_server = (
            self.profile.server["enable_metrics"]
            and sm != "off"
            and (sm == "on" or self.profile.container["variant"] != "cpu")
        )
        jaeger = self.specs["jaeger"]
        gpu = self.specs["gpu_exporter"]
        self.config_text = promconfig.render(
            promconfig.context(
                profile=self.profile,
                run_id=self.run_id,
                host=self.host,
                bind=self.bind,
                ports=self.ports,
                node_exporter=self.specs["node_exporter"].argv is not None,
                gpu_exporter_kind=gpu.kind if gpu.argv else None,
                jaeger_metrics_port=jaeger.extra["metrics_port"] if jaeger.argv else None,
                scrape_server=self.scrape_server,
                sglang_sd_file=self.run_dir.joinpath(*promconfig.SGLANG_TARGETS_FILE),
            ),
            o.template,
        )
        self.services = {
            name: Service(spec, self.logs / f"{name}.log") for name, spec in self.specs.items()
        }
        self.status = "starting"
        self.reasons: list[str] = []
        self.started_at = mf.utcnow()
        self.t0 = time.monotonic()
        self.ready_at: str | None = None
        self.ended_at: str | None = None
        self.stopping = False
        self.versions: dict[str, str | None] = {}
        self._wake_r = self._wake_w = -1
        self.pid1 = os.getpid() == 1
        self.took_latest = False  # <root>/latest points here (moved once the run is ready)
        self.failure: str | None = None  # why the run must end as failed
        self.reserve_path = self.run_dir / RESERVE

    # ---- output -----------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        if not self.o.quiet:
            t = time.monotonic() - self.t0
            print(f"[init-run {self.run_id} +{t:5.1f}s] {msg}", file=sys.stderr, flush=True)

    # ---- manifest ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "schema": mf.SCHEMA,
            "run_id": self.run_id,
            "status": self.status,
            "reasons": list(self.reasons),
            "profile": {
                "name": self.profile.name,
                "path": str(self.profile.path),
                "hash": self.profile.hash(),
            },
            **self.identity,
            "host": self.host,
            "host_ports": {str(k): v for k, v in sorted(self.o.host_ports.items())},
            "lifecycle_api": self.lifecycle_api,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "ended_at": self.ended_at,
            "bind": self.bind,
            "scrape_interval": self.profile.telemetry["scrape_interval"],
            "scrapes_server": self.scrape_server,
            "paths": {
                "root": str(self.root),
                "run_dir": str(self.run_dir),
                "logs": str(self.logs),
                "prometheus_data": str(self.prom_data),
                "prometheus_config": str(self.prom_config),
            },
            "services": {name: s.entry() for name, s in self.services.items()},
            "versions": dict(self.versions),
        }

    def save(self) -> None:
        """Write the manifest (and, for the latest run, the meta env); take `latest` once the
        run is ready. RecordError when the disk refuses: the run then ends as failed."""
        m = self.manifest()
        try:
            mf.write(self.run_dir, m)
            if self.took_latest and mf.latest_is(self.root, self.run_dir):
                mf.write_meta_env(self.root, m)
            elif not self.took_latest and self.ready_for_latest():
                # meta env first: if the disk refuses it, `latest` has not moved
                mf.write_meta_env(self.root, m)
                mf.point_latest(self.root, self.run_dir)
                self.took_latest = True
                self.say(f"{self.root / mf.LATEST} -> {self.run_dir.name}")
        except OSError as e:
            raise RecordError(
                f"cannot write the run's record under {self.root}: {e.strerror or e}"
            ) from None

    def ready_for_latest(self) -> bool:
        """`latest` moves only to a run whose start-up is over with a service running."""
        return self.status in ("ready", "degraded") and any(
            s.status == "running" for s in self.services.values()
        )

    def release_reserve(self) -> None:
        with contextlib.suppress(OSError):
            self.reserve_path.unlink()

    # ---- lifecycle --------------------------------------------------------------------------
    def warn_exposure(self) -> None:
        """One line, even with --quiet: listeners beyond loopback answer without authentication."""
        if not self.exposed:
            return
        api = (
            "Prometheus' lifecycle API (/-/quit, /-/reload) stays on (telemetry.lifecycle_api)"
            if self.lifecycle_api
            else "Prometheus' lifecycle API is off (telemetry.lifecycle_api: true keeps it)"
        )
        print(
            f"warning: --bind {self.bind} is not loopback: Prometheus and the exporters answer "
            f"anyone who can reach this host, without authentication; {api}",
            file=sys.stderr,
            flush=True,
        )

    def settle_others(self) -> None:
        """Runs under the same root whose init-run is gone are marked abandoned (obs.up)."""
        runs = mf.runs_dir(self.root)
        if not runs.is_dir():
            return
        for d in sorted(runs.iterdir()):
            if (d / mf.MANIFEST).is_file():
                with contextlib.suppress(SglkitError, OSError):
                    if mf.settle(d, by="obs.up")["status"] == "abandoned":
                        self.say(f"run {d.name}: its init-run is gone; marked abandoned")

    def provision(self) -> None:
        """The run folder, its manifest first: from here on the run is recorded, and a failure
        (a full disk) marks it failed without moving `latest`."""
        mf.create_run_dir(self.root, self.run_id)
        try:
            self.save()
        except RecordError as e:
            shutil.rmtree(self.run_dir, ignore_errors=True)  # nothing recorded, nothing left
            raise SglkitError(f"--root: {e}; no run was recorded") from None
        try:
            with open(self.reserve_path, "wb") as f:
                f.write(bytes(RESERVE_BYTES))
                f.flush()
                os.fsync(f.fileno())
            for d in (self.logs, self.prom_dir, self.prom_data):
                d.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.prom_config, self.config_text)
            self.provision_grafana()
        except OSError as e:
            why = f"cannot write into {self.run_dir}: {e.strerror or e}"
            raise SglkitError(f"--root: {why}; {self.finish_failed(why)}") from None
        for s in self.services.values():
            if s.spec.argv is None:
                s.status = "absent" if s.spec.optional else "failed"
                s.reason = s.spec.unavailable
                if not s.spec.optional:
                    self.degrade(f"{s.name}: {s.reason}")
        self.save()
        self.say(f"run folder {self.run_dir}")

    def provision_grafana(self) -> None:
        """Grafana's config, data source and dashboard in the run folder (only where it runs)."""
        g = self.specs["grafana"]
        if g.argv is None:
            return
        gpu = self.specs["gpu_exporter"]
        # read as obs.report reads it, so both get the same rate window
        interval = promconfig.parse_duration(self.profile.telemetry["scrape_interval"]) or 5.0
        texts = grafanas.files(
            self.run_dir,
            bind=g.bind,
            port=g.port,
            prometheus_url=self.specs["prometheus"].url,
            gpu_scheme=gpu.kind if gpu.argv else None,
            scrape_interval_s=interval,
            run_id=self.run_id,
        )
        layout = grafanas.layout(self.run_dir)
        for key in ("data", "plugins", "logs"):
            layout[key].mkdir(parents=True, exist_ok=True)
        for path, text in texts.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)

    def finish_failed(self, why: str) -> str:
        """Mark the run failed with `why`, using the reserve's room; say what was recorded."""
        if why not in self.reasons:
            self.reasons.append(why)
        self.status = "failed"
        self.ended_at = mf.utcnow()
        self.release_reserve()
        try:
            self.save()
        except RecordError as e:
            return f"run {self.run_id} could not be marked failed ({e})"
        return f"run {self.run_id} marked failed"

    def _versions(self) -> dict[str, str | None]:
        v: dict[str, str | None] = {
            "sglkit": sglkit.__version__,
            "python": platform.python_version(),
        }
        for name in ("prometheus", "node_exporter", "gpu_exporter", "jaeger", "grafana"):
            spec = self.specs[name]
            if spec.argv and name != "gpu_exporter":
                v[name] = svcs.binary_version(spec.argv[0])
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            v["sglang"] = version("sglang")
        return v

    def degrade(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
        # "starting" stays until every started service is up; the reason is kept for then
        if self.status == "ready":
            self.status = "degraded"
        self.say(f"degraded: {reason}")

    def start(self, s: Service, first: bool) -> None:
        spec = s.spec
        for port, label in spec.listens:
            host = probe_host(spec.bind)
            try:
                busy = bool(port) and port_in_use(port, host)
            except OSError as e:  # the address went away since check_bind
                busy, why = True, f"cannot listen on {host}:{port} ({label}): {e.strerror or e}"
            else:
                why = f"port {port} ({label}) already in use on {host}"
            if busy:
                if first:
                    self.give_up(s, why)
                else:
                    self.failed_start(s, why)
                return
        try:
            with open(s.log, "ab") as log:
                s.proc = spawn(
                    spec.argv, stdout=log, stderr=subprocess.STDOUT, die_with_parent=True
                )
        except OSError as e:
            self.failed_start(s, f"cannot execute {spec.argv[0]}: {e.strerror}")
            return
        s.pid = s.proc.pid
        s.healthy = False
        s.started_mono = time.monotonic()
        s.status = "starting" if first else "restarting"
        self.say(f"{s.name}: started pid {s.pid} ({spec.argv[0]})")

    def give_up(self, s: Service, why: str) -> None:
        s.status = "failed"
        s.reason = why
        s.proc = None
        s.pid = None
        self.degrade(f"{s.name}: {why}")

    def failed_start(self, s: Service, why: str, exit_code: int | None = None) -> None:
        """A start that did not take, or a running service that exited: back off or give up."""
        now = time.monotonic()
        if s.started_mono and now - s.started_mono >= self.o.stable_after:
            s.failures = 0
        s.failures += 1
        s.history.append({"at": mf.utcnow(), "exit_code": exit_code, "reason": why})
        s.proc = None
        s.pid = None
        s.healthy = False
        if s.failures > self.o.max_restarts:
            self.give_up(
                s,
                f"{why}; restart limit reached ({self.o.max_restarts} restarts); see {s.log}",
            )
            return
        delay = min(self.o.backoff * 2 ** (s.failures - 1), self.o.max_backoff)
        s.next_start = now + delay
        s.status = "restarting"
        s.reason = why
        self.say(f"{s.name}: {why}; restart in {delay:.1f}s")

    def check_health(self, s: Service) -> bool:
        try:
            r = requests.get(s.spec.health_url, timeout=1.0)
        except requests.RequestException:
            return False
        return r.status_code == 200

    def reap_orphans(self) -> None:
        """As PID 1 (a container entrypoint without --init), reap orphans the services leave.

        WNOWAIT peeks first, so a service's own exit status stays for its Popen to collect.
        """
        ours = {s.proc.pid for s in self.services.values() if s.proc is not None}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in ours:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)

    def step(self) -> bool:
        """One supervision pass; True when the manifest changed."""
        if self.pid1:
            self.reap_orphans()
        changed = False
        now = time.monotonic()
        for s in self.services.values():
            if s.status in ("failed", "absent", "stopped"):
                continue
            if s.proc is not None:
                code = s.proc.poll()
                if code is not None:
                    if group_members(s.proc.pid):  # leader gone, helpers left: clean them
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(s.proc.pid, signal.SIGKILL)
                    self.failed_start(s, f"exited with code {code}", exit_code=code)
                    changed = True
                elif not s.healthy and self.check_health(s):
                    s.healthy = True
                    s.status = "running"
                    s.reason = None  # the restart history keeps why it was restarted
                    self.say(f"{s.name}: healthy at {s.spec.health_url}")
                    changed = True
            elif s.status == "restarting" and now >= s.next_start:
                self.start(s, first=False)
                if s.proc is not None:
                    s.restarts += 1
                changed = True
        if self.status == "starting":
            live = [s for s in self.services.values() if s.status not in ("failed", "absent")]
            if live and all(s.healthy for s in live):
                self.ready_at = mf.utcnow()
                self.status = "degraded" if self.reasons else "ready"
                self.say(f"{self.status} in {time.monotonic() - self.t0:.2f}s")
                changed = True
            elif time.monotonic() - self.t0 > self.ready_timeout:
                late = [s.name for s in live if not s.healthy]
                self.reasons.append(
                    f"not healthy within {self.ready_timeout:g}s: {', '.join(late)}"
                )
                self.status = "degraded"
                self.say(f"degraded: {self.reasons[-1]}")
                changed = True
        elif self.status == "ready" and self.reasons:
            self.status = "degraded"
            changed = True
        if not any(s.status not in ("failed", "absent") for s in self.services.values()):
            # nothing started, or everything was given up: supervising nothing helps no one
            self.failure = "no service is running: " + "; ".join(self.reasons or ["none started"])
        return changed

    # ---- signals ----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop when a child exits

    def wait(self, timeout: float) -> None:
        if self.stopping:
            return
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 512):
                pass

    # ---- stop -------------------------------------------------------------------------------
    def stop_children(self) -> None:
        procs = [s.proc for s in self.services.values() if s.proc is not None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.o.grace
        while time.monotonic() < deadline:
            for p in procs:
                p.poll()
            if not any(group_members(p.pid) for p in procs):
                break
            time.sleep(0.02)
        else:
            for p in procs:
                if group_members(p.pid):
                    self.say(f"pid {p.pid} ignored SIGTERM for {self.o.grace:g}s: SIGKILL")
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=self.o.grace)
        for s in self.services.values():
            if s.status in ("starting", "running", "restarting"):
                s.status = "stopped"
            s.proc = None

    def run(self, early: dict[str, bool] | None = None) -> int:
        """Supervise until a signal (exit 0, `stopped`); SglkitError (exit 1, `failed`, `latest`
        unmoved unless the run had been ready) when no service runs or the record cannot be
        written."""
        self.install_signals()
        if early and early.get("stop"):
            self.stopping = True
        self.warn_exposure()
        self.settle_others()
        self.provision()
        final = "stopped"
        try:
            for s in self.services.values():
                if self.stopping:
                    break
                if s.spec.argv is not None:
                    self.start(s, first=True)
            self.versions = self._versions()  # while the services start, not before
            self.step()
            self.save()
            while not self.stopping and not self.failure:
                if self.step():
                    self.save()
                if self.failure:
                    break
                self.wait(0.1 if self.status == "starting" or self._pending() else 1.0)
        except RecordError as e:
            self.failure = str(e)
        except BaseException:
            final = "failed"
            self.reasons.append(f"init-run crashed: {sys.exc_info()[1]!r}")
            raise
        finally:
            self.say("stopping")
            self.stop_children()
            if self.failure:
                outcome = self.finish_failed(self.failure)
            else:
                self.status = final
                self.ended_at = mf.utcnow()
                self.release_reserve()
                try:
                    self.save()
                    outcome = f"{final}; manifest {self.run_dir / mf.MANIFEST}"
                except RecordError as e:
                    outcome = f"the manifest could not be finalized ({e})"
            self.say(outcome)
        if self.failure:
            raise SglkitError(f"run {self.run_id} failed: {self.failure}; {outcome}")
        return 0

    def _pending(self) -> bool:
        return any(
            s.status == "restarting" or (s.proc is not None and not s.healthy)
            for s in self.services.values()
        )


@main_guard
def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    # a signal during set-up (before the supervisor installs its own handlers) stops quietly
    early = {"stop": False}

    def early_stop(signum, frame):
        early["stop"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, early_stop)
    run = InitRun(o)
    if early["stop"]:
        print("init-run: stopped before start-up (signal)", file=sys.stderr)
        return 0
    return run.run(early)


if __name__ == "__main__":
    sys.exit(main())
