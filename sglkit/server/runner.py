"""The one server lifecycle, for server.up, cache.deepgemm and the GPU smoke check.

    with Server(spec, log_path=..., label="server.up") as srv:   # starts, in its own group
        srv.wait_ready(deadline)       # /health about once a second, the child every 0.25 s
        srv.check_model()              # the port answers with the profile's model
        srv.post("/generate", {...})   # a request that fails fast if the child dies
    # leaving the block stops it: SIGTERM to SGLang's main process (it drains and stops its
    # own children), then TERM and KILL to whatever of the group is left after the grace period

Every failure is a ServerError with one line; before it, the last lines of the server's log are
printed. The server's output goes to its log file; on a terminal it is echoed with a prefix.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import requests

from sglkit.console import out
from sglkit.errors import ConfigError, SglkitError
from sglkit.kernels import overlay
from sglkit.net import port_in_use
from sglkit.proc import group_members, spawn, terminate_group
from sglkit.server import phases
from sglkit.server.spec import ServerSpec

TAIL_LINES = 50
CHILD_POLL = 0.25  # a dead child is noticed this fast
HEALTH_EVERY = 1.0  # readiness requests: about one a second, so the server's log stays readable
HEALTH_TIMEOUT = 1.5
EXIT_CHILD_FAILED = 1
EXIT_DEADLINE = 124  # like timeout(1)
EXIT_INTERRUPTED = 130


class ServerError(SglkitError):
    """The server failed to start, serve or stop; the message is one line."""


class Reporter:
    """Phase lines with elapsed time, prefixed server output, a live status line on a terminal."""

    def __init__(self, label: str, console=None, echo: bool = True):
        self.label = label
        self.console = console or out()
        self.echo = echo
        self.t0 = time.monotonic()
        self.phase = "preparing"
        self._status = None
        self._last_beat = self.t0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        self.console.print(f"{self.label} [{self.elapsed():6.1f}s] {text}", markup=False)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.say(f"phase: {phase}")
        self.tick()

    def child_line(self, line: str) -> None:
        if self.echo:
            self.console.print(f"  sglang | {line}", markup=False, highlight=False)

    def tick(self) -> None:
        now = time.monotonic()
        if self._status is not None:
            self._status.update(f"{self.label}: {self.phase} · {now - self.t0:.0f} s")
        elif now - self._last_beat >= 30:
            self.say(f"still {self.phase}")
        if now - self._last_beat >= 30:
            self._last_beat = now

    def __enter__(self) -> Reporter:
        if self.console.is_terminal:
            self._status = self.console.status(f"{self.label}: {self.phase}")
            self._status.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
            self._status = None


class _LogFollower(threading.Thread):
    """Follows the server's log file: keeps its last lines, echoes new ones to the reporter."""

    def __init__(self, path: Path, offset: int, reporter: Reporter):
        super().__init__(daemon=True)
        self.path, self.offset, self.reporter = path, offset, reporter
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.stopped = threading.Event()

    def run(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            pending = b""
            while True:
                chunk = f.read(65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        line = raw.decode("utf-8", errors="replace").rstrip("\r")
                        self.tail.append(line)
                        self.reporter.child_line(line)
                    continue
                if self.stopped.is_set():
                    if pending:
                        self.tail.append(pending.decode("utf-8", errors="replace"))
                    return
                time.sleep(0.1)

    def finish(self) -> None:
        self.stopped.set()
        self.join(timeout=2)


def describe_status(rc: int | None) -> str:
    if rc is None:
        return "did not exit"
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


@contextlib.contextmanager
def sigterm_as_interrupt():
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
def signals_ignored():
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


def stop_pid(pid: int, grace: float, proc: subprocess.Popen | None = None) -> int | None:
    """The graceful stop of a server whose main process is `pid` (the leader of its group):
    SIGTERM to it alone, wait up to `grace` for it to exit (SGLang stops its own children first),
    then TERM and KILL whatever is left of the group. Returns the exit status where `proc` is our
    child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        members = group_members(pid)
        if pid not in members:  # the main process is gone: what is left has no one to stop it
            break
        time.sleep(0.05)
    rc = terminate_group(proc if proc is not None else pid, grace=5.0)
    # KILL is delivered, not awaited: give the kernel a moment to take the group down
    end = time.monotonic() + 5.0
    while group_members(pid) and time.monotonic() < end:
        time.sleep(0.02)
    return rc


class Server:
    """One SGLang server process (group) started from a spec; see the module docstring."""

    def __init__(
        self,
        spec: ServerSpec,
        *,
        log_path: Path,
        reporter: Reporter,
        env: dict[str, str] | None = None,
        detach: bool = False,
        grace: float = 30.0,
    ):
        self.spec = spec
        self.log_path = Path(log_path)
        self.rep = reporter
        self.env = spec.process_environment(env)
        self.detach = detach
        self.grace = grace
        self.proc: subprocess.Popen | None = None
        self.follower: _LogFollower | None = None
        self.session = requests.Session()
        self.started_at: float | None = None
        self.launched_wall: float | None = None  # epoch seconds of the launch (phases.breakdown)
        self.log_offset = 0  # where this start's part of the (appended) log begins
        self.ready_s: float | None = None
        self.model_info: dict[str, Any] | None = None

    # ---- start ------------------------------------------------------------------------------
    def check_port(self) -> None:
        """The server's HTTP port is free here (a node other than rank 0 binds none)."""
        if not self.spec.serves_http:
            return
        host = self.spec.client_host
        if port_in_use(self.spec.port, host):
            raise ServerError(
                f"server.port: {host}:{self.spec.port} is already in use; stop that server "
                "or pass --port"
            )

    def start(self) -> None:
        self.check_port()
        # SGLANG_MOE_CONFIG_DIR (profile.environment) names the overlay of the kit's tuned MoE
        # configs over the installed SGLang's own: (re)built here, before every start
        overlay.prepare(self.spec.profile, source=self.spec.overrides.moe_configs)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.spec.argv()
        with open(self.log_path, "ab") as log:
            offset = self.log_offset = log.tell()
            self.launched_wall = time.time()
            try:
                self.proc = spawn(
                    argv,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    die_with_parent=not self.detach,
                )
            except OSError as e:
                raise ConfigError(
                    f"server.launcher: cannot start {argv[0]!r} ({e.strerror or type(e).__name__})"
                ) from None
        self.started_at = time.monotonic()
        self.follower = _LogFollower(self.log_path, offset, self.rep)
        self.follower.start()
        pid = self.proc.pid
        self.rep.say(f"server pid {pid} (process group {pid}); log {self.log_path}")

    def start_phases(self) -> list[tuple[str, float]]:
        """Where this start's time went, from SGLang's log since the launch (phases.py)."""
        if self.launched_wall is None:
            return []
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return phases.breakdown(text, self.launched_wall)

    # ---- watching -----------------------------------------------------------------------------
    def check_child(self, deadline: float) -> None:
        rc = self.proc.poll()
        if rc is not None:
            raise ServerError(
                f"the server {describe_status(rc)} after {self.rep.elapsed():.1f} s",
                EXIT_CHILD_FAILED,
            )
        if time.monotonic() >= deadline:
            raise ServerError(
                f"gave up at the deadline ({self.rep.elapsed():.1f} s, --timeout) while "
                f"{self.rep.phase}",
                EXIT_DEADLINE,
            )
        self.rep.tick()

    def _pause(self, seconds: float, deadline: float) -> None:
        """Wait `seconds` while checking the child every CHILD_POLL."""
        end = time.monotonic() + seconds
        while True:
            self.check_child(deadline)
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(CHILD_POLL, left))

    def wait_ready(self, deadline: float) -> float:
        """Until /health answers 200; returns seconds from start to ready. On a node other than
        rank 0 that is the leader's /health (spec.url): the server is ready when all are."""
        self.rep.set_phase(f"waiting for {self.spec.url}/health")
        while True:
            self.check_child(deadline)
            timeout = max(0.05, min(HEALTH_TIMEOUT, deadline - time.monotonic()))
            asked = time.monotonic()
            try:
                if self.session.get(f"{self.spec.url}/health", timeout=timeout).status_code == 200:
                    break
            except requests.RequestException:
                pass
            self._pause(HEALTH_EVERY - (time.monotonic() - asked), deadline)
        self.ready_s = time.monotonic() - self.started_at
        self.rep.say(f"ready after {self.ready_s:.1f} s")
        return self.ready_s

    def get_info(self, name: str, deadline: float) -> dict[str, Any]:
        """GET model_info or server_info by the installed version's name, the other on 404."""
        last = "no answer"
        for path in self.spec.sglang.endpoints(name):
            try:
                r = self.session.get(f"{self.spec.url}{path}", timeout=30)
            except requests.RequestException as e:
                self.check_child(deadline)
                raise ServerError(f"{path} did not answer ({type(e).__name__})", 1) from None
            if r.status_code == 404:
                last = f"{path}: 404"
                continue
            try:
                body = r.json()
            except ValueError:
                body = None
            if r.status_code != 200 or not isinstance(body, dict):
                raise ServerError(f"{path} answered HTTP {r.status_code}", 1)
            return body
        raise ServerError(f"no {name} endpoint ({last})", 1)

    def check_model(self, deadline: float) -> dict[str, Any]:
        """The port could belong to someone else's server: make sure it serves our model."""
        info = self.get_info("model_info", deadline)
        got = info.get("model_path")
        if got != self.spec.model_path:
            raise ServerError(
                f"{self.spec.url} serves model {got!r}, not {self.spec.model_path!r}", 1
            )
        self.model_info = info
        return info

    def post(self, path: str, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        """POST while watching the child: a dead server is reported as such, not as a broken
        connection. Returns the JSON body of a 200."""
        box: dict[str, Any] = {}

        def send() -> None:
            try:
                r = requests.post(
                    f"{self.spec.url}{path}",
                    json=body,
                    timeout=(5, max(1.0, deadline - time.monotonic())),
                )
                box["status"], box["text"] = r.status_code, r.text
            except requests.RequestException as e:
                box["error"] = type(e).__name__

        t = threading.Thread(target=send, daemon=True)
        t.start()
        while t.is_alive():
            self.check_child(deadline)
            t.join(CHILD_POLL)
        if "error" in box:
            # a connection broken by the server's death: wait briefly for the exit to report it
            end = time.monotonic() + 1.5
            while time.monotonic() < end and self.proc.poll() is None:
                time.sleep(0.05)
            self.check_child(deadline)
            raise ServerError(f"{path} failed ({box['error']})", 1)
        if box["status"] != 200:
            raise ServerError(f"{path} got HTTP {box['status']}: {box['text'][:200]!r}", 1)
        try:
            return json.loads(box["text"])
        except ValueError:
            return {"text": box["text"]}

    # ---- stop and failure ---------------------------------------------------------------------
    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.rep.set_phase("stopping the server (SIGTERM, then the group)")
        with signals_ignored():  # a second Ctrl-C must not leave the group behind
            rc = stop_pid(self.proc.pid, self.grace, self.proc)
        if self.follower is not None:
            self.follower.finish()
        left = group_members(self.proc.pid)
        if left:  # not expected: terminate_group KILLs; say so rather than hide it
            self.rep.say(f"processes of group {self.proc.pid} still there: {left}")
        return rc

    def release(self) -> None:
        """Leave a detached server running: stop following its log."""
        if self.follower is not None:
            self.follower.finish()

    def report_tail(self) -> None:
        if self.follower is None:
            return
        self.follower.finish()
        self.rep.say(f"last {len(self.follower.tail)} lines of its output:")
        for line in self.follower.tail:
            self.rep.console.print(f"  | {line}", markup=False, highlight=False)


@contextlib.contextmanager
def running(server: Server, *, keep: bool = False):
    """Start `server`; on leaving, stop it (or, with keep=True and no error, leave it running).

    Ctrl-C or SIGTERM at any moment stops the group and ends in one line with status 130; any
    other failure prints the log's tail, stops the group and re-raises as one line.
    """
    failed: BaseException | None = None
    with server.rep, sigterm_as_interrupt():
        try:
            server.start()
            yield server
        except KeyboardInterrupt:
            failed = ServerError(f"interrupted while {server.rep.phase}", EXIT_INTERRUPTED)
        except ServerError as e:
            failed = e
        finally:
            if failed is not None or not keep:
                phase = server.rep.phase
                rc = server.stop()
                if failed is not None:
                    server.rep.say(f"server {describe_status(rc)}")
                    server.report_tail()
            else:
                server.release()
    if failed is not None:
        raise ServerError(f"{failed} ({phase}); log {server.log_path}",
                          exit_code=getattr(failed, "exit_code", 1))  # fmt: skip
