"""cache.triton's pure parts: which tuned file SGLang reads, and which kernel variants to warm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglkit.errors import ConfigError
from sglkit.gpu.triton_warm import (
    find_config_file,
    load_configs,
    max_padded_tokens,
    nearest_key,
    plan,
    specialization,
    version_dir,
)

NAME = "E=128,N=768,device_name=NVIDIA_H200.json"


def _cfg(bm, bn=64, bk=64, g=1, w=4, s=3):
    return {"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": bk, "GROUP_SIZE_M": g,
            "num_warps": w, "num_stages": s}  # fmt: skip


def _write(root: Path, version: str, name: str = NAME, data=None) -> Path:
    p = root / "configs" / version / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data or {"1": _cfg(16)}))
    return p


def test_the_exact_triton_folder_wins(tmp_path):
    _write(tmp_path, "triton_3_5_1")
    exact = _write(tmp_path, "triton_3_6_0")
    assert find_config_file(tmp_path, NAME, "3.6.0") == exact


def test_else_the_newest_other_triton_folder(tmp_path):
    _write(tmp_path, "triton_3_2_0")
    newer = _write(tmp_path, "triton_3_10_0")  # numeric order, not text order
    _write(tmp_path, "triton_3_5_1", name="E=1,N=1,device_name=X.json")
    assert find_config_file(tmp_path, NAME, "3.6.0") == newer
    assert find_config_file(tmp_path, "E=9,N=9,device_name=X.json", "3.6.0") is None
    assert find_config_file(tmp_path / "absent", NAME, "3.6.0") is None


def test_version_dir():
    assert version_dir("3.6.0") == "triton_3_6_0"
    assert version_dir("3.6.0+git1234") == "triton_3_6_0"


def test_load_configs_names_the_bad_entry(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"1": ')
    with pytest.raises(ConfigError, match=r"c.json: line 1: invalid JSON"):
        load_configs(p)
    p.write_text(json.dumps({"1": _cfg(16), "x": _cfg(16)}))
    with pytest.raises(ConfigError, match=r"key 'x': expected a batch size"):
        load_configs(p)
    bad = _cfg(16)
    del bad["BLOCK_SIZE_K"]
    p.write_text(json.dumps({"8": bad}))
    with pytest.raises(ConfigError, match=r"8\.BLOCK_SIZE_K: missing"):
        load_configs(p)
    p.write_text(json.dumps({"8": {**_cfg(16), "num_warps": "4"}}))
    with pytest.raises(ConfigError, match=r"8\.num_warps: expected an integer"):
        load_configs(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_configs(tmp_path / "missing.json")


def test_nearest_key_is_sglangs_choice():
    keys = [1, 2, 4, 8, 16, 64]
    assert nearest_key(keys, 3) == 2  # tie between 2 and 4: the first in file order
    assert nearest_key(keys, 40) == 16  # 24 away from both 16 and 64: the first wins
    assert nearest_key(keys, 41) == 64
    assert nearest_key(keys, 5000) == 64


def test_max_padded_tokens_matches_sglangs_allocation():
    # numel < E + 1: numel * block; else numel + (E + 1) * (block - 1); rounded up to 4
    assert max_padded_tokens(8, 16, 128) == 128
    assert max_padded_tokens(1024, 64, 128) == 1024 + 129 * 63 + 1
    assert max_padded_tokens(1024, 64, 128) % 4 == 0


def test_specialization_follows_tritons_integer_rules():
    # M=1, topk=8: num_valid_tokens = 8 (not /16), EM = 8*16 = 128 (/16); GDC early both
    assert specialization(1, 8, 16, 128) == ("D", "", True, True)
    assert specialization(2, 8, 16, 128) == ("D", "D", True, True)
    assert specialization(1, 1, 16, 128) == ("D", "1", True, True)
    # 100 tokens: 800 rows for the down GEMM, past SGLang's GDC_EARLY cut (512)
    assert specialization(100, 8, 16, 128)[2:] == (True, False)


def test_plan_covers_every_variant_a_batch_can_hit_once():
    configs = {1: _cfg(16, s=5), 64: _cfg(16, bn=128), 1024: _cfg(128, bn=256, w=8)}
    items = plan(configs, topk=8, num_experts=128, max_tokens=2048)
    assert [i.M for i in items[:3]] == [1, 64, 1024]  # the file's own batch sizes first
    sigs = [(tuple(sorted(i.config.items())), i.spec) for i in items]
    assert len(sigs) == len(set(sigs))
    # brute force: every batch 1..2048 lands on a variant that the plan warms
    for M in range(1, 2049):
        key = nearest_key(list(configs), M)
        cfg = configs[key]
        sig = (tuple(sorted(cfg.items())), specialization(M, 8, cfg["BLOCK_SIZE_M"], 128))
        assert sig in sigs, M
    # and each planned M really uses the config the plan says
    for i in items:
        assert configs[nearest_key(list(configs), i.M)] == i.config


def test_plan_respects_max_tokens():
    configs = {1: _cfg(16), 4096: _cfg(64)}
    assert all(i.M <= 256 for i in plan(configs, 8, 128, 256))
    assert {i.key for i in plan(configs, 8, 128, 256)} == {1}


def test_keys_only_warms_each_distinct_config_once_at_its_key():
    configs = {1: _cfg(16), 2: _cfg(16), 64: _cfg(16, bn=128), 4096: _cfg(128, bn=256)}
    items = plan(configs, 8, 128, max_tokens=16, keys_only=True)
    assert [(i.M, i.key) for i in items] == [(1, 1), (2, 2), (64, 64), (4096, 4096)]
    same = {1: _cfg(16), 8: _cfg(16)}  # same config; M=1 and M=8 differ in specialization
    assert [i.M for i in plan(same, 8, 128, 16, keys_only=True)] == [1, 8]
