"""A profile's kernel target: its fused-MoE shape, the file SGLang looks up on a GPU, and where
the kit's store keeps that file for a Triton version.

    kernel_target(profile, device, triton_version) -> KernelTarget
        .shape       the MoE layer (sglkit.kernels.shapes.moe_shape of the profile's model config,
                     its server.tp and server.ep, optionally another dtype)
        .file_name   the name SGLang computes for that shape on `device` (sglkit.kernels.names)
        .path        <store_root>/configs/triton_X_Y_Z/<file_name> (sglkit.kernels.store)

The one derivation of "profile -> MoE shape -> store file name": `kernels.name/check/tune`,
`cache.triton` (sglkit.cache.triton_warm.locate) and gpu_smoke's tuner check all ask it.
No GPU needed: the device name and the Triton version are arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sglkit.errors import ConfigError
from sglkit.kernels import names, store
from sglkit.kernels.shapes import MoEShape, moe_shape
from sglkit.profile import Profile


def profile_shape(p: Profile, dtype: str | None = None) -> MoEShape:
    """The profile's MoE layer: its model config at its server.tp and server.ep."""
    cfg = p.model_config_path()
    if cfg is None:
        raise ConfigError(f"{p.path}: model.config: needed to derive the MoE shape")
    return moe_shape(cfg, tp=p.server["tp"], ep=p.server["ep"], dtype=dtype)


def shape_file_name(
    shape: MoEShape, device: str, down: bool = False, sglang_version: str | None = None
) -> str:
    """The config file name SGLang `sglang_version` (None: installed, else newest) looks up for
    `shape` on GPU `device`; `down`: the separately tuned down-projection file."""
    return names.config_file_name(
        shape.E,
        shape.N,
        device,
        shape.dtype,
        shape.block_shape,
        shape.per_channel_quant,
        down,
        sglang_version=sglang_version,
    )


@dataclass(frozen=True)
class KernelTarget:
    """The tuned file of one MoE shape on one GPU, for one Triton and one SGLang naming rule."""

    shape: MoEShape
    device: str
    triton_version: str
    rule: names.Rule
    store_root: Path

    @property
    def file_name(self) -> str:
        """The gate/up file (both GEMMs where SGLang looks up no separate down file)."""
        return shape_file_name(self.shape, self.device, False, self.rule.version)

    def file_names(self) -> list[str]:
        """Every file SGLang looks up for this shape: gate/up, then `_down` where it reads one."""
        downs = [False, True] if self.rule.down_lookup else [False]
        return [shape_file_name(self.shape, self.device, d, self.rule.version) for d in downs]

    @property
    def path(self) -> Path:
        """Where the kit's store keeps the file for this Triton version."""
        return store.file_path(self.file_name, self.triton_version, self.store_root)


def for_shape(
    shape: MoEShape,
    device: str,
    triton_version: str,
    *,
    sglang_version: str | None = None,
    store_root: Path | None = None,
) -> KernelTarget:
    """The target of an explicit shape (kernels.tune's --dtype, benchmarks' shapes)."""
    return KernelTarget(
        shape=shape,
        device=device,
        triton_version=triton_version,
        rule=names.rule_for(sglang_version),
        store_root=Path(store_root) if store_root else store.root(),
    )


def kernel_target(
    p: Profile,
    device: str,
    triton_version: str,
    *,
    dtype: str | None = None,
    sglang_version: str | None = None,
    store_root: Path | None = None,
) -> KernelTarget:
    """A profile's kernel target on GPU `device` with Triton `triton_version`; `store_root`
    defaults to the kit's store (kernels/), `sglang_version` to the installed SGLang's rule."""
    return for_shape(
        profile_shape(p, dtype),
        device,
        triton_version,
        sglang_version=sglang_version,
        store_root=store_root,
    )
