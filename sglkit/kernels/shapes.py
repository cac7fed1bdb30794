"""MoE GEMM shapes from a model's config.json, counted the way SGLang's tuner counts them.

Mirrors `get_model_config` in SGLang's benchmark/kernels/fused_moe_triton/common_utils.py (read
at sgl-project/sglang main, 2026): E is the routed experts per EP rank plus one fused shared
expert for DeepSeek V3/V3.2, GLM-4 MoE, Mistral Large 3, Llama 4 (unless fusion is disabled);
`shard_intermediate_size = 2 * intermediate / (tp / ep)` (gate and up, fused) and the N of the
file name is half of it (w2.shape[2]). Multimodal models: the architecture and the
quantization_config come from the top level, the sizes from `text_config`.

top-k: with shared-expert fusion the fused-MoE kernel gets `num_experts_per_tok + 1` ids per
token (the shared expert is appended to every token's routing). SGLang 0.5.23 server:
models/deepseek_v2.py `top_k_for_moe = config.num_experts_per_tok + num_fused_shared_experts`,
models/glm4_moe.py `top_k=self.top_k + self.num_fused_shared_experts`. Upstream's tuner adds the
+1 only when it replays recorded routing (`--topk-ids-dir`), since its random routing cannot
reproduce an always-hit expert; we follow the server, which is what the tuned configs serve.
Llama 4 keeps the tuner's E + 1 but top-k as configured (0.5.23's llama4.py fuses nothing).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError
from sglkit.kernels.names import config_dtype

QWEN_LIKE = {
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "Qwen3NextForCausalLM",
    "Qwen3VLMoeForConditionalGeneration",
    "Qwen3_5MoeForCausalLM",
    "Qwen3_5MoeForConditionalGeneration",
    "BailingMoEForCausalLM",
    "BailingMoeForCausalLM",
    "BailingMoeV2ForCausalLM",
    "Lfm2MoeForCausalLM",
}
DEEPSEEK_LIKE = {
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "DeepseekV32ForCausalLM",
    "Glm4MoeForCausalLM",
    "Glm4MoeLiteForCausalLM",
    "GlmMoeDsaForCausalLM",
    "KimiVLForConditionalGeneration",
    "MistralLarge3ForCausalLM",
}
# DeepSeek-like architectures whose shared expert SGLang fuses into the routed-expert tensor
SHARED_FUSION = {
    "DeepseekV3ForCausalLM",
    "DeepseekV32ForCausalLM",
    "Glm4MoeForCausalLM",
    "Glm4MoeLiteForCausalLM",
    "GlmMoeDsaForCausalLM",
    "MistralLarge3ForCausalLM",
}
GROK = {"Grok1ForCausalLM", "Grok1ImgGen", "Grok1AForCausalLM"}


@dataclass(frozen=True)
class MoEShape:
    """One fused-MoE layer as the Triton kernel sees it on one GPU.

    E: experts in the weight tensor (per EP rank, + fused shared expert); N: the N of the file
    name (= shard_intermediate_size // 2, w2.shape[2]); K: hidden size; dtype: SGLang's config
    dtype string (None for bf16/fp16); block_shape: [block_n, block_k] or None.
    """

    architecture: str
    E: int
    N: int
    K: int
    topk: int
    dtype: str | None
    block_shape: tuple[int, int] | None
    shard_intermediate_size: int
    tp: int = 1
    ep: int = 1
    per_channel_quant: bool = False
    shared_expert_fused: bool = False
    num_layers: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def hidden_size(self) -> int:
        return self.K

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_shape"] = list(self.block_shape) if self.block_shape else None
        d["notes"] = list(self.notes)
        return d


def load_config(model: dict | str | Path) -> dict[str, Any]:
    """config.json as a dict: a dict, a path to config.json, or a model folder holding one."""
    if isinstance(model, dict):
        return model
    p = Path(model).expanduser()
    if p.is_dir():
        p = p / "config.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"--model: {p} not found (give a model folder or its config.json)"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model: {p}: invalid JSON at line {e.lineno}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--model: {p}: not a JSON object")
    return data


def _need(cfg: dict, key: str, where: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"{where}{key}: missing from the model's config.json")
    return cfg[key]


def quantization(top: dict) -> tuple[str | None, tuple[int, int] | None, bool, list[str]]:
    """(dtype, block_shape, per_channel, notes) from quantization_config, as the tuner reads it."""
    q = top.get("quantization_config") or {}
    notes: list[str] = []
    if not q:
        td = str(top.get("torch_dtype") or top.get("dtype") or "bfloat16")
        return ("float32" if td in ("float32", "float") else None), None, False, notes
    method = str(q.get("quant_method", "")).lower()
    block: tuple[int, int] | None = None
    if q.get("weight_block_size"):
        wb = q["weight_block_size"]
        if not isinstance(wb, list) or len(wb) != 2:
            raise ConfigError("quantization_config.weight_block_size: expected [block_n, block_k]")
        block = (int(wb[0]), int(wb[1]))
    if method == "fp8":
        return "fp8_w8a8", block, False, notes
    if method == "compressed-tensors" and q.get("config_groups"):
        group = next(iter(q["config_groups"].values()), {}) or {}
        w = group.get("weights") or {}
        a = group.get("input_activations")
        bits, kind = int(w.get("num_bits", 0) or 0), str(w.get("type", "int"))
        if w.get("group_size"):
            block = (0, int(w["group_size"]))  # SGLang's tuner: [0, group_size], not in the name
        per_channel = str(w.get("strategy", "")) == "channel"
        if bits == 8 and kind == "float":
            return "fp8_w8a8", block, per_channel, notes
        if bits == 8 and a:
            return "int8_w8a8", block, per_channel, notes
        if bits == 8:
            return "int8_w8a16", block, per_channel, notes
        if bits == 4 and not a:
            return "int4_w4a16", block, per_channel, notes
        raise ConfigError(
            f"quantization_config.config_groups: {bits}-bit {kind} weights are not a Triton "
            "fused-MoE dtype; give --dtype"
        )
    if method in ("w8a8_int8",):
        return "int8_w8a8", block, True, notes
    raise ConfigError(
        f"quantization_config.quant_method: {method or '?'!r} is not tuned by the Triton fused-MoE "
        "tuner; give --dtype"
    )


def moe_shape(
    config_json: dict | str | Path,
    tp: int,
    ep: int = 1,
    *,
    dtype: str | None = None,
    block_shape: tuple[int, int] | list[int] | None = None,
    per_channel_quant: bool | None = None,
    shared_experts_fusion: bool = True,
) -> MoEShape:
    """The MoE layer shape of a model at TP=tp, EP=ep.

    `dtype`/`block_shape`/`per_channel_quant` override what quantization_config says; `dtype`
    takes a flag value ('fp8_w8a8', 'bf16', ...). ConfigError names the field or flag at fault.
    """
    top = load_config(config_json)
    tp, ep = int(tp), int(ep)
    if tp < 1:
        raise ConfigError(f"--tp: must be >= 1 (got {tp})")
    if ep < 1 or tp % ep:
        raise ConfigError(f"--ep: must divide --tp {tp} (got {ep})")
    archs = top.get("architectures") or []
    if not archs:
        raise ConfigError("architectures: missing from the model's config.json")
    arch = str(archs[0])
    q_dtype, q_block, q_pc, notes = quantization(top)
    cfg = top
    where = ""
    if isinstance(top.get("text_config"), dict):
        cfg, where = top["text_config"], "text_config."
    hidden = int(_need(cfg, "hidden_size", where))
    fused = False
    if arch in QWEN_LIKE:
        E = int(_need(cfg, "num_experts", where)) // ep
        topk = int(_need(cfg, "num_experts_per_tok", where))
        inter = int(_need(cfg, "moe_intermediate_size", where))
    elif arch in DEEPSEEK_LIKE:
        fused = shared_experts_fusion and arch in SHARED_FUSION
        E = int(_need(cfg, "n_routed_experts", where)) // ep + (1 if fused else 0)
        # the fused shared expert is routed to every token: the kernel sees top-k + 1
        topk = int(_need(cfg, "num_experts_per_tok", where)) + (1 if fused else 0)
        inter = int(_need(cfg, "moe_intermediate_size", where))
    elif arch == "Llama4ForConditionalGeneration":
        fused = shared_experts_fusion
        E = int(_need(cfg, "num_local_experts", where)) // ep + (1 if fused else 0)
        topk = int(_need(cfg, "num_experts_per_tok", where))
        inter = int(_need(cfg, "intermediate_size", where))
    elif arch == "DbrxForCausalLM":
        ffn = _need(cfg, "ffn_config", where)
        E = int(ffn["moe_num_experts"]) // ep
        topk = int(ffn["moe_top_k"])
        inter = int(ffn["ffn_hidden_size"])
    elif arch == "JambaForCausalLM":
        E = int(_need(cfg, "num_experts", where)) // ep
        topk = int(_need(cfg, "num_experts_per_tok", where))
        inter = int(_need(cfg, "intermediate_size", where))
    elif arch in GROK:
        E = int(_need(cfg, "num_local_experts", where)) // ep
        topk = int(_need(cfg, "num_experts_per_tok", where))
        inter = int(_need(cfg, "moe_intermediate_size", where))
    else:  # SGLang's default branch: Mixtral's fields
        E = int(_need(cfg, "num_local_experts", where)) // ep
        topk = int(_need(cfg, "num_experts_per_tok", where))
        inter = int(_need(cfg, "intermediate_size", where))
        if arch != "MixtralForCausalLM":
            notes.append(f"{arch}: read with Mixtral's fields (SGLang's default branch)")
    moe_tp = tp // ep
    if inter % moe_tp:
        raise ConfigError(
            f"--tp: the MoE intermediate size {inter} is not divisible by tp/ep = {moe_tp}"
        )
    if E < 1:
        raise ConfigError(f"--ep: {ep} leaves no expert per rank")
    shard = 2 * inter // moe_tp
    if dtype is not None:
        d = config_dtype(dtype)
        if d != q_dtype:  # another dtype than the checkpoint's: its quantization blocks go
            q_block, q_pc = None, False
        q_dtype = d
    if block_shape is not None:
        q_block = tuple(int(b) for b in block_shape) if block_shape else None  # type: ignore[assignment]
    if per_channel_quant is not None:
        q_pc = bool(per_channel_quant)
    return MoEShape(
        architecture=arch,
        E=E,
        N=shard // 2,
        K=hidden,
        topk=topk,
        dtype=q_dtype,
        block_shape=q_block,
        shard_intermediate_size=shard,
        tp=tp,
        ep=ep,
        per_channel_quant=q_pc,
        shared_expert_fused=fused,
        num_layers=int(cfg.get("num_hidden_layers", 0) or 0),
        notes=tuple(notes),
    )
