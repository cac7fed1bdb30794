"""cache.triton's pure parts: which tuned file SGLang reads, and which kernel variants to warm."""

from __future__ import annotations

import json

import pytest

from sglkit import versions
from sglkit.cache.triton_warm import load_configs, nearest_key, plan, specialization
from sglkit.errors import ConfigError
from sglkit.kernels.moe_align import max_padded_tokens
from sglkit.versions import SGLang

NEW = SGLang("0.5.23")


def _cfg(bm, bn=64, bk=64, g=1, w=4, s=3):
    return {"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": bk, "GROUP_SIZE_M": g,
            "num_warps": w, "num_stages": s}  # fmt: skip


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
    # numel < E + 1: numel * block; else numel + (E + 1) * (block - 1); rounded up to 4 from
    # SGLang 0.5.22 on, unrounded before
    assert max_padded_tokens(8, 16, 128, pad_to_4=True) == 128
    assert max_padded_tokens(1024, 64, 128, pad_to_4=True) == 1024 + 129 * 63 + 1
    assert max_padded_tokens(1024, 64, 128, pad_to_4=False) == 1024 + 129 * 63


def test_max_padded_tokens_follows_the_installed_sglang(monkeypatch):
    monkeypatch.setattr(versions, "installed", lambda dist="sglang": "0.5.16")
    assert max_padded_tokens(1024, 64, 128) == 1024 + 129 * 63
    monkeypatch.setattr(versions, "installed", lambda dist="sglang": "0.5.22")
    assert max_padded_tokens(1024, 64, 128) == 1024 + 129 * 63 + 1


def test_an_even_batch_past_16_has_em_not_divisible_by_16_on_sglang_0_5_16():
    # M=18, top-k 8, BLOCK_SIZE_M 16, 128 experts: EM = 144 + 129 * 15 = 2079; 2080 when padded
    assert specialization(18, 8, 16, 128, SGLang("0.5.16")) == ("", "D", None, None)
    assert specialization(18, 8, 16, 128, SGLang("0.5.22")) == ("D", "D", True, True)


def test_gdc_early_is_a_variant_only_from_sglang_0_5_19():
    assert specialization(100, 8, 16, 128, SGLang("0.5.18"))[2:] == (None, None)
    assert specialization(100, 8, 16, 128, SGLang("0.5.19"))[2:] == (True, False)


def test_specialization_follows_tritons_integer_rules():
    # M=1, topk=8: num_valid_tokens = 8 (not /16), EM = 8*16 = 128 (/16); GDC early both
    assert specialization(1, 8, 16, 128, NEW) == ("D", "", True, True)
    assert specialization(2, 8, 16, 128, NEW) == ("D", "D", True, True)
    assert specialization(1, 1, 16, 128, NEW) == ("D", "1", True, True)
    # 100 tokens: 800 rows for the down GEMM, past SGLang's GDC_EARLY cut (512)
    assert specialization(100, 8, 16, 128, NEW)[2:] == (True, False)


@pytest.mark.parametrize("version", ["0.5.16", "0.5.19", "0.5.23"])
def test_plan_covers_every_variant_a_batch_can_hit_once(version):
    sg = SGLang(version)
    configs = {1: _cfg(16, s=5), 64: _cfg(16, bn=128), 1024: _cfg(128, bn=256, w=8)}
    items = plan(configs, topk=8, num_experts=128, max_tokens=2048, sglang=sg)
    assert [i.M for i in items[:3]] == [1, 64, 1024]  # the file's own batch sizes first
    sigs = [(tuple(sorted(i.config.items())), i.spec) for i in items]
    assert len(sigs) == len(set(sigs))
    # brute force: every batch 1..2048 lands on a variant that the plan warms
    for M in range(1, 2049):
        key = nearest_key(list(configs), M)
        cfg = configs[key]
        spec = specialization(M, 8, cfg["BLOCK_SIZE_M"], 128, sg)
        sig = (tuple(sorted(cfg.items())), spec)
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


# ---------------------------------------------------------------- which file a profile warms


def _store_file(root, version, name, data=None):
    p = root / "configs" / version / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data or {"1": _cfg(16)}))
    return p


QWEN_H200 = "E=128,N=768,device_name=NVIDIA_H200.json"
DSV3_GH200 = "E=257,N=256,device_name=NVIDIA_GH200_480GB,dtype=fp8_w8a8,block_shape=[128, 128].json"


def test_locate_finds_the_file_sglang_would_load(tmp_path):
    from sglkit import profile as profiles
    from sglkit.cache.triton_warm import locate

    prof = profiles.load("qwen3-30b-a3b-gh200")
    (tmp_path / "configs").mkdir()
    t = locate(prof, "NVIDIA H200", "3.6.0", store_root=tmp_path, sglang_dir=None)
    assert (t.file_name, t.config_file, t.lookup) == (QWEN_H200, None, "default")
    assert t.max_tokens == 8192  # the profile's chunked_prefill_size
    older = _store_file(tmp_path, "triton_3_5_1", QWEN_H200)
    t = locate(prof, "NVIDIA H200", "3.6.0", store_root=tmp_path, sglang_dir=None)
    assert (t.config_file, t.lookup) == (older, "fallback")
    exact = _store_file(tmp_path, "triton_3_6_0", QWEN_H200)
    t = locate(prof, "NVIDIA H200", "3.6.0", max_tokens=64, store_root=tmp_path, sglang_dir=None)
    assert (t.config_file, t.lookup, t.max_tokens) == (exact, "found", 64)


def test_locate_names_the_fp8_block_file_for_deepseek(tmp_path):
    from sglkit import profile as profiles
    from sglkit.cache.triton_warm import locate

    prof = profiles.load("deepseek-v3-gh200")
    f = _store_file(tmp_path, "triton_3_6_0", DSV3_GH200)
    t = locate(prof, "NVIDIA GH200 480GB", "3.6.0", store_root=tmp_path, sglang_dir=None)
    assert (t.file_name, t.config_file) == (DSV3_GH200, f)
    # with shared-expert fusion SGLang's server routes top-k + 1 (shapes.moe_shape follows it)
    assert (t.shape.E, t.shape.topk, t.shape.dtype, tuple(t.shape.block_shape)) == (
        257, 9, "fp8_w8a8", (128, 128))  # fmt: skip


def test_locate_refuses_a_missing_config_file(tmp_path):
    from sglkit import profile as profiles
    from sglkit.cache.triton_warm import locate

    prof = profiles.load("qwen3-30b-a3b-gh200")
    with pytest.raises(ConfigError, match=r"^--config-file: .*nope.json: no such file$"):
        locate(prof, "NVIDIA H200", "3.6.0", config_file=str(tmp_path / "nope.json"))
