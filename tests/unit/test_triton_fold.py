"""The warm's Triton step (triton_warm.fold): when it runs, skips, refuses or finds the folder
warm. Its GPU parts (preflight, the kernel runs) cannot run on this CPU host, so they are
replaced here; the real path is tests/gpu/test_server.py on the device."""

from __future__ import annotations

import pytest

from sglkit import profile as profiles
from sglkit.cache import store, triton_warm
from sglkit.errors import SglkitError


@pytest.fixture
def gpu_stand_ins(tmp_path, monkeypatch):
    """A profile, its tuned file, and stand-ins for what needs a GPU; returns the runs made."""
    monkeypatch.setenv("SGLKIT_CACHE_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("SGLKIT_TRITON_CACHE_DIR", raising=False)
    prof = profiles.load("qwen3-moe-fp8-2l")
    config = tmp_path / "tuned.json"
    config.write_text('{"1": {"BLOCK_SIZE_M": 16}}')
    target = triton_warm.Target(None, "E=1,N=1.json", config, 8192, "found")
    runs: list[str] = []

    def run(p, *args, **kw):  # what run() leaves behind: the marker naming what it warmed
        runs.append(p.name)
        folder, _ = triton_warm.cache_folder(p)
        digest = triton_warm.hashlib.sha256(config.read_bytes()).hexdigest()
        store.write_marker(folder, triton_warm.warmed_for(p, target, digest))
        return {"items": [1, 2], "total_first_call_s": 0.5}

    monkeypatch.setattr(triton_warm, "preflight", lambda: None)
    monkeypatch.setattr(triton_warm, "profile_target", lambda p: target)
    monkeypatch.setattr(triton_warm, "_versions", lambda: {"triton": "3.6.0", "gpu": "H100"})
    monkeypatch.setattr(triton_warm, "run", run)
    return prof, config, runs


def test_a_second_fold_finds_the_folder_warm_until_the_file_changes(gpu_stand_ins):
    prof, config, runs = gpu_stand_ins
    assert triton_warm.fold(prof, "auto", print).startswith("triton: 2 kernel variants in ")
    assert triton_warm.fold(prof, "auto", print).startswith("triton: already warm for tuned.json")
    config.write_text('{"1": {"BLOCK_SIZE_M": 32}}')  # a new tune
    assert triton_warm.fold(prof, "auto", print).startswith("triton: 2 kernel variants")
    assert runs == [prof.name, prof.name]


def test_off_skips_and_on_fails_in_one_line_where_the_file_is_missing(gpu_stand_ins, monkeypatch):
    prof, _, runs = gpu_stand_ins
    assert triton_warm.fold(prof, "off", print) == "triton: off (--triton off)"
    missing = triton_warm.Target(None, "E=1,N=1.json", None, 8192, "missing")
    monkeypatch.setattr(triton_warm, "profile_target", lambda p: missing)
    assert triton_warm.fold(prof, "auto", print) == (
        "triton: skipped (no MoE config file E=1,N=1.json for this Triton)"
    )
    with pytest.raises(SglkitError, match=r"^--triton on: no MoE config file E=1,N=1\.json"):
        triton_warm.fold(prof, "on", print)
    assert runs == []


def test_a_kernel_failure_is_one_line_that_says_the_deepgemm_cache_is_warm(
    gpu_stand_ins, monkeypatch
):
    prof, _, _ = gpu_stand_ins

    def broken(*args, **kw):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(triton_warm, "run", broken)
    with pytest.raises(SglkitError, match=r"out of memory\); the DeepGEMM cache is warm; "):
        triton_warm.fold(prof, "auto", print)
