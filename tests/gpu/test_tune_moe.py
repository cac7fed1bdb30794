"""A short real tuning run on this GPU: the kit's search (sglkit.kernels.search) driving the
real measurement (sglkit.kernels.bench) of SGLang's own fused-MoE kernel.

It proves: the store file carries the exact name the installed SGLang computes on this GPU and
Triton version, SGLang's own lookup (get_moe_configs under SGLANG_MOE_CONFIG_DIR) reads it back,
and the chosen config is no slower than SGLang's default config (re-measured afterwards).
Qwen3-30B-A3B at TP=1 with two batch sizes and a small candidate list, so it takes well under a
minute on an H200. The full benchmark is benchmarks/tune_moe.py.
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = [pytest.mark.requires("gpu"), pytest.mark.requires("sglang")]

BATCHES = (1, 64)


def _candidates(default: dict) -> list[dict]:
    out = [{"num_warps": 4, "num_stages": 3, **default}]
    for bm, bn, bk, w, s in [
        (16, 64, 64, 4, 3), (16, 64, 128, 4, 4), (16, 128, 64, 4, 4), (32, 64, 64, 4, 3),
        (16, 32, 128, 4, 5), (32, 128, 64, 8, 3), (16, 128, 128, 8, 4), (64, 64, 64, 4, 3),
    ]:  # fmt: skip
        out.append(dict(BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, GROUP_SIZE_M=1,
                        num_warps=w, num_stages=s))  # fmt: skip
    return out


def test_short_tuning_run_writes_the_file_sglang_reads(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    import triton

    from sglkit import paths
    from sglkit.fsutil import atomic_write_json
    from sglkit.kernels import bench, names, search, shapes

    shape = shapes.moe_shape(
        paths.asset("profiles", "models", "Qwen3-30B-A3B", "config.json"), tp=1
    )
    measure = bench.make_measure(shape, reps=10, sets=4)
    results = search.tune(
        BATCHES,
        lambda M: _candidates(bench.default_config(shape, M)),
        measure,
        state_path=tmp_path / "state.json",
        budget=6,
        default_config=lambda M: bench.default_config(shape, M),
    )
    assert sorted(results) == list(BATCHES)

    name = names.config_file_name(shape.E, shape.N, names.device_name(), shape.dtype, None)
    store = tmp_path / "store"
    atomic_write_json(
        store / "configs" / names.triton_dir_name(triton.__version__) / name,
        search.configs_json(results),
    )

    mod = bench.sglang_config_module()
    assert mod.get_config_file_name(shape.E, shape.N, shape.dtype, None) == name
    monkeypatch.setenv("SGLANG_MOE_CONFIG_DIR", str(store))
    mod.get_moe_configs.cache_clear()
    read = mod.get_moe_configs(shape.E, shape.N, shape.dtype, 0, 0)
    assert read is not None and sorted(read) == list(BATCHES)
    stored = json.loads(next(store.rglob("*.json")).read_text())
    assert {int(k) for k in stored} == set(BATCHES)
    assert os.environ["SGLANG_MOE_CONFIG_DIR"] == str(store)

    for M in BATCHES:  # re-measured side by side, more repetitions than the search used
        tuned = measure(read[M], M, reps=40)
        default = measure(bench.default_config(shape, M), M, reps=40)
        assert tuned <= default * 1.05, (
            f"M={M}: tuned {tuned * 1e6:.1f} us, default {default * 1e6:.1f} us"
        )
