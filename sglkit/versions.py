"""The installed SGLang's version, and the names the kit uses that differ by version.

Read without importing SGLang (which takes tens of seconds): the distribution's metadata. Each
rename is one row below, with the first version that has the new name; the kit emits the new
name from that version on and the old one before it. Older names stay accepted by the newer
SGLang as deprecated aliases, so a threshold that is later than the real change is safe; one
that is earlier is not. The kernel-call thresholds at the end are behaviour, not names: there
only the exact version is right, and each was found by reading every wheel from 0.5.16 to
0.5.23. Every threshold is a version whose source was read (docs/server.md).
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass

Version = tuple[int, ...]

# SGLang 0.5.16 server_args.py: --disable-cuda-graph is a DeprecatedStoreTrueAction whose
# new_flag is "--cuda-graph-backend-{decode,prefill}=disabled"; environ.py renames every
# SGL_* variable to SGLANG_* with a DeprecationWarning; http_server.py marks /get_model_info and
# /get_server_info deprecated in favour of /model_info and /server_info.
CUDA_GRAPH_BACKEND_FLAGS: Version = (0, 5, 16)
SGL_ENV_RENAMED: Version = (0, 5, 16)
INFO_ENDPOINTS_RENAMED: Version = (0, 5, 16)
# SGLang 0.5.17 kernels/ops/moe/fused_moe_triton_kernels.py: invoke_fused_moe_kernel takes
# block-quantized fp8 activations with their scales ("Pre-quantized activation"); 0.5.16
# quantizes A itself with a kernel it JIT-builds, and that build fails for an fp8 input
# ("ninja exited with status 1"). Read in the 0.5.16, 0.5.17 and 0.5.23 wheels.
MOE_KERNEL_TAKES_FP8_ACTIVATIONS: Version = (0, 5, 17)
# SGLang 0.5.22 srt/layers/moe/moe_runner/triton_utils/moe_align_block_size.py rounds the length
# of sorted_token_ids up to a multiple of 4 ("The align kernel pads sorted_ids with int4
# stores"); 0.5.16 to 0.5.21 allocate it unrounded. That length is the fused-MoE kernel's EM,
# an integer Triton specializes on (divisible by 16 or not). Read in the 0.5.16-0.5.23 wheels.
MOE_ALIGN_PADS_TO_4: Version = (0, 5, 22)
# SGLang 0.5.19 kernels/ops/moe/fused_moe_triton_kernels.py: the fused-MoE kernel takes the PDL
# constexprs USE_GDC and GDC_EARLY (`A.shape[0] <= 512`); 0.5.16-0.5.18 have neither. Read in
# the 0.5.16-0.5.23 wheels.
MOE_KERNEL_GDC_EARLY: Version = (0, 5, 19)


def parse(text: str | None) -> Version | None:
    """'0.5.16' -> (0, 5, 16); '0.5.10rc0' -> (0, 5, 10); None or no digits -> None."""
    if not text:
        return None
    m = re.match(r"^\s*v?(\d+(?:\.\d+)*)", text)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def installed(dist: str = "sglang") -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class SGLang:
    """What the kit knows of one SGLang version; `version` None means not installed here, and
    then the newest names are used (what a current install would want)."""

    version: str | None

    @classmethod
    def here(cls) -> SGLang:
        return cls(installed())

    def at_least(self, threshold: Version) -> bool:
        v = parse(self.version)
        return v is None or v >= threshold

    def disable_cuda_graph(self) -> list[tuple[str, str | bool]]:
        """Flags (name, value) that turn CUDA graphs off."""
        if self.at_least(CUDA_GRAPH_BACKEND_FLAGS):
            return [("--cuda-graph-backend-decode", "disabled"),
                    ("--cuda-graph-backend-prefill", "disabled")]  # fmt: skip
        return [("--disable-cuda-graph", True)]

    def env_name_used(self, name: str) -> bool:
        """Whether this SGLang reads `name` itself. The old SGL_ spelling is only written for
        versions before the rename: newer ones copy it to SGLANG_ with a warning per variable."""
        return not (name.startswith("SGL_") and self.at_least(SGL_ENV_RENAMED))

    def deepgemm_precompile(self, on: bool) -> dict[str, str]:
        """The variable that turns SGLang's all-M DeepGEMM precompile at start on or off."""
        names = ("SGLANG_JIT_DEEPGEMM_PRECOMPILE", "SGL_JIT_DEEPGEMM_PRECOMPILE")
        return {n: "1" if on else "0" for n in names if self.env_name_used(n)}

    def endpoints(self, name: str) -> tuple[str, ...]:
        """HTTP paths to try, in order, for 'model_info' or 'server_info'."""
        new, old = f"/{name}", f"/get_{name}"
        return (new, old) if self.at_least(INFO_ENDPOINTS_RENAMED) else (old, new)

    def moe_align_pads_to_4(self) -> bool:
        """Whether moe_align_block_size rounds the sorted_token_ids length up to 4."""
        return self.at_least(MOE_ALIGN_PADS_TO_4)

    def moe_kernel_has_gdc_early(self) -> bool:
        """Whether the fused-MoE kernel compiles apart for `A.shape[0] <= 512` (PDL)."""
        return self.at_least(MOE_KERNEL_GDC_EARLY)

    def moe_kernel_takes_fp8_activations(self) -> bool:
        """Whether invoke_fused_moe_kernel accepts activations the caller already quantized
        (per-token-group fp8 with scales); before, it must be given bf16 and quantizes them."""
        return self.at_least(MOE_KERNEL_TAKES_FP8_ACTIVATIONS)
