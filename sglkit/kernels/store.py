"""The tuned-config store: kernels/configs/triton_X_Y_Z/<SGLang file name>.json.

SGLang reads it unpatched through the overlay SGLANG_MOE_CONFIG_DIR names (sglkit.kernels.overlay:
this store copied over SGLang's shipped configs). `lookup()` replays SGLang's get_moe_configs
search for one file name in a folder holding configs/ (exact Triton folder, then the fallback
folders, then the default config) so `kernels.check` can say what the server will do;
`validate()` checks every file; `migrate()` renames the old fork's names.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglkit import paths
from sglkit.errors import SglkitError
from sglkit.fsutil import atomic_write_text
from sglkit.kernels.names import (
    FIXED_FALLBACK_TRITON,
    Rule,
    migrated_name,
    parse_name,
    triton_dir_name,
)
from sglkit.kernels.space import KEYS

TRITON_DIR = re.compile(r"^triton_(\d+)_(\d+)_(\d+)$")
REQUIRED = KEYS
POW2_BLOCKS = {16, 32, 64, 128, 256, 512}
OPTIONAL_FIELDS = {"USE_TMA", "waves_per_eu", "SPLIT_K", "kpack", "matrix_instr_nonkdim"}


def root() -> Path:
    """The kit's store (it holds configs/); SGLang reads it through the overlay."""
    return paths.asset("kernels")


def configs_dir(store_root: Path | None = None) -> Path:
    return (store_root or root()) / "configs"


def file_path(name: str, triton_version: str, store_root: Path | None = None) -> Path:
    return configs_dir(store_root) / triton_dir_name(triton_version) / name


def read_configs(path: Path) -> dict[int, dict[str, Any]]:
    """A store file as SGLang reads it: {int(M): config}."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {int(k): v for k, v in data.items()}


def write_configs(path: Path, configs: dict[int | str, dict[str, Any]], merge: bool = True) -> Path:
    """Write (atomically) a store file; with `merge`, batch sizes already there and not in
    `configs` are kept. Keys are written in numeric order, as SGLang's own files are."""
    out: dict[int, dict[str, Any]] = {}
    if merge and Path(path).exists():
        out.update(read_configs(path))
    out.update({int(k): dict(v) for k, v in configs.items()})
    text = json.dumps({str(k): out[k] for k in sorted(out)}, indent=4) + "\n"
    return atomic_write_text(path, text)


# ---- what SGLang will load ------------------------------------------------------------------


@dataclass
class Lookup:
    """The outcome of SGLang's lookup of one file name."""

    name: str
    expected: Path  # the exact-Triton path SGLang tries first
    status: str  # "found" | "fallback" | "up-config" | "default" | "ignored" | "error"
    path: Path | None = None  # the file SGLang loads (None: default config)
    warning: str | None = None  # SGLang's log line for this outcome (None when found)
    batch_sizes: list[int] = field(default_factory=list)


def _version_tuple(v: str) -> tuple[int, ...]:
    from sglkit.kernels.names import parse_version

    return parse_version(v)


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def fallback_versions(store_root: Path, rule: Rule) -> list[str]:
    """The other Triton folders SGLang tries, in its order."""
    if rule.fallback == "fixed-list":
        return list(FIXED_FALLBACK_TRITON)
    cdir = configs_dir(store_root)
    found = []
    for d in sorted(os.listdir(cdir)) if cdir.is_dir() else []:
        m = TRITON_DIR.match(d)
        if m:
            found.append(".".join(m.groups()))
    return sorted(found, key=_version_key, reverse=True)


def lookup(
    name: str,
    triton_version: str,
    rule: Rule,
    store_root: Path | None = None,
    _down_of: str | None = None,
) -> Lookup:
    """Replay SGLang's get_moe_configs for `name` against the store (see names.py for rules)."""
    store_root = store_root or root()
    expected = file_path(name, triton_version, store_root)
    if not rule.reads_config_dir_env:
        return Lookup(
            name,
            expected,
            "ignored",
            warning=f"SGLang {rule.version} ignores SGLANG_MOE_CONFIG_DIR; the store is not read",
        )
    if expected.is_file():
        return Lookup(name, expected, "found", expected, None, sorted(read_configs(expected)))
    if rule.fallback == "on-disk" and not configs_dir(store_root).is_dir():
        return Lookup(
            name,
            expected,
            "error",
            warning=f"{configs_dir(store_root)} is missing: SGLang {rule.version} lists it and "
            "fails (FileNotFoundError)",
        )
    for v in fallback_versions(store_root, rule):
        if v == triton_version:
            continue
        p = configs_dir(store_root) / triton_dir_name(v) / name
        if p.is_file():
            warning = (
                f"Config file not found at {expected}. Fallback to triton version {v} and use "
                f"MoE kernel config from {p}. Performance might be sub-optimal!"
            )
            return Lookup(name, expected, "fallback", p, warning, sorted(read_configs(p)))
    default_warning = (
        "Using default MoE kernel config. Performance might be sub-optimal! Config file not "
        f"found at {expected}"
    )
    if name.endswith("_down.json"):
        # without a _down file the down GEMM runs with the gate/up config (tuned or default)
        up = lookup(name[: -len("_down.json")] + ".json", triton_version, rule, store_root)
        if rule.down_falls_back_to_up:  # 0.5.16+
            if up.path is None:
                return Lookup(name, expected, "default", None, default_warning)
            warning = (
                f"Down MoE config file not found at {expected}; reusing the tuned "
                "up-projection config without TMA. Performance might be sub-optimal."
            )
        elif _version_tuple(rule.version) >= (0, 5, 6):  # 0.5.6 - 0.5.15.post1
            warning = (
                "Using MoE kernel config with down_moe=False. Performance might be sub-optimal! "
                f"Config file not found at {expected}"
            )
        else:  # 0.5.4.post2 - 0.5.5: the generic message, though the up config is used
            warning = default_warning
        status = "up-config" if up.path is not None else "default"
        return Lookup(name, expected, status, up.path, warning, up.batch_sizes)
    return Lookup(name, expected, "default", None, default_warning)


