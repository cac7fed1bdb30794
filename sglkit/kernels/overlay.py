"""The MoE config overlay: the folder SGLANG_MOE_CONFIG_DIR names (the store over SGLang's own).

SGLang reads `$SGLANG_MOE_CONFIG_DIR/configs/triton_X_Y_Z/<name>.json` *instead of* the configs it
ships in its package (the variable replaces that folder, it does not add to it). Pointing it at
the kit's store alone would make every shape the store lacks run with SGLang's default config,
even where SGLang ships a tuned file. So the server reads an overlay:

    <cache.root>/moe-configs -> .moe-configs.<random>/     (a relative symlink, swapped atomically)
        configs/triton_X_Y_Z/<name>.json                  the union of SGLang's shipped files and
                                                          the kit's store; the kit's file wins
        sources.json                                      {"triton_X_Y_Z/<name>.json":
                                                           {"source": "kit"|"sglang", "path": ...,
                                                            "shadows": <SGLang's file, when a kit
                                                                        file replaces one>}}

The files are copies, not symlinks: the cache root is shared by the host and the container
(mounted at /cache), where the store and site-packages sit at other paths, so links made on one
side would dangle on the other; a copy is also a snapshot, so a running server keeps reading what
sources.json recorded even if SGLang is upgraded or the store edited meanwhile. The cost is a few
megabytes of small JSON files per build.

A build happens in a temporary sibling folder and is swapped in by replacing the symlink in one
rename (readers see the old overlay or the new one, never half of one), under a lock beside it;
when the overlay already holds exactly the planned files, nothing is rebuilt.

SGLang's configs folder is found without importing sglang (importing it is slow and pulls in
torch): `importlib.util.find_spec("sglang")`, then the folder beside the module that reads it,
which moved with that module (see SGLANG_CONFIG_PARENTS). Without SGLang the overlay is the
store alone.

`prepare(profile)` is what a server launcher calls right before starting SGLang; `replay()` is
SGLang's lookup over the overlay that `prepare` would build, for `kernels.check`.
"""

from __future__ import annotations

import contextlib
import filecmp
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError, SglkitError
from sglkit.fsutil import atomic_symlink, locked
from sglkit.kernels import store
from sglkit.kernels.names import Rule, triton_dir_name

KIT = "kit"
SGLANG = "sglang"
SOURCES = "sources.json"
LOCK_WAIT_S = 60.0

# Where the installed SGLang keeps its shipped configs, relative to the sglang package: the
# `configs/` folder beside the module whose get_moe_configs defaults to its own directory.
# Newest layout first; the first one present wins.
SGLANG_CONFIG_PARENTS = (
    "srt/layers/moe/moe_runner/triton_utils",  # 0.5.11 and later (fused_moe_triton_config.py)
    "srt/layers/moe/fused_moe_triton",  # up to 0.5.10
    "srt/layers/fused_moe_triton",  # early 0.4 releases, before layers/moe/
)


class _Installed:
    """Sentinel: the installed SGLang's configs folder (found with sglang_configs_dir())."""

    def __repr__(self) -> str:
        return "INSTALLED"


INSTALLED: Any = _Installed()


def sglang_configs_dir() -> Path | None:
    """The installed SGLang's own configs folder (holding triton_X_Y_Z/), or None without SGLang
    (or with a layout none of SGLANG_CONFIG_PARENTS matches). Does not import sglang."""
    try:
        spec = importlib.util.find_spec("sglang")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for parent in SGLANG_CONFIG_PARENTS:
            d = Path(location) / parent / "configs"
            if d.is_dir():
                return d
    return None


@dataclass(frozen=True)
class Entry:
    """One overlay file: where it comes from."""

    source: str  # KIT | SGLANG
    path: Path  # the original file
    shadows: Path | None = None  # SGLang's file of the same folder and name, replaced by the kit's

    def to_json(self) -> dict[str, str]:
        out = {"source": self.source, "path": str(self.path)}
        if self.shadows is not None:
            out["shadows"] = str(self.shadows)
        return out


def _config_files(configs: Path | None) -> dict[str, Path]:
    """{"triton_X_Y_Z/<name>.json": path} under a configs folder; only folders SGLang can sort
    (SGLang 0.5.12+ int-parses every triton_* folder name and fails on any other)."""
    out: dict[str, Path] = {}
    if configs is None or not configs.is_dir():
        return out
    for d in sorted(configs.iterdir()):
        if not (d.is_dir() and store.TRITON_DIR.match(d.name)):
            continue
        for f in sorted(d.glob("*.json")):
            if f.is_file():
                out[f"{d.name}/{f.name}"] = f.absolute()
    return out


