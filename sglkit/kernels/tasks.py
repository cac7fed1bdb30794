"""invoke kernels.*: name, check, validate, migrate, tune."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

from invoke import Collection

from sglkit import profile as profiles
from sglkit.cli import task
from sglkit.console import echo
from sglkit.errors import ConfigError, SglkitError
from sglkit.kernels import names, store
from sglkit.kernels.shapes import MoEShape, moe_shape

PROFILE_HELP = "profile name under profiles/ or a YAML path (default: $SGLKIT_PROFILE or cpu-dev)"
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


def _int(value: Any, flag: str, minimum: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag}: expected an integer, got {value!r}") from None
    if v < minimum:
        raise ConfigError(f"{flag}: must be >= {minimum} (got {v})")
    return v


def parse_batch_sizes(text: str | None) -> list[int]:
    if not text:
        return list(DEFAULT_BATCH_SIZES)
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"--batch-sizes: empty entry in {text!r}")
        out.append(_int(part, "--batch-sizes"))
    return sorted(set(out))


def profile_shape(p: profiles.Profile, dtype: str | None = None) -> MoEShape:
    cfg = p.model_config_path()
    if cfg is None:
        raise ConfigError(f"{p.path}: model.config: needed to derive the MoE shape")
    return moe_shape(cfg, tp=p.server["tp"], ep=p.server["ep"], dtype=dtype)


def _name_for(shape: MoEShape, device: str, down: bool, version: str | None) -> str:
    return names.config_file_name(
        shape.E,
        shape.N,
        device,
        shape.dtype,
        shape.block_shape,
        shape.per_channel_quant,
        down,
        sglang_version=version,
    )


@task(
    help={
        "model": "model folder or its config.json",
        "tp": "tensor-parallel size",
        "ep": "expert-parallel size (default 1)",
        "dtype": "fp8_w8a8|int8_w8a8|int8_w8a16|int4_w4a16|bf16 (default: quantization_config)",
        "per_channel_quant": "per-channel quantized weights",
        "down": "the separately tuned down-projection file",
        "device_name": "GPU name as torch reports it (default: ask the GPU)",
        "sglang_version": "naming rule of this SGLang version (default: installed, else newest)",
        "verbose": "explain the shape and the rule on stderr",
    }
)
def name(
    c,
    model,
    tp,
    ep=None,
    dtype=None,
    per_channel_quant=False,
    down=False,
    device_name=None,
    sglang_version=None,
    verbose=False,
):
    """Print the config file name SGLang looks up (stdout: the name only)."""
    shape = moe_shape(
        model,
        tp=_int(tp, "--tp"),
        ep=1 if ep is None else _int(ep, "--ep"),
        dtype=dtype,
        per_channel_quant=True if per_channel_quant else None,
    )
    rule = names.rule_for(sglang_version)
    device = names.device_name(device_name)
    out = _name_for(shape, device, down, rule.version)
    if verbose:
        echo(
            f"# {shape.architecture}: E={shape.E} N={shape.N} K={shape.K} topk={shape.topk} "
            f"dtype={shape.dtype or 'bf16/fp16 (not in the name)'} block_shape="
            f"{list(shape.block_shape) if shape.block_shape else None} tp={shape.tp} ep={shape.ep}"
            + (" (+1 fused shared expert)" if shape.shared_expert_fused else ""),
            stderr=True,
        )
        echo(f"# rule: {rule.explain()}", stderr=True)
        for n in shape.notes:
            echo(f"# note: {n}", stderr=True)
    echo(out)


@task(
    help={
        "profile": PROFILE_HELP,
        "device_name": "GPU name (default: ask the GPU)",
        "triton_version": "Triton version SGLang runs with (default: installed)",
        "sglang_version": "SGLang version (default: installed, else newest read)",
        "store": "the kit's store folder holding configs/ (default: kernels/)",
        "json": "one JSON object on stdout",
    }
)
def check(
    c,
    profile=None,
    device_name=None,
    triton_version=None,
    sglang_version=None,
    store_=None,
    json_=False,
):
    """Which file the server reads for this profile, GPU and Triton, from where, and why."""
    from sglkit.kernels import overlay

    p = profiles.load(profile)
    shape = profile_shape(p)
    rule = names.rule_for(sglang_version)
    device = names.device_name(device_name)
    triton_v = triton_version or names.installed_triton_version()
    if not triton_v:
        raise SglkitError("--triton-version: Triton is not installed here; give --triton-version")
    store_root = Path(store_) if store_ else store.root()
    overlay_dir = Path(p.environment()["SGLANG_MOE_CONFIG_DIR"])
    shipped = overlay.sglang_configs_dir()
    file_names = [
        _name_for(shape, device, down, rule.version)
        for down in [False] + ([True] if rule.down_lookup else [])
    ]
    verdicts = overlay.replay(file_names, triton_v, rule, overlay_dir, store_root, shipped)
    report = []
    for n, v in zip(file_names, verdicts, strict=True):
        lk = v.lookup
        report.append(
            {
                "file": n,
                "down": n.endswith("_down.json"),
                "expected_path": str(lk.expected),
                "status": lk.status,
                "loads": str(lk.path) if lk.path else None,
                "source": v.source,
                "source_path": str(v.origin) if v.origin else None,
                "reason": v.reason,
                "warning": lk.warning,
                "batch_sizes": lk.batch_sizes,
            }
        )
    if json_:
        echo(
            json.dumps(
                {
                    "profile": p.name,
                    "sglang": rule.version,
                    "triton": triton_v,
                    "overlay": str(overlay_dir),
                    "store": str(store_root),
                    "sglang_configs": str(shipped) if shipped else None,
                    "files": report,
                },
                indent=2,
            )
        )
        return
    echo(f"# profile {p.name}: {shape.architecture} tp={shape.tp} ep={shape.ep} on {device}")
    echo(f"# SGLang {rule.version}, Triton {triton_v}, SGLANG_MOE_CONFIG_DIR={overlay_dir}")
    echo(f"# overlay of the kit's store {store_root / 'configs'}")
    echo(
        f"#   over SGLang's shipped configs {shipped}"
        if shipped
        else "#   alone: no installed SGLang's configs folder found"
    )
    sources = {overlay.KIT: "kit store", overlay.SGLANG: "SGLang shipped"}
    for r in report:
        label = "down projection" if r["down"] else ("gate/up" if len(report) > 1 else "both GEMMs")
        echo(f"{label}: {r['file']}")
        echo(
            f"  status: {r['status']}"
            + (f" -> {r['loads']}" if r["loads"] and r["status"] != "found" else "")
        )
        if r["source"]:
            echo(f"  reads: {r['source_path']} ({sources[r['source']]})")
        echo(f"  why: {r['reason']}")
        if r["warning"]:
            echo(f"  SGLang logs: {r['warning']}")
        if r["batch_sizes"]:
            echo(f"  batch sizes: {', '.join(str(b) for b in r['batch_sizes'])}")


@task(help={"profile": PROFILE_HELP, "store": "the kit's store folder (default: kernels/)"})
def overlay(c, profile=None, store_=None):
    """(Re)build the MoE config overlay SGLANG_MOE_CONFIG_DIR names (server launchers do this)."""
    from sglkit.kernels import overlay as ov

    p = profiles.load(profile)
    dest = ov.build(
        Path(p.environment()["SGLANG_MOE_CONFIG_DIR"]),
        Path(store_) if store_ else store.root(),
    )
    counts: dict[str, int] = {}
    for e in (ov.read_sources(dest) or {}).values():
        counts[e["source"]] = counts.get(e["source"], 0) + 1
    shipped = ov.sglang_configs_dir()
    echo(
        f"{dest}: {counts.get(ov.KIT, 0)} file(s) from the kit's store, "
        f"{counts.get(ov.SGLANG, 0)} shipped by SGLang"
        + ("" if shipped else " (no installed SGLang's configs folder found)")
    )


@task(help={"store": "store folder holding configs/ (default: the kit's kernels/)"})
def validate(c, store_=None):
    """Check every store file: integer keys, the six required fields, sane values."""
    root = Path(store_) if store_ else store.root()
    count, problems = store.validate(root)
    for msg in problems:
        echo(msg)
    if problems:
        raise SglkitError(f"{len(problems)} problem(s) in {count} file(s) under {root / 'configs'}")
    echo(f"ok: {count} file(s) under {root / 'configs'}")


@task(help={"store": "store folder (default: kernels/)", "dry_run": "print the renames only"})
def migrate(c, store_=None, dry_run=False):
    """Rename files of the old fork's scheme (,per_channel_quant=1) to SGLang's current names."""
    root = Path(store_) if store_ else store.root()
    plan = store.migrate(root, dry_run=dry_run)
    for old, new in plan:
        verb = "would rename" if dry_run else "renamed"
        echo(f"{verb}: {old.parent.name}/{old.name} -> {new.name}")
    if not plan:
        echo("nothing to migrate")


# ---- tune ---------------------------------------------------------------------------------------


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


def _require_local_gpu() -> None:
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


@task(
    optional=["ray"],
    help={
        "profile": PROFILE_HELP,
        "batch_sizes": "comma-separated batch sizes (default: SGLang's 18, 1..4096)",
        "budget": "most configs measured per batch size (default: 12%% of the candidates, >= 24)",
        "resume": "continue an interrupted run from its state file",
        "dtype": "override the model's dtype (fp8_w8a8, bf16, ...)",
        "down": "tune the down projection separately (needs bench support)",
        "device_name": "GPU name for the file name (default: ask the GPU)",
        "ray": "run on Ray: --ray (RAY_ADDRESS or a local cluster) or --ray=ADDRESS; one GPU/task",
    },
)
def tune(
    c,
    profile=None,
    batch_sizes=None,
    budget=None,
    resume=False,
    dtype=None,
    down=False,
    device_name=None,
    ray=None,
):
    """Tune the fused-MoE kernel for the profile's model; write the best configs to the store."""

    p = profiles.load(profile)
    shape = profile_shape(p, dtype)
    bs = parse_batch_sizes(batch_sizes)
    budget_n = _int(budget, "--budget") if budget is not None else None
    if down:
        raise ConfigError(
            "--down: sglkit.kernels.bench times both GEMMs together; no down-only bench yet"
        )
    if ray is None:
        _require_local_gpu()
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

    run_tune(
        p,
        shape,
        bs,
        device=device,
        triton_version=triton_v,
        measure=None if ray is not None else gpu_measure(shape, pool=True),
        measure_factory=MeasureFactory(shape) if ray is not None else None,
        ray_address=(None if ray is True else ray) if ray is not None else False,
        default_config=default_at,
        budget=budget_n,
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

    rule = names.rule_for(sglang_version)
    file_name = _name_for(shape, device, False, rule.version)
    out_path = store.file_path(file_name, triton_version, store_root or store.root())
    state_path = state_path_for(p, file_name, triton_version)
    identity = {
        "file": file_name,
        "triton": triton_version,
        "shape": shape.to_dict(),
        "batch_sizes": batch_sizes,
    }

    def space_at(M: int):
        return sp.prune(sp.full_space(), shape, M=M).kept

    printer = _progress_printer(len(batch_sizes))

    def progress(event: str, info: dict[str, Any]) -> None:
        printer(event, info)
        if on_progress is not None:
            on_progress(event, info)

    echo(f"tuning {file_name} (Triton {triton_version}); state: {state_path}", stderr=True)
    t0 = time.monotonic()
    common = dict(
        state_path=state_path,
        budget=budget,
        resume=resume,
        progress=progress,
        default_config=default_config,
        identity=identity,
    )
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
    return out_path, report_path, results


ns = Collection("kernels", name, check, overlay, validate, migrate, tune)
