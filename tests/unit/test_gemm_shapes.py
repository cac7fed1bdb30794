"""sglkit.cache.gemm_shapes: which DeepGEMM shapes a server of the profile compiles, for which M,
and how the work is cut into worker items (no GPU, no SGLang: config.json in, plan out)."""

from __future__ import annotations

import collections
import itertools
import json
import math
from pathlib import Path

import pytest

from sglkit.cache import gemm_shapes as gs

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "profiles" / "models"
QWEN_FP8 = MODELS / "Qwen3-MoE-FP8-2L" / "config.json"
DEEPSEEK_FP8 = MODELS / "DeepSeek-V3-FP8-2L" / "config.json"
QWEN_BF16 = MODELS / "Qwen3-30B-A3B" / "config.json"
FP8_BLOCKS = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
N, M = gs.NORMAL, gs.MASKED


def keys(p: gs.Plan) -> list[tuple[str, int, int, int]]:
    return [s.key for s in p.shapes]


# ---- the shape plan ------------------------------------------------------------------------------


def test_qwen3_moe_fp8_gives_the_attention_projections_only():
    p = gs.plan(QWEN_FP8)
    # 64 q heads + 2 x 4 kv heads of 128 -> qkv N 9216 over hidden 4096; o back from 64 x 128
    assert keys(p) == [(N, 9216, 4096, 1), (N, 4096, 8192, 1)]
    assert [s.what for s in p.shapes] == ["qkv_proj", "o_proj"]
    # every layer is sparse (decoder_sparse_step 1): no dense MLP; the experts run on Triton
    assert "Qwen3MoeForCausalLM" in p.reason and "TP=1" in p.reason


def test_qwen3_moe_fp8_with_the_deep_gemm_moe_runner_adds_the_masked_grouped_expert_gemms():
    p = gs.plan(QWEN_FP8, moe_runner_backend="deep_gemm")
    assert keys(p) == [
        (N, 9216, 4096, 1),
        (N, 4096, 8192, 1),
        (M, 2 * 1536, 4096, 128),  # w13: gate and up of the 128 experts
        (M, 4096, 1536, 128),  # w2: down
    ]
    assert all(s.groups == 128 for s in p.shapes if s.kind == M)
    # the label names the groups where there is more than one
    assert p.shapes[2].label() == f"{M} N=3072 K=4096, groups=128"
    assert p.shapes[0].label() == f"{N} N=9216 K=4096"


def test_plan_reads_a_path_a_folder_or_a_dict_alike():
    as_dict = json.loads(QWEN_FP8.read_text())
    assert keys(gs.plan(QWEN_FP8)) == keys(gs.plan(QWEN_FP8.parent)) == keys(gs.plan(as_dict))


DEEPSEEK_TP1 = [
    (N, 2112, 7168, 1),  # fused_qkv_a_proj_with_mqa: q_lora 1536 + kv_lora 512 + rope 64
    (N, 24576, 1536, 1),  # q_b_proj: 128 heads x (128 nope + 64 rope)
    (N, 32768, 512, 1),  # kv_b_proj: 128 heads x (128 nope + 128 v)
    (N, 7168, 16384, 1),  # o_proj: 128 heads x 128 v -> hidden
    (N, 36864, 7168, 1),  # the first (dense) layer's gate_up: 2 x 18432
    (N, 7168, 18432, 1),  # its down
]


def test_deepseek_v3_fp8_gives_six_shapes():
    p = gs.plan(DEEPSEEK_FP8)
    assert keys(p) == DEEPSEEK_TP1
    assert [s.what for s in p.shapes] == [
        "fused_qkv_a_proj_with_mqa", "q_b_proj", "kv_b_proj", "o_proj",
        "mlp.gate_up_proj", "mlp.down_proj",
    ]  # fmt: skip
    # the shared expert is fused into the routed experts (Triton by default): no shape of its own
    assert not any("shared" in s.what for s in p.shapes)


