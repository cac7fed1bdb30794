"""The MoE config overlay SGLANG_MOE_CONFIG_DIR names: the kit's store over SGLang's shipped configs.

SGLang reads only $SGLANG_MOE_CONFIG_DIR/configs when the variable is set, so the overlay must
still serve the files SGLang ships. A fake SGLang package (a folder on sys.path, never imported)
holds the shipped files; the lookup is SGLang 0.5.23's, replayed by store.lookup.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglkit import profile as profiles
from sglkit.errors import SglkitError
from sglkit.kernels import names, overlay, store
from sglkit.paths import asset

REPO = Path(__file__).resolve().parents[2]
RULE = names.rule_for("0.5.23")
# a shape only SGLang ships here (the kit's own kernels/ store has no file for it)
SHIPPED_ONLY = "E=160,N=192,device_name=NVIDIA_H200,dtype=fp8_w8a8.json"
DSV3 = "E=257,N=256,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128, 128].json"
CFG = {
    "BLOCK_SIZE_M": 16,
    "BLOCK_SIZE_N": 128,
    "BLOCK_SIZE_K": 128,
    "GROUP_SIZE_M": 1,
    "num_warps": 4,
    "num_stages": 4,
}
# where SGLang 0.5.11+ keeps the configs it ships, inside the sglang package
NEW_LAYOUT = "srt/layers/moe/moe_runner/triton_utils/configs"


def put(configs: Path, triton: str, name: str, data) -> Path:
    p = configs / names.triton_dir_name(triton) / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data))
    return p


def fake_sglang(site: Path, layout: str | None = NEW_LAYOUT) -> Path:
    """An importable-looking sglang package under `site`; its configs folder (None: no configs)."""
    pkg = site / "sglang"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the overlay must not import sglang')\n")
    if layout is None:
        return pkg
    configs = pkg / layout
    configs.mkdir(parents=True)
    return configs


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    """A fake installed SGLang that ships SHIPPED_ONLY and DSV3 for triton 3.4.0."""
    configs = fake_sglang(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    put(configs, "3.4.0", SHIPPED_ONLY, {"1": CFG, "2": CFG})
    put(configs, "3.4.0", DSV3, {"1": dict(CFG, num_warps=8)})
    return configs


def make_profile(tmp_path: Path) -> profiles.Profile:
    y = tmp_path / "p.yaml"
    model_cfg = asset("profiles", "models", "DeepSeek-V3", "config.json")
    y.write_text(
        f"name: t\nmodel:\n  path: deepseek-ai/DeepSeek-V3\n  config: {model_cfg}\n"
        f"server:\n  tp: 8\ncache:\n  root: {tmp_path / 'cache'}\n"
    )
    return profiles.load(y)


def server_dir(p: profiles.Profile) -> Path:
    """The folder the server reads: what the profile's environment gives SGLang."""
    return Path(p.environment()["SGLANG_MOE_CONFIG_DIR"])


# ---- finding SGLang's configs ---------------------------------------------------------------


def test_sglang_configs_found_without_importing_sglang(shipped):
    assert overlay.sglang_configs_dir() == shipped
    assert "sglang" not in sys.modules


@pytest.mark.parametrize(
    "layout",
    ["srt/layers/moe/fused_moe_triton/configs", "srt/layers/fused_moe_triton/configs"],
)
def test_older_sglang_layouts_are_found(tmp_path, monkeypatch, layout):
    configs = fake_sglang(tmp_path / "site", layout)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert overlay.sglang_configs_dir() == configs


def test_without_sglang_the_overlay_is_the_store_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    assert overlay.sglang_configs_dir() is None
    kit = put(tmp_path / "store" / "configs", "3.4.0", DSV3, {"1": CFG})
    dest = overlay.build(tmp_path / "cache" / "moe-configs", tmp_path / "store")
    assert overlay.read_sources(dest) == {
        f"triton_3_4_0/{DSV3}": {"source": "kit", "path": str(kit)}
    }
    # an SGLang without a configs folder we know: the same
    fake_sglang(tmp_path / "site", None)
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert overlay.sglang_configs_dir() is None


