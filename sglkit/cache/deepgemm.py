"""cache.deepgemm: run the profile's server once with the DeepGEMM precompile environment.

The launcher is the profile's own (`python3 -m sglang.launch_server` by default) with exactly the
argv that serving uses, plus the flags warming needs (WARM_FLAGS). We own the lifecycle instead of
`python -m sglang.compile_deep_gemm` (see docs/caching.md): readiness is polled with a per-request
timeout, a dead child is noticed within a poll interval, the whole process group always goes.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime as dt
import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from sglkit import paths, yamlsafe
from sglkit import profile as profiles
from sglkit.cache import fingerprint, store
from sglkit.errors import ConfigError, SglkitError
from sglkit.net import port_in_use
from sglkit.proc import spawn, terminate_group

KIND = "deepgemm"
TAIL_LINES = 50
POLL_INTERVAL = 0.25  # between readiness polls and child checks: a dead child is seen this fast
HEALTH_TIMEOUT = 1.5  # per readiness request
EXIT_CHILD_FAILED = 1
EXIT_DEADLINE = 124  # like timeout(1)
EXIT_INTERRUPTED = 130
# the warm-up request compile_deep_gemm sends: four token ids, eight new tokens, ignore EOS
WARMUP_REQUEST = {
    "input_ids": [0, 1, 2, 3],
    "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
}


def warm_flags(timeout: float) -> list[str]:
    """What warming adds to the serving argv, and why (the same choices as compile_deep_gemm):

    --load-format dummy     random weights: kernel shapes come from config.json, not the weights,
                            and loading 600 GB of DeepSeek-V3 would dominate the run;
    --disable-cuda-graph    capturing graphs is not needed to compile kernels and costs minutes;
    --watchdog-timeout T    SGLang's watchdog kills a forward pass after 300 s by default, and
                            compiling every M of one GEMM shape takes longer than that.
    """
    return ["--load-format", "dummy", "--disable-cuda-graph", "--watchdog-timeout", f"{timeout:g}"]


def warm_environment() -> dict[str, str]:
    layout = yamlsafe.load_file(paths.asset("cache", "layout.yaml"), what="cache layout")
    return {k: str(v) for k, v in layout["deepgemm_warm_env"].items()}


@dataclass(frozen=True)
class Plan:
    profile: profiles.Profile
    argv: list[str]  # the full argv, launcher first
    env: dict[str, str]  # what the child gets on top of the caller's environment
    folder: Path
    timeout: float
    url: str

    @property
    def serve_argv(self) -> list[str]:
        """The argv the server will run with (what profile.show prints), without WARM_FLAGS."""
        return self.argv[: len(self.argv) - len(warm_flags(self.timeout))]


def plan(
    profile: str | None = None,
    *,
    model: str | None = None,
    context_length: int | None = None,
    launcher: str | list[str] | None = None,
    port: int | None = None,
    timeout: float = 3600.0,
) -> Plan:
    """Resolve what would run; raise ConfigError (exit 2) naming the flag or field at fault."""
    p = profiles.load(profile)
    data = copy.deepcopy(p.data)
    if timeout is None or timeout <= 0:
        raise ConfigError(f"--timeout: expected a positive number of seconds, got {timeout!r}")
    if model is not None:
        if not str(model).strip():
            raise ConfigError("--model: expected a model path or hub id")
        data["model"]["path"] = str(model)
        data["model"]["config"] = None  # the profile's config.json belongs to its own model
    if context_length is not None:
        try:
            context_length = int(context_length)
        except (TypeError, ValueError):
            raise ConfigError(
                f"--context-length: expected an integer, got {context_length!r}"
            ) from None
        if context_length < 1:
            raise ConfigError(
                f"--context-length: expected a positive integer, got {context_length}"
            )
        have = data["server"]["context_length"]
        if have is not None and have != context_length:
            raise ConfigError(
                f"--context-length: {context_length} differs from server.context_length {have} "
                f"in {p.path}; the server would run with {have}"
            )
        data["server"]["context_length"] = context_length
    if data["server"]["context_length"] is None:
        raise ConfigError(
            f"{p.path}: server.context_length: required to warm DeepGEMM (set it in the profile "
            "or pass --context-length); SGLang's default would warm another range than serving uses"
        )
    if launcher is not None:
        argv = shlex.split(launcher) if isinstance(launcher, str) else list(launcher)
        if not argv:
            raise ConfigError(
                "--launcher: expected a command, e.g. 'python3 -m sglang.launch_server'"
            )
        data["server"]["launcher"] = argv
    if port is not None:
        if not 1 <= int(port) <= 65535:
            raise ConfigError(f"--port: expected a port number 1-65535, got {port}")
        data["server"]["port"] = int(port)
    p = profiles.Profile(path=p.path, data=data)
    folder = p.cache_dirs()[KIND]
    env = {**p.environment(), **warm_environment()}
    s = p.server
    host = "127.0.0.1" if s["host"] in ("0.0.0.0", "::", "") else s["host"]
    return Plan(
        profile=p,
        argv=[*p.server_argv(), *warm_flags(timeout)],
        env=env,
        folder=folder,
        timeout=float(timeout),
        url=f"http://{host}:{s['port']}",
    )


# ---- reporting -----------------------------------------------------------------------------------
class Reporter:
    """Prefixed child output, phase lines, and a live "phase · elapsed" line on a terminal."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(soft_wrap=True, highlight=False)
        self.t0 = time.monotonic()
        self.phase = "preparing"
        self._status = None
        self._last_beat = self.t0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        self.console.print(f"cache.deepgemm [{self.elapsed():6.1f}s] {text}", markup=False)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.say(f"phase: {phase}")
        self.tick()

    def child_line(self, line: str) -> None:
        self.console.print(f"  sglang | {line}", markup=False, highlight=False)

    def tick(self) -> None:
        now = time.monotonic()
        if self._status is not None:
            self._status.update(f"cache.deepgemm: {self.phase} · {now - self.t0:.0f} s")
        elif now - self._last_beat >= 30:
            self.say(f"still {self.phase}")
        if now - self._last_beat >= 30:
            self._last_beat = now

    def __enter__(self) -> Reporter:
        if self.console.is_terminal:
            self._status = self.console.status(f"cache.deepgemm: {self.phase}")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
            self._status = None


