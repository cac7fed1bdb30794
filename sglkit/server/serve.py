"""server.up / status / down / flush-cache / trace: serving a profile, and finding it again.

One server of the kit at a time on a machine (a state file per profile, sglkit.server.state).
`up` serves the profile's spec with its environment (cache folders, the MoE config store) inside
the profile's live telemetry run when there is one: its log goes into the run's logs/, it is
recorded in the run's manifest, scraped by the run's Prometheus, and traced where the profile
turns tracing on and the run has Jaeger.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any

import requests

from sglkit import profile as profiles
from sglkit.cache import deepgemm
from sglkit.errors import SglkitError
from sglkit.observability import manifest as mf
from sglkit.observability import tracing
from sglkit.proc import group_members, terminate_group
from sglkit.server import phases, state, telemetry
from sglkit.server import spec as server_spec
from sglkit.server.runner import (
    EXIT_CHILD_FAILED,
    Reporter,
    Server,
    ServerError,
    running,
    signals_ignored,
    stop_pid,
)
from sglkit.versions import SGLang

EXIT_DOWN = 3  # server.status: like `systemctl status` for a stopped unit
# server_info fields worth a line in server.status (those the installed version has)
INFO_FIELDS = ("version", "max_total_num_tokens", "max_running_requests", "max_req_input_len",
               "context_length", "tp_size")  # fmt: skip
STATE_FIELDS = ("last_gen_throughput", "#running-req", "#queue-req", "token_usage",
                "avg_spec_accept_length")  # fmt: skip


def up(
    profile: str | None,
    overrides: server_spec.Overrides,
    *,
    detach: bool = False,
    timeout: float = 1800.0,
    grace: float = 30.0,
    precompile: str = "auto",
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Serve until Ctrl-C (or, detached, until ready); returns the state that was recorded.

    `precompile` (auto, on, off) decides SGLang's all-M DeepGEMM sweep at start: auto skips it
    where cache.deepgemm's marker matches this server (sglkit.cache.deepgemm.precompile_plan)."""
    p = profiles.load(profile)
    rep = reporter or Reporter("server.up", echo=not detach)
    live = telemetry.live_run(profiles.telemetry_root(p))
    endpoint = tracing.endpoint(p, live[1]) if live else None
    if endpoint and not overrides.tracing_endpoint:
        overrides = dataclasses.replace(overrides, tracing_endpoint=endpoint)
    spec = server_spec.build(p, overrides)
    server_spec.require_node_rank(spec)
    env, precompile_line = deepgemm.precompile_plan(spec, precompile)
    for other in state.running():
        raise ServerError(
            f"server.up: a server of the kit is already up (profile {other['profile']}, "
            f"pid {other['pid']}, {other['url']}); stop it with `invoke server.down "
            f"--profile {other['profile_path']}`"
        )
    for other, left in state.stranded():
        raise ServerError(
            f"server.up: processes of a server of the kit whose main process is gone still run "
            f"(profile {other['profile']}, group {other['pid']}: pids {left}); stop them with "
            f"`invoke server.down --profile {other['profile_path']}`"
        )
    run_dir = live[0] if live else None
    log = (run_dir / "logs" / "sglang.log") if run_dir else state.folder() / f"{p.name}.log"
    server = Server(spec, log_path=log, reporter=rep, env=env, detach=detach, grace=grace)
    server.check_port()
    rep.console.print(f"server.up: {precompile_line}", markup=False)
    rep.say(f"run: {run_dir}" if run_dir else "run: none live (obs.up starts one)")
    rep.say(f"argv: {profiles.shell_line(spec.argv())}")
    st: dict[str, Any] = {}
    left_running = False
    try:
        with running(server, keep=detach):
            deadline = time.monotonic() + timeout
            ready_s = server.wait_ready(deadline)
            info = server.check_model(deadline)
            st = record(spec, server, info, ready_s, run_dir, precompile_line)
            if run_dir:
                rep.say(f"telemetry: {telemetry.join(run_dir, live[1], spec, st)}")
            rep.console.print(
                f"server.up: ready: {spec.url} serves {info.get('model_path')} "
                f"(pid {st['pid']}, {ready_s:.1f} s to ready); log {log}",
                markup=False,
            )
            if st.get("start_phases"):
                rep.console.print(f"server.up: start: {phases.line(st['start_phases'])}",
                                  markup=False)  # fmt: skip
            if not detach:
                _serve_until_interrupted(server, rep)
        left_running = detach
    finally:
        if not left_running and st:  # stopped, or died while serving: no record says running
            _forget(p.name, run_dir)
    return st