# ---- what the server reads ------------------------------------------------------------------


def test_the_server_reads_sglangs_shipped_file_where_the_store_lacks_it(tmp_path, shipped):
    """The defect: with SGLANG_MOE_CONFIG_DIR set, SGLang's shipped configs were never read."""
    p = make_profile(tmp_path)
    folder = overlay.prepare(p)  # what the server launcher calls before starting SGLang
    assert folder == server_dir(p)
    lk = store.lookup(SHIPPED_ONLY, "3.4.0", RULE, server_dir(p))
    assert lk.status == "found", lk.warning
    assert lk.path.read_bytes() == (shipped / "triton_3_4_0" / SHIPPED_ONLY).read_bytes()
    # and the kit's own store is still served
    kit_name = "E=128,N=768,device_name=NVIDIA_H200.json"
    lk = store.lookup(kit_name, "3.6.0", RULE, server_dir(p))
    assert lk.status == "found"
    assert lk.path.read_bytes() == store.file_path(kit_name, "3.6.0").read_bytes()


def test_the_kits_file_wins_and_sources_say_where_each_came_from(tmp_path, shipped):
    kit_store = tmp_path / "store"
    kit = put(kit_store / "configs", "3.4.0", DSV3, {"1": CFG, "64": CFG})
    only_kit = put(kit_store / "configs", "3.3.1", SHIPPED_ONLY, {"8": CFG})
    dest = overlay.build(tmp_path / "cache" / "moe-configs", kit_store)
    lk = store.lookup(DSV3, "3.4.0", RULE, dest)
    assert lk.status == "found" and lk.batch_sizes == [1, 64]  # the kit's, not SGLang's [1]
    assert overlay.read_sources(dest) == {
        f"triton_3_3_1/{SHIPPED_ONLY}": {"source": "kit", "path": str(only_kit)},
        f"triton_3_4_0/{DSV3}": {
            "source": "kit",
            "path": str(kit),
            "shadows": str(shipped / "triton_3_4_0" / DSV3),
        },
        f"triton_3_4_0/{SHIPPED_ONLY}": {
            "source": "sglang",
            "path": str(shipped / "triton_3_4_0" / SHIPPED_ONLY),
        },
    }
    files = {str(p.relative_to(dest / "configs")) for p in dest.glob("configs/*/*")}
    assert files == set(overlay.read_sources(dest))


@pytest.mark.parametrize(
    ("source", "found"),
    [("kit", {"kit": "kit", "shipped": "sglang"}),
     ("sglang", {"kit": None, "shipped": "sglang"}),
     ("none", {"kit": None, "shipped": None})],
)  # fmt: skip
def test_moe_configs_sources_say_which_files_the_server_reads(tmp_path, shipped, source, found):
    """server.up --moe-configs: the kit's store over SGLang's files, SGLang's alone, or none
    (SGLang's default config), each in its own folder: a start with one leaves the others be."""
    kit_store = tmp_path / "store"
    kit_name = "E=128,N=768,device_name=NVIDIA_H200.json"
    put(kit_store / "configs", "3.4.0", kit_name, {"1": CFG})
    p = make_profile(tmp_path)
    kit_folder = overlay.prepare(p, kit_store)
    kit_sources = overlay.read_sources(kit_folder)
    folder = overlay.prepare(p, kit_store, source=source)
    assert folder == p.moe_config_dir(source)
    assert folder.name == ("moe-configs" if source == "kit" else f"moe-configs-{source}")
    assert overlay.read_sources(kit_folder) == kit_sources  # the kit's overlay is untouched
    sources = overlay.read_sources(folder)
    for key, name in (("kit", kit_name), ("shipped", SHIPPED_ONLY)):
        lk = store.lookup(name, "3.4.0", RULE, folder)
        entry = sources.get(f"triton_3_4_0/{name}")
        if found[key] is None:
            assert lk.status != "found" and entry is None, (name, lk.status)
        else:
            assert lk.status == "found" and entry["source"] == found[key], (name, entry)
    assert (folder / "configs").is_dir()  # SGLang lists this folder; it must exist when empty


