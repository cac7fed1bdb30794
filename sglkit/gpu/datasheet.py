"""Vendor datasheet figures the smoke test compares measurements against (not measured here).

Peak memory bandwidth (TB/s) and dense bf16 Tensor Core throughput (TFLOP/s, without sparsity),
from NVIDIA's H100, H200 and GH200 product datasheets. The first entry whose key is a substring of
the NVML device name wins, so more specific names come first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Datasheet:
    key: str
    bandwidth_tbs: float
    bf16_tflops: float


DATASHEETS = (
    Datasheet("GH200 144G", 4.9, 989.0),
    Datasheet("GH200", 4.0, 989.0),
    Datasheet("H200 NVL", 4.8, 835.0),
    Datasheet("H200", 4.8, 989.0),
    Datasheet("H100 NVL", 3.9, 835.0),
    Datasheet("H100 PCIe", 2.0, 756.0),
    Datasheet("H100", 3.35, 989.0),
)

# A measurement below this share of the datasheet figure means a broken host, not a slow one.
FLOOR = 0.5


def lookup(device_name: str) -> Datasheet | None:
    for d in DATASHEETS:
        if d.key in device_name:
            return d
    return None


def judge(what: str, measured: float, peak: float | None, unit: str, floor: float = FLOOR):
    """(text for the table, failure or None): `measured` against `floor` x `peak`."""
    if peak is None:
        return f"{measured:.2f} {unit} (no datasheet entry)", None
    share = measured / peak
    text = f"{measured:.2f} {unit} ({share:.0%} of {peak:g})"
    if share < floor:
        return text, (what, f">= {floor:.0%} of datasheet {peak:g} {unit}", text)
    return text, None
