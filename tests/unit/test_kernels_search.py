"""The tuner's search on a deterministic synthetic cost with a known optimum per batch size.

The cost is a product of per-field penalties around an optimum that moves with M, plus a small
interaction term, so the search must locate the optimum rather than read it off one field.
"""

from __future__ import annotations

import functools
import json
import math

import pytest

from sglkit.errors import ConfigError
from sglkit.kernels import search as se
from sglkit.kernels import space as sp
from sglkit.kernels.shapes import moe_shape
from sglkit.paths import asset

SHAPE = moe_shape(asset("profiles", "models", "DeepSeek-V3", "config.json"), tp=8)
BATCH_SIZES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096]
WEIGHTS = {
    "BLOCK_SIZE_M": 0.5,
    "BLOCK_SIZE_N": 0.35,
    "BLOCK_SIZE_K": 0.3,
    "GROUP_SIZE_M": 0.05,
    "num_warps": 0.15,
    "num_stages": 0.08,
}


def optimum(M: int) -> dict[str, int]:
    return {
        "BLOCK_SIZE_M": 16 if M <= 512 else 64,
        "BLOCK_SIZE_N": 128 if M < 256 else 64,
        "BLOCK_SIZE_K": 128,
        "GROUP_SIZE_M": 1 if M < 64 else 32,
        "num_warps": 4,
        "num_stages": 4 if M < 100 else 3,
    }


@functools.cache
def _candidates(M: int) -> tuple[dict[str, int], ...]:
    return tuple(sp.prune(sp.full_space(), SHAPE, M=M).kept)


def candidates(M: int) -> list[dict[str, int]]:
    return [dict(c) for c in _candidates(M)]


class Cost:
    """Deterministic seconds per (config, M); records calls; refuses pruned configs."""

    def __init__(self, fail_after: int | None = None, broken: set | None = None):
        self.calls: list[tuple[int, tuple]] = []
        self.fail_after = fail_after
        self.broken = broken or set()
        self.allowed = {M: {sp.key(c) for c in candidates(M)} for M in BATCH_SIZES}

    def __call__(self, cfg: dict, M: int) -> float:
        k = sp.key(cfg)
        assert k in self.allowed[M], f"measured a pruned config {cfg} at M={M}"
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # an interruption: not a config failure
        self.calls.append((M, k))
        if k in self.broken:
            raise RuntimeError("out of resources")  # a config that fails to compile
        o = optimum(M)
        c = 1e-4 * (1 + M / 512)
        for f, w in WEIGHTS.items():
            d = abs(sp.GRID[f].index(cfg[f]) - sp.GRID[f].index(o[f]))
            c *= 1 + w * d + 0.02 * d * d
        if cfg["BLOCK_SIZE_N"] >= 128 and cfg["num_warps"] == 8:
            c *= 0.99
        return c

    def best(self, M: int) -> tuple[float, tuple]:
        saved = list(self.calls)
        out = min((self(c, M), sp.key(c)) for c in candidates(M))
        self.calls = saved
        return out


def default(M: int) -> dict[str, int]:
    return {
        "BLOCK_SIZE_M": 64,
        "BLOCK_SIZE_N": 128,
        "BLOCK_SIZE_K": 128,
        "GROUP_SIZE_M": 32,
        "num_warps": 4,
        "num_stages": 3,
    }


def test_full_space_is_sglangs_1920():
    full = sp.full_space()
    assert len(full) == 1920
    assert len({sp.key(c) for c in full}) == 1920


