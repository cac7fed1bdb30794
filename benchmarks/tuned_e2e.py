#!/usr/bin/env python3
"""Tuned MoE configs end to end: one profile served three ways through `invoke server.up`, with
load from `invoke server.bench` at each concurrency:

  default   --moe-configs none     SGLang's default config (no file)
  shipped   --moe-configs sglang   SGLang's shipped file for this card and shape, where it has one
  tuned     --moe-configs kit      the kit's store over SGLang's files (what server.up serves)

Each start reads, from the server's own log, the MoE config file SGLang loaded ("Using MoE kernel
config from <path>.", its fallback line, or its default-config warning) and compares it with what
`invoke kernels.check --moe-configs <choice> --json` predicts for the gate/up file; a mismatch
stops the run with exit status 1. The order of the ways is rotated from repeat to repeat.

It prints, per way and concurrency, the median output tokens/s and time per output token p50 and
p99, the ratio of the throughput to default's, and the goals: tuned at least 1.15x default at
concurrency 8 or less, and never below shipped. On a GPU machine (the card is read from NVML):

    python3 benchmarks/tuned_e2e.py --profile qwen3-moe-fp8-2l --concurrency 1,8,64 --repeats 3

Every start has its own state and telemetry folders (a fresh server log), and the profile's
cache root unless --cache-root names one (a warmed DeepGEMM cache saves each start its sweep).
With a STAND-IN server profile it checks the mechanics on a CPU (its figures say nothing about
SGLang): pass --device-name and --triton-version, which kernels.check cannot ask a GPU for there.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import card, invoke, rotated, run_main, server_down, server_status, task_env  # noqa: E402

from sglkit.net import free_port  # noqa: E402

WAYS = {"default": "none", "shipped": "sglang", "tuned": "kit"}
# SGLang's lines (fused_moe_triton_config.get_moe_configs, 0.5.16-0.5.23); a path may hold
# commas and spaces ("block_shape=[128, 128]"), so lines are matched against known paths
LOADED_MARK = "MoE kernel config from "  # "Using MoE ..." and the fallback's "use MoE ..."
DEFAULT_MARK = "Using default MoE kernel config"


def predicted(env, profile: str, choice: str, extra: list[str]) -> dict:
    rc, out, err = invoke(env, "kernels.check", "-p", profile, "--moe-configs", choice, "--json",
                          *extra, timeout=300)  # fmt: skip
    if rc != 0:
        raise SystemExit(f"kernels.check --moe-configs {choice} failed ({rc}): {err.strip()}")
    return json.loads(out)["files"][0]  # the gate/up file (both GEMMs where there is one)


def verdict(pred: dict, log_text: str) -> tuple[bool, str]:
    """Whether the server's log shows it read the file kernels.check predicts (or, predicted
    none, ran its default config for that name), and what the log says."""
    lines = [ln for ln in log_text.splitlines() if LOADED_MARK in ln or DEFAULT_MARK in ln]
    said = "; ".join(ln.strip()[:300] for ln in lines) or (
        "nothing about MoE configs (a log level above info, or a MoE backend other than Triton)"
    )
    if pred["loads"]:
        ok = any(f"{LOADED_MARK}{pred['loads']}." in ln for ln in lines)
        wrong = f"kernels.check predicted {pred['loads']}; the log says: {said}"
        return ok, f"loaded {pred['loads']}" if ok else wrong
    ok = any(DEFAULT_MARK in ln and pred["expected_path"] in ln for ln in lines) and not any(
        LOADED_MARK in ln and pred["file"] in ln for ln in lines
    )
    return ok, ("SGLang's default config" if ok else
                f"kernels.check predicted the default config; the log says: {said}")  # fmt: skip


def check_log(env, profile: str, way: str, pred: dict) -> str:
    """What the server's log says it loaded; exits (status 1) unless kernels.check said so."""
    log = Path(server_status(env, profile, f"[{way}] ")["log"])
    ok, why = verdict(pred, log.read_text(errors="replace"))
    print(f"[{way}] MoE config: {why}", flush=True)
    if not ok:
        raise SystemExit(f"[{way}] the server did not load what kernels.check predicted: {why}")
    return why


def one_way(way: str, a, work: Path, base: dict[str, str]) -> list[dict]:
    choice = WAYS[way]
    folder = Path(tempfile.mkdtemp(prefix=f"{way}-", dir=work))
    env = dict(base, SGLKIT_STATE_DIR=str(folder / "state"),
               SGLKIT_TELEMETRY_ROOT=str(folder / "telemetry"))  # fmt: skip
    pred = predicted(env, a.profile, choice, a.check_args)
    port = str(free_port())
    rows, checked = [], None

    def bench(conc: int, requests: int) -> dict:
        rc, out, err = invoke(env, "server.bench", "-p", a.profile, "--requests", str(requests),
                              "--concurrency", str(conc), "--input-len", str(a.input_len),
                              "--output-len", str(a.output_len), "--json",
                              timeout=a.timeout)  # fmt: skip
        if rc != 0:
            raise SystemExit(f"[{way}] server.bench c={conc} failed ({rc}): {err[-2000:]}")
        return json.loads(out[out.index("{") :])

    try:  # server.down in `finally` also where server.up was interrupted after it recorded
        rc, out, err = invoke(env, "server.up", "-p", a.profile, "--detach", "--port", port,
                              "--moe-configs", choice, timeout=a.timeout)  # fmt: skip
        if rc != 0:
            raise SystemExit(f"[{way}] server.up failed ({rc}):\n{(out + err)[-3000:]}")
        # untimed: the first requests of a fresh server may pay JIT compiles (Triton, for each
        # config the batch sizes reach), which are not what the ways differ in
        top = max(a.concurrency)
        bench(top, a.warmup * top)
        for conc in a.concurrency:
            s = bench(conc, a.requests * conc)
            rows.append({"way": way, "concurrency": conc, "output_throughput":
                         s["output_throughput"], "tpot_p50_s": s["tpot_p50_s"],
                         "tpot_p99_s": s["tpot_p99_s"], "failed": s["failed"]})  # fmt: skip
            print(f"[{way}] c={conc}: {s['output_throughput']:.1f} out tok/s, TPOT p50 "
                  f"{(s['tpot_p50_s'] or 0) * 1000:.2f} ms", flush=True)  # fmt: skip
            if checked is None:  # the MoE layer has run: its config line is in the log
                checked = check_log(env, a.profile, way, pred)
    finally:
        server_down(env, a.profile)
    why = checked
    for r in rows:
        r["config"] = why
    return rows


