"""GPU measurement for the MoE tuner: `make_measure(...) -> measure(config, M) -> seconds`.

How a config is timed (see docs/tuning-h200.md):
- the whole MoE layer as SGLang runs it (sglkit.kernels.moe_kernel.MoERunner.forward), captured
  in one CUDA graph per (config, M), so Python launch overhead is not in the figure;
- before every timed replay: a fresh input set copied in (a pool of `sets` random inputs and
  routings, cycled) and an L2 flush (a write of max(2 x L2, 256 MiB));
- CUDA events around each replay; the median over the replays.

Triton compile time dominates a naive search. `measure.prefetch(configs, M)` compiles the two
GEMMs of many configs at once in a pool of worker processes (spawned, one per CPU core up to
16), which only compile (Triton `warmup`) into the shared on-disk Triton cache; the timing
process then loads them from the cache.

`copy_bandwidth()` measures a device-to-device copy on the same GPU (bytes read + written per
second); `weight_bytes(dims, M)` counts the expert-weight bytes one layer must read.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

from sglkit.kernels import moe_kernel as mk
from sglkit.kernels.moe_kernel import MoEDims, dims_from


def _key(config: dict) -> tuple:
    return tuple(int(config.get(k, -1)) for k in mk.KERNEL_KEYS)


# --------------------------------------------------------------------------- ceilings


def l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)


@functools.lru_cache(maxsize=1)
def _flush_buffer() -> torch.Tensor:
    n = max(2 * l2_bytes(), 256 * 2**20)
    return torch.empty(n, dtype=torch.int8, device="cuda")


def flush_l2() -> None:
    _flush_buffer().zero_()


def copy_bandwidth(nbytes: int = 2 * 2**30, reps: int = 30) -> float:
    """Device-to-device copy, bytes read + bytes written per second, median of reps."""
    src = torch.randint(0, 127, (nbytes,), dtype=torch.int8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    return 2 * nbytes / statistics.median(times)


def weight_bytes(dims: MoEDims, M: int, topk_ids: torch.Tensor | None = None) -> int:
    """Expert-weight bytes one layer reads: every distinct routed expert's w1 + w2 (+ scales).

    With topk_ids, count the experts actually hit; without, the expectation under uniform
    routing: E * (1 - (1 - topk/E)^M)."""
    if topk_ids is not None:
        hit = int(torch.unique(topk_ids).numel())
    else:
        hit = dims.E * (1 - (1 - dims.topk / dims.E) ** M)
    return int(hit * dims.weight_bytes_per_expert())


# --------------------------------------------------------------------------- defaults


@functools.lru_cache(maxsize=1)
def sglang_config_module():
    """SGLang's fused_moe_triton_config.py, loaded from the installed wheel by file path:
    its package __init__ imports fused_moe.py, which needs sgl_kernel (absent on the H200)."""
    import importlib.util
    from pathlib import Path

    import sglang

    path = Path(sglang.__file__).parent / (
        "srt/layers/moe/moe_runner/triton_utils/fused_moe_triton_config.py"
    )
    spec = importlib.util.spec_from_file_location("_sglkit_sglang_moe_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # The module reads the server's runtime context, unpublished outside a server: get_exec()
    # in SGLang 0.5.23, get_server_args() in 0.5.16. In this private copy of the module both
    # answer "deterministic inference off" (a server default).
    from types import SimpleNamespace

    off = SimpleNamespace(enable_deterministic_inference=False)
    if hasattr(mod, "get_exec"):
        mod.get_exec = lambda: SimpleNamespace(deterministic=off)
    if hasattr(mod, "get_server_args"):
        mod.get_server_args = lambda: off
    return mod


def default_config(shape: Any, M: int, dtype: str | None = None, block_shape=None) -> dict:
    """SGLang's own get_default_config for this shape and batch size (the installed wheel)."""
    d = dims_from(shape, dtype, block_shape)
    cfg = sglang_config_module().get_default_config(
        M, d.E, d.N, d.K, d.topk, d.config_dtype, False,
        list(d.block_shape) if d.block_shape else None,
    )  # fmt: skip
    return dict(cfg)


# --------------------------------------------------------------------------- compile pool

_WORKER: dict[str, Any] = {}


def _worker_init() -> None:
    from sglang.kernels.ops.moe import fused_moe_triton_kernels as fk

    kernel = fk.fused_moe_kernel
    orig = kernel.run

    def compile_only(*args, **kwargs):
        kwargs["warmup"] = True
        return orig(*args, **kwargs)

    kernel.run = compile_only