def test_an_unknown_moe_configs_source_names_the_flag(tmp_path):
    with pytest.raises(SglkitError, match=r"--moe-configs: expected one of kit, sglang, none"):
        overlay.prepare(make_profile(tmp_path), source="shipped")


def test_rebuilds_are_atomic_and_idempotent(tmp_path, shipped, monkeypatch):
    kit_store = tmp_path / "store"
    put(kit_store / "configs", "3.4.0", DSV3, {"1": CFG})
    dest = tmp_path / "cache" / "moe-configs"
    overlay.build(dest, kit_store)
    first = os.readlink(dest)
    sources = (dest / "sources.json").read_text()
    # nothing changed: nothing is rebuilt, the folder a running server reads stays
    overlay.build(dest, kit_store)
    assert os.readlink(dest) == first and (dest / "sources.json").read_text() == sources
    # a changed store file: a new folder swapped in by one rename, the old one removed
    put(kit_store / "configs", "3.4.0", DSV3, {"1": CFG, "2": CFG})
    overlay.build(dest, kit_store)
    assert os.readlink(dest) != first and not (dest.parent / first).exists()
    assert store.lookup(DSV3, "3.4.0", RULE, dest).batch_sizes == [1, 2]
    assert not Path(os.readlink(dest)).is_absolute()  # valid on the host and in the container
    # a build that fails half-way leaves the current overlay whole and no temporary folder
    current = os.readlink(dest)
    put(kit_store / "configs", "3.4.0", SHIPPED_ONLY, {"4": CFG})
    calls = []

    def copy_then_fail(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    real_copy = overlay.shutil.copyfile
    monkeypatch.setattr(overlay.shutil, "copyfile", copy_then_fail)
    with pytest.raises(OSError, match="No space"):
        overlay.build(dest, kit_store)
    monkeypatch.undo()
    assert os.readlink(dest) == current
    assert store.lookup(DSV3, "3.4.0", RULE, dest).batch_sizes == [1, 2]
    leftovers = {p.name for p in dest.parent.iterdir()}
    assert leftovers == {current, ".moe-configs.lock", "moe-configs"}


def test_a_folder_that_is_not_the_overlay_is_never_replaced(tmp_path, shipped):
    dest = tmp_path / "cache" / "moe-configs"
    (dest / "configs").mkdir(parents=True)
    (dest / "mine.txt").write_text("hand-made")
    with pytest.raises(SglkitError, match="not the kit's MoE config overlay"):
        overlay.build(dest, tmp_path / "store")
    assert (dest / "mine.txt").read_text() == "hand-made"


# ---- kernels.check ----------------------------------------------------------------------------


def check(tmp_path: Path, store_root: Path, site: Path, *extra: str) -> subprocess.CompletedProcess:
    prof = tmp_path / "p.yaml"
    model_cfg = asset("profiles", "models", "DeepSeek-V3", "config.json")
    prof.write_text(
        f"name: t\nmodel:\n  path: deepseek-ai/DeepSeek-V3\n  config: {model_cfg}\n"
        f"server:\n  tp: 8\ncache:\n  root: {tmp_path / 'cache'}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}  # the fake SGLang, found before any real one
    return subprocess.run(
        [sys.executable, "-m", "invoke", "kernels.check", "--profile", str(prof),
         "--store", str(store_root), "--device-name", "NVIDIA H200", "--triton-version", "3.4.0",
         "--sglang-version", "0.5.23", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_check_says_which_file_the_server_reads_and_why(tmp_path):
    site = tmp_path / "site"
    shipped = fake_sglang(site)
    kit_store = tmp_path / "store"
    (kit_store / "configs").mkdir(parents=True)

    # neither: SGLang's default config
    r = check(tmp_path, kit_store, site, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sglang_configs"] == str(shipped)
    assert out["overlay"] == str(tmp_path / "cache" / "moe-configs")
    up, down = out["files"]
    assert (up["file"], up["status"], up["source"], up["loads"]) == (DSV3, "default", None, None)
    assert up["reason"] == "neither the kit's store nor SGLang has a file: SGLang's default config"
    assert down["status"] == "default" and down["source"] is None

    # no kit file; SGLang ships one for an older Triton: the fallback, read from the overlay
    sg = put(shipped, "3.3.1", DSV3, {"1": CFG, "4096": CFG})
    up, down = json.loads(check(tmp_path, kit_store, site, "--json").stdout)["files"]
    assert (up["status"], up["source"], up["source_path"]) == ("fallback", "sglang", str(sg))
    assert up["reason"] == "no kit file; SGLang ships one for triton_3_3_1 (fallback)"
    assert up["loads"] == str(
        tmp_path / "cache" / "moe-configs" / "configs" / "triton_3_3_1" / DSV3
    )
    assert "Fallback to triton version 3.3.1" in up["warning"] and up["batch_sizes"] == [1, 4096]
    assert down["status"] == "up-config" and down["source"] == "sglang"
    assert down["reason"].startswith("no _down file: the down GEMM reuses the gate/up file (")

    # the kit's exact match wins
    kit = put(kit_store / "configs", "3.4.0", DSV3, {"8": CFG})
    up, _ = json.loads(check(tmp_path, kit_store, site, "--json").stdout)["files"]
    assert (up["status"], up["source"], up["source_path"]) == ("found", "kit", str(kit))
    assert up["reason"] == "exact triton_3_4_0 match in the kit's store"
    assert up["warning"] is None and up["batch_sizes"] == [8]

    # the text output says the same
    r = check(tmp_path, kit_store, site)
    assert r.returncode == 0, r.stderr
    assert f"reads: {kit} (kit store)" in r.stdout
    assert "why: exact triton_3_4_0 match in the kit's store" in r.stdout
    assert f"over SGLang's shipped configs {shipped}" in r.stdout

    # as the server started with --moe-configs sglang / none would read
    up, _ = json.loads(check(tmp_path, kit_store, site, "--json", "--moe-configs", "sglang")
                       .stdout)["files"]  # fmt: skip
    assert (up["status"], up["source"], up["source_path"]) == ("fallback", "sglang", str(sg))
    r = check(tmp_path, kit_store, site, "--json", "--moe-configs", "none")
    up, down = json.loads(r.stdout)["files"]
    assert (up["status"], up["source"], down["status"]) == ("default", None, "default")
    assert (
        "overlay empty (--moe-configs none)"
        in check(tmp_path, kit_store, site, "--moe-configs", "none").stdout
    )
    assert not (tmp_path / "cache").exists()  # check replays the lookup; it builds nothing


def test_overlay_task_builds_the_folder_the_server_reads(tmp_path):
    site = tmp_path / "site"
    put(fake_sglang(site), "3.4.0", SHIPPED_ONLY, {"1": CFG})
    kit_store = tmp_path / "store"
    put(kit_store / "configs", "3.4.0", DSV3, {"1": CFG})
    prof = tmp_path / "p.yaml"
    prof.write_text(f"model:\n  path: m\ncache:\n  root: {tmp_path / 'cache'}\n")
    r = subprocess.run(
        [sys.executable, "-m", "invoke", "kernels.overlay", "--profile", str(prof),
         "--store", str(kit_store)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    dest = tmp_path / "cache" / "moe-configs"
    assert r.stdout == f"{dest}: 1 file(s) from the kit's store, 1 shipped by SGLang\n"
    assert (dest / "configs" / "triton_3_4_0" / SHIPPED_ONLY).is_file()
