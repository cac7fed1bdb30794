"""The DeepGEMM kernels a server of the profile will compile: GEMM kinds, N, K, groups, and M.

Derived from the model's config.json, TP/EP and the quantization, the way SGLang 0.5.16-0.5.23
reaches DeepGEMM (read in their wheels):

- every fp8 linear layer with 128x128 weight blocks goes through
  `deepgemm_w8a8_block_fp8_linear_with_fallback` when DeepGEMM is on, and only where
  N % 64 == 0 and K % 128 == 0 (else Triton): kind GEMM_NT_F8F8BF16 with the layer's per-GPU
  N (output) and K (input);
- the routed experts reach DeepGEMM with `--moe-runner-backend deep_gemm` (the standard
  dispatcher then uses the masked grouped GEMM for both expert GEMMs; planned, with the fused
  shared expert as one more group) or with an all-to-all backend such as DeepEP (not planned:
  the server's sweep compiles those); by default they run on the Triton fused-MoE kernel;
- DeepSeek-V3's shared expert is fused into the routed experts unless fusion is off, EP > 1 or
  an all-to-all backend runs; its MLA absorbed BMMs use DeepGEMM only under
  SGL_USE_DEEPGEMM_BMM (not planned); `--fp8-gemm-backend` other than auto or deep_gemm keeps
  the fp8 linear layers off DeepGEMM.

M: SGLang compiles every M in 1..m_max for each shape (`update_deep_gemm_config`): m_max is
16384, 65536 when chunked prefill is off, twice the chunk above 8192, at most 131072;
SGLANG_JIT_DEEPGEMM_FAST_WARMUP samples them instead.

A shape missed here is not lost: cache.deepgemm then lets the server check the cache with its
own sweep, and the server compiles what is missing (and the warm says which shapes those were).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglkit.kernels.shapes import load_config, quantization

NORMAL = "GEMM_NT_F8F8BF16"
MASKED = "GROUPED_GEMM_NT_F8F8BF16_MASKED"

DEEPSEEK = {"DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"}
QWEN_MOE = {"Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"}
DENSE = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
}


@dataclass(frozen=True, order=True)
class Shape:
    """One (kind, N, K, groups) that SGLang compiles for every M; `what` names the layer."""

    kind: str
    n: int
    k: int
    groups: int = 1
    what: str = ""

    @property
    def key(self) -> tuple[str, int, int, int]:
        return (self.kind, self.n, self.k, self.groups)

    def label(self) -> str:
        g = f", groups={self.groups}" if self.groups != 1 else ""
        return f"{self.kind} N={self.n} K={self.k}{g}"

    def bytes_at(self, max_m: int) -> int:
        """GPU memory SGLang's warm-up executor takes at max_m (its get_memory_requirement)."""
        if self.kind == MASKED:
            g = self.groups
            return g * max_m * self.k + g * self.n * self.k + g * 4 + g * max_m * self.n * 2
        return max_m * self.k + self.n * self.k + max_m * self.n * 2


@dataclass(frozen=True)
class Plan:
    shapes: tuple[Shape, ...]
    reason: str  # why the plan is what it is (one line)


def _linear(shapes: list[Shape], n: int, k: int, what: str) -> None:
    if n > 0 and k > 0 and n % 64 == 0 and k % 128 == 0:
        shapes.append(Shape(NORMAL, n, k, 1, what))


A2A_DEEPGEMM = {"deepep", "mooncake", "nixl"}  # a2a backends whose MoE runs on DeepGEMM


