"""The GPU that CUDA numbers device 0 in this process, as NVML names it: the one reading shared by
kernel file names, cache fingerprints and the compile workers' memory cap.

CUDA numbers only the GPUs in $CUDA_VISIBLE_DEVICES, in that order; NVML numbers every GPU of the
host. So GPU 0 here is the first entry of $CUDA_VISIBLE_DEVICES (an index or a UUID), and NVML's
index 0 only where the variable is unset. (An index means the same GPU to both where CUDA orders
by PCI bus, CUDA_DEVICE_ORDER=PCI_BUS_ID, or where the GPUs are alike, as on a GH200 host.)

A base module (no sglkit imports): kernels and cache read the GPU through it, so neither
imports from sglkit.gpu, the smoke test's package on the top floor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def visible_gpu0(env: Mapping[str, str] | None = None) -> int | str:
    """CUDA's device 0 under `env` (default: this process's environment; pass the server's
    where a profile sets CUDA_VISIBLE_DEVICES): an NVML index, or a UUID such as "GPU-8f...";
    raises RuntimeError where the variable hides every GPU."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return 0
    first = value.split(",")[0].strip()
    if not first or first.startswith("-") or first.lower() in ("none", "nodevfiles"):
        raise RuntimeError(f"CUDA_VISIBLE_DEVICES={value!r} makes no GPU visible")
    return int(first) if first.isdigit() else first


def _handle(pynvml, env: Mapping[str, str] | None):
    gpu = visible_gpu0(env)
    if isinstance(gpu, int):
        return pynvml.nvmlDeviceGetHandleByIndex(gpu)
    return pynvml.nvmlDeviceGetHandleByUUID(gpu.encode())  # bytes: old and new pynvml alike


def gpu0(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(name, compute capability such as "9.0") of GPU 0 under `env`; raises when NVML cannot
    answer."""
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    try:
        handle = _handle(pynvml, env)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    finally:
        pynvml.nvmlShutdown()
    return (name.decode() if isinstance(name, bytes) else name), f"{major}.{minor}"


def free_bytes(env: Mapping[str, str] | None = None) -> int:
    """Free memory of GPU 0 under `env` in bytes; raises when NVML cannot answer."""
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(_handle(pynvml, env)).free)
    finally:
        pynvml.nvmlShutdown()
