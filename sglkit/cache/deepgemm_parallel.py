"""Compile a profile's DeepGEMM kernels in parallel worker processes, into the cache folder.

Each worker imports the installed SGLang once and runs its own warm-up routine,
`compile_utils._compile_deep_gemm_one_type_all(kind, n, k, groups, m_list)`, on one shape and
one slice of M (sglkit.cache.gemm_shapes), with the environment the warm-up server gets. So the
folder ends up holding the kernels the server looks up, compiled by the code that looks them up.

Concurrency: DeepGEMM (sgl-deep-gemm 0.1.4) compiles a kernel into a temporary file under
`<cache>/tmp/` and renames it into `<cache>/cache/kernel.<name>.<hash>/`: two workers that build
the same kernel both rename a whole file into place, so readers never see half a file. A worker
that dies mid-compile can leave a temporary file and an empty kernel folder; `discard_partial`
removes those, and the warm fails in one line with no marker written.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import re
import shutil
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from sglkit.cache import gemm_shapes as gs
from sglkit.cache import store
from sglkit.errors import SglkitError
from sglkit.proc import set_parent_death_signal

# ---- in the worker processes ---------------------------------------------------------------------


def _init(env: dict[str, str]) -> None:
    # its own process group: a stop kills the worker with the compilers it started (nvcc), and
    # a Ctrl-C at the terminal reaches only the warm, which then stops the workers; and killed
    # with the warm, whatever kills it (Linux: the parent-death signal)
    os.setpgrp()
    set_parent_death_signal(signal.SIGKILL)
    os.environ.update(env)
    os.environ["TQDM_DISABLE"] = "1"  # SGLang's per-M progress bar, once per worker
    from sglang.srt.layers.deep_gemm_wrapper import compile_utils  # noqa: F401 (the slow import)


def _ping() -> bool:
    """Whether SGLang turns DeepGEMM on here (sm90+ GPU, deep_gemm importable, not disabled)."""
    from sglang.srt.layers.deep_gemm_wrapper import compile_utils

    time.sleep(0.5)  # keeps this worker busy so that the pool starts all of them
    return bool(getattr(compile_utils, "ENABLE_JIT_DEEPGEMM", False))


def _chunked_prefill_size(flags: list[str]) -> int:
    """The chunked prefill size SGLang settles on for these flags on this GPU: its own parser,
    resolved (0.5.19 on: `prepare_server_args` returns the record unresolved; the resolved value
    is read through `resolved_view`), -1 where chunked prefill is off."""
    from sglang.srt.server_args import prepare_server_args

    sa = prepare_server_args(list(flags))
    view = sa
    if callable(getattr(sa, "resolve_once", None)):
        sa.resolve_once()
        try:
            from sglang.srt.arg_groups.model_override_base import resolved_view

            view = resolved_view(sa)
        except ImportError:
            pass
    value = view.chunked_prefill_size
    return -1 if value is None else int(value)


# SGLang's warning (compile_utils, 0.5.16-0.5.23) when the GPU's free memory is short of the
# warm-up buffers for the largest M: it then compiles only the M values up to the one it names
CUT_LINE = re.compile(r"reducing max_m to (\d+)")


class _CutWatch(logging.Handler):
    """Catches SGLang's warning that it cut a slice's M values for lack of GPU memory."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.max_m: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        m = CUT_LINE.search(record.getMessage())
        if m:
            self.max_m = int(m.group(1))


def _compile(
    kind: str, n: int, k: int, groups: int, ms: tuple[int, ...]
) -> tuple[float, int | None]:
    """(seconds, the M that SGLang cut this slice at for lack of GPU memory, or None)."""
    from sglang.srt.layers.deep_gemm_wrapper import compile_utils as cu

    watch, log = _CutWatch(), logging.getLogger(cu.__name__)
    log.addHandler(watch)
    t0 = time.perf_counter()
    try:
        cu._compile_deep_gemm_one_type_all(
            kernel_type=cu.DeepGemmKernelType[kind], n=n, k=k, num_groups=groups, m_list=list(ms)
        )
    finally:
        log.removeHandler(watch)
    # SGLang warns whenever free memory is short, also where its floor (max_m 4096 in 0.5.16,
    # 2048 in 0.5.23) leaves the slice whole: only an M below the slice's largest is a cut
    cut = watch.max_m if watch.max_m is not None and watch.max_m < max(ms) else None
    return time.perf_counter() - t0, cut


# ---- in the caller -------------------------------------------------------------------------------


def kernel_files(folder: Path) -> set[str]:
    """Files in a DeepGEMM cache folder (relative paths), without temporary files, locks and
    the kit's marker: what a compile adds to."""
    if not folder.is_dir():
        return set()
    out = set()
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if rel.parts[0] in ("tmp", "locks") or not p.is_file():
            continue
        if len(rel.parts) == 1 and store.is_marker(p.name):
            continue
        out.add(str(rel))
    return out


