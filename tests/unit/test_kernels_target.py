"""A profile's kernel target, derived once (sglkit.kernels.target), and the callers that agree.

`kernels.check`, `kernels.tune` (run_tune) and `cache.triton` (triton_warm.locate) all name the
file through kernel_target; these tests pin what it gives and that the callers agree with it.
"""

from __future__ import annotations

import json

import pytest
from invoke import Context

from sglkit import profile as profiles
from sglkit.errors import ConfigError
from sglkit.kernels.target import kernel_target, profile_shape

QWEN_H200 = "E=128,N=768,device_name=NVIDIA_H200.json"
DSV3_GH200 = "E=257,N=256,device_name=NVIDIA_GH200_480GB,dtype=fp8_w8a8,block_shape=[128, 128].json"


def test_the_target_is_shape_name_and_store_path(tmp_path):
    p = profiles.load("qwen3-30b-a3b-gh200")
    kt = kernel_target(p, "NVIDIA H200", "3.6.0", sglang_version="0.5.23", store_root=tmp_path)
    assert (kt.shape.E, kt.shape.N, kt.shape.tp, kt.shape.ep) == (128, 768, 1, 1)
    assert kt.file_name == QWEN_H200
    assert kt.path == tmp_path / "configs" / "triton_3_6_0" / QWEN_H200
    # SGLang 0.5.23 also looks up a separately tuned down projection
    assert kt.file_names() == [QWEN_H200, QWEN_H200.replace(".json", "_down.json")]
    old = kernel_target(p, "NVIDIA H200", "3.6.0", sglang_version="0.5.3", store_root=tmp_path)
    assert old.file_names() == [QWEN_H200]


def test_the_store_root_defaults_to_the_kits_store():
    from sglkit.kernels import store

    kt = kernel_target(profiles.load("qwen3-30b-a3b-gh200"), "NVIDIA H200", "3.6.0")
    assert kt.path == store.file_path(QWEN_H200, "3.6.0", store.root())


def test_dtype_override_and_the_fp8_block_name():
    p = profiles.load("deepseek-v3-gh200")
    kt = kernel_target(p, "NVIDIA GH200 480GB", "3.6.0", sglang_version="0.5.23")
    assert kt.file_name == DSV3_GH200
    bf16 = kernel_target(p, "NVIDIA GH200 480GB", "3.6.0", dtype="bf16", sglang_version="0.5.23")
    assert "dtype=" not in bf16.file_name
    assert profile_shape(p, "bf16").dtype == bf16.shape.dtype


def test_a_profile_without_a_model_config_names_the_field(tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text("name: t\nmodel:\n  path: Qwen/Qwen3-30B-A3B\n")
    with pytest.raises(ConfigError, match=r"p.yaml: model.config: needed to derive the MoE shape"):
        kernel_target(profiles.load(y), "NVIDIA H200", "3.6.0")


def test_kernels_check_and_cache_triton_name_the_targets_file(tmp_path, capsys):
    from sglkit.cache.triton_warm import locate
    from sglkit.kernels.tasks import check

    p = profiles.load("deepseek-v3-gh200")
    (tmp_path / "configs").mkdir()
    kt = kernel_target(p, "NVIDIA GH200 480GB", "3.6.0", store_root=tmp_path)
    warm = locate(p, "NVIDIA GH200 480GB", "3.6.0", store_root=tmp_path, sglang_dir=None)
    assert (warm.file_name, warm.shape) == (kt.file_name, kt.shape)
    check(Context(), profile="deepseek-v3-gh200", device_name="NVIDIA GH200 480GB",
          triton_version="3.6.0", store_=str(tmp_path), json_=True)  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert [f["file"] for f in report["files"]] == kt.file_names()
    assert report["store"] == str(kt.store_root)
