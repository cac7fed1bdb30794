"""Config file names as SGLang computes them, and MoE shapes as SGLang's tuner counts them.

Expected names follow `get_config_file_name` and its callers in the SGLang wheels 0.5.3, 0.5.4,
0.5.5, 0.5.6 and 0.5.23 (read from PyPI; see sglkit/kernels/names.py for the full list), and
the model counting of benchmark/kernels/fused_moe_triton/common_utils.py (sglang main, 2026).
"""

from __future__ import annotations

import json

import pytest

from sglkit.errors import ConfigError
from sglkit.kernels import names
from sglkit.kernels.names import config_file_name, migrated_name, parse_name, rule_for
from sglkit.kernels.shapes import moe_shape
from sglkit.paths import asset

DSV3 = asset("profiles", "models", "DeepSeek-V3", "config.json")
QWEN3 = asset("profiles", "models", "Qwen3-30B-A3B", "config.json")
H200 = "NVIDIA H200"
B = "block_shape=[128, 128]"


@pytest.mark.parametrize(
    ("E", "N", "dtype", "block", "pc", "down", "version", "expected"),
    [
        (
            257,
            256,
            "fp8_w8a8",
            [128, 128],
            False,
            False,
            "0.5.23",
            f"E=257,N=256,device_name=NVIDIA_H200,dtype=fp8_w8a8,{B}.json",
        ),
        (
            257,
            256,
            "fp8_w8a8",
            [128, 128],
            False,
            True,
            "0.5.23",
            f"E=257,N=256,device_name=NVIDIA_H200,dtype=fp8_w8a8,{B}_down.json",
        ),
        (128, 768, None, None, False, False, "0.5.23", "E=128,N=768,device_name=NVIDIA_H200.json"),
        (
            128,
            768,
            "bf16",
            None,
            False,
            False,
            "0.5.23",
            "E=128,N=768,device_name=NVIDIA_H200.json",
        ),
        (
            128,
            768,
            "bf16",
            None,
            False,
            True,
            "0.5.23",
            "E=128,N=768,device_name=NVIDIA_H200_down.json",
        ),
        (
            64,
            1280,
            "int8_w8a8",
            None,
            True,
            False,
            "0.5.23",
            "E=64,N=1280,device_name=NVIDIA_H200,dtype=int8_w8a8,per_channel_quant=True.json",
        ),
        (
            64,
            1280,
            "int8_w8a8",
            None,
            True,
            True,
            "0.5.6",
            "E=64,N=1280,device_name=NVIDIA_H200,dtype=int8_w8a8,per_channel_quant=True_down.json",
        ),
        # 0.5.4 and 0.5.5 write the marker in the tuner but the server looks up the plain name
        (
            64,
            1280,
            "int8_w8a8",
            None,
            True,
            False,
            "0.5.5",
            "E=64,N=1280,device_name=NVIDIA_H200,dtype=int8_w8a8.json",
        ),
        (
            64,
            1280,
            "int8_w8a8",
            None,
            True,
            False,
            "0.5.3",
            "E=64,N=1280,device_name=NVIDIA_H200,dtype=int8_w8a8.json",
        ),
        # a zero in the block shape (compressed-tensors group quant) drops it from the name
        (
            160,
            192,
            "int4_w4a16",
            [0, 128],
            False,
            False,
            "0.5.23",
            "E=160,N=192,device_name=NVIDIA_H200,dtype=int4_w4a16.json",
        ),
        (
            8,
            7168,
            "fp8_w8a8",
            None,
            False,
            False,
            "0.5.23",
            "E=8,N=7168,device_name=NVIDIA_H200,dtype=fp8_w8a8.json",
        ),
        (
            16,
            1024,
            "float32",
            None,
            False,
            False,
            "0.5.23",
            "E=16,N=1024,device_name=NVIDIA_H200,dtype=float32.json",
        ),
    ],
)
def test_names_table(E, N, dtype, block, pc, down, version, expected):
    assert config_file_name(E, N, H200, dtype, block, pc, down, sglang_version=version) == expected


def test_device_name_normalized_like_sglang():
    assert names.device_name("NVIDIA GH200 480GB") == "NVIDIA_GH200_480GB"
    assert config_file_name(
        1, 2, "NVIDIA H100 80GB HBM3", None, sglang_version="0.5.23"
    ).startswith("E=1,N=2,device_name=NVIDIA_H100_80GB_HBM3")


def test_down_refused_before_sglang_reads_it():
    with pytest.raises(ConfigError, match="--down"):
        config_file_name(
            257, 256, H200, "fp8_w8a8", [128, 128], down=True, sglang_version="0.5.4.post1"
        )
    assert config_file_name(
        257, 256, H200, "fp8_w8a8", [128, 128], down=True, sglang_version="0.5.4.post2"
    )


def test_rules_by_version():
    assert not rule_for("0.5.2").reads_config_dir_env
    assert rule_for("0.5.3").reads_config_dir_env
    assert rule_for("0.5.11").fallback == "fixed-list"
    assert rule_for("0.5.12").fallback == "on-disk"
    assert not rule_for("0.5.15.post1").down_falls_back_to_up
    assert rule_for("0.5.16").down_falls_back_to_up
    assert rule_for("0.5.5.post3").per_channel_in_name is False
    assert rule_for("0.5.6").per_channel_in_name is True
    assert "0.5.6" in rule_for("0.5.23").explain()
    with pytest.raises(ConfigError, match="--sglang-version"):
        rule_for("latest")


