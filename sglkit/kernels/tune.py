"""The tuner's orchestration behind `invoke kernels.tune` (and benchmarks/tune_moe.py).

    tune_profile(...)   the task's run: GPU or Ray, Triton, device, SGLang's default config
    run_tune(...)       search (here or on Ray), the store file (merged, atomically), the report
    report_rows / report_markdown    the table printed and kept beside the state file

The file name and its store path come from sglkit.kernels.target; the search from
sglkit.kernels.search (sglkit.kernels.ray_tune on Ray); the measurement from sglkit.kernels.bench.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

from sglkit import profile as profiles
from sglkit.cli import number
from sglkit.console import echo
from sglkit.errors import ConfigError, SglkitError
from sglkit.kernels import names, store, target
from sglkit.kernels.shapes import MoEShape

DEFAULT_BATCH_SIZES = [
    1,
    2,
    4,
    8,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    256,
    512,
    1024,
    1536,
    2048,
    3072,
    4096,
]


def parse_batch_sizes(text: str | None) -> list[int]:
    """--batch-sizes: comma-separated positive integers, sorted and unique (default: SGLang's)."""
    if not text:
        return list(DEFAULT_BATCH_SIZES)
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"--batch-sizes: empty entry in {text!r}")
        out.append(number(part, "--batch-sizes", int, 1))
    return sorted(set(out))


def state_path_for(p: profiles.Profile, file_name: str, triton_v: str) -> Path:
    return (
        p.cache_root()
        / "kernels-tune"
        / names.triton_dir_name(triton_v)
        / (file_name + ".state.json")
    )


def gpu_measure(shape: MoEShape, down: bool = False, pool: bool = False):
    """measure(config, M) on this process's GPU (built lazily: imports torch and SGLang).

    `pool`: compile each search round's configs in parallel (bench.CompilePool, one worker
    per core up to 16) through the measure's `.prefetch`, as search.tune asks it to."""
    from sglkit.kernels import bench

    m = bench.make_measure(
        shape, shape.dtype, shape.block_shape, pool=bench.CompilePool() if pool else None
    )
    return m


class MeasureFactory:
    """Picklable: builds the GPU measure on a Ray worker (once per worker process)."""

    _cache: ClassVar[dict[str, Any]] = {}

    def __init__(self, shape: MoEShape):
        self.shape = shape

    def __call__(self):
        key = json.dumps(self.shape.to_dict(), sort_keys=True)
        if key not in MeasureFactory._cache:
            MeasureFactory._cache[key] = gpu_measure(self.shape)
        return MeasureFactory._cache[key]


def require_local_gpu() -> None:
    try:
        import torch
    except ImportError:
        raise SglkitError("kernels.tune: torch is not installed; tuning needs a CUDA GPU") from None
    if not torch.cuda.is_available():
        raise SglkitError("kernels.tune: no CUDA GPU here (torch.cuda.is_available() is False)")


def _progress_printer(total: int):
    from sglkit.console import err

    console = err()
    done = {"n": 0}

    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "done":
            done["n"] += 1
            r = info["result"]
            sp = f"{r.speedup:.2f}x" if r.speedup else "n/a"
            console.print(
                f"[{done['n']}/{total}] M={r.M}: {r.time * 1e6:.1f} us (default "
                f"{(r.default_time or float('nan')) * 1e6:.1f} us, {sp}), "
                f"{r.evaluations}/{r.candidates} configs, {r.seconds:.0f} s"
            )
        elif event == "skip":
            done["n"] += 1
            console.print(f"[{done['n']}/{total}] M={info['M']}: done in an earlier run (--resume)")
        elif event == "failed":
            done["n"] += 1
            console.print(f"[{done['n']}/{total}] M={info['M']}: failed: {info['error']}",
                          style="red")  # fmt: skip
        elif event == "start":
            console.print(f"M={info['M']}: searching {info['candidates']} candidates", style="dim")

    return progress


def report_rows(results, shape: MoEShape, copy_bw: float | None) -> list[dict[str, Any]]:
    rows = []
    for M, r in sorted(results.items()):
        row = {
            "M": M,
            "default_us": None if r.default_time is None else r.default_time * 1e6,
            "tuned_us": r.time * 1e6,
            "speedup": r.speedup,
            "configs_measured": r.evaluations,
            "candidates": r.candidates,
            "seconds": r.seconds,
            "config": r.config,
        }
        try:
            from sglkit.kernels import bench, moe_kernel

            nbytes = bench.weight_bytes(moe_kernel.dims_from(shape), M)
            row["weight_GBps"] = nbytes / r.time / 1e9
            row["copy_fraction"] = (nbytes / r.time) / copy_bw if copy_bw else None
        except Exception:
            pass
        rows.append(row)
    return rows