def _worker_compile(dims: MoEDims, M: int, config: dict) -> float:
    t0 = time.perf_counter()
    if _WORKER.get("dims") != dims:
        _WORKER.clear()
        torch.cuda.empty_cache()
        e, n, k = dims.E, dims.N, dims.K
        dt = torch.float8_e4m3fn if dims.fp8 else torch.bfloat16
        w = mk.Weights(
            torch.empty(e, 2 * n, k, dtype=dt, device="cuda"),
            torch.empty(e, k, n, dtype=dt, device="cuda"),
        )
        if dims.fp8:
            bn, bk = dims.block_shape
            w.w1_scale = torch.ones(e, math.ceil(2 * n / bn), math.ceil(k / bk), device="cuda")
            w.w2_scale = torch.ones(e, math.ceil(k / bn), math.ceil(n / bk), device="cuda")
        _WORKER.update(dims=dims, w=w, runners={})
    rkey = (M, int(config["BLOCK_SIZE_M"]))
    runner = _WORKER["runners"].get(rkey)
    if runner is None and _WORKER["runners"]:
        # one runner's buffers at a time (about 0.64 GB at M=4096 for E=128, N=1536, K=4096):
        # 16 workers each keeping one per batch size and BLOCK_SIZE_M would not fit an 80 GB card
        _WORKER["runners"].clear()
        torch.cuda.empty_cache()
    if runner is None:
        runner = mk.MoERunner(dims, _WORKER["w"], M, rkey[1])
        _WORKER["runners"][rkey] = runner
    runner.gemms(config)
    return time.perf_counter() - t0


def _worker_ping() -> int:
    time.sleep(1.0)  # keep this worker busy so the pool starts all of them
    return os.getpid()


class CompilePool:
    """Compile fused_moe_kernel variants in parallel worker processes (compile only)."""

    def __init__(self, workers: int | None = None):
        import multiprocessing as mp

        self.workers = workers or min(16, os.cpu_count() or 1)
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=mp.get_context("spawn"),
            initializer=_worker_init,
        )
        self.done: set[tuple] = set()
        self.seconds = 0.0  # wall time spent waiting for compiles
        self.compiled = 0
        # start every worker now (each imports torch + SGLang, ~15 s), in the background
        self._warm = [self._pool.submit(_worker_ping) for _ in range(self.workers)]

    def compile(self, dims: MoEDims, items: Iterable[tuple[int, dict]]) -> int:
        """Compile (M, config) pairs not seen yet; block until done. Returns how many."""
        todo, seen = [], set()
        for M, cfg in items:
            k = (dims, _spec_class(dims, M), _key(cfg))
            if k in self.done or k in seen:
                continue
            seen.add(k)
            todo.append((M, cfg, k))
        if not todo:
            return 0
        t0 = time.perf_counter()
        futs = [(self._pool.submit(_worker_compile, dims, M, cfg), k) for M, cfg, k in todo]
        for f, k in futs:
            with contextlib.suppress(Exception):  # a failed compile: the timing run reports it
                f.result()
            self.done.add(k)
        self.seconds += time.perf_counter() - t0
        self.compiled += len(todo)
        return len(todo)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _spec_class(dims: MoEDims, M: int) -> tuple:
    """Batch sizes that share Triton specializations of fused_moe_kernel: M == 1 (M*topk not a
    multiple of 16 for topk < 16), and SGLang's PDL GDC_EARLY switch (A rows <= 512)."""
    numel = M * dims.topk
    return (numel % 16 == 0, numel == 1, M <= 512, numel <= 512)


# --------------------------------------------------------------------------- timing


