"""kernels.tune's plumbing on a CPU: the synthetic cost stands in for the GPU measure (which
cannot run here); the store file, its name, the report and --resume are real."""

from __future__ import annotations

import json

from sglkit import profile as profiles
from sglkit.kernels import names, search, store
from sglkit.kernels import space as sp
from sglkit.kernels.target import profile_shape
from sglkit.kernels.tune import run_tune
from sglkit.paths import asset

BS = [1, 16, 256]
WEIGHTS = {
    "BLOCK_SIZE_M": 0.5,
    "BLOCK_SIZE_N": 0.35,
    "BLOCK_SIZE_K": 0.3,
    "GROUP_SIZE_M": 0.05,
    "num_warps": 0.15,
    "num_stages": 0.08,
}


def stand_in_cost(cfg: dict, M: int) -> float:
    """A stand-in for bench.make_measure: deterministic, optimum at BLOCK_SIZE_N=64, 8 warps."""
    opt = {
        "BLOCK_SIZE_M": 16 if M < 64 else 64,
        "BLOCK_SIZE_N": 64,
        "BLOCK_SIZE_K": 64,
        "GROUP_SIZE_M": 16,
        "num_warps": 8,
        "num_stages": 3,
    }
    c = 1e-5
    for f, w in WEIGHTS.items():
        c *= 1 + w * abs(sp.GRID[f].index(cfg[f]) - sp.GRID[f].index(opt[f]))
    return c


def sglang_like_default(M: int) -> dict:
    # SGLang's bf16 default has no num_warps/num_stages: it is measured, never a candidate
    return {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 8}


def make_profile(tmp_path) -> profiles.Profile:
    y = tmp_path / "p.yaml"
    y.write_text(
        "name: t\nmodel:\n  path: Qwen/Qwen3-30B-A3B\n"
        f"  config: {asset('profiles', 'models', 'Qwen3-30B-A3B', 'config.json')}\n"
        f"server:\n  tp: 1\ncache:\n  root: {tmp_path / 'cache'}\n"
    )
    (tmp_path / "store" / "configs").mkdir(parents=True)
    return profiles.load(y)


def test_run_tune_writes_the_store_file_sglang_looks_up(tmp_path, capsys):
    p = make_profile(tmp_path)
    shape = profile_shape(p)
    calls = []

    def measure(cfg, M):
        calls.append(M)
        if "num_warps" not in cfg:  # the default config (a stand-in time for it)
            return 2e-5
        return stand_in_cost(cfg, M)

    out, report, results = run_tune(
        p, shape, BS, device="NVIDIA H200", triton_version="3.4.0", measure=measure,
        default_config=sglang_like_default, sglang_version="0.5.23", store_root=tmp_path / "store",
    )  # fmt: skip
    assert (
        out
        == tmp_path
        / "store"
        / "configs"
        / "triton_3_4_0"
        / "E=128,N=768,device_name=NVIDIA_H200.json"
    )
    data = json.loads(out.read_text())
    assert list(data) == ["1", "16", "256"]
    assert data["256"]["BLOCK_SIZE_N"] == 64 and data["256"]["num_warps"] == 8
    assert store.validate(tmp_path / "store") == (1, [])
    lk = store.lookup(out.name, "3.4.0", names.rule_for("0.5.23"), tmp_path / "store")
    assert lk.status == "found" and lk.batch_sizes == BS
    md = report.read_text()
    assert "| 256 |" in md and "tuning wall time" in md
    assert md in capsys.readouterr().out
    for M, r in results.items():
        assert r.default_time == 2e-5 and r.time <= r.default_time, M

    # --resume over a finished run: nothing is measured again, the file is unchanged
    calls.clear()
    run_tune(
        p, shape, BS, device="NVIDIA H200", triton_version="3.4.0", measure=measure,
        default_config=sglang_like_default, sglang_version="0.5.23", resume=True,
        store_root=tmp_path / "store",
    )  # fmt: skip
    assert calls == []
    assert json.loads(out.read_text()) == data


def test_a_tuned_subset_merges_into_an_existing_file(tmp_path):
    p = make_profile(tmp_path)
    shape = profile_shape(p)
    kw = {
        "device": "NVIDIA H200",
        "triton_version": "3.4.0",
        "measure": stand_in_cost,
        "sglang_version": "0.5.23",
        "store_root": tmp_path / "store",
    }
    out, _, _ = run_tune(p, shape, [1, 4096], **kw)
    run_tune(p, shape, [64], **kw)
    assert list(json.loads(out.read_text())) == ["1", "64", "4096"]


def test_prefetch_gets_only_unmeasured_candidates():
    cands = sp.prune(sp.full_space(), None, M=256).kept
    allowed = {sp.key(c) for c in cands}
    prefetched, measured = [], []

    def measure(cfg, M):
        measured.append(sp.key(cfg))
        return stand_in_cost(cfg, M)

    measure.prefetch = lambda cfgs, M: prefetched.extend(sp.key(c) for c in cfgs)
    search.search_one(256, cands, measure, budget=40)
    assert prefetched and set(prefetched) <= allowed
    assert set(measured) <= set(prefetched)
