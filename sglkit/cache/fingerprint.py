"""The completion marker's fingerprint: what a warmed cache was built for.

A fingerprint is a flat dict of fields. A field that cannot be known on this machine (no GPU, no
SGLang) is None and is named in `unknown` with the reason. Comparison is field by field with None
as a value of its own: unknown == unknown matches (the same GPU-less machine asking again), known
vs unknown differs. So a marker written without a GPU never passes for "already warm" on a GPU
host, and a CPU-only machine can still tell its own marker apart from another profile's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglkit import nvml
from sglkit.profile import load_cache_layout
from sglkit.server.spec import ServerSpec

SCHEMA = 1
# the fields that must agree for an archive to be imported on another node (GPU arch and the
# versions that compiled the kernels); the rest (server shapes, model) are reported by status
IMPORT_FIELDS = ("gpu_compute_capability", "sglang_version", "deep_gemm_version")
# distributions known to ship the deep_gemm module (the installed ones are found by module too)
DEEP_GEMM_DISTS = ("deep-gemm", "sgl-deep-gemm")
ORDER = (
    "sglang_version",
    "deep_gemm_version",
    "cuda_version",
    "gpu_name",
    "gpu_compute_capability",
    "model_config_sha256",
    "server_args",
)


@dataclass
class Fingerprint:
    fields: dict[str, Any]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def unknown(self) -> list[str]:
        return [k for k in ORDER if self.fields.get(k) is None]

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "fields": self.fields, "unknown": self.unknown,
                "reasons": self.reasons}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(fields=dict(data.get("fields") or {}), reasons=dict(data.get("reasons") or {}))


def differences(
    stored: Fingerprint,
    current: Fingerprint,
    only: tuple[str, ...] | None = None,
    label: str = "marker",
) -> list[str]:
    """One line per differing field, e.g. "gpu_name: marker 'X', here unknown (no GPU ...)"."""
    out = []
    for key in only or ORDER:
        a, b = stored.fields.get(key), current.fields.get(key)
        if a == b:
            continue
        if key == "server_args" and isinstance(a, dict) and isinstance(b, dict):
            flags = sorted(set(a) | set(b))
            diff = [f for f in flags if a.get(f) != b.get(f)]
            detail = ", ".join(f"{f} {_show(a.get(f))} -> {_show(b.get(f))}" for f in diff)
            out.append(f"server_args: {detail} ({label} -> here)")
            continue
        here = _show(b) if b is not None else f"unknown ({current.reasons.get(key, 'not known')})"
        there = _show(a) if a is not None else "unknown"
        out.append(f"{key}: {label} {there}, here {here}")
    return out


def _show(v: Any) -> str:
    return "absent" if v is None else repr(v)


# ---- gathering ---------------------------------------------------------------------------------
def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _torch_cuda() -> tuple[str | None, str]:
    """torch.version.cuda without importing torch (which takes seconds): read torch/version.py."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, "torch is not installed in this interpreter"
    version_py = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        text = version_py.read_text(encoding="utf-8")
    except OSError:
        return None, f"cannot read {version_py}"
    m = re.search(r"^cuda\s*(?::[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    if not m:
        return None, "torch is a build without CUDA"
    return m.group(1), ""


def _gpu(env: dict[str, str]) -> tuple[str | None, str | None, str]:
    """Name and compute capability of GPU 0 (sglkit.nvml): NVML where it imports, else
    nvidia-smi."""
    try:
        name, capability = nvml.gpu0(env)
        return name, capability, ""
    except Exception as e:  # not installed, no driver, no GPU
        nvml_error = f"NVML: {type(e).__name__}"
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None, None, f"no GPU visible ({nvml_error}; nvidia-smi not on PATH)"
    try:
        out = subprocess.run(
            [
                smi,
                "--query-gpu=name,compute_cap",
                "--format=csv,noheader",
                f"--id={nvml.visible_gpu0(env)}",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        name, cap = (s.strip() for s in out.split(",", 1))
        return name, cap, ""
    except (subprocess.SubprocessError, OSError, ValueError, RuntimeError) as e:
        return None, None, f"no GPU visible ({nvml_error}; nvidia-smi: {type(e).__name__})"


def shape_args(spec: ServerSpec) -> dict[str, Any]:
    """The spec's flags that change kernel shapes (cache/layout.yaml: shape_args) -> values."""
    wanted = set(load_cache_layout()["deepgemm"]["shape_args"])
    return spec.flag_values(wanted)


def deep_gemm_version() -> str | None:
    """DeepGEMM's version under whichever distribution ships the `deep_gemm` module: DeepGEMM's
    own `deep-gemm`, SGLang's `sgl-deep-gemm`, or another build."""
    try:
        shipping = importlib.metadata.packages_distributions().get("deep_gemm", [])
    except Exception:  # a broken dist-info elsewhere must not hide the version
        shipping = []
    return _dist_version(*shipping, *DEEP_GEMM_DISTS)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def compute(spec: ServerSpec) -> Fingerprint:
    """The fingerprint of warming the server `spec` on this machine."""
    profile = spec.profile
    fields: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    fields["sglang_version"] = spec.sglang.version
    if fields["sglang_version"] is None:
        reasons["sglang_version"] = "sglang is not installed in this interpreter"
    fields["deep_gemm_version"] = deep_gemm_version()
    if fields["deep_gemm_version"] is None:
        reasons["deep_gemm_version"] = "deep_gemm is not installed in this interpreter"
    fields["cuda_version"], why = _torch_cuda()
    if why:
        reasons["cuda_version"] = why
    # the GPU the server will run on: its environment may set CUDA_VISIBLE_DEVICES
    fields["gpu_name"], fields["gpu_compute_capability"], why = _gpu(spec.process_environment())
    if why:
        reasons["gpu_name"] = reasons["gpu_compute_capability"] = why
    cfg = profile.model_config_path()
    fields["model_config_sha256"] = None
    if cfg is None:
        reasons["model_config_sha256"] = "model.config not set and model.path is not a folder"
    elif not cfg.is_file():
        reasons["model_config_sha256"] = f"{cfg} not found"
    else:
        fields["model_config_sha256"] = sha256_file(cfg)
    fields["server_args"] = shape_args(spec)
    return Fingerprint(fields=fields, reasons=reasons)