def test_deepseek_v3_fp8_at_tp8_divides_the_per_gpu_layers_and_keeps_the_replicated_one():
    p = gs.plan(DEEPSEEK_FP8, tp=8)
    assert keys(p) == [
        (N, 2112, 7168, 1),  # replicated: the same on every GPU
        (N, 24576 // 8, 1536, 1),  # column parallel: N divided
        (N, 32768 // 8, 512, 1),
        (N, 7168, 16384 // 8, 1),  # row parallel: K divided
        (N, 36864 // 8, 7168, 1),
        (N, 7168, 18432 // 8, 1),
    ]
    assert "TP=8" in p.reason


@pytest.mark.parametrize("config", [QWEN_BF16, MODELS / "Qwen3-MoE-BF16-2L" / "config.json"])
def test_a_bf16_model_has_no_deepgemm_shapes_and_says_why(config):
    p = gs.plan(config)
    assert p.shapes == ()
    assert "not fp8" in p.reason and "Qwen3MoeForCausalLM" in p.reason


def test_fp8_without_128x128_blocks_has_no_deepgemm_shapes():
    cfg = json.loads(QWEN_FP8.read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    p = gs.plan(cfg)
    assert p.shapes == () and "128x128" in p.reason


def test_an_unknown_architecture_has_no_shapes_and_the_reason_names_it():
    cfg = {**json.loads(QWEN_FP8.read_text()), "architectures": ["FrobnicatorForCausalLM"]}
    p = gs.plan(cfg)
    assert p.shapes == ()
    assert "FrobnicatorForCausalLM" in p.reason
    # no architectures field at all: still a plan, not an exception
    cfg.pop("architectures")
    assert gs.plan(cfg).shapes == ()


def _llama(**over) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 14336,
        "num_hidden_layers": 2,
        "quantization_config": FP8_BLOCKS,
    }
    return {**cfg, **over}


def test_a_dense_model_gets_attention_and_mlp_shapes():
    assert keys(gs.plan(_llama())) == [
        (N, (32 + 2 * 8) * 128, 4096, 1),
        (N, 4096, 32 * 128, 1),
        (N, 2 * 14336, 4096, 1),
        (N, 4096, 14336, 1),
    ]


def test_layers_with_n_not_a_multiple_of_64_or_k_not_a_multiple_of_128_are_left_out():
    # 33 q heads + 2 x 1 kv heads of 96: qkv N = 35 x 96 = 3360 (3360 % 64 = 32), K = 4096:
    # out on N alone; o N = 4096, K = 33 x 96 = 3168 (3168 % 128 = 96): out on K alone
    p = gs.plan(_llama(num_attention_heads=33, num_key_value_heads=1, head_dim=96))
    assert keys(p) == [(N, 2 * 14336, 4096, 1), (N, 4096, 14336, 1)]
    assert {s.what for s in p.shapes} == {"mlp.gate_up_proj", "mlp.down_proj"}
    # intermediate 14368: gate_up N = 28736 (a multiple of 64) stays, down K = 14368 (% 128 = 32)
    p = gs.plan(_llama(intermediate_size=14368))
    assert (N, 28736, 4096, 1) in keys(p)
    assert not any(s.what == "mlp.down_proj" for s in p.shapes)
    # every shape in any plan obeys the rule
    for s in p.shapes:
        assert s.n % 64 == 0 and s.k % 128 == 0


def test_duplicate_shapes_appear_once():
    # qkv of 32 + 2 x 32 heads of 128 is N 12288 over K 4096, and so is gate_up of 2 x 6144:
    # one kernel family, compiled once, named after the first layer that uses it
    p = gs.plan(_llama(num_key_value_heads=32, intermediate_size=6144))
    assert keys(p) == [(N, 12288, 4096, 1), (N, 4096, 4096, 1), (N, 4096, 6144, 1)]
    assert p.shapes[0].what == "qkv_proj"


# ---- M values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cps", "m_max"),
    [
        (2048, 16384),
        (8192, 16384),  # not above 8192: the default 16384
        (8193, 2 * 8193),  # above: twice the chunk
        (16384, 32768),
        (65536, 131072),
        (100_000, 131072),  # twice would be 200000: capped
        (0, 65536),  # chunked prefill off
        (-1, 65536),
    ],
)
def test_m_values_is_every_m_from_1_to_the_servers_max(cps, m_max):
    ms = gs.m_values(cps)
    assert len(ms) == m_max
    assert ms == list(range(1, m_max + 1))


@pytest.mark.parametrize(("cps", "top"), [(2048, 2048), (8192, 8192), (16384, 16384),
                                         (65536, 32768), (-1, 16384)])  # fmt: skip
def test_fast_warmup_samples_every_small_m_then_sparser_up_to_the_chunk(cps, top):
    ms = gs.m_values(cps, fast_warmup=True)
    assert ms[:1024] == list(range(1, 1025))
    assert ms[-1] == top
    assert ms == sorted(set(ms))
    # between powers of two the step doubles: 1024..2046 by 2, 2048..4092 by 4, ...
    lo, step = 1024, 2
    while lo < top:
        band = [m for m in ms if lo <= m < 2 * lo]
        assert band == list(range(lo, 2 * lo, step)), (lo, step)
        lo, step = lo * 2, step * 2


def test_fast_warmup_at_16384_compiles_3072_ms_as_sglang_says():
    assert len(gs.m_values(16384, fast_warmup=True)) == 3072


# ---- items: the workers' jobs --------------------------------------------------------------------


def _shapes(count: int) -> list[gs.Shape]:
    return [gs.Shape(N, 64 * (i + 1), 128 * (i + 1), 1, f"layer{i}") for i in range(count)]


COMBOS = [(shapes, jobs) for shapes in (1, 2, 3, 6) for jobs in (1, 2, 3, 4, 8, 16, 72)]


@pytest.mark.parametrize(("n_shapes", "jobs"), COMBOS)
@pytest.mark.parametrize("fast", [False, True], ids=["all-m", "fast-warmup"])
def test_items_cover_every_shape_and_m_exactly_once_in_contiguous_sorted_slices(
    n_shapes, jobs, fast
):
    shapes = _shapes(n_shapes)
    ms = gs.m_values(8192, fast_warmup=fast)
    work = gs.items(shapes, ms, jobs)

    pairs = collections.Counter((it.shape.key, m) for it in work for m in it.ms)
    assert set(pairs) == {(s.key, m) for s in shapes for m in ms}
    assert max(pairs.values()) == 1

    for s in shapes:
        slices = [it.ms for it in work if it.shape == s]
        assert all(slices), "an empty slice"
        # in order, each slice a run of consecutive entries of the sorted M list, together all
        assert [m for sl in slices for m in sl] == ms
        assert all(list(sl) == sorted(sl) for sl in slices)
        assert all(a[-1] < b[0] for a, b in itertools.pairwise(slices))

        # about 2 * jobs / shapes slices; at many slices the smallest M run out of distinct
        # log-spaced edges and some would be empty, so there are a few less
        parts = math.ceil(2 * jobs / n_shapes)
        if parts <= 16:
            assert len(slices) == parts, (len(slices), parts)
        else:
            assert 0.75 * parts <= len(slices) <= parts, (len(slices), parts)

    # shapes interleaved: consecutive items hold different shapes, in the plan's order
    assert [it.shape for it in work[:n_shapes]] == shapes


@pytest.mark.parametrize("parts", [2, 3, 4, 6])
def test_slices_are_spaced_evenly_in_log_m(parts):
    ms = gs.m_values(8192)
    work = gs.items(_shapes(2), ms, parts)  # 2 * parts / 2 shapes: `parts` slices per shape
    starts = [it.ms[0] for it in work[::2]]
    assert len(starts) == parts and starts[0] == 1
    for p, start in enumerate(starts[1:], 1):
        edge = ms[-1] ** (p / parts)
        assert edge / 2 <= start <= edge * 2, (p, start, edge)


def test_items_of_nothing_is_nothing():
    assert gs.items([], gs.m_values(8192), 4) == []
    assert gs.items(_shapes(2), [], 4) == []


def test_items_never_cut_finer_than_single_ms():
    ms = [1, 2, 3]
    work = gs.items(_shapes(1), ms, 50)
    assert [it.ms for it in work] == [(1,), (2,), (3,)]
    assert work[0].label() == f"{N} N=64 K=128 M 1-1"


# ---- jobs_for: workers that fit ------------------------------------------------------------------


def test_jobs_for_takes_the_cores_where_gpu_memory_is_unknown_or_plenty():
    shapes, ms = _shapes(2), gs.m_values(8192)
    jobs, why = gs.jobs_for(shapes, ms, 16, None)
    assert jobs == 16 and "unknown" in why
    jobs, why = gs.jobs_for(shapes, ms, 16, 1 << 50)
    assert (jobs, why) == (16, "16 cores")


def test_jobs_for_is_capped_by_gpu_memory():
    shapes = gs.plan(QWEN_FP8).shapes
    ms = gs.m_values(8192)
    need = max(s.bytes_at(16384) for s in shapes) + (1 << 30)
    # room for exactly three workers in the 80 % of the free memory it plans with (a few bytes
    # over, so that no float rounding takes one away)
    free = need * 3 * 5 // 4 + 8
    jobs, why = gs.jobs_for(shapes, ms, 16, free)
    assert jobs == 3
    assert "GPU memory" in why and "16 cores" in why
    # the largest shape decides: a bigger K lowers the count
    big = [*shapes, gs.Shape(N, 36864, 7168)]
    assert gs.jobs_for(big, ms, 16, free)[0] < 3


def test_jobs_for_is_never_below_one():
    shapes, ms = _shapes(3), gs.m_values(65536)
    assert gs.jobs_for(shapes, ms, 16, 0)[0] == 1
    assert gs.jobs_for(shapes, ms, 16, 1 << 20)[0] == 1
    assert gs.jobs_for(shapes, ms, 0, None)[0] == 1
    assert gs.jobs_for(shapes, ms, -4, 1 << 50)[0] == 1
    assert gs.jobs_for([], ms, 4, 1 << 50)[0] == 4


def test_bytes_at_follows_sglangs_warmup_executor():
    # normal GEMM: A (M x K fp8) + B (N x K fp8) + C (M x N bf16)
    assert gs.Shape(N, 256, 512).bytes_at(1000) == 1000 * 512 + 256 * 512 + 1000 * 256 * 2
    # masked grouped: the same per group, plus the int32 mask per group
    g = 8
    assert gs.Shape(M, 256, 512, g).bytes_at(1000) == (
        g * 1000 * 512 + g * 256 * 512 + g * 4 + g * 1000 * 256 * 2
    )


# ---- the server flags that move shapes (review of issue 19) --------------------------------------


def _keys(plan: gs.Plan) -> set[tuple]:
    return {s.key for s in plan.shapes}


def test_fused_shared_expert_is_one_more_group_of_the_deepgemm_experts():
    p = gs.plan(DEEPSEEK_FP8, moe_runner_backend="deep_gemm")
    masked = {s.groups for s in p.shapes if s.kind == gs.MASKED}
    assert masked == {257}  # 256 routed + the fused shared expert (SGLang's num_local_experts)
    unfused = gs.plan(
        DEEPSEEK_FP8, moe_runner_backend="deep_gemm", disable_shared_experts_fusion=True
    )
    assert {s.groups for s in unfused.shapes if s.kind == gs.MASKED} == {256}
    assert (gs.NORMAL, 4096, 7168, 1) in _keys(unfused)  # the shared expert's own gate_up


def test_an_fp8_gemm_backend_other_than_deepgemm_plans_nothing():
    assert gs.plan(DEEPSEEK_FP8, fp8_gemm_backend="triton").shapes == ()
    assert "--fp8-gemm-backend triton" in gs.plan(DEEPSEEK_FP8, fp8_gemm_backend="triton").reason
    assert _keys(gs.plan(DEEPSEEK_FP8, fp8_gemm_backend="deep_gemm")) == _keys(
        gs.plan(DEEPSEEK_FP8)
    )


def test_dp_attention_splits_attention_over_tp_over_dp_and_the_mlp_over_tp():
    p = gs.plan(DEEPSEEK_FP8, tp=8, dp=8, enable_dp_attention=True)
    keys = _keys(p)
    assert (gs.NORMAL, 24576, 1536, 1) in keys  # q_b_proj whole: attention TP 1
    assert (gs.NORMAL, 36864 // 8, 7168, 1) in keys  # the dense MLP still over TP 8
    dense_tp = gs.plan(DEEPSEEK_FP8, tp=8, moe_dense_tp_size=1)
    assert (gs.NORMAL, 36864, 7168, 1) in _keys(dense_tp)


def test_under_deepep_the_shared_expert_is_unfused_and_whole_and_experts_are_left_to_the_server():
    p = gs.plan(DEEPSEEK_FP8, tp=8, moe_a2a_backend="deepep", moe_runner_backend="deep_gemm")
    keys = _keys(p)
    assert (gs.NORMAL, 4096, 7168, 1) in keys and (gs.NORMAL, 7168, 2048, 1) in keys
    assert not any(s.kind == gs.MASKED for s in p.shapes)


def test_qwen2_moe_plans_its_shared_expert(tmp_path):
    cfg = json.loads(QWEN_FP8.read_text())
    cfg.update(architectures=["Qwen2MoeForCausalLM"], shared_expert_intermediate_size=2560)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    keys = _keys(gs.plan(path, tp=2))
    assert (gs.NORMAL, 2560, 4096, 1) in keys and (gs.NORMAL, 4096, 1280, 1) in keys
