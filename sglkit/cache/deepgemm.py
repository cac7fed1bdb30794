"""cache.deepgemm: run the profile's server once with the DeepGEMM precompile environment.

The launcher is the profile's own (`python3 -m sglang.launch_server` by default) with exactly the
argv that serving uses, plus the flags warming needs (WARM_FLAGS). We own the lifecycle instead of
`python -m sglang.compile_deep_gemm` (see docs/caching.md): readiness is polled with a per-request
timeout, a dead child is noticed within a poll interval, the whole process group always goes.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglkit import profile as profiles
from sglkit.cache import deepgemm_parallel as par
from sglkit.cache import fingerprint, store, triton_warm
from sglkit.cache import gemm_shapes as gs
from sglkit.cli import number
from sglkit.errors import ConfigError, SglkitError
from sglkit.server import spec as server_spec
from sglkit.server.runner import EXIT_INTERRUPTED, Reporter, Server, running, sigterm_as_interrupt

KIND = "deepgemm"
# the warm-up request compile_deep_gemm sends: four token ids, eight new tokens, ignore EOS
WARMUP_REQUEST = {
    "input_ids": [0, 1, 2, 3],
    "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
}


def warm_overrides(timeout: float) -> dict[str, Any]:
    """What warming adds to the serving spec, and why (two of compile_deep_gemm's three choices):

    load_format dummy       random weights: kernel shapes come from config.json, not the weights,
                            and loading 600 GB of DeepSeek-V3 would dominate the run;
    watchdog_timeout T      SGLang's watchdog kills a forward pass after 300 s by default, and
                            compiling every M of one GEMM shape takes longer than that.

    CUDA graphs stay on, unlike compile_deep_gemm: capturing them compiles the Triton kernels of
    every decode batch size (attention, MoE, quantization) into TRITON_CACHE_DIR, which the first
    start after a graph-less warm paid instead (docs/serving-start.md).
    """
    return {"load_format": "dummy", "watchdog_timeout": timeout}


def warm_environment(sglang) -> dict[str, str]:
    """The precompile environment (cache/layout.yaml), in the names `sglang` reads."""
    env = profiles.cache_layout()["deepgemm_warm_env"]
    return {k: str(v) for k, v in env.items() if sglang.env_name_used(k)}


# Without --jobs the server warms alone. Measured on an H100 with sgl-deep-gemm 0.1.4
# (docs/caching.md), SGLang's sweep runs every M's GEMM on the GPU, so the workers' compile and
# the server's check each pay that sweep: the parallel warm paid off for the two-layer Qwen3-MoE
# (2 shapes) and lost to the server alone for the two-layer DeepSeek-V3 (6 larger shapes).
DEFAULT_JOBS = 1


@dataclass(frozen=True)
class Plan:
    spec: server_spec.ServerSpec  # the warm-up server: the serving spec plus warm_overrides
    env: dict[str, str]  # what the child gets on top of the caller's environment
    folder: Path
    timeout: float
    jobs: int | None = DEFAULT_JOBS  # compile workers first; None: as many as fit (--jobs auto)
    triton: str = "auto"  # the Triton step after the server (triton_warm.fold): auto, on, off

    @property
    def profile(self) -> profiles.Profile:
        return self.spec.profile

    @property
    def argv(self) -> list[str]:
        return self.spec.argv()


def parse_jobs(value: int | str | None) -> int | None:
    """--jobs: a positive number of workers, or "auto" (None: the cores here, capped by GPU
    memory); not given: DEFAULT_JOBS."""
    if value is None:
        return DEFAULT_JOBS
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return number(value, "--jobs (workers, or auto)", int, minimum=1)


def plan(
    profile: str | None = None,
    *,
    model: str | None = None,
    context_length: int | None = None,
    launcher: str | list[str] | None = None,
    port: int | None = None,
    timeout: float = 3600.0,
    node_rank: int | None = None,
    dist_init_addr: str | None = None,
    jobs: int | str | None = None,
    triton: str | None = None,
) -> Plan:
    """Resolve what would run; raise ConfigError (exit 2) naming the flag or field at fault."""
    p = profiles.load(profile)
    triton = "auto" if triton is None else triton
    if triton not in triton_warm.FOLD_CHOICES:
        raise ConfigError(f"--triton: expected one of {', '.join(triton_warm.FOLD_CHOICES)}, "
                          f"got {triton!r}")  # fmt: skip
    if timeout is None or timeout <= 0:
        raise ConfigError(f"--timeout: expected a positive number of seconds, got {timeout!r}")
    jobs = parse_jobs(jobs)
    if model is not None and not str(model).strip():
        raise ConfigError("--model: expected a model path or hub id")
    if model is not None:
        # the profile's config.json belongs to its own model
        p = profiles.Profile(path=p.path, data={**p.data, "model": {"path": str(model),
                                                                    "config": None}})  # fmt: skip
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
        have = p.server["context_length"]
        if have is not None and have != context_length:
            raise ConfigError(
                f"--context-length: {context_length} differs from server.context_length {have} "
                f"in {p.path}; the server would run with {have}"
            )
    elif p.server["context_length"] is None:
        raise ConfigError(
            f"{p.path}: server.context_length: required to warm DeepGEMM (set it in the profile "
            "or pass --context-length); SGLang's default would warm another range than serving uses"
        )
    argv = None
    if launcher is not None:
        argv = tuple(shlex.split(launcher) if isinstance(launcher, str) else launcher)
        if not argv:
            raise ConfigError(
                "--launcher: expected a command, e.g. 'python3 -m sglang.launch_server'"
            )
    if port is not None and not 1 <= int(port) <= 65535:
        raise ConfigError(f"--port: expected a port number 1-65535, got {port}")
    spec = server_spec.build(
        p,
        server_spec.Overrides(
            node_rank=node_rank,
            dist_init_addr=dist_init_addr,
            port=None if port is None else int(port),
            launcher=argv,
            context_length=context_length,
            **warm_overrides(float(timeout)),
        ),
    )
    server_spec.require_node_rank(spec)
    return Plan(
        spec=spec,
        env={**spec.environment(), **warm_environment(spec.sglang)},
        folder=p.cache_dirs()[KIND],
        timeout=float(timeout),
        jobs=jobs,
        triton=triton,
    )


def shape_plan(spec: server_spec.ServerSpec) -> gs.Plan:
    """The DeepGEMM shapes one GPU of this server compiles (sglkit.cache.gemm_shapes); an empty
    plan with the reason where it cannot be made (the server then warms alone)."""
    config = spec.profile.model_config_path()
    if config is None or not config.is_file():
        return gs.Plan((), "no config.json of the model here")
    flags = spec.flag_values()
    try:
        return gs.plan(
            config,
            tp=spec.server["tp"],
            ep=spec.server["ep"] or 1,
            dp=spec.server["dp"] or 1,
            enable_dp_attention=bool(flags.get("--enable-dp-attention")),
            moe_dense_tp_size=flags.get("--moe-dense-tp-size"),
            moe_runner_backend=flags.get("--moe-runner-backend"),
            moe_a2a_backend=flags.get("--moe-a2a-backend"),
            fp8_gemm_backend=flags.get("--fp8-gemm-backend"),
            disable_shared_experts_fusion=bool(flags.get("--disable-shared-experts-fusion")),
        )
    except (KeyError, TypeError, ValueError, SglkitError) as e:
        return gs.Plan((), f"no plan from {config.name}: {type(e).__name__}: {e}")


# SGLang logs this line for every shape it sweeps (compile_utils, 0.5.16-0.5.23)
SWEEP_LINE = re.compile(r"DeepGEMM JIT Compiling for <(\w+)> N=(\d+), K=(\d+), num_groups=(\d+)")


def swept_shapes(log_text: str) -> list[tuple[str, int, int, int]]:
    """(kind, N, K, groups) of every shape the server swept, in order, from its log."""
    seen: dict[tuple, None] = {}
    for m in SWEEP_LINE.finditer(log_text):
        seen.setdefault((m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))))
    return list(seen)


# ---- the run -------------------------------------------------------------------------------------
@dataclass
class Result:
    status: str  # "already-warm" | "warmed": the DeepGEMM cache (the Triton step prints its line)
    marker: dict[str, Any]
    seconds: float


def marker_matches(
    folder: Path, fp: fingerprint.Fingerprint, node: int | None = None
) -> tuple[dict | None, list[str]]:
    """This node's completion marker, and how its fingerprint differs from `fp`."""
    marker = store.read_marker(folder, node)
    if marker is None or marker.get("kind") != KIND or "fingerprint" not in marker:
        return None, ["no completion marker"]
    stored = fingerprint.Fingerprint.from_json(marker["fingerprint"])
    return marker, fingerprint.differences(stored, fp)


# How the warm's server ran, recorded in the marker: a marker of another recipe (before CUDA graphs
# were kept on, none) is warmed again, though its DeepGEMM kernels still serve (precompile_plan).
WARM_RECIPE = "cuda-graphs-captured"


def warm_differences(pl: Plan, fp: fingerprint.Fingerprint) -> tuple[dict | None, list[str]]:
    """marker_matches, plus whether the marker's warm ran as this one does (WARM_RECIPE)."""
    marker, diff = marker_matches(pl.folder, fp, pl.spec.node)
    if marker is not None and not diff and marker.get("recipe") != WARM_RECIPE:
        diff = ["warmed by an older warm, without CUDA graphs (their Triton kernels are missing)"]
    return marker, diff


PRECOMPILE_CHOICES = ("auto", "on", "off")


def precompile_plan(spec: server_spec.ServerSpec, choice: str = "auto") -> tuple[dict, str]:
    """(environment, one line) for serving `spec`: SGLang's all-M DeepGEMM precompile at start.

    auto: off when cache.deepgemm's marker matches the fingerprint of this very server (every
    kernel it will ask for is in the folder, so the sweep only re-reads them), else SGLang's
    default; on / off: forced."""
    if choice not in PRECOMPILE_CHOICES:
        raise ConfigError(f"--precompile: expected one of {', '.join(PRECOMPILE_CHOICES)}, "
                          f"got {choice!r}")  # fmt: skip
    folder = spec.profile.cache_dirs()[KIND]
    if choice != "auto":
        return spec.sglang.deepgemm_precompile(choice == "on"), f"precompile: {choice} (forced)"
    marker, diff = marker_matches(folder, fingerprint.compute(spec), spec.node)
    if marker is not None and not diff:
        return spec.sglang.deepgemm_precompile(False), (
            f"precompile: off: {folder} was warmed for this server "
            f"(marker of {marker.get('warmed_at', '?')} matches); --precompile on sweeps anyway"
        )
    why = diff[0] if diff else "no marker"
    return {}, f"precompile: SGLang's default (DeepGEMM cache not warm for this server: {why})"


def describe(pl: Plan) -> dict[str, Any]:
    """What a warm would run and compare, without running it (--dry-run)."""
    fp = fingerprint.compute(pl.spec)
    marker, diff = warm_differences(pl, fp)
    return {
        "argv": pl.argv,
        "command": shlex.join(pl.argv),
        "env": {k: pl.env[k] for k in sorted(pl.env)},
        "folder": str(pl.folder),
        "url": pl.spec.url,
        "fingerprint": fp.to_json(),
        "marker": "none" if marker is None else ("matches" if not diff else f"differs: {diff[0]}"),
        "shapes": [s.label() for s in shape_plan(pl.spec).shapes],
        "jobs": "auto" if pl.jobs is None else pl.jobs,
        "triton": pl.triton,
    }


def warm(
    pl: Plan,
    *,
    force: bool = False,
    lock_timeout: float = 0.0,
    grace: float = 10.0,
    reporter: Reporter | None = None,
) -> Result:
    """The DeepGEMM cache through the server (once; skipped where the marker matches), then the
    Triton step for the MoE config file that server reads (`pl.triton`)."""
    rep = reporter or Reporter("cache.deepgemm")
    if pl.triton == "on":  # fail now rather than after the server's long warm
        triton_warm.fold_target(pl.profile, "on")
    result = _warm_server(pl, force=force, lock_timeout=lock_timeout, grace=grace, rep=rep)
    rep.console.print(triton_warm.fold(pl.profile, pl.triton, rep.say, lock_timeout), markup=False)
    return result


def _warm_server(pl: Plan, *, force: bool, lock_timeout: float, grace: float,
                 rep: Reporter) -> Result:  # fmt: skip
    fp = fingerprint.compute(pl.spec)
    if not force:
        marker, diff = warm_differences(pl, fp)
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
            marker, diff = warm_differences(pl, fp)
            if marker is not None and not diff:
                rep.console.print(f"already warm: {pl.folder} (warmed meanwhile)", markup=False)
                return Result("already-warm", marker, rep.elapsed())
        server = Server(pl.spec, log_path=log_path(pl), reporter=rep, env=pl.env, grace=grace)
        server.check_port()
        # from here on a crash leaves no claim of "warm"
        store.remove_marker(pl.folder, pl.spec.node)
        for unknown in fp.unknown:
            rep.say(f"fingerprint: {unknown} unknown here ({fp.reasons.get(unknown, '?')})")
        started = dt.datetime.now(dt.timezone.utc)
        parallel = compile_in_parallel(pl, rep)
        before = par.kernel_files(pl.folder)
        server.log_path.write_text(f"# {started.isoformat()} {shlex.join(pl.argv)}\n")
        rep.set_phase("starting the server" + (" to check the cache" if parallel else ""))
        rep.say(f"argv: {shlex.join(pl.argv)}")
        with running(server):
            deadline = time.monotonic() + pl.timeout
            server.wait_ready(deadline)
            server.check_model(deadline)
            rep.set_phase("sending the warm-up request (compiling kernels)")
            server.post("/generate", WARMUP_REQUEST, deadline)
        finished = dt.datetime.now(dt.timezone.utc)
        check = None
        if parallel is not None:
            check = verify(parallel, before, par.kernel_files(pl.folder), server.log_path)
            rep.say(check["line"])
        marker = {
            "kind": KIND,
            "recipe": WARM_RECIPE,
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
            "log": str(server.log_path),
        }
        if parallel is not None:
            marker["parallel"] = {**parallel.to_json(), **{k: v for k, v in check.items()
                                                           if k != "line"}}  # fmt: skip
        store.write_marker(pl.folder, marker, pl.spec.node)
    rep.say(f"warm: {pl.folder} (marker {store.marker_path(pl.folder, pl.spec.node)})")
    return Result("warmed", marker, rep.elapsed())


def auto_jobs(shapes: list[gs.Shape], ms_guess: list[int], env: dict[str, str]) -> tuple[int, str]:
    """Workers for --jobs auto: the cores this process may use, capped by the free memory of
    the GPU the workers see (`env`: their whole environment, which may set
    CUDA_VISIBLE_DEVICES)."""
    from sglkit import nvml

    try:
        free = nvml.free_bytes(env)
    except Exception:
        free = None
    return gs.jobs_for(shapes, ms_guess, len(os.sched_getaffinity(0)), free)


def compile_in_parallel(pl: Plan, rep: Reporter) -> par.Outcome | None:
    """Compile the profile's DeepGEMM kernels in worker processes before the server's own warm
    (which then only checks them), or say in one line why not and return None."""
    if pl.jobs == 1:
        return None
    missing = [m for m in ("sglang", "deep_gemm") if importlib.util.find_spec(m) is None]
    if missing:
        rep.say(f"parallel compile: skipped ({' and '.join(missing)} not importable here); "
                "the server warms alone")  # fmt: skip
        return None
    shapes = shape_plan(pl.spec)
    if not shapes.shapes:
        rep.say(f"parallel compile: skipped ({shapes.reason}); the server warms alone")
        return None
    env = {**pl.env}
    fast = str(env.get("SGLANG_JIT_DEEPGEMM_FAST_WARMUP", os.environ.get(
        "SGLANG_JIT_DEEPGEMM_FAST_WARMUP", ""))).lower() in ("1", "true", "yes")  # fmt: skip
    if pl.jobs is None:
        cps = pl.spec.flag_values().get("--chunked-prefill-size")
        jobs, why = auto_jobs(list(shapes.shapes), gs.m_values(int(cps or 8192), fast),
                              pl.spec.process_environment(env))  # fmt: skip
        if jobs == 1:
            rep.say(f"parallel compile: skipped (room for one worker only: {why}); the server "
                    "warms alone")  # fmt: skip
            return None
    else:
        jobs, why = pl.jobs, "--jobs"
    rep.set_phase(f"compiling {len(shapes.shapes)} DeepGEMM shapes on {jobs} workers")
    rep.say(f"parallel compile: {len(shapes.shapes)} shapes ({shapes.reason}): "
            + "; ".join(s.label() for s in shapes.shapes) + f"; workers: {why}")  # fmt: skip
    try:
        with sigterm_as_interrupt():  # a supervisor's SIGTERM stops the workers as Ctrl-C does
            out = par.compile_all(
                shapes=list(shapes.shapes),
                flags=pl.spec.server_args(),
                env=env,
                folder=pl.folder,
                jobs=jobs,
                chunked_prefill_size=None,  # SGLang's own, after its adjustments (DP, ...)
                fast_warmup=fast,
                say=rep.say,
                timeout=pl.timeout,
            )
    except KeyboardInterrupt:  # compile_all has stopped the workers and removed their leftovers
        raise SglkitError(f"interrupted while {rep.phase}; no marker written",
                          EXIT_INTERRUPTED) from None  # fmt: skip
    if out is None:
        return None
    rep.say(f"parallel compile: {out.files} kernel files in {out.seconds:.1f} s "
            f"({out.worker_seconds:.0f} worker-seconds); the server now checks them")  # fmt: skip
    if out.cut:
        rep.say(f"parallel compile: SGLang cut {len(out.cut)} slices short for lack of GPU "
                f"memory ({'; '.join(out.cut)}); the server's sweep compiles what they missed; "
                "fewer --jobs leave each worker more memory")  # fmt: skip
    return out


def verify(out: par.Outcome, before: set[str], after: set[str], log: Path) -> dict:
    """Did the server, sweeping every M of every shape on the cache, compile anything new? It
    counts as checked only where the server's log shows it swept every planned shape."""
    swept = swept_shapes(log.read_text(errors="replace")) if log.is_file() else []
    planned = {s.key for s in out.shapes}
    unplanned = [f"{k} N={n} K={kk} groups={g}" for k, n, kk, g in swept
                 if (k, n, kk, g) not in planned]  # fmt: skip
    unswept = [s.label() for s in out.shapes if s.key not in set(swept)]
    added = sorted(after - before)
    if added:
        line = (f"incomplete: the server compiled {len(added)} more kernel files"
                + (f" (shapes not in the plan: {', '.join(unplanned)})" if unplanned else "")
                + "; its own sweep completed the cache, and the marker says so")  # fmt: skip
    elif not swept:
        line = ("unchecked: the server's log shows no DeepGEMM sweep (its log level hides it, "
                f"or it swept nothing); it compiled nothing new ({len(after)} files)")  # fmt: skip
    elif unswept:
        line = (f"unchecked: the server swept {len(swept)} shapes but not the planned "
                f"{', '.join(unswept)}; it compiled nothing new ({len(after)} files)")  # fmt: skip
    elif out.cut:
        line = (f"unchecked: the server compiled nothing new ({len(after)} files), but SGLang "
                f"cut {len(out.cut)} slices for lack of GPU memory and may have cut its own "
                "sweep the same way")  # fmt: skip
    else:
        line = (f"verified: the server swept {len(swept)} shapes on this cache and compiled "
                f"nothing new ({len(after)} files)")  # fmt: skip
    # a slice SGLang cut in a worker may be cut in the server's sweep too (its KV cache holds
    # the memory then), which would then add nothing: not proof that the folder is complete
    return {"verified": not added and bool(swept) and not unswept and not out.cut,
            "server_added": len(added),
            "swept_shapes": len(swept), "unplanned_shapes": unplanned,
            "unswept_shapes": unswept, "line": line}  # fmt: skip


def log_path(pl: Plan) -> Path:
    node = "" if pl.spec.node is None else f".node-{pl.spec.node}"
    return pl.folder.parent / f".{pl.folder.name}.warm{node}.log"
