"""Run the installed SGLang's own fused-MoE Triton kernel the way SGLang runs it.

SGLang's `fused_experts` path (srt/layers/moe/moe_runner/triton_utils/fused_moe.py, SGLang
0.5.23) does, per MoE layer:

    sorted_ids, expert_ids, n_post_pad = moe_align_block_size(topk_ids, BLOCK_SIZE_M, E)
    invoke_fused_moe_kernel(x, w1, ..., cache1, mul_routed_weight=False, top_k=topk)   # gate/up
    silu_and_mul(cache1, cache2)
    invoke_fused_moe_kernel(cache2, w2, ..., cache3, mul_routed_weight=True, top_k=1)  # down
    moe_sum_reduce(cache3, out)                                                         # top-k sum

The two GEMMs here are SGLang's own `invoke_fused_moe_kernel` (a Triton kernel, imported from
the installed wheel). The pieces that SGLang takes from `sgl_kernel` or from CUDA code it JIT-
compiles (absent on the H200 device machine) are done in torch: the block alignment
(`align_block_size`, same contract as SGLang's "+1 offset" kernels), the activation, the
per-token-group fp8 activation quantization where the installed kernel takes quantized
activations (SGLang >= 0.5.17; before, the kernel quantizes bf16 activations itself, as it does
when serving), and the top-k sum.

Import this module only where torch is installed; it imports SGLang lazily.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from sglkit.kernels.moe_align import max_padded_tokens
from sglkit.versions import SGLang

try:  # the dims and the plan need no torch; everything that runs a kernel does
    import torch
except ImportError:  # pragma: no cover - CPU hosts without torch
    torch = None  # type: ignore[assignment]

FP8_MAX = 448.0


@dataclass(frozen=True)
class MoEDims:
    """The fused-MoE problem as SGLang's config file names it.

    E experts; N is the per-shard intermediate size (w2 is [E, K, N], w1 is [E, 2N, K]; the
    `N=` of SGLang's config file name); K is the hidden size; topk experts per token.
    dtype is "bf16" or "fp8_w8a8"; block_shape is [block_n, block_k] for block-quantized fp8.
    """

    E: int
    N: int
    K: int
    topk: int
    dtype: str = "bf16"
    block_shape: tuple[int, int] | None = None

    @property
    def fp8(self) -> bool:
        return self.dtype == "fp8_w8a8"

    @property
    def config_dtype(self) -> str | None:
        """The dtype string SGLang passes to get_default_config / the file name."""
        return "fp8_w8a8" if self.fp8 else None

    def weight_bytes_per_expert(self) -> int:
        elem = 1 if self.fp8 else 2
        b = 3 * self.N * self.K * elem
        if self.fp8 and self.block_shape:
            bn, bk = self.block_shape
            b += 4 * (
                math.ceil(2 * self.N / bn) * math.ceil(self.K / bk)
                + math.ceil(self.K / bn) * math.ceil(self.N / bk)
            )
        return b


def dims_from(shape: Any, dtype: str | None = None, block_shape: Any = None) -> MoEDims:
    """MoEDims from an object with E, N, K, topk (e.g. sglkit.kernels.shapes.MoEShape)."""
    if isinstance(shape, MoEDims):
        return shape
    dt = dtype or getattr(shape, "dtype", None) or "bf16"
    if dt in ("bfloat16", "auto", None):
        dt = "bf16"
    bs = block_shape if block_shape is not None else getattr(shape, "block_shape", None)
    return MoEDims(
        E=int(shape.E),
        N=int(shape.N),
        K=int(shape.K),
        topk=int(shape.topk),
        dtype=dt,
        block_shape=tuple(int(v) for v in bs) if bs else None,
    )


# --------------------------------------------------------------------------- alignment


def align_block_size(
    topk_ids: torch.Tensor, block_size: int, num_experts: int, length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch stand-in for SGLang's moe_align_block_size (its CUDA kernel lives in sgl_kernel).

    Same contract as SGLang 0.5.23's kernels ("+1 offset" buckets, no filtered experts here):
    every expert's token list is padded to a multiple of block_size, experts in id order;
    pad slots hold numel (= topk_ids.numel(), which the GEMM masks out); expert_ids[b] is the
    expert of block b; num_tokens_post_pad[0] is the padded total. Within one expert, pairs
    are in flat index order (SGLang's atomics give a scheduling-dependent order; the GEMM
    does not care). Returns (sorted_ids[length], expert_ids[length // block_size], n[1]).
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    numel = flat.numel()
    if length is None:
        length = max_padded_tokens(numel, block_size, num_experts)
    dev = topk_ids.device
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_size - 1) // block_size * block_size
    starts = torch.cumsum(padded, 0) - padded
    order = torch.argsort(flat, stable=True)
    sorted_e = flat[order]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(numel, device=dev) - first[sorted_e]
    sorted_ids = torch.full((length,), numel, dtype=torch.int32, device=dev)
    sorted_ids[starts[sorted_e] + rank] = order.to(torch.int32)
    n_blocks = length // block_size + (1 if length % block_size else 0)
    expert_ids = torch.full((n_blocks,), -1, dtype=torch.int32, device=dev)
    used = torch.repeat_interleave(torch.arange(num_experts, device=dev), padded // block_size)
    expert_ids[: used.numel()] = used.to(torch.int32)
    total = padded.sum().to(torch.int32).reshape(1)
    return sorted_ids, expert_ids, total


# --------------------------------------------------------------------------- quantization


def quant_per_token_group(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token-group fp8 e4m3 quantization, SGLang's convention (scale = absmax / 448,
    absmax floored at 1e-10, row-major float32 scales [tokens, K // group])."""
    m, k = x.shape
    g = x.float().view(m, k // group, group)
    scale = g.abs().amax(dim=-1).clamp_(min=1e-10) / FP8_MAX
    q = (g / scale.unsqueeze(-1)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(m, k), scale


@dataclass
class Weights:
    w1: torch.Tensor  # [E, 2N, K]
    w2: torch.Tensor  # [E, K, N]
    w1_scale: torch.Tensor | None = None  # [E, ceil(2N/bn), ceil(K/bk)]
    w2_scale: torch.Tensor | None = None  # [E, ceil(K/bn), ceil(N/bk)]


def random_weights(dims: MoEDims, device: str = "cuda", seed: int = 0) -> Weights:
    """Random expert weights: bf16 ~ N(0, 1/K), or fp8 codes ~ N(0, 1) with block scales."""
    gen = torch.Generator(device=device).manual_seed(seed)
    E, N, K = dims.E, dims.N, dims.K
    if not dims.fp8:
        w1 = torch.randn(E, 2 * N, K, device=device, dtype=torch.bfloat16, generator=gen)
        w2 = torch.randn(E, K, N, device=device, dtype=torch.bfloat16, generator=gen)
        return Weights(w1.mul_(K**-0.5), w2.mul_(N**-0.5))
    if not dims.block_shape:
        raise ValueError("fp8_w8a8 here needs block_shape (per-tensor fp8 is not wired)")
    bn, bk = dims.block_shape
    w1 = torch.empty(E, 2 * N, K, device=device, dtype=torch.float8_e4m3fn)
    w2 = torch.empty(E, K, N, device=device, dtype=torch.float8_e4m3fn)
    for e in range(E):  # per expert keeps the bf16 temporaries small
        w1[e] = torch.randn(2 * N, K, device=device, generator=gen).to(torch.float8_e4m3fn)
        w2[e] = torch.randn(K, N, device=device, generator=gen).to(torch.float8_e4m3fn)
    s1 = torch.rand(E, math.ceil(2 * N / bn), math.ceil(K / bk), device=device, generator=gen)
    s2 = torch.rand(E, math.ceil(K / bn), math.ceil(N / bk), device=device, generator=gen)
    return Weights(w1, w2, s1.add_(0.5).mul_(K**-0.5), s2.add_(0.5).mul_(N**-0.5))


def random_routing(
    M: int, dims: MoEDims, device: str = "cuda", gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random distinct top-k experts per token; softmax-normalized float32 weights."""
    scores = torch.rand(M, dims.E, device=device, generator=gen)
    ids = scores.topk(dims.topk, dim=-1).indices.to(torch.int32)
    w = torch.softmax(torch.randn(M, dims.topk, device=device, generator=gen), dim=-1)
    return w.float().contiguous(), ids.contiguous()


# --------------------------------------------------------------------------- the runner


@functools.lru_cache(maxsize=1)
def sglang_kernels():
    """(invoke_fused_moe_kernel, moe_sum_reduce_triton, triton.language) from the wheel."""
    import triton.language as tl
    from sglang.kernels.ops.moe import fused_moe_triton_kernels as fk

    return fk.invoke_fused_moe_kernel, getattr(fk, "moe_sum_reduce_triton", None), tl


KERNEL_KEYS = (
    "BLOCK_SIZE_M",
    "BLOCK_SIZE_N",
    "BLOCK_SIZE_K",
    "GROUP_SIZE_M",
    "num_warps",
    "num_stages",
)


def kernel_config(config: dict) -> dict:
    """The keys SGLang passes to the Triton kernel (it pops USE_TMA etc. before the call)."""
    return {k: int(config[k]) for k in KERNEL_KEYS if k in config}


class MoERunner:
    """Static buffers for one (dims, M, BLOCK_SIZE_M), so a CUDA graph can be captured.

    `load(hidden, topk_w, topk_ids)` copies an input set in (and aligns it); `forward(config)`
    runs the whole MoE layer into `self.out`; `gemms(config)` runs only the two GEMMs on the
    activations already in the intermediate buffers (for the bandwidth figure).
    """

    def __init__(self, dims: MoEDims, weights: Weights, M: int, block_m: int, device="cuda"):
        self.dims, self.w, self.M, self.block_m = dims, weights, M, block_m
        numel = M * dims.topk
        # Rounded up to a multiple of 16: every M of one kind then shares one Triton
        # specialization (EM % 16). Extra entries are past num_tokens_post_pad: the kernel
        # returns on them at once.
        length = max_padded_tokens(numel, block_m, dims.E)
        self.length = (length + 15) // 16 * 16
        dev = device
        self.hidden = torch.zeros(M, dims.K, device=dev, dtype=torch.bfloat16)
        self.topk_w = torch.zeros(M, dims.topk, device=dev, dtype=torch.float32)
        self.topk_ids = torch.zeros(M, dims.topk, device=dev, dtype=torch.int32)
        self.sorted_ids = torch.zeros(self.length, device=dev, dtype=torch.int32)
        self.expert_ids = torch.zeros(self.length // block_m + 1, device=dev, dtype=torch.int32)
        self.n_post_pad = torch.zeros(1, device=dev, dtype=torch.int32)
        self.cache1 = torch.empty(numel, 2 * dims.N, device=dev, dtype=torch.bfloat16)
        self.cache2 = torch.empty(numel, dims.N, device=dev, dtype=torch.bfloat16)
        self.cache3 = torch.empty(M, dims.topk, dims.K, device=dev, dtype=torch.bfloat16)
        self.out = torch.empty(M, dims.K, device=dev, dtype=torch.bfloat16)
        # fp8: the activations are quantized here where the installed kernel takes them so
        # (SGLang >= 0.5.17), else handed over in bf16 for SGLang to quantize, as it does itself
        self.prequant = dims.fp8 and SGLang.here().moe_kernel_takes_fp8_activations()
        if self.prequant:
            bk = dims.block_shape[1]
            self.a1_q = torch.zeros(M, dims.K, device=dev, dtype=torch.float8_e4m3fn)
            self.a1_s = torch.ones(M, dims.K // bk, device=dev, dtype=torch.float32)
            self.a2_q = torch.zeros(numel, dims.N, device=dev, dtype=torch.float8_e4m3fn)
            self.a2_s = torch.ones(numel, dims.N // bk, device=dev, dtype=torch.float32)

    def load(self, hidden: torch.Tensor, topk_w: torch.Tensor, topk_ids: torch.Tensor) -> None:
        s, e, n = align_block_size(topk_ids, self.block_m, self.dims.E, self.length)
        self.hidden.copy_(hidden)
        self.topk_w.copy_(topk_w)
        self.topk_ids.copy_(topk_ids)
        self.sorted_ids.copy_(s)
        self.expert_ids[: e.numel()].copy_(e)
        self.n_post_pad.copy_(n)

    def _gemm(self, a, a_s, b, b_s, c, mul_routed: bool, top_k: int, config: dict) -> None:
        invoke, _, tl = sglang_kernels()
        d = self.dims
        # filter_expert: SGLang's server passes `num_experts != num_local_experts`, False where
        # every expert is local (no EP), as here; the kernel's default True compiles another
        # binary (fused_moe.py, SGLang 0.5.16-0.5.23)
        kw: dict[str, Any] = {"filter_expert": False}
        if top_k == 1 and d.topk > 1:
            kw["router_topk"] = d.topk
        invoke(
            a,
            b,
            None,
            c,
            a_s,
            b_s,
            None,
            self.topk_w,
            self.topk_ids,
            self.sorted_ids,
            self.expert_ids,
            self.n_post_pad,
            mul_routed,
            top_k,
            kernel_config(config),
            compute_type=tl.bfloat16,
            use_fp8_w8a8=d.fp8,
            use_int8_w8a8=False,
            use_int8_w8a16=False,
            use_int4_w4a16=False,
            per_channel_quant=False,
            block_shape=list(d.block_shape) if d.block_shape else None,
            **kw,
        )

    def gemm1(self, config: dict) -> None:
        a, a_s = (self.a1_q, self.a1_s) if self.prequant else (self.hidden, None)
        self._gemm(a, a_s, self.w.w1, self.w.w1_scale, self.cache1, False, self.dims.topk, config)

    def gemm2(self, config: dict) -> None:
        a, a_s = (self.a2_q, self.a2_s) if self.prequant else (self.cache2, None)
        self._gemm(a, a_s, self.w.w2, self.w.w2_scale, self.cache3, True, 1, config)

    def forward(self, config: dict) -> torch.Tensor:
        d = self.dims
        if self.prequant:
            q, s = quant_per_token_group(self.hidden, d.block_shape[1])
            self.a1_q.copy_(q)
            self.a1_s.copy_(s)
        self.gemm1(config)
        gate, up = self.cache1[:, : d.N], self.cache1[:, d.N :]
        torch.mul(torch.nn.functional.silu(gate), up, out=self.cache2)
        if self.prequant:
            q, s = quant_per_token_group(self.cache2, d.block_shape[1])
            self.a2_q.copy_(q)
            self.a2_s.copy_(s)
        self.gemm2(config)
        torch.sum(self.cache3, dim=1, out=self.out)
        return self.out

    def gemms(self, config: dict) -> None:
        self.gemm1(config)
        self.gemm2(config)


# --------------------------------------------------------------------------- reference


def reference(
    dims: MoEDims,
    w: Weights,
    hidden: torch.Tensor,
    topk_w: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    mirror_quant: bool = False,
) -> torch.Tensor:
    """float32 MoE layer: sum_j topk_w[t, j] * W2_e (silu(G_e x) * U_e x), e = topk_ids[t, j].

    fp8 weights are dequantized with their block scales. By default activations stay float32
    (the kernel's activation quantization is then part of the error). With mirror_quant the
    reference rounds where the kernel does (gate/up output to bf16, fp8 per-token-group
    quantization of both GEMM inputs), so what remains is the kernel's own error."""
    N, K = dims.N, dims.K
    mirror = mirror_quant and dims.fp8
    x = _fake_quant(hidden, dims) if mirror else hidden.float()
    out = torch.zeros(x.shape[0], K, device=x.device, dtype=torch.float32)
    for e in torch.unique(topk_ids).tolist():
        tok, slot = (topk_ids == e).nonzero(as_tuple=True)
        w1 = _dequant(w.w1[e], w.w1_scale[e] if w.w1_scale is not None else None, dims)
        w2 = _dequant(w.w2[e], w.w2_scale[e] if w.w2_scale is not None else None, dims)
        h = x[tok] @ w1.t()
        if mirror_quant:
            h = h.to(torch.bfloat16).float()
        a = torch.nn.functional.silu(h[:, :N]) * h[:, N:]
        if mirror:
            a = _fake_quant(a.to(torch.bfloat16), dims)
        y = (a @ w2.t()) * topk_w[tok, slot].unsqueeze(1)
        out.index_add_(0, tok, y)
    return out


def _fake_quant(x: torch.Tensor, dims: MoEDims) -> torch.Tensor:
    g = dims.block_shape[1]
    q, s = quant_per_token_group(x, g)
    return (q.float().view(x.shape[0], -1, g) * s.unsqueeze(-1)).view(x.shape)


def _dequant(wt: torch.Tensor, scale: torch.Tensor | None, dims: MoEDims) -> torch.Tensor:
    wf = wt.float()
    if scale is None:
        return wf
    bn, bk = dims.block_shape
    s = scale.repeat_interleave(bn, 0)[: wf.shape[0]].repeat_interleave(bk, 1)[:, : wf.shape[1]]
    return wf * s


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.float()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp(min=1e-30))