def test_bad_dtype_names_the_flag():
    with pytest.raises(ConfigError, match="--dtype"):
        config_file_name(8, 14336, H200, "fp4", sglang_version="0.5.23")


def test_migrate_old_fork_names():
    old = f"E=64,N=1280,device_name=NVIDIA_H200,dtype=int8_w8a8,{B},per_channel_quant=1.json"
    assert (
        migrated_name(old)
        == f"E=64,N=1280,device_name=NVIDIA_H200,dtype=int8_w8a8,{B},per_channel_quant=True.json"
    )
    assert migrated_name(old.replace(".json", "_down.json")).endswith(
        "per_channel_quant=True_down.json"
    )
    assert (
        migrated_name("E=1,N=2,device_name=X,per_channel_quant=0.json")
        == "E=1,N=2,device_name=X.json"
    )
    assert migrated_name("E=1,N=2,device_name=X.json") is None


def test_parse_name_roundtrip():
    n = config_file_name(
        257, 256, H200, "fp8_w8a8", [128, 128], True, True, sglang_version="0.5.23"
    )
    assert parse_name(n) == {
        "E": 257, "N": 256, "device_name": "NVIDIA_H200", "dtype": "fp8_w8a8",
        "block_shape": [128, 128], "per_channel_quant": True, "down": True,
    }  # fmt: skip
    assert parse_name("README.md") is None


# ---- shapes -------------------------------------------------------------------------------------


def test_deepseek_v3_tp8_with_shared_expert_fusion():
    s = moe_shape(DSV3, tp=8)
    # SGLang 0.5.23 deepseek_v2.py: top_k_for_moe = num_experts_per_tok + fused shared experts
    assert (s.E, s.N, s.K, s.topk) == (257, 256, 7168, 9)
    assert (s.dtype, s.block_shape, s.shard_intermediate_size) == ("fp8_w8a8", (128, 128), 512)
    s = moe_shape(DSV3, tp=8, shared_experts_fusion=False)
    assert (s.E, s.topk) == (256, 8)
    s = moe_shape(DSV3, tp=8, ep=8)
    assert (s.E, s.N) == (256 // 8 + 1, 2048)


def test_qwen3_tp1_and_tp4():
    s = moe_shape(QWEN3, tp=1)
    assert (s.E, s.N, s.K, s.topk, s.dtype, s.block_shape) == (128, 768, 2048, 8, None, None)
    assert moe_shape(QWEN3.parent, tp=4).N == 192  # a model folder works too


def _cfg(arch, **kw):
    return {"architectures": [arch], "hidden_size": 4096, **kw}


@pytest.mark.parametrize(
    ("cfg", "tp", "expected"),
    [
        (
            _cfg(
                "MixtralForCausalLM",
                num_local_experts=8,
                num_experts_per_tok=2,
                intermediate_size=14336,
            ),
            2,
            (8, 7168, 2),
        ),
        (
            _cfg(
                "Qwen2MoeForCausalLM",
                num_experts=60,
                num_experts_per_tok=4,
                moe_intermediate_size=1408,
            ),
            1,
            (60, 1408, 4),
        ),
        (
            _cfg(
                "DeepseekV2ForCausalLM",
                n_routed_experts=160,
                num_experts_per_tok=6,
                moe_intermediate_size=1536,
            ),
            8,
            (160, 192, 6),
        ),
        (
            _cfg(
                "Glm4MoeForCausalLM",
                n_routed_experts=160,
                num_experts_per_tok=8,
                moe_intermediate_size=1536,
            ),
            4,
            (161, 384, 9),
        ),
        (
            {
                "architectures": ["Llama4ForConditionalGeneration"],
                "text_config": {
                    "hidden_size": 5120,
                    "num_local_experts": 16,
                    "num_experts_per_tok": 1,
                    "intermediate_size": 8192,
                },
            },
            8,
            (17, 1024, 1),
        ),
        (
            {
                "architectures": ["Qwen3VLMoeForConditionalGeneration"],
                "text_config": {
                    "hidden_size": 2048,
                    "num_experts": 128,
                    "num_experts_per_tok": 8,
                    "moe_intermediate_size": 768,
                },
            },
            2,
            (128, 384, 8),
        ),
    ],
)
def test_shapes_per_architecture(cfg, tp, expected):
    s = moe_shape(cfg, tp=tp)
    assert (s.E, s.N, s.topk) == expected


def test_multimodal_quantization_comes_from_the_top_level():
    cfg = {
        "architectures": ["Qwen3VLMoeForConditionalGeneration"],
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
        "text_config": {
            "hidden_size": 2048,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "moe_intermediate_size": 768,
        },
    }
    s = moe_shape(cfg, tp=1)
    assert (s.dtype, s.block_shape) == ("fp8_w8a8", (128, 128))
    assert moe_shape(cfg, tp=1, dtype="bf16").block_shape is None  # another dtype drops the blocks


def test_shape_errors_name_the_field_or_flag(tmp_path):
    with pytest.raises(ConfigError, match="--tp"):
        moe_shape(QWEN3, tp=5)
    with pytest.raises(ConfigError, match="--ep"):
        moe_shape(QWEN3, tp=4, ep=3)
    with pytest.raises(ConfigError, match="num_experts"):
        moe_shape({"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 8}, tp=1)
    with pytest.raises(ConfigError, match="--model"):
        moe_shape(tmp_path / "nope", tp=1)
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        moe_shape(tmp_path, tp=1)
    awq = json.loads(QWEN3.read_text()) | {"quantization_config": {"quant_method": "awq"}}
    with pytest.raises(ConfigError, match="quant_method"):
        moe_shape(awq, tp=1)