def test_the_small_batch_grid_adds_what_sglangs_grid_lacks_under_the_same_rules():
    grid = {sp.key(c) for c in sp.candidates(SHAPE, 1)}
    extra = [c for c in sp.prune(sp.small_m_space(), SHAPE, M=1).kept if sp.key(c) not in grid]
    assert extra
    assert {c["BLOCK_SIZE_N"] for c in extra} >= {16}  # narrower than SGLang's narrowest
    assert {c["num_warps"] for c in extra} >= {1, 2}
    assert {c["num_stages"] for c in extra} >= {6, 7}
    assert all(c["BLOCK_SIZE_M"] == 16 for c in extra)
    for c in extra:  # the same rules hold: fp8 block [128, 128], shared memory, registers
        assert sp.why_not(c, SHAPE, SHAPE.dtype, SHAPE.block_shape, 1, sp.Limits()) is None
    # the tuner searches SGLang's grid alone (the small-batch grid never won on the H100)
    assert sp.candidates(SHAPE, 1) == sp.prune(sp.full_space(), SHAPE, M=1).kept


def test_prune_rules_and_reasons():
    p = sp.prune(sp.full_space(), SHAPE, M=1)
    counts = p.counts()
    assert {"block_k", "block_m", "registers", "smem"} <= set(counts)
    assert len(p.kept) + sum(counts.values()) == 1920
    assert all(128 % c["BLOCK_SIZE_K"] == 0 for c in p.kept)  # block quant [128, 128]
    assert all(c["BLOCK_SIZE_M"] == 16 for c in p.kept)  # M=1: no expert gets more than 1 token
    assert all(sp.smem_bytes(c, "fp8_w8a8", [128, 128]) <= 227 * 1024 for c in p.kept)
    big = {
        "BLOCK_SIZE_M": 256,
        "BLOCK_SIZE_N": 256,
        "BLOCK_SIZE_K": 128,
        "GROUP_SIZE_M": 1,
        "num_warps": 4,
        "num_stages": 5,
    }
    assert p.reason(big).startswith("smem")
    bk256 = dict(big, BLOCK_SIZE_K=256)
    assert p.reason(bk256).startswith("block_k")
    # bf16: two bytes per element, a smaller smem budget in configs
    bf16 = sp.prune(sp.full_space(), None, dtype=None, M=4096)
    wide = dict(big, BLOCK_SIZE_M=128, num_warps=8)
    assert sp.key(dict(wide, BLOCK_SIZE_K=64, num_stages=2)) in {sp.key(c) for c in bf16.kept}
    assert bf16.reason(dict(wide, BLOCK_SIZE_K=128, num_stages=4)).startswith("smem")
    assert bf16.reason(dict(big, BLOCK_SIZE_K=64, num_stages=2)).startswith(
        "registers"
    )  # 256x256 fp32 accumulator on 128 threads


def test_search_finds_the_known_optimum_with_a_fraction_of_the_measurements(tmp_path):
    cost = Cost()
    res = se.tune(
        BATCH_SIZES, candidates, cost, state_path=tmp_path / "s.json", default_config=default
    )
    assert sorted(res) == BATCH_SIZES
    total_candidates = 0
    for M, r in res.items():
        best_t, best_k = cost.best(M)
        assert sp.key(r.config) == best_k, f"M={M}: picked {r.config}"
        assert r.time == pytest.approx(best_t)
        assert r.default_time is not None and r.default_time >= r.time
        assert r.evaluations <= se.default_budget(r.candidates)
        total_candidates += r.candidates
    distinct = len(set(cost.calls))
    assert distinct < 0.15 * total_candidates
    on_disk = json.loads((tmp_path / "s.json").read_text())
    assert sorted(int(m) for m in on_disk["done"]) == BATCH_SIZES
    assert se.configs_json(res)["4096"] == optimum(4096)


def test_search_is_deterministic(tmp_path):
    a = se.tune(BATCH_SIZES[:6], candidates, Cost(), state_path=tmp_path / "a.json")
    b = se.tune(BATCH_SIZES[:6], candidates, Cost(), state_path=tmp_path / "b.json")
    assert {m: r.config for m, r in a.items()} == {m: r.config for m, r in b.items()}