def _serve_until_interrupted(server: Server, rep: Reporter) -> None:
    rep.set_phase("serving (Ctrl-C stops)")
    try:
        while True:
            server.check_child(float("inf"))
            time.sleep(0.25)
    except KeyboardInterrupt:
        rep.say("Ctrl-C: stopping")


def record(spec, server: Server, info: dict[str, Any], ready_s: float, run_dir: Path | None,
           precompile: str):  # fmt: skip
    pid = server.proc.pid
    st = {
        "profile": spec.profile.name,
        "profile_path": str(spec.profile.path),
        "pid": pid,
        "pid_start": mf.process_start(pid),
        "pid_ns": mf.pid_namespace(),
        "argv": spec.argv(),
        "url": spec.url,
        "model_path": info.get("model_path"),
        "sglang_version": spec.sglang.version,
        "log": str(server.log_path),
        "run_dir": str(run_dir) if run_dir else None,
        "started_at": mf.utcnow(),
        "ready_s": round(ready_s, 3),
        "start_phases": [[name, round(sec, 1)] for name, sec in server.start_phases()],
        "precompile": precompile,
        "status": "running",
    }
    state.write(spec.profile.name, st)
    return st


def _forget(name: str, run_dir: Path | None) -> None:
    state.remove(name)
    if run_dir:
        telemetry.leave(run_dir)


Stray = tuple[dict[str, Any], list[int]]  # a stranded record and the pids left of its group


def find(profile: str | None) -> tuple[profiles.Profile, dict[str, Any] | None, Stray | None]:
    """The profile, its detached server's state (None when none is up), and, where none is up,
    the stranded record kept for server.down (its main process gone while part of its group is
    not) with those pids; a stale record is removed."""
    p = profiles.load(profile)
    st = state.read(p.name)
    if st is None or state.alive(st):
        return p, st, None
    left = state.leftovers(st)
    if not left:
        state.remove(p.name)
        return p, None, None
    return p, None, (st, left)


def require(profile: str | None) -> dict[str, Any]:
    p, st, stray = find(profile)
    if st is None:
        if stray:
            hint = (f"its main process is gone, pids {stray[1]} of its group are not: "
                    f"`invoke server.down --profile {p.path}` stops them")  # fmt: skip
        else:
            hint = f"`invoke server.up --profile {p.path}`"
        raise SglkitError(f"no server of profile {p.name} is up ({hint})", exit_code=EXIT_DOWN)
    return st


def down(profile: str | None, grace: float = 30.0) -> str:
    p, st, stray = find(profile)
    if stray:
        return _stop_leftovers(stray, grace)
    if st is None:
        return f"server.down: no server of profile {p.name} is up"
    t0 = time.monotonic()
    with signals_ignored():  # a supervisor's TERM to us must not leave the group half-stopped
        stop_pid(st["pid"], grace)
    left = group_members(st["pid"])
    if left:
        raise ServerError(f"server.down: processes of group {st['pid']} survived KILL: {left}")
    _forget(p.name, Path(st["run_dir"]) if st.get("run_dir") else None)
    return f"server.down: stopped pid {st['pid']} in {time.monotonic() - t0:.1f} s"


def _stop_leftovers(stray: Stray, grace: float) -> str:
    """server.down where the main process is gone: stop what is left of its group."""
    st, left = stray
    with signals_ignored():
        terminate_group(st["pid"], grace=grace)
    if survivors := group_members(st["pid"]):
        raise ServerError(f"server.down: processes of group {st['pid']} survived KILL: {survivors}")
    _forget(st["profile"], Path(st["run_dir"]) if st.get("run_dir") else None)
    return (f"server.down: the main process (pid {st['pid']}) was gone; stopped the "
            f"{len(left)} process(es) left of its group: {left}")  # fmt: skip


