"""A real SGLang server from a profile, through the kit's tasks, on a GPU machine.

The profile is qwen3-moe-fp8-2l (two layers with Qwen3-235B-A22B's shapes, FP8 block
quantization, dummy weights, no tokenizer), or $SGLKIT_GPU_SERVER_PROFILE. Every task runs as a
user runs it, `python3 -m invoke ...`, with the cache, state and telemetry roots under the test's
temporary folder. Figures (time to ready, first token, the bench table, warm times) are printed
and, where $SGLKIT_GPU_FIGURES names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from sglkit.cache import store
from sglkit.proc import group_members

pytestmark = pytest.mark.requires("gpu", "sglang")

REPO = Path(__file__).resolve().parents[2]
PROFILE = os.environ.get("SGLKIT_GPU_SERVER_PROFILE", "qwen3-moe-fp8-2l")
FIGURES: dict = {}


def _save_figures() -> None:
    path = os.environ.get("SGLKIT_GPU_FIGURES")
    if path:
        Path(path).write_text(json.dumps(FIGURES, indent=2))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("server")
    env = dict(os.environ)
    env.update(
        SGLKIT_CACHE_ROOT=os.environ.get("SGLKIT_GPU_CACHE_ROOT") or str(base / "cache"),
        SGLKIT_STATE_DIR=str(base / "state"),
        SGLKIT_TELEMETRY_ROOT=str(base / "telemetry"),
        PYTHONUNBUFFERED="1",
    )
    return base, env


def invoke(env, *args, timeout=900, stdout_only=False):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    out = r.stdout if stdout_only and r.returncode == 0 else r.stdout + r.stderr
    return r.returncode, out, time.monotonic() - t0


def cache_files(root: Path, kind: str, kernel: str = "") -> int:
    """Files in a cache root's folder of `kind` (deepgemm, triton), of `kernel` where named (a
    Triton compile writes several files named after its kernel)."""
    folder = root / kind
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*") if p.is_file() and kernel in p.name)


def deepgemm_files(env) -> int:
    return cache_files(Path(env["SGLKIT_CACHE_ROOT"]), "deepgemm")


PROMPT_LENGTHS = (1, 3, 17, 64, 129, 500, 1000, 2048, 3000, 4000)  # across the profile's context


def send_prompts(url: str) -> None:
    """One /generate of 4 tokens per length in PROMPT_LENGTHS; each must answer 200."""
    for n in PROMPT_LENGTHS:
        r = requests.post(f"{url}/generate", json={
            "input_ids": [(7 * i + 11) % 32000 for i in range(n)],
            "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
        }, timeout=600)  # fmt: skip
        assert r.status_code == 200, (n, r.text[:300])


def test_cache_deepgemm_cold_rerun_force(roots, free_port):
    _, env = roots
    port = str(free_port())
    rc, out, cold = invoke(env, "cache.deepgemm", "-p", PROFILE, "--port", port, timeout=1500)
    assert rc == 0, out[-3000:]
    assert "warm:" in out
    files = deepgemm_files(env)
    assert files > 0, "the warm compiled nothing into the DeepGEMM cache folder"
    rc, out, rerun = invoke(env, "cache.deepgemm", "-p", PROFILE, "--port", port)
    assert rc == 0 and "already warm" in out, out[-2000:]
    rc, out, forced = invoke(env, "cache.deepgemm", "-p", PROFILE, "--port", port, "--force")
    assert rc == 0, out[-3000:]
    # the fingerprint reads DeepGEMM's version under SGLang's distribution name
    marker = store.read_marker(Path(env["SGLKIT_CACHE_ROOT"]) / "deepgemm")
    assert marker["fingerprint"]["fields"]["deep_gemm_version"], marker["fingerprint"]
    FIGURES["cache.deepgemm"] = {"cold_s": round(cold, 1), "rerun_s": round(rerun, 2),
                                 "force_s": round(forced, 1), "files": files}  # fmt: skip
    print(f"\ncache.deepgemm: cold {cold:.1f} s, rerun {rerun:.2f} s, --force {forced:.1f} s, "
          f"{files} files")  # fmt: skip
    _save_figures()


def test_parallel_warm_leaves_the_server_nothing_to_compile(roots, free_port):
    """cache.deepgemm --jobs on an empty folder: the workers compile every planned shape, then
    the server sweeps every M of every shape on that folder; its file count must not change."""
    base, env = roots
    env = {**env, "SGLKIT_CACHE_ROOT": str(base / "cache-parallel")}
    jobs = str(min(16, len(os.sched_getaffinity(0))))
    rc, out, seconds = invoke(env, "cache.deepgemm", "-p", PROFILE, "--port",
                              str(free_port()), "--jobs", jobs, timeout=1500)  # fmt: skip
    assert rc == 0, out[-3000:]
    assert "verified: the server swept" in out, out[-3000:]
    marker = store.read_marker(Path(env["SGLKIT_CACHE_ROOT"]) / "deepgemm")
    par = marker["parallel"]
    assert par["verified"] is True and par["server_added"] == 0, par
    assert par["swept_shapes"] == len(par["shapes"]), par
    assert deepgemm_files(env) - 1 == par["files"], par  # the folder also holds the marker
    FIGURES["cache.deepgemm --jobs"] = {**par, "workers_seconds": par["seconds"],
                                        "seconds": round(seconds, 1)}  # fmt: skip
    print(f"\ncache.deepgemm --jobs {jobs}: {seconds:.1f} s; {par['files']} files; "
          f"parallel part {par['seconds']} s")  # fmt: skip
    _save_figures()


def test_server_up_generate_metrics_status_bench_trace_down(roots, free_port):
    base, env = roots
    port = str(free_port())
    rc, out, up_s = invoke(env, "server.up", "-p", PROFILE, "--detach", "--port", port)
    assert rc == 0, out[-4000:]
    m = re.search(r"\(pid (\d+), ([\d.]+) s to ready\)", out)
    assert m, out[-2000:]
    pid, ready = int(m.group(1)), float(m.group(2))
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        r = requests.post(f"{url}/generate", json={
            "input_ids": [11, 22, 33, 44, 55],
            "sampling_params": {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True},
        }, timeout=300)  # fmt: skip
        first = time.monotonic() - t0
        assert r.status_code == 200, r.text[:300]
        assert len(r.json()["output_ids"]) == 16

        rc, out, _ = invoke(env, "server.status", "-p", PROFILE, "--json", stdout_only=True)
        assert rc == 0, out[-2000:]
        st = json.loads(out[out.index("{") :])
        assert st["status"] == "up" and st["health"] == 200 and st["pid"] == pid
        assert st["model"].endswith("Qwen3-MoE-FP8-2L")

        benches = {}
        for conc in (1, 8):
            rc, out, _ = invoke(env, "server.bench", "-p", PROFILE, "--requests", str(4 * conc),
                                "--concurrency", str(conc), "--input-len", "256",
                                "--output-len", "64", "--json", stdout_only=True)  # fmt: skip
            assert rc == 0, out[-2000:]
            s = json.loads(out[out.index("{") :])
            assert s["failed"] == 0 and s["completed"] == 4 * conc
            benches[conc] = s

        # after the load: a labelled counter or histogram appears with its first observation
        rc, out, _ = invoke(env, "obs.catalog", "--check", f"{url}/metrics", "--source", "sglang")
        assert rc == 0, out[out.find("missing core") :][:1500] + out[-300:]

        traces = base / "traces"
        rc, out, _ = invoke(env, "server.trace", "-p", PROFILE, "--seconds", "2",
                            "--output", str(traces))  # fmt: skip
        assert rc == 0, out[-2000:]
        assert any(f.name.endswith((".json.gz", ".json")) for f in traces.rglob("*"))

        rc, out, _ = invoke(env, "server.flush-cache", "-p", PROFILE)
        assert rc == 0, out[-2000:]
    finally:
        rc, out, down_s = invoke(env, "server.down", "-p", PROFILE)
    assert rc == 0, out[-2000:]
    assert group_members(pid) == []
    log = Path(env["SGLKIT_STATE_DIR"]) / "servers" / "qwen3-moe-fp8-2l.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    assert "crashed with exit code" not in text  # the stop was graceful, not a crash
    FIGURES["server.up"] = {"ready_s": ready, "up_task_s": round(up_s, 1),
                            "first_generate_s": round(first, 3), "down_s": round(down_s, 1),
                            "bench": {str(k): v for k, v in benches.items()}}  # fmt: skip
    print(f"\nserver.up: ready {ready:.1f} s; first /generate {first:.3f} s; down {down_s:.1f} s")
    for conc, s in benches.items():
        print(
            f"  bench c={conc}: {s['output_throughput']:.1f} tok/s, "
            f"TTFT p50 {s['ttft_p50_s'] * 1000:.1f} ms, TPOT p50 {s['tpot_p50_s'] * 1000:.2f} ms"
        )
    _save_figures()


def test_warm_start_skips_the_sweep_and_compiles_nothing_at_request_time(roots, free_port):
    """After cache.deepgemm, server.up turns SGLang's all-M sweep off (the marker matches);
    prompts of many lengths across the profile's context must then find every kernel in the
    cache: a file added to the DeepGEMM folder would be a shape compiled at request time."""
    _, env = roots
    port = str(free_port())
    rc, out, _ = invoke(env, "cache.deepgemm", "-p", PROFILE, "--port", port, timeout=1500)
    assert rc == 0, out[-3000:]
    before = deepgemm_files(env)
    rc, out, _ = invoke(env, "server.up", "-p", PROFILE, "--detach", "--port", port)
    assert rc == 0, out[-4000:]
    assert "precompile: off: " in out, out[-2000:]
    ready = float(re.search(r"\(pid \d+, ([\d.]+) s to ready\)", out).group(1))
    url = f"http://127.0.0.1:{port}"
    try:
        send_prompts(url)
    finally:
        rc, out, _ = invoke(env, "server.down", "-p", PROFILE)
    assert rc == 0, out[-2000:]
    after = deepgemm_files(env)
    assert after == before, f"{after - before} DeepGEMM cache files appeared at request time"
    FIGURES["warm_start"] = {"ready_s": ready, "lengths": list(PROMPT_LENGTHS), "files": before}
    print(f"\nwarm start, sweep off: ready {ready:.1f} s; {len(PROMPT_LENGTHS)} prompt lengths, "
          f"cache files {before} -> {after}")  # fmt: skip
    _save_figures()


def test_the_warm_leaves_the_start_and_requests_no_triton_kernel_to_compile(roots, free_port):
    """cache.deepgemm captures CUDA graphs, then (--triton auto, with the MoE config file the
    server reads) compiles the fused-MoE kernels of every batch size. The start after it must
    then find every Triton kernel in the cache (a file added is a kernel compiled at start), and
    prompts of many lengths every fused-MoE kernel (other kernels at new prefill lengths are not
    the fold's to warm)."""
    base, env = roots
    root = base / "cache-triton"
    warm_dg = Path(env["SGLKIT_CACHE_ROOT"]) / "deepgemm"
    if store.read_marker(warm_dg) is not None:  # reuse the DeepGEMM kernels; --force re-warms
        shutil.copytree(warm_dg, root / "deepgemm")
    env = {**env, "SGLKIT_CACHE_ROOT": str(root)}
    port = str(free_port())
    rc, out, warm_s = invoke(env, "cache.deepgemm", "-p", PROFILE, "--port", port, "--force",
                             timeout=1500)  # fmt: skip
    assert rc == 0, out[-3000:]
    fold = re.search(r"triton: (\d+) kernel variants|triton: skipped \((.*)\)", out)
    assert fold, out[-2000:]
    warmed = cache_files(root, "triton")
    assert warmed > 0, "the warm compiled no Triton kernel"
    rc, out, _ = invoke(env, "server.up", "-p", PROFILE, "--detach", "--port", port)
    assert rc == 0, out[-4000:]
    ready = float(re.search(r"\(pid \d+, ([\d.]+) s to ready\)", out).group(1))
    at_start, moe_at_start = (
        cache_files(root, "triton"),
        cache_files(root, "triton", "fused_moe_kernel"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        send_prompts(url)
        rc, out, _ = invoke(env, "server.bench", "-p", PROFILE, "--requests", "32",
                            "--concurrency", "8", "--input-len", "256", "--output-len", "16",
                            "--json", stdout_only=True)  # fmt: skip
        assert rc == 0, out[-2000:]
    finally:
        rc, out, _ = invoke(env, "server.down", "-p", PROFILE)
    assert rc == 0, out[-2000:]
    after, moe_after = cache_files(root, "triton"), cache_files(root, "triton", "fused_moe_kernel")
    FIGURES["triton_warm"] = {"warm_s": round(warm_s, 1), "fold": fold.group(0), "ready_s": ready,
                              "files": [warmed, at_start, after],
                              "fused_moe_files": [moe_at_start, moe_after]}  # fmt: skip
    print(
        f"\nwarm {warm_s:.1f} s ({fold.group(0)}); start {ready:.1f} s; Triton files "
        f"{warmed} after the warm, {at_start} after the start, {after} after the requests"
    )
    _save_figures()
    assert at_start == warmed, f"{at_start - warmed} Triton cache files appeared at start"
    if fold.group(1) is None:  # no config file for this card: SGLang's default config, unwarmed
        pytest.skip(f"the Triton step was skipped ({fold.group(2)}); start checked only")
    assert moe_after == moe_at_start, (
        f"{moe_after - moe_at_start} fused-MoE kernel files appeared at request time"
    )
