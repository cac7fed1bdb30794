"""cache.export / cache.import: one warmed cache and its marker in one .tar.gz.

Format: a gzip-compressed tar whose FIRST member is `sglkit-archive.json` (format, kind, the
marker, file count, bytes), followed by `<kind>/...` (the folder, marker included). The import
reads that first member and checks compatibility before it writes anything; it then unpacks into
a temporary folder beside the cache (same file system) and swaps it in by rename, so a reader
sees the old cache or the new one, never half of one.

gzip through Python's tarfile rather than the zstd binary: no second process or pipe to manage
and clean up, the same code reads and writes on any node (zstd is not in every image), and
tarfile's "data" extraction filter refuses absolute paths, `..`, links out of the tree and device
files. DeepGEMM's cubins are small and few hundred MB at most, so gzip's speed is not the limit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from sglkit import profile as profiles
from sglkit.cache import fingerprint, store
from sglkit.errors import ConfigError, SglkitError
from sglkit.server import spec as server_spec

FORMAT = 1
MANIFEST = "sglkit-archive.json"
KIND = "deepgemm"


def export(profile: str | None, output: str | os.PathLike | None = None) -> Path:
    p = profiles.load(profile)
    folder = p.cache_dirs()[KIND]
    marker = store.read_marker(folder)
    if marker is None:
        raise SglkitError(
            f"cache.dirs.{KIND}: {folder} has no completion marker; warm it first "
            "(invoke cache.deepgemm)"
        )
    if output is None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        output = Path.cwd() / f"sglkit-{KIND}-{p.name}-{stamp}.tar.gz"
    out = Path(output)
    if out.exists():
        raise ConfigError(f"--output: {out} exists; choose another name")
    if not out.parent.is_dir():
        raise ConfigError(f"--output: folder {out.parent} does not exist")
    with store.locked(folder, what="cache.export"):
        size, files, _ = store.folder_stats(folder)
        manifest = {
            "format": FORMAT,
            "kind": KIND,
            "marker": marker,
            "files": files + 1,  # the marker too
            "bytes": size,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
                blob = json.dumps(manifest, indent=2, sort_keys=True).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mtime, info.mode = (
                    len(blob),
                    int(dt.datetime.now().timestamp()),
                    0o644,
                )
                tar.addfile(info, io.BytesIO(blob))
                tar.add(folder, arcname=KIND, recursive=True)
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return out


def read_manifest(tar: tarfile.TarFile, where: Path) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise ConfigError(f"{where}: not an sglkit cache archive (no {MANIFEST} first)")
    f = tar.extractfile(first)
    try:
        manifest = json.loads(f.read()) if f else None
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{where}: {MANIFEST}: unknown format (expected format {FORMAT})")
    if manifest.get("kind") != KIND or not isinstance(manifest.get("marker"), dict):
        raise ConfigError(f"{where}: {MANIFEST}: kind {manifest.get('kind')!r} is not {KIND}")
    return manifest


def check_compatible(manifest: dict[str, Any], here: fingerprint.Fingerprint, where: Path) -> None:
    stored = fingerprint.Fingerprint.from_json(manifest["marker"].get("fingerprint") or {})
    diff = fingerprint.differences(stored, here, only=fingerprint.IMPORT_FIELDS, label="archive")
    if diff:
        raise SglkitError(f"{where}: incompatible with this node: {diff[0]}")


def import_(archive: str | os.PathLike, profile: str | None = None, force: bool = False) -> Path:
    src = Path(archive)
    if not src.is_file():
        raise ConfigError(f"archive: {src} not found")
    p = profiles.load(profile)
    folder = p.cache_dirs()[KIND]
    here = fingerprint.compute(server_spec.build(p))
    try:
        with tarfile.open(src, "r:gz") as tar:
            manifest = read_manifest(tar, src)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConfigError(f"archive: {src} is not a readable .tar.gz ({e})") from None
    check_compatible(manifest, here, src)
    existing = store.read_marker(folder)
    if existing is not None and not force:
        raise SglkitError(
            f"cache.dirs.{KIND}: {folder} already holds a warmed cache "
            f"(warmed {existing.get('warmed_at', '?')}); --force replaces it"
        )
    store.ensure_writable(folder.parent, "cache.root")
    with store.locked(folder, what="cache.import"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.import-", dir=folder.parent))
        old: Path | None = None
        try:
            _extract(src, tmp)
            new = tmp / KIND
            if store.read_marker(new) is None:
                raise ConfigError(f"{src}: {KIND}/{store.MARKER} missing from the archive")
            if folder.exists():
                old = folder.parent / f".{folder.name}.old-{os.getpid()}"
                os.rename(folder, old)
            try:
                os.rename(new, folder)
            except BaseException:
                if old is not None:
                    os.rename(old, folder)
                    old = None
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    return folder


def _extract(src: Path, dest: Path) -> None:
    try:
        with tarfile.open(src, "r:gz") as tar:
            read_manifest(tar, src)
            for member in tar:
                if member.name == MANIFEST:
                    continue
                top = member.name.split("/", 1)[0]
                if top != KIND:
                    raise ConfigError(f"{src}: unexpected member {member.name!r} (only {KIND}/)")
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SglkitError(f"archive: {src} is damaged or could not be unpacked ({e})") from None