def plan(
    config_json: dict | str | Path,
    *,
    tp: int = 1,
    ep: int = 1,
    dp: int = 1,
    enable_dp_attention: bool = False,
    moe_dense_tp_size: int | str | None = None,
    moe_runner_backend: str | None = None,
    moe_a2a_backend: str | None = None,
    fp8_gemm_backend: str | None = None,
    disable_shared_experts_fusion: bool = False,
) -> Plan:
    """The DeepGEMM shapes of one GPU of the server, without duplicates, in layer order.

    Attention layers split over tp / dp with DP attention; DeepSeek's dense MLP over
    --moe-dense-tp-size where given. With an all-to-all MoE backend (DeepEP and kin) the
    experts run on DeepGEMM kinds this plan leaves to the server's own sweep, and the shared
    expert is neither fused nor split."""
    top = load_config(config_json)
    archs = top.get("architectures") or ["?"]
    arch = str(archs[0])
    dtype, block, _, _ = quantization(top)
    if dtype != "fp8_w8a8" or block != (128, 128):
        return Plan((), f"{arch}: not fp8 with 128x128 blocks, so no DeepGEMM GEMMs")
    if fp8_gemm_backend not in (None, "auto", "deep_gemm"):
        return Plan((), f"--fp8-gemm-backend {fp8_gemm_backend}: the fp8 layers skip DeepGEMM")
    cfg: dict[str, Any] = top.get("text_config") or top
    tp, ep = max(1, int(tp)), max(1, int(ep))
    attn_tp = max(1, tp // max(1, int(dp))) if enable_dp_attention else tp
    a2a = (moe_a2a_backend or "none") in A2A_DEEPGEMM
    hidden = int(cfg["hidden_size"])
    layers = int(cfg.get("num_hidden_layers", 1))
    shapes: list[Shape] = []
    if arch in DEEPSEEK:
        heads = int(cfg["num_attention_heads"]) // attn_tp
        nope, rope = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"])
        v, kv_rank = int(cfg["v_head_dim"]), int(cfg["kv_lora_rank"])
        q_rank = cfg.get("q_lora_rank")
        if q_rank:
            _linear(shapes, int(q_rank) + kv_rank + rope, hidden, "fused_qkv_a_proj_with_mqa")
            _linear(shapes, heads * (nope + rope), int(q_rank), "q_b_proj")
        else:
            _linear(shapes, heads * (nope + rope), hidden, "q_proj")
            _linear(shapes, kv_rank + rope, hidden, "kv_a_proj_with_mqa")
        _linear(shapes, heads * (nope + v), kv_rank, "kv_b_proj")
        _linear(shapes, hidden, heads * v, "o_proj")
        dense = min(layers, int(cfg.get("first_k_dense_replace", 0) or 0))
        if dense:
            inter = int(cfg["intermediate_size"]) // max(1, int(moe_dense_tp_size or tp))
            _linear(shapes, 2 * inter, hidden, "mlp.gate_up_proj")
            _linear(shapes, hidden, inter, "mlp.down_proj")
        if layers > dense:
            shared = int(cfg.get("n_shared_experts") or 0)
            fused = (arch == "DeepseekV3ForCausalLM" and int(cfg.get("n_routed_experts", 0)) == 256
                     and shared == 1 and ep == 1 and not a2a
                     and not disable_shared_experts_fusion)  # fmt: skip
            moe_inter = int(cfg["moe_intermediate_size"])
            if shared and not fused:
                stp = 1 if a2a else tp
                _linear(shapes, 2 * shared * moe_inter // stp, hidden, "shared_experts.gate_up")
                _linear(shapes, hidden, shared * moe_inter // stp, "shared_experts.down")
            if moe_runner_backend == "deep_gemm" and not a2a:
                experts = int(cfg["n_routed_experts"]) // ep + (shared if fused else 0)
                _experts(shapes, experts, moe_inter, hidden, tp, ep)
    elif arch in QWEN_MOE or arch in DENSE:
        heads = int(cfg["num_attention_heads"])
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        q_per, kv_per = heads // attn_tp, max(1, kv // attn_tp)
        _linear(shapes, (q_per + 2 * kv_per) * head_dim, hidden, "qkv_proj")
        _linear(shapes, hidden, q_per * head_dim, "o_proj")
        dense_layers = layers
        if arch in QWEN_MOE:
            step = int(cfg.get("decoder_sparse_step", 1) or 1)
            only = set(cfg.get("mlp_only_layers") or [])
            sparse = [i for i in range(layers) if i not in only and (i + 1) % step == 0]
            dense_layers = layers - len(sparse)
            shared_inter = int(cfg.get("shared_expert_intermediate_size") or 0)
            if sparse and shared_inter:  # Qwen2-MoE's shared expert: an fp8 MLP, split by tp
                _linear(shapes, 2 * shared_inter // tp, hidden, "shared_expert.gate_up")
                _linear(shapes, hidden, shared_inter // tp, "shared_expert.down")
            if sparse and moe_runner_backend == "deep_gemm" and not a2a:
                experts = int(cfg["num_experts"]) // ep
                _experts(shapes, experts, int(cfg["moe_intermediate_size"]), hidden, tp, ep)
        if dense_layers:
            inter = int(cfg["intermediate_size"]) // tp
            _linear(shapes, 2 * inter, hidden, "mlp.gate_up_proj")
            _linear(shapes, hidden, inter, "mlp.down_proj")
    else:
        return Plan((), f"{arch}: no DeepGEMM shape plan for this architecture")
    unique: dict[tuple, Shape] = {}
    for sh in shapes:
        unique.setdefault(sh.key, sh)
    return Plan(tuple(unique.values()), f"{arch} at TP={tp} EP={ep}")


def _experts(shapes: list[Shape], experts: int, inter: int, hidden: int, tp: int, ep: int):
    per = inter // max(1, tp // ep)
    shapes.append(Shape(MASKED, 2 * per, hidden, experts, "experts.w13"))
    shapes.append(Shape(MASKED, hidden, per, experts, "experts.w2"))


def m_values(chunked_prefill_size: int, fast_warmup: bool = False) -> list[int]:
    """Every M SGLang compiles each shape for (compile_utils.update_deep_gemm_config)."""
    cps = int(chunked_prefill_size)
    if fast_warmup:
        ms = list(range(1, 1025))
        top = min(cps, 32 * 1024) if cps >= 1 else 16 * 1024
        nxt, step = 1024, 2
        while nxt < top:
            ms += list(range(nxt, 2 * nxt, step))
            nxt, step = nxt * 2, step * 2
        ms.append(top)
        return sorted(set(ms))
    m_max = 16 * 1024
    if cps < 1:
        m_max = 64 * 1024
    elif cps > 8192:
        m_max = cps * 2
    return list(range(1, min(128 * 1024, m_max) + 1))


@dataclass(frozen=True)
class Item:
    """One worker's job: one shape over a contiguous slice of M."""

    shape: Shape
    ms: tuple[int, ...]

    def label(self) -> str:
        return f"{self.shape.label()} M {self.ms[0]}-{self.ms[-1]}"


def items(shapes: Sequence[Shape], ms: Sequence[int], jobs: int) -> list[Item]:
    """Split each shape's M range into about 2 * jobs / shapes slices, spaced evenly in log M,
    shapes interleaved.

    The compiles happen where a kernel config first appears as M grows; the configs depend on
    M through the block and wave counts, so new ones turn up about evenly per doubling of M, and
    later M mostly reuse them. Log spacing gives each slice a similar number of compiles; the
    GEMM launches themselves share the one GPU whatever the split. Two workers that meet the
    same config both compile it (DeepGEMM's rename makes that safe, only wasteful), and
    interleaving the shapes makes workers running at once mostly hold different shapes."""
    if not shapes or not ms:
        return []
    ms = sorted(ms)
    parts = max(1, min(len(ms), math.ceil(2 * max(1, jobs) / len(shapes))))
    top = math.log(ms[-1]) if ms[-1] > 1 else 1.0
    bounds, j = [0], 0
    for p in range(1, parts):
        edge = math.exp(top * p / parts)
        while j < len(ms) and ms[j] <= edge:
            j += 1
        if bounds[-1] < j < len(ms):
            bounds.append(j)
    bounds.append(len(ms))
    slices = [tuple(ms[a:b]) for a, b in itertools.pairwise(bounds)]
    return [Item(s, sl) for sl in slices for s in shapes]


def jobs_for(shapes: Iterable[Shape], ms: Sequence[int], cores: int, free_bytes: int | None,
             per_worker_overhead: int = 1 << 30) -> tuple[int, str]:  # fmt: skip
    """(workers, why): the cores, capped so that every worker's largest buffers fit the GPU."""
    need = max((s.bytes_at(max(ms)) for s in shapes), default=0) + per_worker_overhead
    cores = max(1, cores)
    if free_bytes is None:
        return cores, f"{cores} cores (GPU memory unknown)"
    fit = max(1, int(free_bytes * 0.8) // need)
    if fit < cores:
        return fit, f"{fit} (GPU memory: {free_bytes / 2**30:.0f} GiB free, "\
            f"{need / 2**30:.1f} GiB per worker; {cores} cores)"  # fmt: skip
    return cores, f"{cores} cores"
