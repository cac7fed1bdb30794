"""Check 1: the driver answers NVML; GPU name, compute capability, memory, driver and CUDA.

On a GH200 it also reports the Grace CPU and the NVLink-C2C link where NVML exposes it.
"""

from __future__ import annotations

import platform
from pathlib import Path

from sglkit.gpu.checks import Context, Fail, Skip

# The kit's profiles and tuned kernels target Hopper (sm_90): fp8 block-quantized MoE and
# DeepGEMM need it. An older card answers NVML but cannot serve those profiles.
MIN_CAPABILITY = (9, 0)


def nvml():
    """The pynvml module with NVML initialised, or Skip naming why not."""
    try:
        import pynvml
    except Exception as e:
        raise Skip(f"pynvml (nvidia-ml-py) does not import ({type(e).__name__})", "gpu") from None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception as e:
        raise Skip(f"no NVIDIA driver answers NVML ({type(e).__name__}: {e})", "gpu") from None
    if not count:
        raise Skip("NVML answers but reports no GPU", "gpu")
    return pynvml


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def cuda_version_text(v: int) -> str:
    """NVML's CUDA driver version integer (13000) as text ("13.0")."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def cpu_model(text: str | None = None, machine: str | None = None) -> str:
    """The CPU as /proc/cpuinfo names it; Grace has no model name there, but ARM part 0xd4f
    (Neoverse-V2)."""
    machine = machine or platform.machine()
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return machine
    for line in text.splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    for line in text.splitlines():
        if line.startswith("CPU part") and line.split(":", 1)[1].strip() == "0xd4f":
            return f"{machine} Neoverse-V2 (NVIDIA Grace)"
    return machine


def _c2c(pynvml, handle) -> str:
    fn = getattr(pynvml, "nvmlDeviceGetC2cModeInfoV", None)
    if fn is None:
        return "not exposed by this pynvml"
    try:
        info = fn(handle)
    except Exception as e:
        return f"not exposed by NVML here ({type(e).__name__})"
    enabled = getattr(info, "isC2cEnabled", None)
    return "enabled" if enabled else "disabled"


def check_driver(ctx: Context) -> None:
    pynvml = nvml()
    driver = _text(pynvml.nvmlSystemGetDriverVersion())
    cuda = cuda_version_text(pynvml.nvmlSystemGetCudaDriverVersion_v2())
    count = pynvml.nvmlDeviceGetCount()
    ctx.note(f"driver {driver}, CUDA (driver API) {cuda}, {count} GPU(s)")
    first = None
    for i in range(count):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        name = _text(pynvml.nvmlDeviceGetName(h))
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        ctx.note(
            f"GPU {i}: {name}, compute capability {major}.{minor}, "
            f"{mem.total / 2**30:.1f} GiB ({mem.used / 2**30:.1f} GiB used)"
        )
        if "GH200" in name:
            ctx.note(f"GPU {i}: NVLink-C2C {_c2c(pynvml, h)}")
        if first is None:
            first = (name, major, minor, mem.total)
    cpu = cpu_model()
    ctx.note(f"CPU: {cpu}")
    name, major, minor, total = first
    ctx.figure("gpu", name, name)
    ctx.figure("cc", f"{major}.{minor}", f"{major}.{minor}")
    ctx.figure("mem", f"{total / 2**30:.0f} GiB", total)
    ctx.figure("driver", driver, driver)
    ctx.figure("cuda", cuda, cuda)
    if (major, minor) < MIN_CAPABILITY:
        raise Fail(
            "compute capability of GPU 0",
            f">= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Hopper)",
            f"{major}.{minor} ({name})",
        )
