"""The file name SGLang looks up for a tuned fused-MoE config, and where it looks.

Rules derived from the source of the SGLang wheels on PyPI (our own code, not a copy), function
`get_config_file_name` and its callers `get_moe_configs` / `try_get_optimal_moe_config`
(sglang/srt/layers/moe/fused_moe_triton/fused_moe_triton_config.py up to 0.5.10, then
sglang/srt/layers/moe/moe_runner/triton_utils/fused_moe_triton_config.py). Versions read:
0.4.10, 0.5.2, 0.5.3, 0.5.4, 0.5.4.post1, 0.5.4.post2, 0.5.4.post3, 0.5.5, 0.5.5.post1-3, 0.5.6,
0.5.7, 0.5.8, 0.5.9, 0.5.10, 0.5.11, 0.5.12, 0.5.13, 0.5.14, 0.5.15, 0.5.15.post1, 0.5.16, 0.5.23.

    E={E},N={N},device_name={dev}[,dtype={dtype}][,block_shape=[bn, bk]]
        [,per_channel_quant=True][_down].json      (one name, no spaces but the block list's)

- device_name is torch.cuda.get_device_name() with spaces replaced by underscores;
- dtype is omitted for bf16/fp16 (SGLang's get_config_dtype_str returns None for them);
- block_shape is printed as a Python list ("[128, 128]") and omitted when absent or when either
  entry is 0 (compressed-tensors group quantization passes [0, group_size]);
- `,per_channel_quant=True`: the tuner writes it from 0.5.4, but the server only looks it up
  from 0.5.6 (0.5.4 and 0.5.5 look up the name without it, so a per-channel config must carry
  the plain name to be found there);
- `_down` (a separately tuned down-projection GEMM): looked up from 0.5.4.post2.

The folder: `$SGLANG_MOE_CONFIG_DIR/configs/triton_<triton.__version__ with . -> _>/` from 0.5.3
(before, only the package's own configs folder). When the exact Triton folder lacks the file,
SGLang tries other Triton folders: a fixed list (3.4.0, 3.3.1, 3.2.0, 3.1.0) up to 0.5.11, every
`triton_*` folder present, newest first, from 0.5.12. A missing `_down` file falls back to the
up-projection file from 0.5.16 (before, the down GEMM uses the up config / default).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sglkit import nvml
from sglkit.errors import ConfigError, SglkitError

# dtype flag values we accept -> SGLang's config dtype string (None: not in the name)
DTYPES: dict[str, str | None] = {
    "fp8_w8a8": "fp8_w8a8",
    "int8_w8a8": "int8_w8a8",
    "int8_w8a16": "int8_w8a16",
    "int4_w4a16": "int4_w4a16",
    "float32": "float32",
    "bf16": None,
    "bfloat16": None,
    "fp16": None,
    "float16": None,
    "auto": None,
}

# The SGLang version assumed when none is given and none is installed: the newest one read.
LATEST_READ = "0.5.23"

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:\.?(rc|post|dev)\.?(\d+))?(?:\+.*)?$")
_KIND_RANK = {"dev": 0, "rc": 1, None: 2, "post": 3}


def parse_version(text: str) -> tuple[int, int, int, int, int]:
    """'0.5.4.post2' -> sortable tuple; ConfigError naming --sglang-version when unparseable."""
    m = _VERSION.match(str(text).strip())
    if not m:
        raise ConfigError(f"--sglang-version: cannot parse {text!r} (expected like 0.5.23)")
    major, minor, patch, kind, n = m.groups()
    return (int(major), int(minor), int(patch or 0), _KIND_RANK[kind], int(n or 0))


@dataclass(frozen=True)
class Rule:
    """What one SGLang version does with config names and folders."""

    version: str
    per_channel_in_name: bool  # the server looks up ,per_channel_quant=True
    down_lookup: bool  # the server looks up a separate _down file
    reads_config_dir_env: bool  # SGLANG_MOE_CONFIG_DIR is honoured
    fallback: str  # "fixed-list" | "on-disk"
    down_falls_back_to_up: bool
    notes: tuple[str, ...]

    def explain(self) -> str:
        return f"SGLang {self.version}: " + "; ".join(self.notes)


FIXED_FALLBACK_TRITON = ("3.4.0", "3.3.1", "3.2.0", "3.1.0")


def rule_for(version: str | None = None) -> Rule:
    """The naming/lookup rule of SGLang `version` (None: the installed one, else LATEST_READ)."""
    if version is None:
        version = installed_sglang_version() or LATEST_READ
    v = parse_version(version)
    pc = v >= parse_version("0.5.6")
    down = v >= parse_version("0.5.4.post2")
    env = v >= parse_version("0.5.3")
    on_disk = v >= parse_version("0.5.12")
    reuse = v >= parse_version("0.5.16")
    notes = [
        "per-channel configs are looked up as ,per_channel_quant=True (since 0.5.6)"
        if pc
        else (
            "per-channel marker not looked up by the server (0.5.4/0.5.5 write it, look up the "
            "plain name)"
            if v >= parse_version("0.5.4")
            else "no per-channel marker in names (before 0.5.4)"
        ),
        "separate _down configs looked up (since 0.5.4.post2)" if down else "no _down lookup",
        "SGLANG_MOE_CONFIG_DIR honoured (since 0.5.3)"
        if env
        else "SGLANG_MOE_CONFIG_DIR ignored (before 0.5.3): only the package's own configs",
        "fallback: every triton_* folder present, newest first (since 0.5.12)"
        if on_disk
        else "fallback: triton " + ", ".join(FIXED_FALLBACK_TRITON) + " folders (before 0.5.12)",
    ]
    if down:
        notes.append(
            "a missing _down file reuses the up file (since 0.5.16)"
            if reuse
            else "a missing _down file means the up config is used for the down GEMM"
        )
    return Rule(
        str(version), pc, down, env, "on-disk" if on_disk else "fixed-list", reuse, tuple(notes)
    )


def installed_sglang_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def normalize_device_name(name: str) -> str:
    """As SGLang: the CUDA device name with spaces replaced by underscores."""
    return name.strip().replace(" ", "_")


def device_name(override: str | None = None) -> str:
    """The normalized GPU name: `override` (--device-name), else ask torch, else NVML."""
    if override:
        return normalize_device_name(override)
    try:
        import torch

        if torch.cuda.is_available():
            return normalize_device_name(torch.cuda.get_device_name(0))
    except Exception:
        pass
    try:
        return normalize_device_name(nvml.gpu0()[0])
    except Exception:
        pass
    raise SglkitError("--device-name: no GPU answers (torch, NVML); give --device-name NAME")


def config_dtype(dtype: str | None) -> str | None:
    """A dtype flag ('fp8_w8a8', 'bf16', None...) -> the string SGLang puts in the name."""
    if dtype is None:
        return None
    key = str(dtype).strip().lower()
    if key not in DTYPES:
        raise ConfigError(f"--dtype: unknown {dtype!r} (known: {', '.join(DTYPES)})")
    return DTYPES[key]


def block_shape_text(block_shape: Sequence[int] | None) -> str | None:
    """'[128, 128]' as SGLang prints the list, or None when absent or with a zero entry."""
    if not block_shape or not all(block_shape):
        return None
    return "[" + ", ".join(str(int(b)) for b in block_shape) + "]"


def config_file_name(
    E: int,
    N: int,
    device_name: str,
    dtype: str | None,
    block_shape: Sequence[int] | None = None,
    per_channel_quant: bool = False,
    down: bool = False,
    sglang_version: str | None = None,
) -> str:
    """The exact file name SGLang `sglang_version` looks up (None: installed, else LATEST_READ).

    `dtype` is a dtype flag or SGLang's config dtype string; `device_name` is normalized here.
    A `down` name for a version that never looks one up is a ConfigError naming --down.
    """
    if int(E) <= 0 or int(N) <= 0:
        raise ConfigError(f"E and N must be positive (got E={E}, N={N})")
    rule = rule_for(sglang_version)
    if down and not rule.down_lookup:
        raise ConfigError(
            f"--down: SGLang {rule.version} looks up no _down file (needs 0.5.4.post2+)"
        )
    parts = [f"E={int(E)}", f"N={int(N)}", f"device_name={normalize_device_name(device_name)}"]
    d = config_dtype(dtype)
    if d:
        parts.append(f"dtype={d}")
    bs = block_shape_text(block_shape)
    if bs:
        parts.append(f"block_shape={bs}")
    if per_channel_quant and rule.per_channel_in_name:
        parts.append("per_channel_quant=True")
    return ",".join(parts) + ("_down" if down else "") + ".json"


def triton_dir_name(triton_version: str) -> str:
    """'3.4.0' -> 'triton_3_4_0', as SGLang names the folder from triton.__version__."""
    return "triton_" + str(triton_version).replace(".", "_")


def installed_triton_version() -> str | None:
    from importlib import metadata

    for dist in ("triton", "pytorch-triton"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


# ---- the old fork's scheme --------------------------------------------------------------------

_OLD_PC = re.compile(r",per_channel_quant=(1|0)(?=(_down)?\.json$)")


def migrated_name(name: str) -> str | None:
    """The current name for a file named by the old fork's scheme, or None when already current.

    The fork wrote `,per_channel_quant=1` (and `=0` for not per-channel); SGLang writes
    `,per_channel_quant=True` and nothing when not per-channel.
    """
    m = _OLD_PC.search(name)
    if not m:
        return None
    replacement = ",per_channel_quant=True" if m.group(1) == "1" else ""
    return name[: m.start()] + replacement + name[m.end() :]


_NAME = re.compile(
    r"^E=(?P<E>\d+),N=(?P<N>\d+),device_name=(?P<dev>[^,]+)"
    r"(?:,dtype=(?P<dtype>[a-z0-9_]+))?"
    r"(?:,block_shape=\[(?P<bn>\d+), (?P<bk>\d+)\])?"
    r"(?P<pc>,per_channel_quant=True)?"
    r"(?P<down>_down)?\.json$"
)


def parse_name(name: str) -> dict | None:
    """Fields of a current-scheme file name, or None when it is not one."""
    m = _NAME.match(name)
    if not m:
        return None
    g = m.groupdict()
    return {
        "E": int(g["E"]),
        "N": int(g["N"]),
        "device_name": g["dev"],
        "dtype": g["dtype"],
        "block_shape": [int(g["bn"]), int(g["bk"])] if g["bn"] else None,
        "per_channel_quant": bool(g["pc"]),
        "down": bool(g["down"]),
    }
