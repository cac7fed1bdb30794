"""Candidate kernel configs and the rules that prune those that cannot fit or cannot win.

`full_space()` is SGLang's CUDA grid (get_configs_compute_bound in the tuner's common_utils.py):
num_stages {2,3,4,5} x BLOCK_SIZE_M {16,32,64,128,256} x BLOCK_SIZE_K {64,128,256} x
BLOCK_SIZE_N {32,64,128,256} x num_warps {4,8} x GROUP_SIZE_M {1,16,32,64} = 1920 configs.

`candidates(shape, M)` is what the tuner measures at batch size M: that grid, pruned.
`small_m_space()` is a wider grid for small batches (SMALL_M_GRID), which the tuner does not
search: measured on an H100, none of it beat SGLang's grid (docs/moe-small-batches.md);
benchmarks/moe_small_m.py compares the two.

`prune(space, shape, dtype, block_shape, M, limits)` -> Pruned(kept, dropped) where each
dropped config carries the rule that removed it:

- block_k: with block quantization, BLOCK_SIZE_K must divide block_k (the kernel reads one
  scale per K tile; SGLang's tuner applies the same filter);
- block_n: with block quantization, BLOCK_SIZE_N and block_n must divide one another (a tile
  spans whole scale blocks or lies inside one);
- smem: num_stages pipeline buffers of an A tile (BM x BK) and a B tile (BK x BN), plus the
  block scales, above the per-block shared memory (Hopper: 227 KiB opt-in). Triton allocates one
  buffer per stage (its OutOfResources report for BM=128/BN=256/BK=64 fp16 at 4 stages asks
  for 196608 bytes = 4 x 49152);
- registers: the fp32 accumulator alone needs BM x BN / (32 x num_warps) registers per thread;
  above 255 the kernel spills or fails to compile;
- block_m: BLOCK_SIZE_M above max(16, next_pow2(M)): no expert can get more than M tokens,
  so a bigger M tile only adds padding rows (same weight loads, more wasted MMA);
- dims: a tile wider than the (power-of-two ceiling of the) largest GEMM dimension it tiles
  only adds masked work: BLOCK_SIZE_N > next_pow2(max N), BLOCK_SIZE_K > next_pow2(max K); one
  config serves both GEMMs, so a tile too wide for only one of them is kept.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")

GRID: dict[str, tuple[int, ...]] = {
    "num_stages": (2, 3, 4, 5),
    "BLOCK_SIZE_M": (16, 32, 64, 128, 256),
    "BLOCK_SIZE_K": (64, 128, 256),
    "BLOCK_SIZE_N": (32, 64, 128, 256),
    "num_warps": (4, 8),
    "GROUP_SIZE_M": (1, 16, 32, 64),
}

# Small batches. At M <= 16 every expert gets at most 16 tokens, so BLOCK_SIZE_M is 16 and a
# GEMM is a stream of expert weights: it launches topk x ceil(N / BLOCK_SIZE_N) working blocks,
# each reading a BLOCK_SIZE_N-wide strip over all of K. With SGLang's narrowest tile (32) that is
# fewer blocks than the card has SMs for narrow shapes (DeepSeek-V3 TP8 gate/up at M=1:
# 9 x 512 / 32 = 144 blocks for 132 SMs, one block each, few bytes in flight per SM), and 4 warps
# share a 16 x 32 tile. The small-batch grid adds narrower tiles (16: twice the blocks), fewer
# warps per block (1, 2: more blocks resident per SM), and deeper pipelines (6, 7 stages: more
# weight bytes in flight per block). GROUP_SIZE_M only orders the M blocks, of which a small batch
# has one per routed expert, so it stays at 1 here. SGLang's kernel has no split-K; these keys
# are all it reads, so every config found here runs on an unpatched SGLang. Measured on an H100
# at M = 1, 2, 4 for two fp8 shapes (E=128/N=1536/K=4096 and E=257/N=256/K=7168), the best of
# this grid never beat the best of SGLang's, so the tuner keeps to SGLang's grid.
SMALL_M_GRID: dict[str, tuple[int, ...]] = {
    "num_stages": (2, 3, 4, 5, 6, 7),
    "BLOCK_SIZE_M": (16,),
    "BLOCK_SIZE_K": (64, 128, 256),
    "BLOCK_SIZE_N": (16, 32, 64, 128),
    "num_warps": (1, 2, 4),
    "GROUP_SIZE_M": (1,),
}

# bytes per element of the A (activation) and B (weight) tiles the kernel stages in smem
_ELEM_BYTES = {
    None: (2, 2),
    "float32": (4, 4),
    "fp8_w8a8": (1, 1),
    "int8_w8a8": (1, 1),
    "int8_w8a16": (2, 1),
    "int4_w4a16": (2, 0.5),
}


@dataclass(frozen=True)
class Limits:
    """Hardware limits one config must fit (defaults: Hopper H100/H200/GH200, sm_90)."""

    smem_per_block: int = 227 * 1024
    max_regs_per_thread: int = 255
    min_block_m: int = 16

    @classmethod
    def hopper(cls) -> Limits:
        return cls()


def key(config: dict[str, Any]) -> tuple[int, ...]:
    """A hashable identity for a config (the six tuned fields, in KEYS order)."""
    return tuple(int(config[k]) for k in KEYS)


def from_key(k: Sequence[int]) -> dict[str, int]:
    return dict(zip(KEYS, (int(v) for v in k), strict=True))


def _product(grid: dict[str, tuple[int, ...]]) -> list[dict[str, int]]:
    out = []
    for st, bm, bk, bn, w, g in itertools.product(
        grid["num_stages"],
        grid["BLOCK_SIZE_M"],
        grid["BLOCK_SIZE_K"],
        grid["BLOCK_SIZE_N"],
        grid["num_warps"],
        grid["GROUP_SIZE_M"],
    ):
        out.append(
            {
                "BLOCK_SIZE_M": bm,
                "BLOCK_SIZE_N": bn,
                "BLOCK_SIZE_K": bk,
                "GROUP_SIZE_M": g,
                "num_warps": w,
                "num_stages": st,
            }
        )
    return out


def full_space() -> list[dict[str, int]]:
    """SGLang's 1920-config CUDA search space, in a fixed order."""
    return _product(GRID)


