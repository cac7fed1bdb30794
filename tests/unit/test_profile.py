"""Serving profiles: schema errors name the field, argv is a list, secrets never leak."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sglkit import profile as profiles
from sglkit.errors import ConfigError
from sglkit.profile.check import check
from sglkit.server import parse
from sglkit.server import spec as server_spec

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [
    "cpu-dev",
    "deepseek-v3-gh200",
    "qwen3-30b-a3b-gh200",
    "qwen3-moe-fp8-2l",
    "qwen3-moe-bf16-2l",
]


def write(tmp_path: Path, data: dict, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def minimal(**server) -> dict:
    return {"model": {"path": "org/model"}, "server": {"context_length": 4096, **server}}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_check(name):
    p = profiles.load(name)
    assert p.name == name
    notes = [*check(p), *parse.parse_with_sglang(server_spec.build(p))]
    assert any(n.startswith("sglang") for n in notes)
    argv = server_spec.build(p).argv()
    assert argv[argv.index("--model-path") + 1] == p.model_path
    assert argv[argv.index("--context-length") + 1] == str(p.server["context_length"])


def test_default_profile_is_cpu_dev(monkeypatch):
    monkeypatch.delenv("SGLKIT_PROFILE", raising=False)
    assert profiles.resolve_path(None).name == "cpu-dev.yaml"
    monkeypatch.setenv("SGLKIT_PROFILE", "qwen3-30b-a3b-gh200")
    assert profiles.load().name == "qwen3-30b-a3b-gh200"


def test_argv_is_exact_list(tmp_path):
    path = write(
        tmp_path,
        minimal(
            tp=4,
            ep=2,
            kv_cache_dtype="fp8_e4m3",
            mem_fraction_static=0.8,
            trust_remote_code=True,
            args={"enable-dp-attention": True, "cuda-graph-bs": [1, 2, 4], "disable-x": False},
        ),
    )
    argv = server_spec.build(
        profiles.load(path), server_spec.Overrides(tracing_endpoint="127.0.0.1:4317")
    ).argv()
    assert argv == [
        "python3", "-m", "sglang.launch_server", "--model-path", "org/model",
        "--tp-size", "4", "--ep-size", "2", "--context-length", "4096",
        "--kv-cache-dtype", "fp8_e4m3", "--mem-fraction-static", "0.8",
        "--host", "127.0.0.1", "--port", "30000", "--enable-metrics", "--trust-remote-code",
        "--enable-dp-attention", "--cuda-graph-bs", "1", "2", "4",
        "--enable-trace", "--otlp-traces-endpoint", "127.0.0.1:4317",
    ]  # fmt: skip


def test_argv_keeps_hostile_strings_as_single_arguments(tmp_path):
    path = write(tmp_path, {"model": {"path": "m; rm -rf / $(x)"}, "server": {}})
    argv = server_spec.build(profiles.load(path)).argv()
    assert "m; rm -rf / $(x)" in argv


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"model": {"path": "m"}, "sever": {}}, "sever"),
        ({"model": {"path": "m"}, "server": {"tp": "eight"}}, "server.tp"),
        ({"model": {"path": "m"}, "server": {"tp": 0}}, "server.tp"),
        ({"model": {"path": "m"}, "server": {"tp": True}}, "server.tp"),
        ({"model": {"path": "m"}, "server": {"port": 70000}}, "server.port"),
        ({"model": {"path": "m"}, "server": {"mem_fraction_static": 1.5}},
         "server.mem_fraction_static"),
        ({"model": {"path": "m"}, "server": {"launcher": "python -m x"}}, "server.launcher"),
        ({"model": {"path": "m"}, "server": {"contxt_length": 5}}, "server.contxt_length"),
        ({"model": {"path": "m"}, "telemetry": {"ports": {"prometheus": -1}}},
         "telemetry.ports.prometheus"),
        ({"model": {"path": "m"}, "telemetry": {"scrape_interval": "5"}},
         "telemetry.scrape_interval"),
        ({"model": {"path": "m"}, "container": {"variant": "arm"}}, "container.variant"),
        ({"model": {"path": "m"}, "env": {"HF_TOKEN": "hf_x"}}, "env"),
        ({"model": {"path": "m"}, "env": {"WANDB_API_KEY": "x"}}, "env"),
        ({"model": {"path": "m"}, "env": {"SGLANG_MOE_CONFIG_DIR": "/x"}}, "env"),
        ({"server": {}}, "model"),
        ({"model": {}}, "model.path"),
    ],
)  # fmt: skip
def test_bad_fields_name_file_and_field(tmp_path, data, field):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        profiles.load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {field}:"), msg
    assert "\n" not in msg
    assert e.value.exit_code == 2


def test_gpu_profile_needs_context_length(tmp_path):
    path = write(tmp_path, {"model": {"path": "m"}, "container": {"variant": "gh200"}})
    with pytest.raises(ConfigError, match=r"server\.context_length: required for a GPU profile"):
        check(profiles.load(path))


def test_ep_must_divide_tp_and_ports_must_differ(tmp_path):
    with pytest.raises(ConfigError, match=r"server\.ep"):
        check(profiles.load(write(tmp_path, minimal(tp=4, ep=3))))
    clash = {**minimal(port=9090)}
    with pytest.raises(ConfigError, match=r"telemetry\.ports\.prometheus: port 9090"):
        check(profiles.load(write(tmp_path, clash, "c.yaml")))


def test_environment_points_caches_and_moe_overlay(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLKIT_CACHE_ROOT", str(tmp_path / "c"))
    env = profiles.load("cpu-dev").environment()
    assert env["SGLANG_DG_CACHE_DIR"] == str(tmp_path / "c" / "deepgemm")
    assert env["TRITON_CACHE_DIR"] == str(tmp_path / "c" / "triton")
    assert env["HF_HOME"] == str(tmp_path / "c" / "huggingface")
    for var in ("FLASHINFER_WORKSPACE_BASE", "TORCHINDUCTOR_CACHE_DIR", "DG_JIT_CACHE_DIR"):
        assert env[var].startswith(str(tmp_path / "c"))
    # the overlay of the kit's store over SGLang's shipped configs (sglkit.kernels.overlay),
    # never the store alone: SGLang would stop finding the configs it ships
    assert env["SGLANG_MOE_CONFIG_DIR"] == str(tmp_path / "c" / "moe-configs")


def test_relative_model_config_resolves_beside_profile():
    p = profiles.load("deepseek-v3-gh200")
    cfg = p.model_config_path()
    assert cfg is not None and cfg.is_file()
    assert json.loads(cfg.read_text())["n_routed_experts"] == 256


def invoke(*args, env=None):
    import os

    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_check_passes_and_bad_profile_exits_2(tmp_path):
    ok = invoke("profile.check", "--profile", "profiles/deepseek-v3-gh200.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "ok:" in ok.stdout
    bad = write(tmp_path, {"model": {"path": "m"}, "server": {"tp": "eight"}})
    r = invoke("profile.check", "--profile", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "server.tp" in lines[0] and str(bad) in lines[0]


def test_cli_show_redacts_secrets_from_environment():
    r = invoke("profile.show", "--profile", "cpu-dev", env={"HF_TOKEN": "hf_secretvalue"})
    assert r.returncode == 0, r.stderr
    assert "hf_secretvalue" not in r.stdout
    assert "HF_TOKEN=<redacted>" in r.stdout
    assert "SGLANG_MOE_CONFIG_DIR=" in r.stdout
    assert "--model-path Qwen/Qwen3-30B-A3B" in r.stdout
    j = invoke("profile.show", "--profile", "cpu-dev", "--json", env={"X_SECRET": "s3"})
    data = json.loads(j.stdout)
    assert data["env"]["X_SECRET"] == "<redacted>"
    assert data["argv"][:3] == ["python3", "-m", "sglang.launch_server"]


def test_telemetry_root_is_resolved_once_for_every_reader(tmp_path, monkeypatch):
    """--root where given, else the profile's telemetry.root: ~ expanded, made absolute; obs.*,
    obs.report, init-run and container.up's mounts all read it through telemetry_root."""
    from sglkit.containers import lifecycle
    from sglkit.observability import manifest
    from sglkit.profile import telemetry_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SGLKIT_TELEMETRY_ROOT", "rel/telemetry")
    p = profiles.load("cpu-dev")
    assert telemetry_root(p) == tmp_path / "rel" / "telemetry"
    assert telemetry_root("cpu-dev") == telemetry_root(None) == telemetry_root(p)
    assert telemetry_root(p, "~/runs") == Path.home() / "runs"
    assert telemetry_root("no-such-profile", "elsewhere") == tmp_path / "elsewhere"  # not loaded
    assert lifecycle.host_dirs(p)["telemetry"] == telemetry_root(p)
    run = tmp_path / "rel" / "telemetry" / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"run_id": "r1", "status": "stopped"}')
    assert manifest.resolve_run("r1", None) == run
    assert manifest.resolve_run(None, None) == run