def discard_partial(folder: Path, since: float) -> list[str]:
    """Remove what a stopped compile leaves: what it was building under tmp/ (files or folders),
    and kernel folders without their kernel.cubin."""
    gone: list[str] = []
    tmp = folder / "tmp"
    if tmp.is_dir():
        for p in tmp.iterdir():
            with contextlib.suppress(OSError):
                if p.stat().st_mtime >= since - 1:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    gone.append(str(p))
    cache = folder / "cache"
    if cache.is_dir():
        for d in cache.iterdir():
            with contextlib.suppress(OSError):
                if (
                    d.is_dir()
                    and d.stat().st_mtime >= since - 1
                    and not (d / "kernel.cubin").exists()
                ):
                    shutil.rmtree(d)
                    gone.append(str(d))
    return gone


@dataclass
class Outcome:
    jobs: int
    shapes: list[gs.Shape]
    m_count: int
    chunked_prefill_size: int
    items: int = 0
    seconds: float = 0.0
    worker_seconds: float = 0.0
    files: int = 0
    cut: list[str] = field(default_factory=list)  # slices SGLang cut short for GPU memory

    def to_json(self) -> dict:
        return {
            "jobs": self.jobs,
            "shapes": [s.label() for s in self.shapes],
            "m_values": self.m_count,
            "chunked_prefill_size": self.chunked_prefill_size,
            "items": self.items,
            "seconds": round(self.seconds, 2),
            "worker_seconds": round(self.worker_seconds, 2),
            "files": self.files,
            "cut": self.cut,
        }


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop every worker and what it started now (a shutdown would wait for compiles)."""
    procs = list(getattr(pool, "_processes", {}).values())  # no public handle to the workers
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # its group: _init made the worker its leader
        except OSError:
            with contextlib.suppress(Exception):
                p.kill()  # not in its own group yet
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(5)
    pool.shutdown(wait=False, cancel_futures=True)


def compile_all(
    *,
    shapes: list[gs.Shape],
    flags: list[str],
    env: dict[str, str],
    folder: Path,
    jobs: int,
    chunked_prefill_size: int | None,
    fast_warmup: bool,
    say,
    timeout: float = 3600.0,
) -> Outcome | None:
    """Compile every shape for every M the server will use, `jobs` workers at once; None (and
    a line said) where SGLang has DeepGEMM off here, so that the server warms alone."""
    started = time.time()
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init,
                               initargs=(env,))  # fmt: skip
    ok = False
    try:
        warm = [pool.submit(_ping) for _ in range(jobs)]
        if not all(f.result() for f in warm):
            say("parallel compile: skipped (SGLang has DeepGEMM off here: it needs an sm90 or "
                "newer GPU and SGLANG_ENABLE_JIT_DEEPGEMM); the server warms alone")  # fmt: skip
            ok = True
            return None
        if chunked_prefill_size is None:
            say("asking SGLang for the chunked prefill size it picks on this GPU")
            chunked_prefill_size = pool.submit(_chunked_prefill_size, flags).result()
        ms = gs.m_values(chunked_prefill_size, fast_warmup)
        work = gs.items(shapes, ms, jobs)
        out = Outcome(jobs, list(shapes), len(ms), chunked_prefill_size, items=len(work))
        say(f"{len(work)} slices of {len(shapes)} shapes x {len(ms)} M values on {jobs} "
            f"workers ({time.perf_counter() - t0:.0f} s to start them)")  # fmt: skip
        futs = {pool.submit(_compile, it.shape.kind, it.shape.n, it.shape.k, it.shape.groups,
                            it.ms): it for it in work}  # fmt: skip
        pending, done_n = set(futs), 0
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            done, pending = wait(pending, timeout=max(0.0, left), return_when=FIRST_COMPLETED)
            if not done and pending:
                raise SglkitError(
                    f"cache.deepgemm --jobs: {len(pending)} of {len(work)} slices not compiled "
                    f"after --timeout {timeout:g} s; no marker written"
                )
            for f in done:
                seconds, cut_at = f.result()  # re-raises a worker's error
                out.worker_seconds += seconds
                done_n += 1
                cut = "" if cut_at is None else f"; SGLang cut it at M={cut_at} (GPU memory)"
                if cut_at is not None:
                    out.cut.append(f"{futs[f].label()} at M={cut_at}")
                say(f"[{done_n}/{len(work)}] {futs[f].label()} "
                    f"({time.perf_counter() - t0:.0f} s){cut}")  # fmt: skip
        ok = True
    except BrokenProcessPool:
        raise SglkitError(
            "cache.deepgemm --jobs: a compile worker died, or could not start (killed, crashed, "
            "or its import of SGLang failed; see dmesg for the out-of-memory killer); no marker "
            "written; --jobs 1 warms with the server alone"
        ) from None
    except Exception as e:
        if isinstance(e, SglkitError):
            raise
        raise SglkitError(
            f"cache.deepgemm --jobs: a compile worker failed ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[-1][:200] if str(e).strip() else ''}); no marker "
            "written; --jobs 1 warms with the server alone"
        ) from None
    finally:
        if ok:
            pool.shutdown(wait=True)
        else:
            _kill(pool)
            gone = discard_partial(folder, started)
            if gone:
                say(f"removed {len(gone)} partial entries the stopped workers left in {folder}")
    out.seconds = time.perf_counter() - t0
    out.files = len(kernel_files(folder))
    return out
