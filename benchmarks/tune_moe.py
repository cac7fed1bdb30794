"""Tune SGLang's fused-MoE Triton kernel on this GPU and compare with an exhaustive search.

Run on a GPU host with the SGLang wheel importable (on the H200 device machine, through the
device tool; see docs/tuning-h200.md):

    python3 benchmarks/tune_moe.py --out OUT [--models deepseek-v3-tp8,qwen3-30b-a3b-tp1]
        [--batch-sizes 1,2,4,...] [--exhaustive-at 1,16,256] [--explore]

Per model: the copy bandwidth of this GPU (same run), then per batch size SGLang's default
config time, our tuned time, the speedup, and the fraction of copy bandwidth reached (expert
weight bytes read / time); the tuning wall time; on --exhaustive-at batch sizes, the exhaustive
search over the same pruned candidate space, our distance to its optimum and the time ratio.
Writes OUT/store_<model>.json (the store file's content; report.json gives its exact SGLang
file name, which the device tool cannot carry back as a name), OUT/report.json and
OUT/report.md; prints the table last. --install-store copies store files into
kernels/configs/triton_X_Y_Z/ under their SGLang names.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH_SIZES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096]
SMEM_LIMIT = 232448  # H100/H200 opt-in shared memory per block (227 KiB)


def model_dims(name: str):
    """E, N, K, topk from the model's config.json, the way SGLang's tuner derives them."""
    from sglkit.kernels.moe_kernel import MoEDims

    if name == "deepseek-v3-tp8":
        c = json.loads((ROOT / "profiles/models/DeepSeek-V3/config.json").read_text())
        tp = 8
        # shared-expert fusion (SGLang's default for DeepSeek V3 on CUDA): one extra expert,
        # always routed, so E + 1 and top-k + 1
        q = c["quantization_config"]
        return MoEDims(
            E=c["n_routed_experts"] + c.get("n_shared_experts", 0),
            N=c["moe_intermediate_size"] // tp,
            K=c["hidden_size"],
            topk=c["num_experts_per_tok"] + c.get("n_shared_experts", 0),
            dtype="fp8_w8a8",
            block_shape=tuple(q["weight_block_size"]),
        )
    if name == "qwen3-30b-a3b-tp1":
        c = json.loads((ROOT / "profiles/models/Qwen3-30B-A3B/config.json").read_text())
        return MoEDims(
            E=c["num_experts"],
            N=c["moe_intermediate_size"],
            K=c["hidden_size"],
            topk=c["num_experts_per_tok"],
        )
    raise SystemExit(f"--models: unknown model {name!r}")


# --------------------------------------------------------------------------- candidate space


def full_space(dims) -> list[dict]:
    """SGLang's upstream tuner space (1920 configs), pruned of what cannot fit or run."""
    out = []
    for bm, bn, bk, gm, w, s in itertools.product(
        [16, 32, 64, 128, 256], [32, 64, 128, 256], [64, 128, 256], [1, 16, 32, 64], [4, 8],
        [2, 3, 4, 5],
    ):  # fmt: skip
        if fits(dims, bm, bn, bk, w, s):
            out.append(
                dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=gm,
                     num_warps=w, num_stages=s)
            )  # fmt: skip
    return out


def fits(dims, bm, bn, bk, warps, stages) -> bool:
    elem = 1 if dims.fp8 else 2
    if stages * (bm * bk + bk * bn) * elem > SMEM_LIMIT:  # pipelined A and B tiles
        return False
    if bm * bn // (32 * warps) > 128:  # fp32 accumulator registers per thread
        return False
    if dims.block_shape and dims.block_shape[1] % bk:  # one scale per K step
        return False
    return not (bk > dims.K or bk > max(64, dims.N))


def _cap_bm(dims, M: int) -> int:
    """Largest BLOCK_SIZE_M worth trying: about twice the tokens an expert gets at batch M."""
    per_expert = M * dims.topk / dims.E
    return max(32, min(256, 2 ** math.ceil(math.log2(max(1.0, per_expert))) * 2))