def table(rows: list[dict], gpu: str, command: str) -> str:
    def med(way, conc, key):
        vals = [r[key] for r in rows if r["way"] == way and r["concurrency"] == conc
                and r[key] is not None]  # fmt: skip
        return statistics.median(vals) if vals else None

    concs = sorted({r["concurrency"] for r in rows})
    ways = [w for w in WAYS if any(r["way"] == w for r in rows)]
    head = "| way | concurrency | runs | out tok/s | vs default | TPOT p50 ms | TPOT p99 ms |"
    lines = [f"card: {gpu}", "", head, "| --- | --- | --- | --- | --- | --- | --- |"]
    configs = {r["way"]: r["config"] for r in rows}
    shipped_file = configs.get("shipped", "").startswith("loaded")
    goals = (
        []
        if shipped_file or "shipped" not in configs
        else ["shipped: SGLang ships no file for this card and shape; it ran its default config"]
    )
    same_as_default = configs.get("tuned") is not None and configs.get("tuned") == configs.get(
        "default"
    )
    for conc in concs:
        base = med("default", conc, "output_throughput")
        for w in ways:
            tput = med(w, conc, "output_throughput")
            n = sum(1 for r in rows if r["way"] == w and r["concurrency"] == conc)
            ratio = f"{tput / base:.2f}x" if tput and base else "-"
            p50, p99 = med(w, conc, "tpot_p50_s"), med(w, conc, "tpot_p99_s")

            def num(v, scale=1.0):
                return "-" if v is None else f"{v * scale:.2f}"

            lines.append(f"| {w} | {conc} | {n} | {num(tput)} | {ratio} | "
                         f"{num(p50, 1000)} | {num(p99, 1000)} |")  # fmt: skip
        tuned = med("tuned", conc, "output_throughput")
        shipped = med("shipped", conc, "output_throughput")
        if conc <= 8 and tuned and base and same_as_default:
            goals.append(f"c={conc}: tuned ran the same config as default "
                         f"({configs['tuned']}): the goal is not measured; the difference "
                         "is run-to-run spread")  # fmt: skip
        elif conc <= 8 and tuned and base:
            goals.append(f"c={conc}: tuned {tuned / base:.2f}x default (goal >= 1.15x: "
                         f"{'met' if tuned / base >= 1.15 else 'missed'})")  # fmt: skip
        if tuned and shipped and shipped_file:
            goals.append(f"c={conc}: tuned {tuned / shipped:.2f}x shipped (goal >= 1.00x: "
                         f"{'met' if tuned >= shipped else 'missed'})")  # fmt: skip
    lines += ["", *[f"{w}: {configs[w]}" for w in ways], "", *goals, "", f"rerun: {command}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="qwen3-moe-fp8-2l")
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--requests", type=int, default=16, help="requests per unit of concurrency")
    ap.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed requests per unit of the highest concurrency, first",
    )
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--cache-root", help="SGLKIT_CACHE_ROOT for every start")
    ap.add_argument("--device-name", help="for kernels.check where no GPU answers")
    ap.add_argument("--triton-version", help="for kernels.check where Triton is not installed")
    ap.add_argument("--json", help="also write every row here")
    a = ap.parse_args(argv)
    command = "python3 benchmarks/tuned_e2e.py " + shlex.join(argv or sys.argv[1:])
    ways = [w.strip() for w in a.ways.split(",") if w.strip()]
    if bad := [w for w in ways if w not in WAYS]:
        ap.error(f"--ways: unknown {bad} (known: {', '.join(WAYS)})")
    try:
        a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    except ValueError:
        ap.error(f"--concurrency: expected numbers such as 1,8,64, got {a.concurrency!r}")
    if not a.concurrency or min(a.concurrency) < 1 or a.repeats < 1 or a.requests < 1:
        ap.error("--concurrency, --requests and --repeats: positive numbers")
    if a.warmup < 1:
        ap.error("--warmup: a positive number")
    a.check_args = ["--device-name", a.device_name] if a.device_name else []
    a.check_args += ["--triton-version", a.triton_version] if a.triton_version else []
    work = Path(tempfile.mkdtemp(prefix="sglkit-tuned-e2e-"))
    base = task_env()
    if a.cache_root:
        base["SGLKIT_CACHE_ROOT"] = a.cache_root
    gpu, rows = card(), []
    for rep in range(a.repeats):
        for way in rotated(ways, rep):
            rows += one_way(way, a, work, base)
            if a.json:
                Path(a.json).write_text(json.dumps({"card": gpu, "profile": a.profile,
                                                    "rows": rows}, indent=2))  # fmt: skip
    print(table(rows, gpu, command))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
