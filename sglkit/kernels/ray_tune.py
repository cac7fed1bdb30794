"""The tuner on a Ray cluster: each batch size is one Ray task pinned to one GPU.

    tune(batch_sizes, space, measure_factory, state_path=..., address="auto") -> {M: Result}

Same search, waves, seeds and state file as sglkit.kernels.search.tune, so a Ray run finds the
same configs as a one-GPU run and either can resume the other's state. Per wave, every batch
size not finished yet becomes a task (`num_gpus=1` by default: Ray sets CUDA_VISIBLE_DEVICES so
the task sees one GPU); results stream back as tasks finish and are written to the state at
once. A task whose worker dies (killed, node lost) is retried by Ray (`max_retries`); only that
batch size is redone, from the measurements the state held when it was submitted.

`measure_factory()` runs on the worker and returns `measure(config, M)`; it must be picklable
(a module-level function or an object such as sglkit.kernels.tune.MeasureFactory).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError, SglkitError
from sglkit.kernels import search as se


def _shard(
    M: int,
    candidates: list[dict[str, int]],
    seeds: list[dict[str, int]],
    default: dict[str, int] | None,
    budget: int | None,
    params: dict[str, Any],
    memo: dict[str, float],
    measure_factory: Callable[[], Callable[..., float]],
) -> tuple[dict[str, Any], dict[str, float]]:
    """One batch size on one worker: (Result as JSON, measurements)."""
    p = se.SearchParams(**{**params, "reps": tuple(params["reps"])})
    memo = dict(memo)
    res = se.search_one(
        M,
        candidates,
        measure_factory(),
        seeds=seeds,
        default=default,
        budget=budget,
        params=p,
        memo=memo,
    )
    return res.to_json(), memo


def connect(address: str | None, **init_kwargs: Any):
    """ray, initialized: reuse a running session, else 'local' starts one, else join `address`."""
    try:
        import ray
    except ImportError:
        raise SglkitError(
            "--ray: the ray package is not installed (pip install '.[ray]')"
        ) from None
    if ray.is_initialized():
        return ray
    addr = None if address in (None, "", "local", True) else str(address)
    try:
        ray.init(address=addr, log_to_driver=False, **init_kwargs)
    except ConnectionError as e:
        raise SglkitError(f"--ray: cannot reach a Ray cluster at {addr}: {e}") from None
    return ray


def tune(
    batch_sizes: Sequence[int],
    space: se.Space,
    measure_factory: Callable[[], Callable[..., float]],
    *,
    state_path: str | Path,
    budget: int | None = None,
    resume: bool = False,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
    default_config: Callable[[int], dict[str, int] | None] | None = None,
    identity: dict[str, Any] | None = None,
    params: se.SearchParams | None = None,
    address: str | None = "auto",
    gpus_per_task: float | None = 1,
    cpus_per_task: float | None = None,
    max_retries: int = 3,
) -> dict[int, se.Result]:
    """Tune every batch size on Ray; see the module docstring. `gpus_per_task=0` runs on CPUs
    (tests, with a CPU cost function); with GPUs requested, a cluster without any is an error."""
    ray = connect(address)
    params = params or se.SearchParams()
    bs = sorted(set(int(b) for b in batch_sizes))
    if not bs or any(b < 1 for b in bs):
        raise ConfigError(f"--batch-sizes: need positive integers (got {list(batch_sizes)})")
    if budget is not None and budget < 1:
        raise ConfigError(f"--budget: must be >= 1 (got {budget})")
    if gpus_per_task and not ray.cluster_resources().get("GPU"):
        raise SglkitError("--ray: the Ray cluster has no GPU (ray.cluster_resources() lists none)")
    ident = dict(identity or {})
    ident.setdefault("batch_sizes", bs)
    ident.setdefault("budget", budget)
    ident.setdefault("params", asdict(params))
    ident["params"] = json.loads(json.dumps(ident["params"]))
    state = se.State.open(state_path, ident, resume)
    state.save()
    opts: dict[str, Any] = {"max_retries": max_retries, "num_gpus": gpus_per_task or 0}
    if cpus_per_task is not None:
        opts["num_cpus"] = cpus_per_task
    remote = ray.remote(_shard).options(**opts)
    params_json = json.loads(json.dumps(asdict(params)))
    pending: dict[Any, int] = {}
    try:
        for wave in se.waves(bs, params.anchor_stride):
            finished_before = dict(state.done)
            for M in wave:
                if M in state.done:
                    if progress:
                        progress("skip", {"M": M})
                    continue
                cands = se.candidates_at(space, M)
                if not cands:
                    raise ConfigError(f"batch size {M}: no candidate config left after pruning")
                ref = remote.remote(
                    M,
                    cands,
                    se.seeds_for(M, finished_before, params.seeds_per_neighbour),
                    default_config(M) if default_config else None,
                    budget,
                    params_json,
                    state.memo.get(M, {}),
                    measure_factory,
                )
                pending[ref] = M
                if progress:
                    progress("start", {"M": M, "candidates": len(cands)})
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                M = pending.pop(ref)
                try:
                    res_json, memo = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) else e
                    if isinstance(cause, ConfigError):  # every config failed: the others go on
                        state.fail(M, str(cause))
                        if progress:
                            progress("failed", {"M": M, "error": str(cause)})
                        continue
                    if isinstance(cause, SglkitError):
                        raise cause from None
                    raise SglkitError(
                        f"batch size {M}: the task failed: {type(cause).__name__}: {cause}"
                    ) from None
                except ray.exceptions.RayError as e:
                    raise SglkitError(
                        f"batch size {M}: lost after {max_retries} retries ({type(e).__name__})"
                    ) from None
                res = se.Result.from_json(res_json)
                state.finish(res, memo)
                if progress:
                    progress("done", {"M": M, "result": res})
    finally:
        for ref in list(pending):  # after an error: stop the shards still running
            ray.cancel(ref, force=True)
        state.save()
    return state.results_or_raise()
