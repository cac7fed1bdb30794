"""Benchmark the kit's MoE tuner (the code path of `invoke kernels.tune`) on this GPU.

Run on a GPU host with the SGLang wheel importable (on the H200 device machine, through the
device tool; see docs/tuning-h200.md):

    python3 benchmarks/tune_moe.py --out OUT [--models deepseek-v3-tp8,qwen3-30b-a3b-tp1]
        [--batch-sizes 1,2,4,...] [--exhaustive-at deepseek-v3-tp8:1,qwen3-30b-a3b-tp1:16]
        [--budget SECONDS]

Everything tuned comes from the kit: the shape from the profile's model config.json
(sglkit.kernels.target.profile_shape), the candidates from sglkit.kernels.space (full
space, pruned per batch size), the search from sglkit.kernels.tune.run_tune (search.tune, the
same call `invoke kernels.tune` makes), the file name from sglkit.kernels.target, the timing from
sglkit.kernels.bench with its compile pool. The pool is started, and its workers waited for,
before any timing; its start-up is reported on its own line.

What is benchmark-specific here: the copy bandwidth of this GPU (same run), the GEMM-only time
for the fraction of copy bandwidth, the exhaustive search (search.exhaustive over the same
pruned candidates) and the distance and time ratio to it, the report files, and installing the
store files. Writes OUT/store_<model>.json (the store file's content; report.json gives its
SGLang file name, which the device tool cannot carry back as a name), OUT/report.json and
OUT/report.md after every batch size; prints the table last. --install-store RESULTS copies a
run's store files into kernels/configs/triton_X_Y_Z/ under their SGLang names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
# benchmark model -> the serving profile that names its model config.json and TP size
MODELS = {
    "deepseek-v3-tp8": "deepseek-v3-gh200",
    "qwen3-30b-a3b-tp1": "qwen3-30b-a3b-gh200",
}
EXHAUSTIVE_AT = "deepseek-v3-tp8:1,qwen3-30b-a3b-tp1:16,deepseek-v3-tp8:16"


def model_shape(name: str):
    """(profile, MoEShape) for a benchmark model, through the kit's profile and shapes."""
    from sglkit import profile as profiles
    from sglkit.kernels import target

    if name not in MODELS:
        raise SystemExit(f"--models: unknown model {name!r} (known: {', '.join(MODELS)})")
    p = profiles.load(MODELS[name])
    return p, target.profile_shape(p)


def parse_exhaustive(text: str, models: list[str]) -> list[tuple[str, int]]:
    """'model:M,model:M' -> [(model, M)], in the given order (the order they run in)."""
    out = []
    for part in [x.strip() for x in text.split(",") if x.strip()]:
        name, sep, m = part.partition(":")
        if not sep or not m.isdigit() or int(m) < 1:
            raise SystemExit(f"--exhaustive-at: expected MODEL:M, got {part!r}")
        if name not in models:
            raise SystemExit(f"--exhaustive-at: {name!r} is not among --models")
        out.append((name, int(m)))
    return out


def candidates(shape, M: int) -> list[dict]:
    """The pruned candidates at batch size M: exactly what run_tune's search draws from."""
    from sglkit.kernels import space

    return space.candidates(shape, M)


# --------------------------------------------------------------------------- report


class Report:
    """report.json / report.md / store_<model>.json under OUT, rewritten after every step."""

    def __init__(self, out: Path, head: dict):
        self.out = out
        self.data = {**head, "models": {}}

    def model(self, name: str) -> dict:
        return self.data["models"][name]

    def save(self) -> None:
        from sglkit.fsutil import atomic_write_text

        for name, rep in self.data["models"].items():
            if rep["store"]:
                body = {str(m): rep["store"][m] for m in sorted(rep["store"], key=int)}
                atomic_write_text(self.out / f"store_{name}.json", json.dumps(body, indent=4))
        atomic_write_text(
            self.out / "report.json", json.dumps(self.data, indent=1, default=str) + "\n"
        )
        atomic_write_text(self.out / "report.md", markdown(self.data))