def _resolve_sglang(sglang_dir: Path | _Installed | None) -> Path | None:
    return sglang_configs_dir() if sglang_dir is INSTALLED else sglang_dir


# Which files the overlay holds (server.up / kernels.check --moe-configs): the kit's store over
# SGLang's shipped files (kit, the default), SGLang's shipped files alone (sglang: what an
# unpatched SGLang reads), or none, so that SGLang runs its default config (none).
CONFIG_SOURCES = ("kit", "sglang", "none")


def check_source(source: str) -> str:
    if source not in CONFIG_SOURCES:
        raise ConfigError(
            f"--moe-configs: expected one of {', '.join(CONFIG_SOURCES)}, got {source!r}"
        )
    return source


def plan(
    store_root: Path | None = None,
    sglang_dir: Path | _Installed | None = INSTALLED,
    source: str = "kit",
) -> dict[str, Entry]:
    """What the overlay holds: SGLang's shipped files (`sglang_dir`, a configs folder; None: none)
    overlaid with the kit's store (`store_root`, default kernels/); the kit's file wins. `source`
    (CONFIG_SOURCES) leaves out the store (sglang) or both (none)."""
    check_source(source)
    shipped = _config_files(_resolve_sglang(sglang_dir)) if source != "none" else {}
    kit = _config_files(store.configs_dir(store_root)) if source == "kit" else {}
    entries = {rel: Entry(SGLANG, p) for rel, p in shipped.items()}
    for rel, p in kit.items():
        entries[rel] = Entry(KIT, p, shipped.get(rel))
    return dict(sorted(entries.items()))


def sources_json(entries: dict[str, Entry]) -> str:
    return json.dumps({rel: e.to_json() for rel, e in entries.items()}, indent=2) + "\n"