def report_markdown(
    title: str, rows: list[dict[str, Any]], copy_bw: float | None, wall: float
) -> str:
    lines = [f"# {title}", ""]
    if copy_bw:
        lines.append(f"copy bandwidth measured in the same run: {copy_bw / 1e9:.0f} GB/s")
    lines.append(f"tuning wall time: {wall:.0f} s")
    lines += [
        "",
        "| M | default us | tuned us | speedup | weights GB/s | of copy bw | configs measured |",
    ]
    lines.append("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:

        def f(v, fmt):
            return "" if v is None else format(v, fmt)

        lines.append(
            f"| {r['M']} | {f(r['default_us'], '.1f')} | {f(r['tuned_us'], '.1f')} | "
            f"{f(r['speedup'], '.2f')} | {f(r.get('weight_GBps'), '.0f')} | "
            f"{f(r.get('copy_fraction'), '.0%')} | {r['configs_measured']}/{r['candidates']} |"
        )
    return "\n".join(lines) + "\n"


def tune_profile(
    p: profiles.Profile,
    shape: MoEShape,
    batch_sizes: list[int],
    *,
    budget: int | None = None,
    resume: bool = False,
    device_name: str | None = None,
    ray: str | bool | None = None,
) -> tuple[Path, Path, dict]:
    """`kernels.tune` after its flags are parsed: on this GPU (`ray` None) or on Ray (`ray` True:
    RAY_ADDRESS or a local cluster; a string: that address), for the installed Triton."""
    if ray is None:
        require_local_gpu()
    triton_v = names.installed_triton_version()
    if not triton_v:
        raise SglkitError("kernels.tune: Triton is not installed; it names the store folder")
    device = names.device_name(device_name)

    def default_at(M: int):
        from sglkit.kernels import bench

        return bench.default_config(shape, M, shape.dtype, shape.block_shape)

    def copy_bw():
        from sglkit.kernels import bench

        return bench.copy_bandwidth()

    return run_tune(
        p,
        shape,
        batch_sizes,
        device=device,
        triton_version=triton_v,
        measure=None if ray is not None else gpu_measure(shape, pool=True),
        measure_factory=MeasureFactory(shape) if ray is not None else None,
        ray_address=(None if ray is True else ray) if ray is not None else False,
        default_config=default_at,
        budget=budget,
        resume=resume,
        copy_bandwidth=copy_bw if ray is None else None,
    )


def run_tune(
    p: profiles.Profile,
    shape: MoEShape,
    batch_sizes: list[int],
    *,
    device: str,
    triton_version: str,
    measure=None,
    measure_factory=None,
    ray_address: str | bool | None = False,
    default_config=None,
    budget: int | None = None,
    resume: bool = False,
    copy_bandwidth=None,
    sglang_version: str | None = None,
    ray_options: dict[str, Any] | None = None,
    on_progress=None,
    store_root: Path | None = None,
) -> tuple[Path, Path, dict]:
    """Search, write the store file (merged, atomically) and the report; (file, report, results).

    `measure` runs the search here; `measure_factory` with `ray_address` (not False) runs it on
    Ray. The file goes to the kit's store (`store_root`, default `store.root()`: kernels/); the
    state and the report go under the profile's cache root (kernels-tune/triton_X_Y_Z/).
    `on_progress(event, info)` also gets the search's events (benchmarks/tune_moe.py saves
    partial results with it).
    """
    from sglkit.fsutil import atomic_write_text
    from sglkit.kernels import search
    from sglkit.kernels import space as sp

    kt = target.for_shape(
        shape, device, triton_version, sglang_version=sglang_version, store_root=store_root
    )
    file_name, out_path = kt.file_name, kt.path
    state_path = state_path_for(p, file_name, triton_version)
    identity = {
        "file": file_name,
        "triton": triton_version,
        "shape": shape.to_dict(),
        "batch_sizes": batch_sizes,
    }

    def space_at(M: int):
        return sp.candidates(shape, M)

    printer = _progress_printer(len(batch_sizes))

    def progress(event: str, info: dict[str, Any]) -> None:
        printer(event, info)
        if on_progress is not None:
            on_progress(event, info)

    echo(f"tuning {file_name} (Triton {triton_version}); state: {state_path}", stderr=True)
    t0 = time.monotonic()
    partial: search.PartialTune | None = None
    common = dict(
        state_path=state_path,
        budget=budget,
        resume=resume,
        progress=progress,
        default_config=default_config,
        identity=identity,
    )
    try:
        if ray_address is not False:
            from sglkit.kernels import ray_tune

            results = ray_tune.tune(
                batch_sizes,
                space_at,
                measure_factory,
                address=ray_address,
                **common,
                **(ray_options or {}),
            )
        else:
            results = search.tune(batch_sizes, space_at, measure, **common)
    except search.PartialTune as e:
        if not e.results:
            raise
        results, partial = e.results, e  # the tuned sizes are written, then it fails
    wall = time.monotonic() - t0
    store.write_configs(out_path, search.configs_json(results))
    bw = None
    if copy_bandwidth is not None:
        try:
            bw = copy_bandwidth()
        except Exception:
            bw = None
    rows = report_rows(results, shape, bw)
    md = report_markdown(f"{file_name} (Triton {triton_version})", rows, bw, wall)
    report_path = state_path.with_name(file_name + ".report.md")
    atomic_write_text(report_path, md)
    echo(md)
    echo(f"wrote {out_path}\nreport: {report_path}", stderr=True)
    if partial is not None:
        err = SglkitError(
            f"kernels.tune: {partial}; the {len(partial.results)} tuned batch sizes are in "
            f"{out_path} (SGLang serves the others with the nearest one's config); --resume "
            "tries the others again"
        )
        err.results = results  # type: ignore[attr-defined]  # for a caller that goes on
        raise err
    return out_path, report_path, results
