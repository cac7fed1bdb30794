"""cache.export / cache.import on real files and real archives, and cache.status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from sglkit import profile as profiles
from sglkit.cache import archive, fingerprint, status, store
from sglkit.errors import ConfigError, SglkitError
from sglkit.server import spec as server_spec

REPO = Path(__file__).resolve().parents[2]


def make_profile(tmp_path: Path, name: str) -> Path:
    data = {
        "name": name,
        "model": {
            "path": "Qwen/Qwen3-30B-A3B",
            "config": str(REPO / "profiles/models/Qwen3-30B-A3B/config.json"),
        },
        "server": {"context_length": 4096, "chunked_prefill_size": 2048},
        "cache": {"root": str(tmp_path / name)},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def fake_warm(profile: Path, **override) -> Path:
    """A warmed cache as cache.deepgemm leaves it: kernel files and a marker for this node."""
    p = profiles.load(profile)
    folder = p.cache_dirs()["deepgemm"]
    (folder / "cache" / "kernel.a").mkdir(parents=True)
    (folder / "cache" / "kernel.a" / "kernel.cubin").write_bytes(os.urandom(10_000))
    (folder / "cache" / "kernel.b.cu").write_text("// source\n")
    fp = fingerprint.compute(server_spec.build(p))
    fp.fields.update(override)
    store.write_marker(folder, {"kind": "deepgemm", "fingerprint": fp.to_json(),
                                "warmed_at": "2026-01-01T00:00:00+00:00"})  # fmt: skip
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
    }


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if ".import-" in p.name or ".old-" in p.name)


def test_export_then_import_on_a_compatible_node(tmp_path):
    src = make_profile(tmp_path, "node-a")
    dst = make_profile(tmp_path, "node-b")
    folder = fake_warm(src)
    out = archive.export(str(src), tmp_path / "dg.tar.gz")
    with tarfile.open(out, "r:gz") as tar:
        names = tar.getnames()
    assert names[0] == archive.MANIFEST
    assert "deepgemm/.sglkit-marker.json" in names
    imported = archive.import_(out, str(dst))
    assert tree(imported) == tree(folder)
    rows = {r["kind"]: r for r in status.status(str(dst))}
    assert rows["deepgemm"]["marker"] == "matches"
    assert rows["deepgemm"]["files"] == 2 and rows["deepgemm"]["bytes"] == 10_000 + len(
        "// source\n"
    )
    assert rows["triton"]["exists"] is False and rows["triton"]["marker"] == "none"
    assert leftovers(imported.parent) == []


def test_import_refuses_an_incompatible_archive_naming_the_field(tmp_path):
    src = make_profile(tmp_path, "gpu-node")
    dst = make_profile(tmp_path, "here")
    fake_warm(src, gpu_compute_capability="9.0", gpu_name="NVIDIA GH200 480GB")
    out = archive.export(str(src), tmp_path / "gh200.tar.gz")
    with pytest.raises(SglkitError) as e:
        archive.import_(out, str(dst))
    msg = str(e.value)
    assert "gpu_compute_capability" in msg and "'9.0'" in msg and "\n" not in msg
    assert not (tmp_path / "here" / "deepgemm").exists()


def test_damaged_archive_leaves_the_existing_cache_untouched(tmp_path):
    src = make_profile(tmp_path, "a")
    dst = make_profile(tmp_path, "b")
    fake_warm(src)
    existing = fake_warm(dst)
    before = tree(existing)
    out = archive.export(str(src), tmp_path / "a.tar.gz")
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # truncated in transit
    with pytest.raises(SglkitError) as e:
        archive.import_(out, str(dst), force=True)
    assert "damaged" in str(e.value) or "not a readable" in str(e.value)
    assert tree(existing) == before
    assert leftovers(existing.parent) == []


def test_import_over_a_warm_cache_needs_force(tmp_path):
    src = make_profile(tmp_path, "a")
    dst = make_profile(tmp_path, "b")
    new = fake_warm(src)
    (new / "cache" / "only-in-a").write_text("a")
    fake_warm(dst)
    out = archive.export(str(src), tmp_path / "a.tar.gz")
    with pytest.raises(SglkitError, match="--force"):
        archive.import_(out, str(dst))
    folder = archive.import_(out, str(dst), force=True)
    assert (folder / "cache" / "only-in-a").read_text() == "a"
    assert leftovers(folder.parent) == []


def test_export_needs_a_marker_and_a_free_output_name(tmp_path):
    src = make_profile(tmp_path, "cold")
    with pytest.raises(SglkitError, match="no completion marker"):
        archive.export(str(src), tmp_path / "x.tar.gz")
    fake_warm(src)
    (tmp_path / "x.tar.gz").write_text("keep me")
    with pytest.raises(ConfigError, match="--output"):
        archive.export(str(src), tmp_path / "x.tar.gz")
    assert (tmp_path / "x.tar.gz").read_text() == "keep me"


def test_a_tar_without_a_manifest_is_refused(tmp_path):
    dst = make_profile(tmp_path, "b")
    bogus = tmp_path / "bogus.tar.gz"
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "x").write_text("x")
    with tarfile.open(bogus, "w:gz") as tar:
        tar.add(tmp_path / "evil", arcname="deepgemm")
    with pytest.raises(ConfigError, match="not an sglkit cache archive"):
        archive.import_(bogus, str(dst))


def test_cli_round_trip_and_status_json(tmp_path):
    src = make_profile(tmp_path, "a")
    dst = make_profile(tmp_path, "b")
    fake_warm(src)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "a.tar.gz"
    r = subprocess.run(["invoke", "cache.export", "--profile", str(src), "--output", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["invoke", "cache.import", str(out), "--profile", str(dst)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "imported:" in r.stdout
    r = subprocess.run([sys.executable, "-m", "sglkit.cache", "status", "--profile", str(dst)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    rows = {row["kind"]: row for row in json.loads(r.stdout)}
    assert rows["deepgemm"]["marker"] == "matches"
    r = subprocess.run(["invoke", "cache.status", "--profile", str(dst)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and "matches" in r.stdout


def test_status_names_the_field_a_marker_differs_in(tmp_path):
    prof = make_profile(tmp_path, "a")
    fake_warm(prof, server_args={"--tp-size": "8", "--context-length": "4096"})
    row = {r["kind"]: r for r in status.status(str(prof))}["deepgemm"]
    assert row["marker"].startswith("differs: server_args: ")
    assert "--tp-size '8' -> '1'" in row["marker"]
    assert row["last_warm"] == "2026-01-01T00:00:00+00:00"