class Bench:
    """Weights, input pools, and graph timing for one MoE shape on the current GPU."""

    def __init__(
        self, dims: MoEDims, *, sets: int = 8, seed: int = 0, pool: CompilePool | None = None
    ):
        self.dims = dims
        self.sets = sets
        self.seed = seed
        self.w = mk.random_weights(dims, seed=seed)
        self.pool = pool
        self._inputs: dict[int, list] = {}
        self._runners: dict[tuple[int, int], tuple[mk.MoERunner, list]] = {}
        self.failures: dict[tuple, str] = {}

    def inputs(self, M: int) -> list:
        if M not in self._inputs:
            gen = torch.Generator(device="cuda").manual_seed(self.seed * 1000003 + M)
            pool = []
            for _ in range(self.sets):
                x = torch.randn(M, self.dims.K, device="cuda", dtype=torch.bfloat16, generator=gen)
                w, ids = mk.random_routing(M, self.dims, gen=gen)
                pool.append((x, w, ids))
            self._inputs[M] = pool
        return self._inputs[M]

    def runner(self, M: int, block_m: int) -> tuple[mk.MoERunner, list]:
        """A runner plus its pre-aligned input sets (sorted ids per set, copied in per run)."""
        key = (M, block_m)
        if key not in self._runners and any(m != M for m, _ in self._runners):
            self._runners.clear()  # one batch size's buffers at a time (see _worker_compile)
            torch.cuda.empty_cache()
        if key not in self._runners:
            r = mk.MoERunner(self.dims, self.w, M, block_m)
            staged = []
            for x, w, ids in self.inputs(M):
                s, e, n = mk.align_block_size(ids, block_m, self.dims.E, r.length)
                staged.append((x, w, ids, s, e, n))
            self._runners[key] = (r, staged)
        return self._runners[key]

    def _feed(self, r: mk.MoERunner, st: tuple) -> None:
        x, w, ids, s, e, n = st
        r.hidden.copy_(x)
        r.topk_w.copy_(w)
        r.topk_ids.copy_(ids)
        r.sorted_ids.copy_(s)
        r.expert_ids[: e.numel()].copy_(e)
        r.n_post_pad.copy_(n)

    def time(
        self,
        config: dict,
        M: int,
        *,
        reps: int = 20,
        what: str = "layer",
        max_seconds: float = 2.0,
    ) -> float:
        """Median seconds of one MoE layer (what="layer") or its two GEMMs (what="gemms")."""
        cfg = mk.kernel_config(config)
        if self.pool is not None:
            self.pool.compile(self.dims, [(M, cfg)])
        r, staged = self.runner(M, cfg["BLOCK_SIZE_M"])
        fn = (lambda: r.forward(cfg)) if what == "layer" else (lambda: r.gemms(cfg))
        self._feed(r, staged[0])
        if what == "gemms":  # realistic intermediate activations for the down GEMM
            r.forward(cfg)
        fn()  # compile / load, and check it launches outside capture
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        times: list[float] = []
        start = time.perf_counter()
        evs = []
        for i in range(reps):
            self._feed(r, staged[i % len(staged)])
            if what == "gemms":
                r.forward(cfg)  # fresh activations in the intermediate buffers (not timed)
            flush_l2()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            evs.append((a, b))
            if i >= 2 and time.perf_counter() - start > max_seconds:
                break
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) / 1e3 for a, b in evs]
        del g
        return statistics.median(times)

    def check(self, config: dict, M: int, *, mirror_quant: bool = False) -> float:
        """Relative error of one layer against the float32 reference, fresh random inputs."""
        cfg = mk.kernel_config(config)
        r, _ = self.runner(M, cfg["BLOCK_SIZE_M"])
        gen = torch.Generator(device="cuda").manual_seed(12345 + M)
        x = torch.randn(M, self.dims.K, device="cuda", dtype=torch.bfloat16, generator=gen)
        w, ids = mk.random_routing(M, self.dims, gen=gen)
        r.load(x, w, ids)
        r.out.fill_(float("nan"))  # poison: every element must be written
        out = r.forward(cfg).clone()
        torch.cuda.synchronize()
        ref = mk.reference(self.dims, self.w, x, w, ids, mirror_quant=mirror_quant)
        return mk.rel_error(out, ref)


def make_measure(
    shape: Any,
    dtype: str | None = None,
    block_shape=None,
    *,
    reps: int = 20,
    sets: int = 8,
    pool: CompilePool | None = None,
    bench: Bench | None = None,
) -> Callable[[dict, int], float]:
    """measure(config, M) -> median seconds of one MoE layer with that config on this GPU.

    A config that fails to compile or launch measures as +inf (the search drops it). The
    returned function carries `.bench` and `.prefetch(configs, M)` (parallel compile)."""
    d = dims_from(shape, dtype, block_shape)
    b = bench or Bench(d, sets=sets, pool=pool)

    def measure(config: dict, M: int, reps: int = reps) -> float:
        try:
            return b.time(config, M, reps=reps)
        except Exception as e:  # out of resources, bad block shape: not a candidate
            why = f"{type(e).__name__}: {str(e)[:200]}"
            b.failures[(M, _key(config))] = measure.last_failure = why
            torch.cuda.synchronize()
            return math.inf

    def prefetch(configs: Iterable[dict], M: int) -> int:
        if b.pool is None:
            return 0
        return b.pool.compile(d, [(M, mk.kernel_config(c)) for c in configs])

    measure.last_failure = None  # type: ignore[attr-defined]  # why the last failure failed
    measure.bench = b  # type: ignore[attr-defined]
    measure.prefetch = prefetch  # type: ignore[attr-defined]
    return measure


_CHECK_BENCH: dict[MoEDims, Bench] = {}


def reference_check(
    shape: Any,
    dtype: str | None,
    config: dict,
    M: int,
    block_shape=None,
    *,
    mirror_quant: bool = False,
) -> float:
    """Relative error (||out - ref|| / ||ref||) of SGLang's kernel with `config` at batch M
    against the float32 torch reference, on fresh random weights and inputs. Measured on
    H200 (SGLang 0.5.23): about 4e-3 for bf16, 4e-2 for fp8 (activation quantization; with
    mirror_quant=True the reference quantizes the same way and the fp8 error drops)."""
    d = dims_from(shape, dtype, block_shape)
    if d not in _CHECK_BENCH:
        _CHECK_BENCH.clear()
        _CHECK_BENCH[d] = Bench(d, sets=1, seed=7)
    return _CHECK_BENCH[d].check(config, M, mirror_quant=mirror_quant)
