"""GPU 0 as NVML names it: the one reading shared by kernel file names and cache fingerprints.

A base module (no sglkit imports): kernels and cache read the GPU through it, so neither
imports from sglkit.gpu, the smoke test's package on the top floor.
"""

from __future__ import annotations


def gpu0() -> tuple[str, str]:
    """(name, compute capability such as "9.0") of GPU 0; raises when NVML cannot answer."""
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    finally:
        pynvml.nvmlShutdown()
    return (name.decode() if isinstance(name, bytes) else name), f"{major}.{minor}"


def free_bytes(index: int = 0) -> int:
    """Free memory of GPU `index` in bytes; raises when NVML cannot answer."""
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
    finally:
        pynvml.nvmlShutdown()
