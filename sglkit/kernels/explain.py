"""kernels.check's answer: which MoE config file the server reads for a profile, GPU and Triton,
from where (the kit's store or SGLang's shipped folder, through the overlay), and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sglkit import profile as profiles
from sglkit.errors import SglkitError
from sglkit.kernels import names, overlay, target

SOURCES = {overlay.KIT: "kit store", overlay.SGLANG: "SGLang shipped"}


def lookup(
    profile: str | None,
    device_name: str | None = None,
    triton_version: str | None = None,
    sglang_version: str | None = None,
    store: str | None = None,
    moe_configs: str = "kit",
) -> dict[str, Any]:
    """One JSON-able answer: the profile's shape, the versions, the folders, and per file its
    expected path, status, the file it loads, its source and the reason."""
    overlay.check_source(moe_configs)
    p = profiles.load(profile)
    shape = target.profile_shape(p)
    rule = names.rule_for(sglang_version)
    device = names.device_name(device_name)
    triton_v = triton_version or names.installed_triton_version()
    if not triton_v:
        raise SglkitError("--triton-version: Triton is not installed here; give --triton-version")
    kt = target.for_shape(
        shape, device, triton_v, sglang_version=rule.version, store_root=store and Path(store)
    )
    overlay_dir = p.moe_config_dir(moe_configs)
    shipped = overlay.sglang_configs_dir()
    file_names = kt.file_names()
    verdicts = overlay.replay(file_names, triton_v, rule, overlay_dir, kt.store_root, shipped,
                              moe_configs)  # fmt: skip
    files = []
    for n, v in zip(file_names, verdicts, strict=True):
        lk = v.lookup
        files.append(
            {
                "file": n,
                "down": n.endswith("_down.json"),
                "expected_path": str(lk.expected),
                "status": lk.status,
                "loads": str(lk.path) if lk.path else None,
                "source": v.source,
                "source_path": str(v.origin) if v.origin else None,
                "reason": v.reason,
                "warning": lk.warning,
                "batch_sizes": lk.batch_sizes,
            }
        )
    return {
        "profile": p.name,
        "architecture": shape.architecture,
        "tp": shape.tp,
        "ep": shape.ep,
        "device": device,
        "sglang": rule.version,
        "triton": triton_v,
        "overlay": str(overlay_dir),
        "moe_configs": moe_configs,
        "store": str(kt.store_root),
        "sglang_configs": str(shipped) if shipped else None,
        "files": files,
    }