def _f(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def markdown(report: dict) -> str:
    lines = [
        f"device {report['device']}, triton {report['triton']}, torch {report['torch']}, "
        f"sglang {report.get('sglang', '?')}; copy bandwidth "
        f"{report['copy_bw_Bps'] / 1e12:.2f} TB/s (read+write, same run); compile pool "
        f"({report['pool_workers']} workers) start-up {report['pool_start_s']:.1f} s, "
        "not in any figure below",
        "",
    ]
    for name, rep in report["models"].items():
        s = rep["shape"]
        lines += [
            f"### {name}: E={s['E']} N={s['N']} K={s['K']} topk={s['topk']} "
            f"{s['dtype'] or 'bf16'} {s['block_shape'] or ''}",
            "",
            f"file `{rep['file']}`",
            "",
            "| M | default us | tuned us | speedup | copy frac (layer) | copy frac (GEMMs) "
            "| configs measured | search s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rep["rows"]:
            lines.append(
                f"| {r['M']} | {_f(r['default_us'], '.1f')} | {r['tuned_us']:.1f} "
                f"| {_f(r['speedup'], '.2f')} | {r['frac_copy_layer']:.2f} "
                f"| {_f(r.get('frac_copy_gemms'), '.2f')} "
                f"| {r['evaluations']}/{r['candidates']} | {r['search_s']:.1f} |"
            )
        if rep.get("tune_wall_s") is not None:
            lines.append(
                f"\ntuning wall time (run_tune, all batch sizes): {rep['tune_wall_s']:.0f} s"
            )
        if rep["exhaustive"]:
            lines += [
                "",
                "| M | ours us | exhaustive optimum us | gap | our s | exhaustive s | time ratio "
                "| exhaustive configs |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for e in rep["exhaustive"]:
                lines.append(
                    f"| {e['M']} | {e['ours_us']:.1f} | {e['optimum_us']:.1f} "
                    f"| {e['gap'] * 100:+.1f}% | {e['ours_s']:.1f} | {e['exhaustive_s']:.1f} "
                    f"| {e['time_ratio'] * 100:.1f}% | {e['evaluations']} |"
                )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver


def run(args) -> int:
    import torch
    import triton

    from sglkit.errors import SglkitError
    from sglkit.kernels import bench, moe_kernel, names, search, target, tune

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # run_tune keeps its resumable state under the profile's cache root: a scratch folder
    os.environ.setdefault("SGLKIT_CACHE_ROOT", str(out.resolve() / "cache"))
    deadline = time.monotonic() + args.budget
    models = [m for m in args.models.split(",") if m]
    shapes = {m: model_shape(m) for m in models}
    ex_at = parse_exhaustive(args.exhaustive_at, models)
    batch_sizes = tune.parse_batch_sizes(args.batch_sizes)

    t0 = time.perf_counter()
    pool = bench.CompilePool()
    for f in pool._warm:  # every worker up (imports torch and SGLang) before any timing
        f.result()
    pool_start = time.perf_counter() - t0
    dev = names.device_name()
    copy_bw = bench.copy_bandwidth()
    try:
        import sglang

        sgl_v = getattr(sglang, "__version__", "?")
    except Exception as e:
        sgl_v = f"import failed: {e}"
    rep = Report(
        out,
        {"device": dev, "triton": triton.__version__, "torch": torch.__version__,
         "sglang": sgl_v, "copy_bw_Bps": copy_bw, "pool_workers": pool.workers,
         "pool_start_s": pool_start, "batch_sizes": batch_sizes},
    )  # fmt: skip
    print(f"device {dev}, triton {triton.__version__}, torch {torch.__version__}, sglang "
          f"{sgl_v}; copy bandwidth {copy_bw / 1e12:.2f} TB/s; compile pool of {pool.workers} "
          f"started in {pool_start:.1f} s", flush=True)  # fmt: skip

    measures, results = {}, {}
    for name in models:  # 1. the tuning tables (most important: first)
        p, shape = shapes[name]
        measure = bench.make_measure(shape, pool=pool)
        measures[name] = measure
        dims = moe_kernel.dims_from(shape)
        fname = target.for_shape(shape, dev, triton.__version__).file_name
        m_rep = {"profile": p.name, "shape": shape.to_dict(), "file": fname, "rows": [],
                 "store": {}, "exhaustive": [], "tune_wall_s": None}  # fmt: skip
        rep.data["models"][name] = m_rep
        rep.save()
        if time.monotonic() > deadline:
            print(f"budget reached before tuning {name}", flush=True)
            continue

        def on_progress(event, info, shape=shape, dims=dims, m_rep=m_rep, measure=measure):
            if event != "done":
                return
            r = info["result"]
            wb = bench.weight_bytes(dims, r.M)
            try:  # the two GEMMs alone (no routing, activation, sum): the kernel's own rate
                g = measure.bench.time(r.config, r.M, reps=20, what="gemms")
            except Exception:
                g = None
            m_rep["rows"].append(
                {"M": r.M, "default_us": None if r.default_time is None else r.default_time * 1e6,
                 "tuned_us": r.time * 1e6, "speedup": r.speedup, "weight_bytes": wb,
                 "frac_copy_layer": wb / r.time / copy_bw,
                 "gemms_tuned_us": None if g is None else g * 1e6,
                 "frac_copy_gemms": None if g is None else wb / g / copy_bw,
                 "evaluations": r.evaluations, "measurements": r.measurements,
                 "candidates": r.candidates, "search_s": r.seconds, "config": r.config,
                 "default": r.default_config}
            )  # fmt: skip
            m_rep["rows"].sort(key=lambda row: row["M"])
            m_rep["store"][str(r.M)] = r.config
            rep.save()

        t0 = time.perf_counter()
        try:
            _, _, res = tune.run_tune(
                p,
                shape,
                batch_sizes,
                device=dev,
                triton_version=triton.__version__,
                measure=measure,
                default_config=lambda M, shape=shape: bench.default_config(shape, M),
                on_progress=on_progress,
            )
        except SglkitError as e:  # some batch sizes failed: report them, go on with the rest
            if getattr(e, "results", None) is None:
                raise
            res, m_rep["tune_error"] = e.results, str(e)
            print(str(e), file=sys.stderr, flush=True)
        m_rep["tune_wall_s"] = time.perf_counter() - t0
        m_rep["store"] = search.configs_json(res)
        results[name] = res
        rep.save()

    for name, M in ex_at:  # 2. the exhaustive reference on a few batch sizes
        if name not in results or M not in results[name]:
            print(f"exhaustive {name} M={M}: not tuned in this run, skipped", flush=True)
            continue
        if time.monotonic() > deadline:
            print(f"budget reached before exhaustive {name} M={M}", flush=True)
            break
        _, shape = shapes[name]
        measure = measures[name]
        ours = results[name][M]
        cands = candidates(shape, M)
        t0 = time.perf_counter()
        ex = search.exhaustive(M, cands, measure)
        ex_s = time.perf_counter() - t0
        # side by side, same repetitions, to compare the two picks
        t_ours = measure(ours.config, M, reps=50)
        t_opt = measure(ex.config, M, reps=50)
        e = {"M": M, "ours_us": t_ours * 1e6, "optimum_us": t_opt * 1e6,
             "gap": t_ours / t_opt - 1, "ours_s": ours.seconds, "exhaustive_s": ex_s,
             "time_ratio": ours.seconds / ex_s, "evaluations": ex.evaluations,
             "ours": ours.config, "optimum": ex.config}  # fmt: skip
        rep.model(name)["exhaustive"].append(e)
        rep.save()
        print(f"{name} exhaustive M={M}: optimum {t_opt * 1e6:.1f} us, ours {t_ours * 1e6:.1f} "
              f"us, gap {e['gap'] * 100:+.1f}%, time {ours.seconds:.1f} s vs {ex_s:.1f} s = "
              f"{e['time_ratio'] * 100:.1f}%", flush=True)  # fmt: skip
    pool.close()
    rep.save()
    print(markdown(rep.data))
    return 0


def install_store(results: Path, store: Path = ROOT / "kernels") -> int:
    """Copy a run's store_<model>.json files to store/configs/triton_X_Y_Z/<SGLang name>
    (replacing the file: the store then holds exactly what that run measured)."""
    from sglkit.kernels import names
    from sglkit.kernels import store as st

    report = json.loads((results / "report.json").read_text())
    folder = store / "configs" / names.triton_dir_name(report["triton"])
    for name, rep in report["models"].items():
        src = results / f"store_{name}.json"
        if not src.exists():
            continue
        body = json.loads(src.read_text())
        if not body or not all(str(k).isdigit() for k in body):
            raise SystemExit(f"--install-store: {src} is not a store file")
        folder.mkdir(parents=True, exist_ok=True)
        print(st.write_configs(folder / rep["file"], body, merge=False))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "tune-out"))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--exhaustive-at", default=EXHAUSTIVE_AT, help="MODEL:M,... in run order")
    p.add_argument("--budget", type=float, default=1e9, help="seconds; stop starting new work")
    p.add_argument(
        "--install-store",
        metavar="RESULTS",
        help="copy RESULTS/store_<model>.json into kernels/configs/ under SGLang's names",
    )
    args = p.parse_args(argv)
    if args.install_store:
        return install_store(Path(args.install_store))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
