"""The pure parts of the GPU tuner's benchmark (no torch, no GPU): shapes, candidate space,
store names and installation, and the search driver on a deterministic cost."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from sglkit.kernels import names
from sglkit.kernels.moe_kernel import MoEDims, max_padded_tokens

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tm():
    spec = importlib.util.spec_from_file_location("tune_moe", ROOT / "benchmarks/tune_moe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_model_dims_from_config_json(tm):
    ds = tm.model_dims("deepseek-v3-tp8")
    assert (ds.E, ds.N, ds.K, ds.topk, ds.dtype, ds.block_shape) == (
        257, 256, 7168, 9, "fp8_w8a8", (128, 128)
    )  # fmt: skip
    qw = tm.model_dims("qwen3-30b-a3b-tp1")
    assert (qw.E, qw.N, qw.K, qw.topk, qw.dtype, qw.block_shape) == (
        128,
        768,
        2048,
        8,
        "bf16",
        None,
    )
    with pytest.raises(SystemExit, match="--models"):
        tm.model_dims("nope")


@pytest.mark.parametrize("model", ["deepseek-v3-tp8", "qwen3-30b-a3b-tp1"])
def test_file_name_agrees_with_the_kits_names(tm, model):
    d = tm.model_dims(model)
    ours = tm.file_name(d, "NVIDIA_H200")
    kit = names.config_file_name(d.E, d.N, "NVIDIA H200", d.config_dtype, d.block_shape)
    assert ours == kit


def test_space_respects_the_limits(tm):
    for model in ("deepseek-v3-tp8", "qwen3-30b-a3b-tp1"):
        d = tm.model_dims(model)
        space = tm.full_space(d)
        elem = 1 if d.fp8 else 2
        assert 0 < len(space) < 1920
        for c in space:
            bm, bn, bk = c["BLOCK_SIZE_M"], c["BLOCK_SIZE_N"], c["BLOCK_SIZE_K"]
            assert c["num_stages"] * (bm * bk + bk * bn) * elem <= tm.SMEM_LIMIT
            assert bm * bn // (32 * c["num_warps"]) <= 128
            if d.block_shape:
                assert d.block_shape[1] % bk == 0
        assert len({tm._k(c) for c in space}) == len(space)
    fp8 = tm.full_space(tm.model_dims("deepseek-v3-tp8"))
    assert not [c for c in fp8 if c["BLOCK_SIZE_K"] == 256]


def test_sorted_ids_length_is_sglangs():
    # SGLang 0.5.23 moe_align_block_size: numel * bs below E + 1 pairs, else numel + (E+1)(bs-1),
    # rounded up to a multiple of 4
    assert max_padded_tokens(9, 16, 257) == 144
    assert max_padded_tokens(512, 16, 257) == 512 + 258 * 15 + 2
    assert max_padded_tokens(258, 64, 257) % 4 == 0


def test_weight_bytes_per_expert():
    d = MoEDims(257, 256, 7168, 9, "fp8_w8a8", (128, 128))
    scales = 4 * (math.ceil(512 / 128) * 56 + 56 * 2)
    assert d.weight_bytes_per_expert() == 3 * 256 * 7168 + scales
    assert MoEDims(128, 768, 2048, 8).weight_bytes_per_expert() == 3 * 768 * 2048 * 2


def _cost(c, M):
    """A smooth cost with a unique optimum per M (BLOCK_SIZE_M 16 small, 64 large)."""
    want_m = 16 if M < 256 else 64
    return (
        1.0
        + abs(math.log2(c["BLOCK_SIZE_M"] / want_m))
        + 0.5 * abs(math.log2(c["BLOCK_SIZE_N"] / 64))
        + 0.4 * abs(math.log2(c["BLOCK_SIZE_K"] / 128))
        + 0.3 * abs(c["num_stages"] - 3)
        + 0.2 * (c["num_warps"] == 8)
        + 0.1 * (c["GROUP_SIZE_M"] != 16)
    )


@pytest.mark.parametrize("M", [1, 16, 1024])
def test_search_finds_the_optimum_of_a_smooth_cost(tm, M):
    d = tm.model_dims("deepseek-v3-tp8")
    space = tm.full_space(d)
    calls = []

    def measure(c, m, reps=20):
        calls.append(tm._k(c))
        return _cost(c, m)

    measure.prefetch = lambda configs, m: 0
    _best, t, evals = tm.search_one(measure, space, M, d, [], seed=M)
    cap = tm._cap_bm(d, M)
    optimum = min(_cost(c, M) for c in space if c["BLOCK_SIZE_M"] <= cap)
    assert t == pytest.approx(optimum)
    assert evals == len(calls) < len(space) // 5
    assert all(k in {tm._k(c) for c in space} for k in calls)  # never outside the pruned space


def test_search_drops_configs_that_fail(tm):
    d = tm.model_dims("qwen3-30b-a3b-tp1")
    space = tm.full_space(d)

    def measure(c, m, reps=20):
        return math.inf if c["num_warps"] == 4 else _cost(c, m)

    measure.prefetch = lambda configs, m: 0
    best, t, _ = tm.search_one(measure, space, 16, d, [], seed=1)
    assert best["num_warps"] == 8 and math.isfinite(t)


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
    assert tm.install_store(results, store) == 0
    out = store / "configs" / "triton_3_6_0" / name
    assert json.loads(out.read_text()) == {"1": cfg, "64": cfg}
    assert not list(store.rglob("*.tmp"))

    (results / "store_qwen3-30b-a3b-tp1.json").write_text(json.dumps({"one": cfg}))
    with pytest.raises(SystemExit, match="--install-store"):
        tm.install_store(results, store)
    assert json.loads(out.read_text()) == {"1": cfg, "64": cfg}  # the old file is intact