def _neighbours(cfg: dict, space_keys: set) -> list[dict]:
    steps = {
        "BLOCK_SIZE_M": [16, 32, 64, 128, 256],
        "BLOCK_SIZE_N": [32, 64, 128, 256],
        "BLOCK_SIZE_K": [64, 128, 256],
        "GROUP_SIZE_M": [1, 16, 32, 64],
        "num_warps": [4, 8],
        "num_stages": [2, 3, 4, 5],
    }
    out = []
    for k, vals in steps.items():
        i = vals.index(cfg[k])
        near = range(len(vals)) if k in ("GROUP_SIZE_M", "num_stages") else (i - 1, i + 1)
        for j in near:
            if 0 <= j < len(vals) and j != i:
                c = dict(cfg, **{k: vals[j]})
                if _k(c) in space_keys:
                    out.append(c)
    return out


def _k(c: dict) -> tuple:
    return (c["BLOCK_SIZE_M"], c["BLOCK_SIZE_N"], c["BLOCK_SIZE_K"], c["GROUP_SIZE_M"],
            c["num_warps"], c["num_stages"])  # fmt: skip


# --------------------------------------------------------------------------- search


def search_one(measure, space, M, dims, seeds, *, n0=48, seed=0, log=print):
    """Successive halving over a sample (plus seeds), then a neighbour walk from the winner.

    Returns (best_config, best_seconds, evaluations)."""
    cap = _cap_bm(dims, M)
    cand = [c for c in space if c["BLOCK_SIZE_M"] <= cap]
    rng = random.Random(seed)
    order = list(range(len(cand)))
    rng.shuffle(order)
    pick, seen = [], set()
    for c in list(seeds) + [cand[i] for i in order]:
        if _k(c) in seen or c["BLOCK_SIZE_M"] > cap:
            continue
        seen.add(_k(c))
        pick.append(c)
        if len(pick) >= n0 + len(seeds):
            break
    evals = 0
    timed: dict[tuple, float] = {}
    alive = pick
    for reps, keep in ((3, 0.25), (10, 0.34), (30, 0.0)):
        measure.prefetch(alive, M)
        scores = []
        for c in alive:
            t = measure(c, M, reps=reps)
            evals += 1
            timed[_k(c)] = t
            scores.append((t, c))
        scores.sort(key=lambda x: x[0])
        n_keep = max(2, math.ceil(len(scores) * keep)) if keep else 1
        alive = [c for t, c in scores[:n_keep] if math.isfinite(t)]
        if not alive:
            return None, math.inf, evals
    best = alive[0]
    best_t = timed[_k(best)]
    keys = {_k(c) for c in cand}
    for _ in range(3):  # neighbour walk
        nb = [c for c in _neighbours(best, keys) if _k(c) not in timed]
        if not nb:
            break
        measure.prefetch(nb, M)
        improved = False
        for c in nb:
            t = measure(c, M, reps=30)
            evals += 1
            timed[_k(c)] = t
            if t < best_t:
                best, best_t, improved = c, t, True
        if not improved:
            break
    return best, best_t, evals


def exhaustive_one(measure, space, M, *, reps=5, final=30, top=8):
    """Every config of the space once (reps), then the top few again (final reps)."""
    measure.prefetch(space, M)
    scores = []
    for c in space:
        scores.append((measure(c, M, reps=reps), c))
    scores.sort(key=lambda x: x[0])
    finals = [(measure(c, M, reps=final), c) for t, c in scores[:top] if math.isfinite(t)]
    finals.sort(key=lambda x: x[0])
    return finals[0][1], finals[0][0], len(space) + len(finals)


# --------------------------------------------------------------------------- driver


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name().replace(" ", "_")


def file_name(dims, dev: str) -> str:
    """SGLang 0.5.23 get_config_file_name (fused_moe_triton_config.py)."""
    dt = f",dtype={dims.config_dtype}" if dims.config_dtype else ""
    bs = f",block_shape={list(dims.block_shape)}" if dims.block_shape else ""
    return f"E={dims.E},N={dims.N},device_name={dev}{dt}{bs}.json"


