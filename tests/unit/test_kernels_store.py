"""The config store: SGLang's lookup replayed, validate, migrate, and the invoke tasks end to end.

The lookup follows get_moe_configs of SGLang 0.5.23 (exact Triton folder, then every triton_*
folder newest first, then a _down file falls back to the up file) and 0.5.8 (fixed fallback list).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglkit.errors import SglkitError
from sglkit.kernels import names, store
from sglkit.paths import asset

REPO = Path(__file__).resolve().parents[2]
DSV3_NAME = "E=257,N=256,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128, 128].json"
CFG = {
    "BLOCK_SIZE_M": 16,
    "BLOCK_SIZE_N": 128,
    "BLOCK_SIZE_K": 128,
    "GROUP_SIZE_M": 1,
    "num_warps": 4,
    "num_stages": 4,
}


def put(root: Path, triton: str, name: str, data) -> Path:
    p = root / "configs" / names.triton_dir_name(triton) / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data))
    return p


def test_lookup_found_fallback_default(tmp_path):
    rule = names.rule_for("0.5.23")
    (tmp_path / "configs").mkdir()
    lk = store.lookup(DSV3_NAME, "3.4.0", rule, tmp_path)
    assert (
        lk.status == "default"
        and lk.path is None
        and "Using default MoE kernel config" in lk.warning
    )
    put(tmp_path, "3.2.0", DSV3_NAME, {"1": CFG})
    put(tmp_path, "3.3.1", DSV3_NAME, {"1": CFG, "64": CFG})
    lk = store.lookup(DSV3_NAME, "3.4.0", rule, tmp_path)
    assert lk.status == "fallback" and lk.path.parent.name == "triton_3_3_1"  # newest first
    assert "Fallback to triton version 3.3.1" in lk.warning and lk.batch_sizes == [1, 64]
    put(tmp_path, "3.4.0", DSV3_NAME, {"8": CFG, "2": CFG})
    lk = store.lookup(DSV3_NAME, "3.4.0", rule, tmp_path)
    assert (lk.status, lk.warning, lk.batch_sizes) == ("found", None, [2, 8])


def test_lookup_old_fixed_list_and_down_fallback(tmp_path):
    put(tmp_path, "3.5.1", DSV3_NAME, {"1": CFG})
    # 0.5.8 only tries 3.4.0, 3.3.1, 3.2.0, 3.1.0: a 3.5.1 file is not a fallback there
    assert store.lookup(DSV3_NAME, "3.6.0", names.rule_for("0.5.8"), tmp_path).status == "default"
    assert store.lookup(DSV3_NAME, "3.6.0", names.rule_for("0.5.23"), tmp_path).status == "fallback"
    down = DSV3_NAME.replace(".json", "_down.json")
    lk = store.lookup(down, "3.5.1", names.rule_for("0.5.23"), tmp_path)
    assert lk.status == "up-config" and lk.path.name == DSV3_NAME
    lk = store.lookup(down, "3.5.1", names.rule_for("0.5.15"), tmp_path)
    assert lk.status == "up-config" and "down_moe=False" in lk.warning  # 0.5.6 - 0.5.15.post1
    lk = store.lookup(down, "3.5.1", names.rule_for("0.5.5"), tmp_path)
    assert lk.status == "up-config" and lk.warning.startswith("Using default MoE kernel config")
    other = down.replace("E=257", "E=64")  # neither file: the default config for both GEMMs
    assert store.lookup(other, "3.5.1", names.rule_for("0.5.23"), tmp_path).status == "default"
    assert store.lookup(DSV3_NAME, "3.5.1", names.rule_for("0.5.2"), tmp_path).status == "ignored"


def test_lookup_reports_a_missing_configs_folder(tmp_path):
    lk = store.lookup(DSV3_NAME, "3.4.0", names.rule_for("0.5.23"), tmp_path)
    assert lk.status == "error" and "FileNotFoundError" in lk.warning


def test_validate_finds_each_problem(tmp_path):
    put(tmp_path, "3.4.0", DSV3_NAME, {"1": CFG, "16": CFG})
    assert store.validate(tmp_path) == (1, [])
    put(tmp_path, "3.4.0", "E=8,N=7168,device_name=X.json", {"one": CFG})
    put(
        tmp_path,
        "3.4.0",
        "E=8,N=3584,device_name=X.json",
        {"1": {k: v for k, v in CFG.items() if k != "num_warps"}},
    )
    put(
        tmp_path,
        "3.4.0",
        "E=8,N=1792,device_name=X.json",
        {"1": dict(CFG, BLOCK_SIZE_N=100, num_stages="3")},
    )
    put(tmp_path, "3.4.0", "E=8,N=896,device_name=X,per_channel_quant=1.json", {"1": CFG})
    put(tmp_path, "3.4.0", "notes.json", {"1": CFG})
    (tmp_path / "configs" / "triton_main").mkdir()
    (tmp_path / "configs" / "triton_3_4_0" / "E=8,N=448,device_name=X.json").write_text("{oops")
    count, problems = store.validate(tmp_path)
    text = "\n".join(problems)
    assert count == 7
    assert "['one']: batch size key is not a positive integer" in text
    assert "num_warps: missing" in text
    assert "BLOCK_SIZE_N: 100 is not a power of two" in text
    assert "num_stages: '3' is not an integer" in text
    assert "old fork name" in text
    assert "notes.json: not a file name SGLang computes" in text
    assert "triton_main/: not triton_<major>_<minor>_<patch>" in text
    assert "invalid JSON" in text


def test_migrate_renames_and_refuses_conflicts(tmp_path):
    old = put(
        tmp_path,
        "3.4.0",
        "E=64,N=1280,device_name=X,dtype=int8_w8a8,per_channel_quant=1.json",
        {"1": CFG},
    )
    plan = store.migrate(tmp_path, dry_run=True)
    assert [(o.name, n.name) for o, n in plan] == [
        (old.name, "E=64,N=1280,device_name=X,dtype=int8_w8a8,per_channel_quant=True.json")
    ]
    assert old.exists()
    store.migrate(tmp_path)
    assert not old.exists() and plan[0][1].exists()
    assert store.validate(tmp_path)[1] == []
    # a conflicting target: nothing is renamed
    old2 = put(tmp_path, "3.4.0", old.name, {"2": CFG})
    with pytest.raises(SglkitError, match="other content"):
        store.migrate(tmp_path)
    assert old2.exists()


def test_write_configs_merges_and_orders(tmp_path):
    p = tmp_path / "configs" / "triton_3_4_0" / DSV3_NAME
    store.write_configs(p, {"64": CFG, "2": CFG})
    store.write_configs(p, {16: dict(CFG, num_stages=3)})
    data = json.loads(p.read_text())
    assert list(data) == ["2", "16", "64"] and data["16"]["num_stages"] == 3


# ---- the invoke tasks, run as a user runs them ------------------------------------------------------


def inv(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_name_task_prints_only_the_name():
    r = inv(
        "kernels.name",
        "--model",
        "profiles/models/DeepSeek-V3",
        "--tp",
        "8",
        "--device-name",
        "NVIDIA H200",
        "--verbose",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == DSV3_NAME + "\n"
    assert "E=257" in r.stderr and "rule: SGLang" in r.stderr
    r = inv(
        "kernels.name",
        "--model",
        "profiles/models/Qwen3-30B-A3B/config.json",
        "--tp",
        "1",
        "--device-name",
        "NVIDIA H200",
        "--down",
        "--sglang-version",
        "0.5.23",
    )
    assert r.stdout == "E=128,N=768,device_name=NVIDIA_H200_down.json\n"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--tp", "5"], "--tp"),
        (["--tp", "x"], "--tp"),
        (["--tp", "1", "--dtype", "fp4"], "--dtype"),
        (["--tp", "1", "--sglang-version", "new"], "--sglang-version"),
    ],
)
def test_name_task_bad_flags_one_line(args, flag):
    r = inv("kernels.name", "--model", "profiles/models/Qwen3-30B-A3B", "--device-name", "X", *args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and flag in r.stderr


def test_check_task_against_a_store(tmp_path):
    root = tmp_path / "store"
    (root / "configs").mkdir(parents=True)
    prof = tmp_path / "p.yaml"
    model_cfg = asset("profiles", "models", "DeepSeek-V3", "config.json")
    prof.write_text(
        "name: t\nmodel:\n  path: deepseek-ai/DeepSeek-V3\n"
        f"  config: {model_cfg}\nserver:\n  tp: 8\ncache:\n  root: {tmp_path / 'cache'}\n"
    )
    base = [
        "kernels.check",
        "--profile",
        str(prof),
        "--store",
        str(root),
        "--device-name",
        "NVIDIA H200",
        "--triton-version",
        "3.4.0",
        "--sglang-version",
        "0.5.23",
    ]
    # an SGLang that ships no configs (found first on the path): the overlay is the store alone
    (tmp_path / "site" / "sglang").mkdir(parents=True)
    (tmp_path / "site" / "sglang" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    r = inv(*base, env=env)
    assert r.returncode == 0, r.stderr
    assert DSV3_NAME in r.stdout and "status: default" in r.stdout
    put(root, "3.3.1", DSV3_NAME, {"1": CFG, "4096": CFG})
    r = inv(*base, "--json", env=env)
    files = json.loads(r.stdout)["files"]
    assert files[0]["status"] == "fallback" and files[0]["batch_sizes"] == [1, 4096]
    assert files[0]["source"] == "kit"
    assert files[1]["down"] and files[1]["status"] == "up-config"
    assert not (tmp_path / "cache").exists()  # check replays; it builds nothing in the cache


def test_validate_and_migrate_tasks(tmp_path):
    put(tmp_path, "3.4.0", "E=8,N=896,device_name=X,per_channel_quant=1.json", {"1": CFG})
    r = inv("kernels.validate", "--store", str(tmp_path))
    assert (
        r.returncode == 1
        and "old fork name" in r.stdout
        and r.stderr.startswith("error: 1 problem")
    )
    r = inv("kernels.migrate", "--store", str(tmp_path))
    assert r.returncode == 0 and "per_channel_quant=True.json" in r.stdout
    r = inv("kernels.validate", "--store", str(tmp_path))
    assert r.returncode == 0 and r.stdout.startswith("ok: 1 file")


def test_the_kits_own_store_validates():
    _, problems = store.validate()
    assert problems == []


def test_tune_without_a_gpu_is_one_line():
    r = inv("kernels.tune", "--profile", "qwen3-30b-a3b-gh200", "--batch-sizes", "1,2")
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is here")
    except ImportError:
        pass
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "GPU" in r.stderr
    r = inv("kernels.tune", "--profile", "qwen3-30b-a3b-gh200", "--batch-sizes", "1,x")
    assert r.returncode == 2 and "--batch-sizes" in r.stderr