class _Output(threading.Thread):
    """Streams the child's merged stdout/stderr: prefixed to the console, whole to the log."""

    def __init__(self, stream, log_path: Path, reporter: Reporter):
        super().__init__(daemon=True)
        self.stream = stream
        self.log_path = log_path
        self.reporter = reporter
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def run(self) -> None:
        with open(self.log_path, "a", encoding="utf-8", errors="replace") as log:
            for raw in iter(self.stream.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                self.tail.append(line)
                log.write(line + "\n")
                log.flush()
                self.reporter.child_line(line)


class _Failed(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _describe_status(rc: int | None) -> str:
    if rc is None:
        return "did not exit"
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM to us (a supervisor stopping the task) cleans up like Ctrl-C does."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored():
    try:
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ---- the run -------------------------------------------------------------------------------------
@dataclass
class Result:
    status: str  # "already-warm" | "warmed"
    marker: dict[str, Any]
    seconds: float


def marker_matches(folder: Path, fp: fingerprint.Fingerprint) -> tuple[dict | None, list[str]]:
    marker = store.read_marker(folder)
    if marker is None or marker.get("kind") != KIND or "fingerprint" not in marker:
        return None, ["no completion marker"]
    stored = fingerprint.Fingerprint.from_json(marker["fingerprint"])
    return marker, fingerprint.differences(stored, fp)


def describe(pl: Plan) -> dict[str, Any]:
    """What a warm would run and compare, without running it (--dry-run)."""
    fp = fingerprint.compute(pl.profile, pl.serve_argv)
    marker, diff = marker_matches(pl.folder, fp)
    return {
        "argv": pl.argv,
        "command": shlex.join(pl.argv),
        "env": {k: pl.env[k] for k in sorted(pl.env)},
        "folder": str(pl.folder),
        "url": pl.url,
        "fingerprint": fp.to_json(),
        "marker": "none" if marker is None else ("matches" if not diff else f"differs: {diff[0]}"),
    }


def warm(
    pl: Plan,
    *,
    force: bool = False,
    lock_timeout: float = 0.0,
    grace: float = 10.0,
    reporter: Reporter | None = None,
) -> Result:
    rep = reporter or Reporter()
    fp = fingerprint.compute(pl.profile, pl.serve_argv)
    if not force:
        marker, diff = marker_matches(pl.folder, fp)
        if marker is not None and not diff:
            rep.console.print(
                f"already warm: {pl.folder} (warmed {marker.get('warmed_at', '?')}; "
                "fingerprint matches; --force warms again)",
                markup=False,
            )
            return Result("already-warm", marker, rep.elapsed())
        if marker is not None:
            rep.say(f"marker differs, warming again: {diff[0]}")
    store.ensure_writable(pl.folder, f"cache.dirs.{KIND} (under cache.root)")
    with store.locked(pl.folder, wait=lock_timeout, what=f"cache.deepgemm {pl.profile.name}"):
        if not force:  # another warm may have finished while we waited for the lock
            marker, diff = marker_matches(pl.folder, fp)
            if marker is not None and not diff:
                rep.console.print(f"already warm: {pl.folder} (warmed meanwhile)", markup=False)
                return Result("already-warm", marker, rep.elapsed())
        host, port = pl.url.rsplit("//", 1)[1].rsplit(":", 1)
        if port_in_use(int(port), host):
            raise SglkitError(
                f"server.port: {host}:{port} is already in use; stop that server or pass --port"
            )
        store.remove_marker(pl.folder)  # from here on a crash leaves no claim of "warm"
        for unknown in fp.unknown:
            rep.say(f"fingerprint: {unknown} unknown here ({fp.reasons.get(unknown, '?')})")
        started = dt.datetime.now(dt.timezone.utc)
        log_path = pl.folder.parent / f".{pl.folder.name}.warm.log"
        log_path.write_text(f"# {started.isoformat()} {shlex.join(pl.argv)}\n", encoding="utf-8")
        with rep, _sigterm_as_interrupt():
            _run_child(pl, rep, log_path, grace)
        finished = dt.datetime.now(dt.timezone.utc)
        marker = {
            "kind": KIND,
            "fingerprint": fp.to_json(),
            "profile": pl.profile.name,
            "profile_path": str(pl.profile.path),
            "profile_hash": pl.profile.hash(),
            "model_path": pl.profile.model_path,
            "argv": pl.argv,
            "env": {k: pl.env[k] for k in sorted(pl.env)},
            "started_at": started.isoformat(timespec="seconds"),
            "warmed_at": finished.isoformat(timespec="seconds"),
            "duration_s": round((finished - started).total_seconds(), 3),
            "log": str(log_path),
        }
        store.write_marker(pl.folder, marker)
    rep.say(f"warm: {pl.folder} (marker {store.marker_path(pl.folder)})")
    return Result("warmed", marker, rep.elapsed())


def _run_child(pl: Plan, rep: Reporter, log_path: Path, grace: float) -> None:
    rep.set_phase("starting the server")
    rep.say(f"argv: {shlex.join(pl.argv)}")
    try:
        proc = spawn(
            pl.argv,
            env={**os.environ, **pl.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            die_with_parent=True,
        )
    except OSError as e:
        raise ConfigError(
            f"server.launcher: cannot start {pl.argv[0]!r} ({e.strerror or type(e).__name__})"
        ) from None
    rep.say(f"server pid {proc.pid} (process group {proc.pid}); full log {log_path}")
    out = _Output(proc.stdout, log_path, rep)
    out.start()
    deadline = time.monotonic() + pl.timeout
    failure: _Failed | None = None
    try:
        _wait_ready(pl, proc, rep, deadline)
        _send_warmup(pl, proc, rep, deadline)
    except _Failed as e:
        failure = e
    except KeyboardInterrupt:
        failure = _Failed(f"interrupted in phase '{rep.phase}'", EXIT_INTERRUPTED)
    finally:
        phase = rep.phase
        rep.set_phase("stopping the server (process group)")
        with _signals_ignored():  # a second Ctrl-C must not leave the group behind
            rc = terminate_group(proc, grace=grace)
        out.join(timeout=2)
        with contextlib.suppress(OSError):
            proc.stdout.close()
    if failure is not None:
        rep.say(f"server {_describe_status(rc)}; last {len(out.tail)} lines of its output:")
        for line in out.tail:
            rep.console.print(f"  | {line}", markup=False, highlight=False)
        raise SglkitError(
            f"DeepGEMM warm-up failed ({phase}): {failure}; full log {log_path}",
            exit_code=failure.exit_code,
        )


def _check_child(proc: subprocess.Popen, rep: Reporter, deadline: float) -> None:
    rc = proc.poll()
    if rc is not None:
        raise _Failed(
            f"the server {_describe_status(rc)} after {rep.elapsed():.1f} s", EXIT_CHILD_FAILED
        )
    if time.monotonic() >= deadline:
        raise _Failed(
            f"gave up at the deadline ({rep.elapsed():.1f} s, --timeout) while {rep.phase}",
            EXIT_DEADLINE,
        )
    rep.tick()


def _wait_ready(pl: Plan, proc: subprocess.Popen, rep: Reporter, deadline: float) -> None:
    rep.set_phase(f"waiting for {pl.url}/health")
    session = requests.Session()
    while True:
        _check_child(proc, rep, deadline)
        timeout = max(0.05, min(HEALTH_TIMEOUT, deadline - time.monotonic()))
        try:
            if session.get(f"{pl.url}/health", timeout=timeout).status_code == 200:
                break
        except requests.RequestException:
            pass
        _check_child(proc, rep, deadline)
        time.sleep(POLL_INTERVAL)
    # the port could belong to someone else's server: make sure it serves our model
    try:
        info = session.get(f"{pl.url}/get_model_info", timeout=HEALTH_TIMEOUT).json()
    except (requests.RequestException, ValueError) as e:
        _check_child(proc, rep, deadline)
        raise _Failed(f"/get_model_info did not answer ({type(e).__name__})", 1) from None
    got = info.get("model_path") if isinstance(info, dict) else None
    if got != pl.profile.model_path:
        raise _Failed(f"{pl.url} serves model {got!r}, not {pl.profile.model_path!r}", 1)


def _send_warmup(pl: Plan, proc: subprocess.Popen, rep: Reporter, deadline: float) -> None:
    rep.set_phase("sending the warm-up request (compiling kernels)")
    box: dict[str, Any] = {}

    def post() -> None:
        try:
            r = requests.post(
                f"{pl.url}/generate",
                json=WARMUP_REQUEST,
                timeout=(5, max(1.0, deadline - time.monotonic())),
            )
            box["status"], box["body"] = r.status_code, r.text[:300]
        except requests.RequestException as e:
            box["error"] = f"{type(e).__name__}"

    t = threading.Thread(target=post, daemon=True)
    t.start()
    while t.is_alive():
        _check_child(proc, rep, deadline)
        t.join(POLL_INTERVAL)
    if "error" in box:
        # a connection that broke because the server died: report the death, not the symptom
        end = time.monotonic() + 1.5
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.05)
        _check_child(proc, rep, deadline)
        raise _Failed(f"the warm-up request failed ({box['error']})", 1)
    if box["status"] != 200:
        raise _Failed(f"the warm-up request got HTTP {box['status']}: {box['body']!r}", 1)