# ---- validate -----------------------------------------------------------------------------------


def _check_config(where: str, cfg: Any) -> list[str]:
    if not isinstance(cfg, dict):
        return [f"{where}: not an object"]
    problems = []
    for f in REQUIRED:
        if f not in cfg:
            problems.append(f"{where}.{f}: missing")
            continue
        v = cfg[f]
        if isinstance(v, bool) or not isinstance(v, int):
            problems.append(f"{where}.{f}: {v!r} is not an integer")
            continue
        if f.startswith("BLOCK_SIZE") and v not in POW2_BLOCKS:
            problems.append(f"{where}.{f}: {v} is not a power of two in 16..512")
        elif f == "GROUP_SIZE_M" and not 1 <= v <= 256:
            problems.append(f"{where}.{f}: {v} outside 1..256")
        elif f == "num_warps" and v not in (1, 2, 4, 8, 16):
            problems.append(f"{where}.{f}: {v} not one of 1, 2, 4, 8, 16")
        elif f == "num_stages" and not 1 <= v <= 8:
            problems.append(f"{where}.{f}: {v} outside 1..8")
    for f in cfg:
        if f not in REQUIRED and f not in OPTIONAL_FIELDS:
            problems.append(f"{where}.{f}: unknown field")
    return problems


def validate_file(path: Path) -> list[str]:
    """Problems of one store file (empty: fine)."""
    rel = path.name
    problems: list[str] = []
    if migrated_name(path.name):
        problems.append(f"{rel}: old fork name; run `invoke kernels.migrate`")
    elif parse_name(path.name) is None:
        problems.append(f"{rel}: not a file name SGLang computes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return [*problems, f"{rel}: unreadable ({e})"]
    except json.JSONDecodeError as e:
        return [*problems, f"{rel}: invalid JSON at line {e.lineno}"]
    if not isinstance(data, dict) or not data:
        return [*problems, f"{rel}: expected a non-empty object of batch size -> config"]
    for k, cfg in data.items():
        if not re.fullmatch(r"[1-9][0-9]*", str(k)):
            problems.append(f"{rel}[{k!r}]: batch size key is not a positive integer")
            continue
        problems += _check_config(f"{rel}[{k}]", cfg)
    return problems


def store_files(store_root: Path | None = None) -> list[Path]:
    cdir = configs_dir(store_root)
    return sorted(p for p in cdir.glob("*/*.json") if p.is_file())


def validate(store_root: Path | None = None) -> tuple[int, list[str]]:
    """(files checked, problems) over the whole store, folder names included."""
    cdir = configs_dir(store_root)
    problems: list[str] = []
    if not cdir.is_dir():
        return 0, [f"{cdir}: missing (SGLang 0.5.12+ lists it and fails without it)"]
    for d in sorted(cdir.iterdir()):
        if d.is_dir() and not TRITON_DIR.match(d.name):
            problems.append(f"{d.name}/: not triton_<major>_<minor>_<patch> (SGLang's sort fails)")
    files = store_files(store_root)
    for p in files:
        problems += [f"{p.parent.name}/{msg}" for msg in validate_file(p)]
    return len(files), problems


# ---- migrate ------------------------------------------------------------------------------------


def migration_plan(store_root: Path | None = None) -> list[tuple[Path, Path]]:
    """(old, new) for every file named by the old fork's scheme; refuses conflicts."""
    plan = []
    for p in store_files(store_root):
        new = migrated_name(p.name)
        if new:
            target = p.with_name(new)
            if target.exists() and target.read_bytes() != p.read_bytes():
                raise SglkitError(
                    f"{p.parent.name}/{p.name}: {new} exists with other content; merge by hand"
                )
            plan.append((p, target))
    targets = [t for _, t in plan]
    dup = {t for t in targets if targets.count(t) > 1}
    if dup:
        raise SglkitError(f"{sorted(dup)[0].name}: two old files map to it; merge by hand")
    return plan


def migrate(store_root: Path | None = None, dry_run: bool = False) -> list[tuple[Path, Path]]:
    """Rename old-scheme files (all checked first, so a conflict renames nothing)."""
    plan = migration_plan(store_root)
    if not dry_run:
        for old, new in plan:
            if new.exists():  # same content: the old copy is redundant
                old.unlink()
            else:
                os.replace(old, new)
    return plan
