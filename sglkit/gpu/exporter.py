"""Check 6: the GPU exporter reports a memory rise that the check itself causes.

dcgm-exporter where it is on PATH (DCGM hosts), else nvitop-exporter (NVML only). The check
starts it on a free loopback port, reads the memory-used gauge of this process's GPU, allocates
a known amount on that GPU and waits for the gauge to rise by at least 90% of it.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile

import requests

from sglkit.gpu.checks import Context, Fail, Skip
from sglkit.gpu.compute import cuda
from sglkit.net import free_port, wait_for
from sglkit.proc import spawn, terminate_group

ALLOC_BYTES = 4 << 30
START_TIMEOUT = 90.0
RISE_TIMEOUT = 60.0

# exporter -> (memory-used metric names, label that holds the GPU UUID); both report MiB.
# nvitop-exporter declares Gauge('gpu_memory_used', unit='MiB'); prometheus_client appends the
# unit, so the sample is gpu_memory_used_MiB (older clients: gpu_memory_used).
METRICS = {
    "dcgm-exporter": (("DCGM_FI_DEV_FB_USED",), "UUID"),
    "nvitop-exporter": (("gpu_memory_used_MiB", "gpu_memory_used"), "uuid"),
}


def exporter_argv(port: int) -> tuple[str, list[str]]:
    """(exporter name, argv) of the exporter present here, or Skip."""
    dcgm = shutil.which("dcgm-exporter")
    if dcgm:
        return "dcgm-exporter", [dcgm, "--address", f"127.0.0.1:{port}"]
    if importlib.util.find_spec("nvitop_exporter") is not None:
        return "nvitop-exporter", [
            sys.executable,
            "-m",
            "nvitop_exporter",
            "--bind-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--interval",
            "0.5",
        ]
    raise Skip("neither dcgm-exporter (PATH) nor nvitop_exporter (Python) is installed")


def memory_used_mib(text: str, names: tuple[str, ...], uuid_label: str, uuid: str | None):
    """The memory-used gauge (MiB) of GPU `uuid` in an exposition text; None when absent.

    Without a UUID (or with no UUID label) a single reported GPU is taken.
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples = [
        s for fam in text_string_to_metric_families(text) for s in fam.samples if s.name in names
    ]
    if uuid:
        mine = [s for s in samples if s.labels.get(uuid_label, "").lower() == uuid.lower()]
        if mine:
            return float(mine[0].value)
    if len(samples) == 1:
        return float(samples[0].value)
    return None


def _torch_uuid(torch) -> str | None:
    u = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    if u is None:
        return None
    u = str(u)
    return u if u.startswith("GPU-") else f"GPU-{u}"


def check_exporter(ctx: Context) -> None:
    torch = cuda()
    port = free_port()
    name, argv = exporter_argv(port)
    names, uuid_label = METRICS[name]
    uuid = _torch_uuid(torch)
    torch.zeros(1, device="cuda")  # the CUDA context first, so the rise is the allocation only
    torch.cuda.synchronize()
    url = f"http://127.0.0.1:{port}/metrics"

    def read() -> float | None:
        r = requests.get(url, timeout=5)
        r.raise_for_status()
        return memory_used_mib(r.text, names, uuid_label, uuid)

    with tempfile.TemporaryFile() as log:
        proc = spawn(argv, stdout=log, stderr=log, die_with_parent=True)
        try:
            try:
                base = wait_for(
                    lambda: "exited" if proc.poll() is not None else read(),
                    START_TIMEOUT,
                    0.5,
                    what=f"{name} to report {names[0]}",
                )
                if base == "exited":
                    raise TimeoutError("exited")
            except TimeoutError as e:
                log.seek(0)
                tail = (log.read().decode(errors="replace").strip().splitlines() or [""])[-1]
                status = proc.poll()
                seen = f"exited {status}: {tail}" if status is not None else str(e)
                raise Fail(f"{name} on port {port}", f"{names[0]} for GPU {uuid}", seen) from None
            want = ALLOC_BYTES / 2**20 * 0.9
            block = torch.empty(ALLOC_BYTES, dtype=torch.uint8, device="cuda")
            block.fill_(1)
            torch.cuda.synchronize()
            try:
                seen = wait_for(
                    lambda: (v := read()) is not None and v - base >= want and v,
                    RISE_TIMEOUT,
                    0.5,
                    what="the memory-used gauge to rise",
                )
            except TimeoutError:
                now = read()
                raise Fail(
                    f"{name} {names[0]} after allocating {ALLOC_BYTES >> 20} MiB",
                    f"a rise >= {want:.0f} MiB",
                    f"{base:.0f} -> {now} MiB",
                ) from None
            finally:
                del block
                torch.cuda.empty_cache()
        finally:
            terminate_group(proc, grace=5)
    ctx.note(f"{name} at {url}; metric {names[0]}; GPU {uuid}")
    ctx.figure("exporter", name, name)
    ctx.figure("mem rise", f"{seen - base:.0f} MiB of {ALLOC_BYTES >> 20}", seen - base)