def small_m_space() -> list[dict[str, int]]:
    """The small-batch grid (SMALL_M_GRID), in a fixed order."""
    return _product(SMALL_M_GRID)


def candidates(shape: Any, M: int, limits: Limits | None = None) -> list[dict[str, int]]:
    """The configs the tuner measures for `shape` at batch size M (SGLang's grid, pruned)."""
    return prune(full_space(), shape, M=M, limits=limits).kept


def next_pow2(n: int) -> int:
    n = max(1, int(n))
    return 1 << (n - 1).bit_length()


def smem_bytes(config: dict[str, Any], dtype: str | None, block_shape=None) -> int:
    """Estimated shared memory of one block: num_stages buffers of the A and B tiles (+ scales)."""
    a, b = _ELEM_BYTES.get(dtype, (2, 2))
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    per_stage = bm * bk * a + bk * bn * b
    if block_shape:
        per_stage += 4 * (bm + max(1, bn // max(1, int(block_shape[0] or bn))))
    return int(config["num_stages"] * per_stage)


def acc_regs_per_thread(config: dict[str, Any]) -> int:
    return config["BLOCK_SIZE_M"] * config["BLOCK_SIZE_N"] // (32 * config["num_warps"])


@dataclass
class Pruned:
    kept: list[dict[str, int]]
    dropped: list[tuple[dict[str, int], str, str]] = field(default_factory=list)  # cfg, rule, why

    def counts(self) -> dict[str, int]:
        """How many configs each rule removed."""
        return dict(Counter(rule for _, rule, _ in self.dropped))

    def reason(self, config: dict[str, Any]) -> str | None:
        k = key(config)
        for c, rule, why in self.dropped:
            if key(c) == k:
                return f"{rule}: {why}"
        return None


def why_not(
    config: dict[str, Any],
    shape: Any,
    dtype: str | None,
    block_shape: Sequence[int] | None,
    M: int,
    limits: Limits,
) -> tuple[str, str] | None:
    """(rule, reason) when `config` cannot fit or cannot win at batch size M, else None."""
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    if block_shape and all(block_shape):
        block_n, block_k = int(block_shape[0]), int(block_shape[1])
        if block_k % bk:
            return (
                "block_k",
                f"BLOCK_SIZE_K {bk} does not divide the quantization block_k {block_k}",
            )
        if bn % block_n and block_n % bn:
            return (
                "block_n",
                f"BLOCK_SIZE_N {bn} and the quantization block_n {block_n} do not nest",
            )
    elif block_shape and block_shape[1] and int(block_shape[1]) % bk:  # group quant [0, g]
        return "block_k", f"BLOCK_SIZE_K {bk} does not divide the group size {block_shape[1]}"
    smem = smem_bytes(config, dtype, block_shape)
    if smem > limits.smem_per_block:
        return "smem", f"{smem} B of shared memory > {limits.smem_per_block} B per block"
    regs = acc_regs_per_thread(config)
    if regs > limits.max_regs_per_thread:
        return (
            "registers",
            f"accumulator needs {regs} registers/thread > {limits.max_regs_per_thread}",
        )
    cap = max(limits.min_block_m, next_pow2(M))
    if bm > cap:
        return "block_m", f"BLOCK_SIZE_M {bm} > {cap}: no expert gets more than M={M} tokens"
    if shape is not None:
        n_max = max(2 * int(shape.N), int(shape.K))  # w1: N=2*inter, K=hidden; w2: N=hidden
        k_max = max(int(shape.K), int(shape.N))  # w1: K=hidden; w2: K=inter (one config, both)
        if bn > next_pow2(n_max):
            return "dims", f"BLOCK_SIZE_N {bn} wider than every GEMM N (max {n_max})"
        if bk > next_pow2(k_max):
            return "dims", f"BLOCK_SIZE_K {bk} wider than every GEMM K (max {k_max})"
    return None


def prune(
    space: Iterable[dict[str, Any]],
    shape: Any = None,
    dtype: str | None = None,
    block_shape: Sequence[int] | None = None,
    M: int = 1,
    limits: Limits | None = None,
) -> Pruned:
    """Split `space` into configs worth measuring at batch size M and those dropped (with why).

    `shape` (a MoEShape, or None to skip the dims rule) supplies dtype/block_shape when those are
    not given. Deterministic: kept configs stay in the order of `space`.
    """
    limits = limits or Limits()
    if shape is not None:
        dtype = dtype if dtype is not None else getattr(shape, "dtype", None)
        if block_shape is None:
            block_shape = getattr(shape, "block_shape", None)
    kept: list[dict[str, int]] = []
    dropped: list[tuple[dict[str, int], str, str]] = []
    seen: set[tuple[int, ...]] = set()
    for cfg in space:
        k = key(cfg)
        if k in seen:
            continue
        seen.add(k)
        verdict = why_not(cfg, shape, dtype, block_shape, M, limits)
        if verdict is None:
            kept.append(dict(cfg))
        else:
            dropped.append((dict(cfg), *verdict))
    return Pruned(kept, dropped)