def explore(out: Path) -> None:
    """First device call: the kernel API, alignment and correctness, timings, compile cost."""
    import torch
    import triton

    from sglkit.kernels import bench
    from sglkit.kernels import moe_kernel as mk

    info = {"torch": torch.__version__, "triton": triton.__version__, "device": device_name()}
    try:
        import sglang

        info["sglang"] = getattr(sglang, "__version__", "?")
    except Exception as e:
        info["sglang"] = f"import failed: {e}"
    info["l2_bytes"] = bench.l2_bytes()
    info["copy_bw"] = bench.copy_bandwidth()
    print(json.dumps(info), flush=True)
    # alignment against SGLang's own single-CTA Triton align (numel <= 64)
    from sglang.kernels.ops.moe.moe_align_small_numel import moe_align_small_numel

    bad = 0
    for trial in range(20):
        E, topk, M, bs = 257, 9, 1 + trial % 7, [16, 32, 64][trial % 3]
        d = mk.MoEDims(E, 256, 7168, topk)
        _, ids = mk.random_routing(M, d)
        n = mk.max_padded_tokens(ids.numel(), bs, E)
        s1 = torch.empty(n, dtype=torch.int32, device="cuda")
        e1 = torch.empty(triton.cdiv(n, bs), dtype=torch.int32, device="cuda")
        p1 = torch.empty(1, dtype=torch.int32, device="cuda")
        moe_align_small_numel(ids, E + 1, bs, s1, e1, p1)
        s2, e2, p2 = mk.align_block_size(ids, bs, E, n)
        tot = int(p1.item())
        ok = tot == int(p2.item()) and torch.equal(e1[: tot // bs], e2[: tot // bs])
        # same multiset of token ids per block (order inside an expert may differ)
        for b in range(tot // bs):
            a = torch.sort(s1[b * bs : (b + 1) * bs]).values
            c = torch.sort(s2[b * bs : (b + 1) * bs]).values
            ok = ok and torch.equal(a, c)
        bad += not ok
    print(f"align vs sglang moe_align_small_numel: {20 - bad}/20 equal", flush=True)
    rows = []
    fc = bench.sglang_config_module()

    for name in ("deepseek-v3-tp8", "qwen3-30b-a3b-tp1"):
        dims = model_dims(name)
        theirs = fc.get_config_file_name(
            dims.E, dims.N, dims.config_dtype, list(dims.block_shape or [0, 0])
        )
        print(f"name: sglang {theirs!r} ours {file_name(dims, device_name())!r}", flush=True)
        for M in (1, 16, 64):
            cfg = bench.default_config(dims, M)
            err = bench.reference_check(dims, None, cfg, M)
            rows.append((name, M, "ref_err", err, cfg))
            print(name, M, "rel err", err, cfg, flush=True)
        bench._CHECK_BENCH.clear()
        torch.cuda.empty_cache()
        b = bench.Bench(dims)
        for M in (1, 16, 256):
            cfg = bench.default_config(dims, M)
            t0 = time.perf_counter()
            t = b.time(cfg, M, reps=30)
            t1 = time.perf_counter() - t0
            tg = b.time(cfg, M, reps=30, what="gemms")
            wb = bench.weight_bytes(dims, M)
            rows.append((name, M, "default_us", t * 1e6, tg * 1e6, wb / tg / info["copy_bw"]))
            frac = wb / tg / info["copy_bw"]
            print(f"{name} M={M} default layer {t * 1e6:.1f} us gemms {tg * 1e6:.1f} us "
                  f"frac {frac:.2f} first-call {t1:.1f}s", flush=True)  # fmt: skip
        # compile cost: 4 configs sequentially in-process vs 32 in the pool
        space = full_space(dims)
        rng = random.Random(1)
        sample = rng.sample([c for c in space if c["BLOCK_SIZE_M"] <= 64], 36)
        t0 = time.perf_counter()
        for c in sample[:4]:
            b.time(c, 16, reps=3)
        seq = (time.perf_counter() - t0) / 4
        pool = bench.CompilePool()
        t0 = time.perf_counter()
        pool.compile(dims, [(16, sample[4])])  # pool start-up + import
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = pool.compile(dims, [(16, c) for c in sample[5:]])
        t_par = time.perf_counter() - t0
        b.pool = pool
        t0 = time.perf_counter()
        for c in sample[5:]:
            b.time(c, 16, reps=3)
        t_load = (time.perf_counter() - t0) / n
        pool.close()
        print(f"{name}: space {len(space)}; sequential compile+time {seq:.2f}s/config; pool "
              f"start {t_start:.1f}s; {n} in parallel {t_par:.1f}s ({t_par / n:.2f}s/config); "
              f"then time from cache {t_load:.2f}s/config", flush=True)  # fmt: skip
        rows.append((name, "compile", seq, t_start, t_par / n, t_load, len(space)))
        del b
        torch.cuda.empty_cache()
    (out / "explore.json").write_text(json.dumps({"info": info, "rows": rows}, default=str))


def run(args) -> int:
    import torch
    import triton

    from sglkit.kernels import bench

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out  # store_<model>.json; report.json gives each one's SGLang file name
    dev = device_name()
    copy_bw = bench.copy_bandwidth()
    print(f"device {dev}, triton {triton.__version__}, torch {torch.__version__}, "
          f"copy bandwidth {copy_bw / 1e12:.2f} TB/s (read+write)", flush=True)  # fmt: skip
    report = {"device": dev, "triton": triton.__version__, "torch": torch.__version__,
              "copy_bw_Bps": copy_bw, "models": {}}  # fmt: skip
    pool = bench.CompilePool()
    deadline = time.monotonic() + args.budget
    ex_at = [int(x) for x in args.exhaustive_at.split(",") if x]
    jobs = []
    for name in args.models.split(","):
        dims = model_dims(name)
        measure = bench.make_measure(dims, pool=pool)
        b = measure.bench
        space = full_space(dims)
        fname = file_name(dims, dev)
        rep = {"dims": asdict(dims), "file": fname, "space": len(space), "rows": [],
               "exhaustive": []}  # fmt: skip
        report["models"][name] = rep
        print(f"\n== {name}: E={dims.E} N={dims.N} K={dims.K} topk={dims.topk} {dims.dtype} "
              f"space {len(space)} -> {fname}", flush=True)  # fmt: skip
        tuned: dict[int, dict] = {}
        prev: list[dict] = []
        t_model = time.perf_counter()
        search_s: dict[int, float] = {}
        for M in [int(x) for x in args.batch_sizes.split(",")]:
            if time.monotonic() > deadline:
                print(f"budget reached before M={M}", flush=True)
                break
            t0 = time.perf_counter()
            c0 = pool.seconds
            # bf16 defaults leave num_warps/num_stages to Triton (3.6: 4 and 3)
            dflt = {"num_warps": 4, "num_stages": 3, **bench.default_config(dims, M)}
            seeds = [dflt, *prev]
            best, _, evals = search_one(measure, space, M, dims, seeds, seed=M)
            search_s[M] = time.perf_counter() - t0
            if best is None:
                print(f"M={M}: no config ran", flush=True)
                continue
            tuned[M] = best
            prev = [best]
            # final comparison, same reps for both
            t_def = measure(dflt, M, reps=50)
            t_tun = measure(best, M, reps=50)
            if t_def < t_tun:  # the search's pick lost the final run-off: keep the default
                best = dflt
                tuned[M], prev = best, [best]
                t_tun = measure(best, M, reps=50)
            g_def = b.time(dflt, M, reps=30, what="gemms")
            g_tun = b.time(best, M, reps=30, what="gemms")
            wb = bench.weight_bytes(dims, M)
            row = dict(M=M, default_us=t_def * 1e6, tuned_us=t_tun * 1e6,
                       speedup=t_def / t_tun, gemms_default_us=g_def * 1e6,
                       gemms_tuned_us=g_tun * 1e6, weight_bytes=wb,
                       frac_copy_layer=wb / t_tun / copy_bw,
                       frac_copy_gemms=wb / g_tun / copy_bw, evals=evals,
                       search_s=search_s[M], compile_wait_s=pool.seconds - c0, config=best,
                       default=dflt)  # fmt: skip
            rep["rows"].append(row)
            print(f"M={M:5d} default {t_def * 1e6:9.1f} us tuned {t_tun * 1e6:9.1f} us "
                  f"x{t_def / t_tun:5.2f} copy-frac layer {row['frac_copy_layer']:.2f} gemms "
                  f"{row['frac_copy_gemms']:.2f} evals {evals} {search_s[M]:.1f}s {best}",
                  flush=True)  # fmt: skip
            _save(out, store, name, tuned, report)
        rep["tune_wall_s"] = sum(search_s.values())  # the searches alone
        rep["model_wall_s"] = time.perf_counter() - t_model  # with the side-by-side re-runs
        jobs.append((name, dims, measure, space, fname, tuned, search_s, rep))
    # exhaustive searches last, so a tight budget still tunes every model
    for name, _dims, measure, space, _fname, tuned, search_s, rep in jobs:
        for M in ex_at:
            if M not in tuned or time.monotonic() > deadline:
                continue
            t0 = time.perf_counter()
            ebest, _, n = exhaustive_one(measure, space, M)
            ex_s = time.perf_counter() - t0
            ours = measure(tuned[M], M, reps=50)
            theirs = measure(ebest, M, reps=50)
            e = dict(M=M, ours_us=ours * 1e6, optimum_us=theirs * 1e6,
                     gap=ours / theirs - 1, ours_s=search_s[M], exhaustive_s=ex_s,
                     time_ratio=search_s[M] / ex_s, evals=n, ours=tuned[M],
                     optimum=ebest)  # fmt: skip
            rep["exhaustive"].append(e)
            print(f"{name} exhaustive M={M}: optimum {theirs * 1e6:.1f} us, ours "
                  f"{ours * 1e6:.1f} us gap {e['gap'] * 100:+.1f}%, time {search_s[M]:.0f}s "
                  f"vs {ex_s:.0f}s = {e['time_ratio'] * 100:.1f}%", flush=True)  # fmt: skip
            _save(out, store, name, tuned, report)
    pool.close()
    _save(out, None, None, None, report)
    print(markdown(report))
    return 0


def _save(out: Path, store, name, tuned, report) -> None:
    if store is not None and tuned:
        body = {str(m): c for m, c in sorted(tuned.items())}
        tmp = store / f"store_{name}.json.tmp"
        tmp.write_text(json.dumps(body, indent=4) + "\n")
        os.replace(tmp, store / f"store_{name}.json")
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"device {report['device']}, triton {report['triton']}, copy bandwidth "
             f"{report['copy_bw_Bps'] / 1e12:.2f} TB/s (read+write, same run)", ""]  # fmt: skip
    for name, rep in report["models"].items():
        lines += [f"### {name} ({rep['file']}), candidate space {rep['space']}", "",
                  "| M | default us | tuned us | speedup | copy frac (layer) | copy frac (GEMMs) "
                  "| evals | search s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rep["rows"]:
            lines.append(
                f"| {r['M']} | {r['default_us']:.1f} | {r['tuned_us']:.1f} | {r['speedup']:.2f} "
                f"| {r['frac_copy_layer']:.2f} | {r['frac_copy_gemms']:.2f} | {r['evals']} "
                f"| {r['search_s']:.1f} |"
            )
        if "tune_wall_s" in rep:
            lines.append(f"\ntuning wall time: {rep['tune_wall_s']:.0f} s")
        if rep["exhaustive"]:
            lines += ["", "| M | ours us | exhaustive optimum us | gap | our s | exhaustive s "
                      "| time ratio |", "|---|---|---|---|---|---|---|"]  # fmt: skip
            for e in rep["exhaustive"]:
                lines.append(
                    f"| {e['M']} | {e['ours_us']:.1f} | {e['optimum_us']:.1f} | "
                    f"{e['gap'] * 100:+.1f}% | {e['ours_s']:.0f} | {e['exhaustive_s']:.0f} | "
                    f"{e['time_ratio'] * 100:.1f}% |"
                )
        lines.append("")
    return "\n".join(lines)


def install_store(results: Path, store: Path = ROOT / "kernels") -> int:
    """Copy a run's store_<model>.json files to store/configs/triton_X_Y_Z/<SGLang name>."""
    report = json.loads((results / "report.json").read_text())
    folder = store / "configs" / ("triton_" + report["triton"].replace(".", "_"))
    folder.mkdir(parents=True, exist_ok=True)
    for name, rep in report["models"].items():
        src = results / f"store_{name}.json"
        if not src.exists():
            continue
        body = json.loads(src.read_text())
        if not body or not all(k.isdigit() for k in body):
            raise SystemExit(f"--install-store: {src} is not a store file")
        tmp = folder / (rep["file"] + ".tmp")
        tmp.write_text(json.dumps(body, indent=4) + "\n")
        os.replace(tmp, folder / rep["file"])
        print(folder / rep["file"])
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "tune-out"))
    p.add_argument("--models", default="deepseek-v3-tp8,qwen3-30b-a3b-tp1")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--exhaustive-at", default="1,16,256")
    p.add_argument("--budget", type=float, default=1e9, help="seconds; stop starting new work")
    p.add_argument("--explore", action="store_true")
    p.add_argument(
        "--install-store",
        metavar="RESULTS",
        help="copy RESULTS/store_<model>.json into kernels/configs/ under SGLang's names",
    )
    args = p.parse_args(argv)
    if args.install_store:
        return install_store(Path(args.install_store))
    if args.explore:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        explore(out)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