def status(profile: str | None) -> dict[str, Any]:
    """up or down; for up: health, model, uptime and server_info's main figures."""
    p, st, stray = find(profile)
    if st is None:
        if stray:  # down, but part of its group holds on (server.down stops it)
            return {"profile": p.name, "status": "down", "leftover_pids": stray[1]}
        return {"profile": p.name, "status": "down"}
    url = st["url"]
    out: dict[str, Any] = {"profile": p.name, "status": "up", "url": url, "pid": st["pid"],
                           "log": st["log"], "run_dir": st.get("run_dir")}  # fmt: skip
    started = dt.datetime.fromisoformat(st["started_at"].replace("Z", "+00:00"))
    out["uptime_s"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
    out["ready_s"] = st.get("ready_s")
    out["start_phases"] = st.get("start_phases") or []  # where the start's time went (phases)
    try:
        out["health"] = requests.get(f"{url}/health", timeout=5).status_code
    except requests.RequestException as e:
        out["health"] = type(e).__name__
    sg = SGLang(st.get("sglang_version"))
    for name in ("model_info", "server_info"):
        out[name] = _get_info(url, sg.endpoints(name))
    info = out.pop("server_info") or {}
    model = out.pop("model_info") or {}
    out["model"] = model.get("model_path")
    out["figures"] = {k: info[k] for k in INFO_FIELDS if k in info}
    states = info.get("internal_states") or []
    if states and isinstance(states[0], dict):
        out["figures"].update({k: states[0][k] for k in STATE_FIELDS if k in states[0]})
    return out


def _get_info(url: str, paths: tuple[str, ...]) -> dict[str, Any] | None:
    for path in paths:
        try:
            r = requests.get(f"{url}{path}", timeout=30)
        except requests.RequestException:
            return None
        if r.status_code == 200:
            try:
                return r.json()
            except ValueError:
                return None
    return None


def flush_cache(profile: str | None) -> str:
    st = require(profile)
    try:
        r = requests.post(f"{st['url']}/flush_cache", timeout=60)
    except requests.RequestException as e:
        raise ServerError(f"/flush_cache did not answer ({type(e).__name__})") from None
    if r.status_code != 200:
        raise ServerError(f"/flush_cache answered HTTP {r.status_code}: {r.text.strip()[:200]}")
    return r.text.strip() or "flushed"


def trace(profile: str | None, seconds: float, output: str | None = None,
          wait: float = 300.0) -> tuple[Path, list[Path]]:  # fmt: skip
    """SGLang's torch profiler for `seconds`; the trace files land in the run's traces/ folder
    (or `output`). Returns the folder and the files written."""
    st = require(profile)
    if output:
        folder = Path(output).expanduser().resolve()
    elif st.get("run_dir"):
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        folder = Path(st["run_dir"]) / "traces" / stamp
    else:
        raise SglkitError(
            "--output: the server runs outside a telemetry run; name a folder for the traces"
        )
    folder.mkdir(parents=True, exist_ok=True)
    url = st["url"]
    body = {"output_dir": str(folder), "activities": ["CPU", "GPU"]}
    _post_ok(f"{url}/start_profile", body)
    time.sleep(seconds)  # the capture window the user asked for, not a wait for a condition
    _post_ok(f"{url}/stop_profile", None)
    # the files are written after stop_profile returns: wait until some appear and settle
    deadline = time.monotonic() + wait
    last: list[tuple[str, int]] = []
    while time.monotonic() < deadline:
        files = sorted(f for f in folder.rglob("*") if f.is_file())
        now = [(str(f), f.stat().st_size) for f in files]
        if files and now == last:
            return folder, files
        last = now
        if not state.alive(st):
            raise ServerError(f"the server (pid {st['pid']}) exited while writing its trace")
        time.sleep(1.0)
    raise ServerError(
        f"no trace file settled in {folder} within {wait:.0f} s", exit_code=EXIT_CHILD_FAILED
    )


def _post_ok(url: str, body: dict[str, Any] | None) -> None:
    try:
        r = requests.post(url, json=body, timeout=120)
    except requests.RequestException as e:
        raise ServerError(f"{url} did not answer ({type(e).__name__})") from None
    if r.status_code != 200:
        raise ServerError(f"{url} answered HTTP {r.status_code}: {r.text.strip()[:200]}")