def test_resume_after_an_interruption_does_not_redo_finished_work(tmp_path):
    state = tmp_path / "s.json"
    reference = se.tune(BATCH_SIZES, candidates, Cost(), state_path=tmp_path / "ref.json")
    first = Cost(fail_after=700)
    with pytest.raises(KeyboardInterrupt):
        se.tune(BATCH_SIZES, candidates, first, state_path=state)
    done = {int(m) for m in json.loads(state.read_text())["done"]}
    assert done and done != set(BATCH_SIZES)
    partial = set(json.loads(state.read_text())["memo"]) - {str(m) for m in done}
    assert partial, "the interrupted batch size kept its measurements"
    second = Cost()
    resumed = se.tune(BATCH_SIZES, candidates, second, state_path=state, resume=True)
    assert not any(M in done for M, _ in second.calls)  # finished batch sizes untouched
    assert len(first.calls) + len(second.calls) == sum(r.measurements for r in reference.values())
    assert {m: r.config for m, r in resumed.items()} == {m: r.config for m, r in reference.items()}


def test_resume_refuses_another_jobs_state(tmp_path):
    state = tmp_path / "s.json"
    se.tune([1, 2], candidates, Cost(), state_path=state, identity={"file": "a.json"})
    with pytest.raises(ConfigError, match="--resume"):
        se.tune(
            [1, 2], candidates, Cost(), state_path=state, resume=True, identity={"file": "b.json"}
        )


def test_failing_configs_are_dropped_and_never_chosen(tmp_path):
    M = 4096
    broken = {sp.key(optimum(M))}
    res = se.tune([M], candidates, Cost(broken=broken), state_path=tmp_path / "s.json")
    assert sp.key(res[M].config) not in broken
    assert math.isfinite(res[M].time)


def test_budget_caps_the_measured_configs(tmp_path):
    cost = Cost()
    res = se.tune([4096], candidates, cost, state_path=tmp_path / "s.json", budget=30)
    assert res[4096].evaluations <= 30
    assert len({k for _, k in cost.calls}) <= 30


def test_exhaustive_is_the_reference(tmp_path):
    cost = Cost()
    r = se.exhaustive(64, candidates(64), cost, default=default(64))
    assert r.method == "exhaustive" and r.evaluations == len(candidates(64))
    assert sp.key(r.config) == cost.best(64)[1]


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(ConfigError, match="--batch-sizes"):
        se.tune([0], candidates, Cost(), state_path=tmp_path / "s.json")
    with pytest.raises(ConfigError, match="--budget"):
        se.tune([1], candidates, Cost(), state_path=tmp_path / "s.json", budget=0)


def test_waves_and_seeds():
    w = se.waves(BATCH_SIZES, 3)
    assert w[0] == [1, 8, 32, 96, 512, 2048, 4096]
    assert sorted(w[0] + w[1]) == BATCH_SIZES
    finished = {
        1: {"result": {"config": optimum(1)}, "top": [optimum(1)]},
        8: {"result": {"config": optimum(8)}, "top": []},
    }
    assert se.seeds_for(4, finished) == [optimum(1), optimum(8)]


def test_dims_rule_keeps_tiles_that_fit_one_of_the_two_gemms():
    qwen_tp8 = moe_shape(asset("profiles", "models", "Qwen3-30B-A3B", "config.json"), tp=8)
    assert (qwen_tp8.K, qwen_tp8.N) == (2048, 96)
    cfg = {
        "BLOCK_SIZE_M": 16,
        "BLOCK_SIZE_N": 64,
        "BLOCK_SIZE_K": 256,
        "GROUP_SIZE_M": 1,
        "num_warps": 4,
        "num_stages": 2,
    }
    # w2's K is 96, but w1's K is 2048: one config serves both, so BK=256 stays
    assert sp.why_not(cfg, qwen_tp8, None, None, 1, sp.Limits()) is None
    tiny = sp.prune([cfg], type("S", (), {"K": 64, "N": 32})(), dtype=None, M=1)
    assert tiny.reason(cfg).startswith("dims")
