"""SGLang's moe_align_block_size buffer: the length of sorted_token_ids, which the fused-MoE
kernel receives as EM (an integer Triton specializes on). Torch-free, so that the task modules
that plan kernel variants (cache.triton, the warm) import no torch."""

from __future__ import annotations

from sglkit.versions import SGLang


def max_padded_tokens(numel: int, block_size: int, num_experts: int,
                      pad_to_4: bool | None = None) -> int:  # fmt: skip
    """Length of sorted_token_ids as SGLang's moe_align_block_size allocates it (the kernel's EM):
    rounded up to 4 from SGLang 0.5.22 on (`pad_to_4`, default: the installed SGLang's way)."""
    if numel < num_experts + 1:
        n = numel * block_size
    else:
        n = numel + (num_experts + 1) * (block_size - 1)
    if pad_to_4 is None:
        pad_to_4 = SGLang.here().moe_align_pads_to_4()
    return (n + 3) // 4 * 4 if pad_to_4 else n
