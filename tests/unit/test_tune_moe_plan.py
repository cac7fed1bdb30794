"""The GPU benchmark's pure parts on a CPU: it takes shapes, candidates, names and the search
from the kit (no copy of its own), its progress hook sees every batch size of run_tune, the
report renders, and store files install under SGLang's names."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from sglkit.errors import SglkitError
from sglkit.kernels import names, search
from sglkit.kernels import space as sp
from sglkit.kernels.shapes import moe_shape
from sglkit.kernels.tune import run_tune
from tests.unit.test_kernels_tune import make_profile

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tm():
    spec = importlib.util.spec_from_file_location("tune_moe", ROOT / "benchmarks/tune_moe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shapes_come_from_the_profiles_model_config(tm):
    p, ds = tm.model_shape("deepseek-v3-tp8")
    assert p.name == "deepseek-v3-gh200"
    # E and top-k + 1: the fused shared expert (SGLang 0.5.23 deepseek_v2.py)
    assert (ds.E, ds.N, ds.K, ds.topk, ds.dtype, ds.block_shape) == (
        257, 256, 7168, 9, "fp8_w8a8", (128, 128)
    )  # fmt: skip
    assert ds == moe_shape(ROOT / "profiles/models/DeepSeek-V3/config.json", tp=8)
    _, qw = tm.model_shape("qwen3-30b-a3b-tp1")
    assert (qw.E, qw.N, qw.K, qw.topk, qw.dtype, qw.block_shape) == (
        128, 768, 2048, 8, None, None
    )  # fmt: skip
    with pytest.raises(SystemExit, match="--models"):
        tm.model_shape("nope")


def test_no_private_copy_of_the_search_space_or_names(tm):
    for dup in ("search_one", "exhaustive_one", "full_space", "fits", "_cap_bm", "_neighbours",
                "model_dims", "file_name", "device_name"):  # fmt: skip
        assert not hasattr(tm, dup), dup


@pytest.mark.parametrize("M", [1, 16, 4096])
def test_candidates_are_the_kits_pruned_space(tm, M):
    _, shape = tm.model_shape("deepseek-v3-tp8")
    cands = tm.candidates(shape, M)
    assert cands == sp.prune(sp.full_space(), shape, M=M).kept
    assert 0 < len(cands) < 1920
    for c in cands:
        assert sp.why_not(c, shape, shape.dtype, shape.block_shape, M, sp.Limits()) is None
        assert 128 % c["BLOCK_SIZE_K"] == 0  # fp8 block [128, 128]
        assert c["BLOCK_SIZE_M"] <= max(16, sp.next_pow2(M))


def test_parse_exhaustive(tm):
    models = ["deepseek-v3-tp8", "qwen3-30b-a3b-tp1"]
    assert tm.parse_exhaustive("qwen3-30b-a3b-tp1:16,deepseek-v3-tp8:1", models) == [
        ("qwen3-30b-a3b-tp1", 16),
        ("deepseek-v3-tp8", 1),
    ]
    for bad in ("deepseek-v3-tp8", "deepseek-v3-tp8:x", "deepseek-v3-tp8:0", "other:1"):
        with pytest.raises(SystemExit, match="--exhaustive-at"):
            tm.parse_exhaustive(bad, models)


def _cost(c, M):
    """A deterministic stand-in for the GPU measure, optimum BLOCK_SIZE_N 64, 8 warps."""
    return 1e-5 * (
        1
        + 0.5 * abs(math.log2(c["BLOCK_SIZE_N"]) - 6)
        + 0.2 * (c["num_warps"] != 8)
        + 0.1 * abs(c["num_stages"] - 3)
        + 0.05 * (c["GROUP_SIZE_M"] != 16)
        + 0.3 * abs(math.log2(c["BLOCK_SIZE_K"]) - 7)
    )


def test_run_tune_reports_every_batch_size_to_the_benchmark_hook(tmp_path, tm):
    p = make_profile(tmp_path)
    _, shape = tm.model_shape("qwen3-30b-a3b-tp1")
    prefetched: list[tuple[int, int]] = []

    def measure(c, M, reps=20):
        return _cost(c, M)

    measure.prefetch = lambda configs, M: prefetched.append((M, len(configs)))
    events = []
    out, _, res = run_tune(
        p, shape, [1, 16, 256], device="NVIDIA H200", triton_version="3.6.0", measure=measure,
        on_progress=lambda ev, info: events.append((ev, info.get("M"))),
        store_root=tmp_path / "store",
    )  # fmt: skip
    assert out.is_relative_to(tmp_path / "store")
    assert {m for ev, m in events if ev == "done"} == {1, 16, 256}
    assert {m for m, _ in prefetched} == {1, 16, 256}  # each round compiled ahead, per M
    assert out.name == names.config_file_name(128, 768, "NVIDIA_H200", None, None)
    for M, r in res.items():  # near the stand-in's optimum among the pruned candidates
        best = min(_cost(c, M) for c in tm.candidates(shape, M))
        assert best <= r.time <= 1.06 * best  # at M=1 the budget ends one GROUP_SIZE_M step off
        assert r.evaluations < r.candidates


def test_exhaustive_prefetches_all_candidates_once(tm):
    _, shape = tm.model_shape("qwen3-30b-a3b-tp1")
    cands = tm.candidates(shape, 16)
    seen = []

    def measure(c, M, reps=20):
        return _cost(c, M)

    measure.prefetch = lambda configs, M: seen.append(len(configs))
    r = search.exhaustive(16, cands, measure)
    assert seen == [len(cands)]
    assert r.time == min(_cost(c, 16) for c in cands)


def test_markdown_renders_a_partial_report(tm):
    rep = {"device": "NVIDIA_H200", "triton": "3.6.0", "torch": "2.11", "sglang": "0.5.23",
           "copy_bw_Bps": 4.0e12, "pool_workers": 16, "pool_start_s": 17.0,
           "models": {"m": {"shape": {"E": 128, "N": 768, "K": 2048, "topk": 8, "dtype": None,
                                      "block_shape": None},
                            "file": "E=128,N=768,device_name=NVIDIA_H200.json", "store": {},
                            "exhaustive": [], "tune_wall_s": None,
                            "rows": [{"M": 1, "default_us": None, "tuned_us": 40.0,
                                      "speedup": None, "frac_copy_layer": 0.5,
                                      "frac_copy_gemms": None, "evaluations": 30,
                                      "candidates": 384, "search_s": 3.2}]}}}  # fmt: skip
    md = tm.markdown(rep)
    assert "| 1 |  | 40.0 |  | 0.50 |  | 30/384 | 3.2 |" in md
    assert "start-up 17.0 s" in md


def test_install_store_writes_sglang_names(tm, tmp_path):
    results = tmp_path / "run"
    results.mkdir()
    name = "E=128,N=768,device_name=NVIDIA_H200.json"
    report = {"triton": "3.6.0", "models": {"qwen3-30b-a3b-tp1": {"file": name}}}
    (results / "report.json").write_text(json.dumps(report))
    cfg = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=64, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4,
               num_stages=3)  # fmt: skip
    (results / "store_qwen3-30b-a3b-tp1.json").write_text(json.dumps({"1": cfg, "64": cfg}))
    store = tmp_path / "kernels"
    out = store / "configs" / "triton_3_6_0" / name
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps({"24": cfg}))  # an older run's entry: replaced, not merged
    assert tm.install_store(results, store) == 0
    assert json.loads(out.read_text()) == {"1": cfg, "64": cfg}
    assert not [p for p in store.rglob("*") if p.is_file() and p != out]

    (results / "store_qwen3-30b-a3b-tp1.json").write_text(json.dumps({"one": cfg}))
    with pytest.raises(SystemExit, match="--install-store"):
        tm.install_store(results, store)
    assert json.loads(out.read_text()) == {"1": cfg, "64": cfg}  # the old file is intact


def test_a_batch_size_that_fails_everywhere_keeps_the_others_and_says_why(tmp_path, tm):
    p = make_profile(tmp_path)
    _, shape = tm.model_shape("qwen3-30b-a3b-tp1")
    broken = {"at": 256}

    def measure(c, M, reps=20):  # as bench.make_measure does: inf, and the reason kept
        if broken["at"] == M:
            measure.last_failure = "OutOfMemoryError: CUDA out of memory"
            return math.inf
        return _cost(c, M)

    measure.last_failure = None
    kw = dict(device="NVIDIA H200", triton_version="3.6.0", measure=measure,
              store_root=tmp_path / "store")  # fmt: skip
    with pytest.raises(SglkitError) as err:
        run_tune(p, shape, [1, 16, 256], **kw)
    msg = str(err.value)
    assert "\n" not in msg
    assert "batch size(s) 256" in msg and "OutOfMemoryError" in msg and "--resume" in msg
    assert set(err.value.results) == {1, 16}  # for a caller that goes on (tune_moe.py)
    out = tmp_path / "store" / "configs" / "triton_3_6_0"
    (written,) = out.iterdir()
    assert set(json.loads(written.read_text())) == {"1", "16"}  # nothing tuned was lost
    broken["at"] = None  # the cause is gone: --resume tunes only what failed
    _, _, res = run_tune(p, shape, [1, 16, 256], resume=True, **kw)
    assert set(res) == {1, 16, 256}
    assert set(json.loads(written.read_text())) == {"1", "16", "256"}