def read_sources(overlay_dir: Path) -> dict[str, dict[str, str]] | None:
    """sources.json of a built overlay, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads((Path(overlay_dir) / SOURCES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(dest: Path, entries: dict[str, Entry]) -> bool:
    """The overlay at `dest` holds exactly `entries`, byte for byte."""
    if not dest.is_symlink() or not dest.is_dir():
        return False
    try:
        if (dest / SOURCES).read_text(encoding="utf-8") != sources_json(entries):
            return False
        if set(_config_files(dest / "configs")) != set(entries):
            return False
        return all(
            filecmp.cmp(e.path, dest / "configs" / rel, shallow=False) for rel, e in entries.items()
        )
    except OSError:
        return False


def _write_tree(root: Path, entries: dict[str, Entry]) -> None:
    (root / "configs").mkdir(parents=True)
    for rel, e in entries.items():
        target = root / "configs" / rel
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(e.path, target)
    (root / SOURCES).write_text(sources_json(entries), encoding="utf-8")


def _versions(dest: Path) -> list[Path]:
    """Built (or half-built) overlay folders beside `dest`."""
    return [p for p in dest.parent.glob(f".{dest.name}.*") if p.is_dir() and not p.is_symlink()]


def build(
    dest: Path,
    store_root: Path | None = None,
    sglang_dir: Path | _Installed | None = INSTALLED,
    source: str = "kit",
) -> Path:
    """(Re)build the overlay at `dest` (a symlink to a sibling folder) atomically; returns `dest`.

    Unchanged content is left in place. A `dest` that exists and is not such a symlink is
    refused, never replaced."""
    dest = Path(dest)
    entries = plan(store_root, sglang_dir, source)
    if dest.exists() and not dest.is_symlink():
        raise SglkitError(
            f"{dest}: exists and is not the kit's MoE config overlay (a symlink); move it away"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(dest, wait=LOCK_WAIT_S, what="kernels overlay build"):
        if _is_current(dest, entries):
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            _write_tree(tmp, entries)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; SGLang may run as another user
            atomic_symlink(tmp.name, dest)  # relative: valid on the host and in the container
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in _versions(dest):  # earlier builds, and leftovers of interrupted ones
            if old != tmp:
                shutil.rmtree(old, ignore_errors=True)
    return dest


def prepare(profile, store_root: Path | None = None, source: str = "kit") -> Path:
    """Build the overlay of `source` (CONFIG_SOURCES) where a server of `profile` started with
    it reads (`Profile.moe_config_dir`; SGLANG_MOE_CONFIG_DIR in its environment), from the
    kit's store (`store_root`, default kernels/) and the installed SGLang's configs; returns
    that folder. Each source has its own folder, so no start rewrites another's overlay. Call
    it right before starting a server."""
    return build(profile.moe_config_dir(check_source(source)), store_root, source=source)


# ---- SGLang's lookup over the overlay --------------------------------------------------------


@dataclass
class Verdict:
    """Which file the server reads for one name, and why."""

    lookup: store.Lookup  # replayed over the overlay; paths are in the overlay's real location
    source: str | None  # KIT | SGLANG | None (default config, or the variable is ignored)
    origin: Path | None  # the original file (kit store or SGLang's package)
    reason: str


def _folders_with(entries: dict[str, Entry], name: str, source: str) -> list[str]:
    """The triton_X_Y_Z folders where `source` has a file called `name`."""
    return [
        rel.split("/")[0]
        for rel, e in entries.items()
        if e.source == source and rel.split("/")[1] == name
    ]


def _reason(
    lk: store.Lookup,
    entries: dict[str, Entry],
    triton_version: str,
    rule: Rule,
    up: Verdict | None,
) -> tuple[str | None, Path | None, str]:
    """(source, original file, why) for one replayed lookup; `up`: the gate/up verdict of a
    _down name."""
    if lk.status == "ignored":
        why = (
            f"SGLang {rule.version} ignores SGLANG_MOE_CONFIG_DIR: it reads only the configs it "
            "ships, never the kit's store"
        )
        return None, None, why
    if lk.status == "error":
        return None, None, lk.warning or "SGLang fails"
    if up is not None and lk.status in ("up-config", "default"):
        if up.source is None:
            return None, None, "no _down file, nor a gate/up file: SGLang's default config"
        why = f"no _down file: the down GEMM reuses the gate/up file ({up.reason})"
        return up.source, up.origin, why
    if lk.path is None:
        return None, None, "neither the kit's store nor SGLang has a file: SGLang's default config"
    folder = lk.path.parent.name
    e = entries[f"{folder}/{lk.path.name}"]
    replaces = " (it replaces the file SGLang ships)" if e.shadows else ""
    kit_elsewhere = ", ".join(f for f in _folders_with(entries, lk.name, KIT) if f != folder)
    exact = triton_dir_name(triton_version)
    if lk.status == "found" and e.source == KIT:
        why = f"exact {folder} match in the kit's store{replaces}"
    elif lk.status == "found" and kit_elsewhere:
        why = f"exact {folder} match shipped by SGLang (the kit's file is for {kit_elsewhere})"
    elif lk.status == "found":
        why = f"no kit file; SGLang ships one for {folder} (exact match)"
    elif e.source == KIT:
        why = f"no {exact} file; the kit's store has one for {folder} (fallback){replaces}"
    elif kit_elsewhere:
        why = (
            f"no {exact} file; SGLang ships one for {folder}, tried before the kit's "
            f"{kit_elsewhere} (fallback)"
        )
    else:
        why = f"no kit file; SGLang ships one for {folder} (fallback)"
    return e.source, e.path, why


def replay(
    names: list[str],
    triton_version: str,
    rule: Rule,
    overlay_dir: Path,
    store_root: Path | None = None,
    sglang_dir: Path | _Installed | None = INSTALLED,
    source: str = "kit",
) -> list[Verdict]:
    """SGLang's lookup of each name over the overlay `prepare` would build at `overlay_dir` (built
    in a temporary folder: nothing under `overlay_dir` is written). A `_down` name right after
    its gate/up name reuses that verdict when it falls back to the up file."""
    entries = plan(store_root, sglang_dir, source)
    out: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="sglkit-overlay-") as tmp:
        scratch = Path(tmp) / "overlay"
        _write_tree(scratch, entries)
        by_name: dict[str, Verdict] = {}
        for name in names:
            lk = store.lookup(name, triton_version, rule, scratch)
            up = None
            if name.endswith("_down.json"):
                up = by_name.get(name[: -len("_down.json")] + ".json")
            source, origin, reason = _reason(lk, entries, triton_version, rule, up)
            lk = _relocate(lk, scratch, Path(overlay_dir))
            v = Verdict(lk, source, origin, reason)
            by_name[name] = v
            out.append(v)
    return out


def _relocate(lk: store.Lookup, scratch: Path, real: Path) -> store.Lookup:
    def move(p: Path | None) -> Path | None:
        if p is None:
            return None
        with contextlib.suppress(ValueError):
            return real / p.relative_to(scratch)
        return p

    warning = lk.warning.replace(str(scratch), str(real)) if lk.warning else None
    return store.Lookup(lk.name, move(lk.expected), lk.status, move(lk.path), warning,
                        lk.batch_sizes)  # fmt: skip
