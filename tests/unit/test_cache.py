"""Pure parts of sglkit.cache: the warm plan, the fingerprint and its comparison, the lock."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from sglkit import profile as profiles
from sglkit import versions
from sglkit.cache import deepgemm, fingerprint, store
from sglkit.errors import ConfigError, SglkitError
from sglkit.server import spec as server_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cpu_dev(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLKIT_CACHE_ROOT", str(tmp_path / "c"))
    return "cpu-dev"


@pytest.mark.parametrize("version", ["0.5.16", "0.5.10"])
def test_plan_is_the_serving_argv_plus_the_warm_flags(cpu_dev, tmp_path, monkeypatch, version):
    """CUDA graphs stay on in the warm (its capture fills the Triton cache the start needs)."""
    monkeypatch.setattr(versions, "installed", lambda dist="sglang": version)
    pl = deepgemm.plan(cpu_dev, timeout=600)
    serve = server_spec.build(profiles.load(cpu_dev))
    assert pl.argv == [*serve.argv(), "--load-format", "dummy", "--watchdog-timeout", "600"]
    assert not [a for a in pl.argv if "cuda-graph" in a]
    folder = tmp_path / "c" / "deepgemm"
    assert pl.folder == folder
    for var in ("SGLANG_DG_CACHE_DIR", "DG_JIT_CACHE_DIR", "DG_CACHE_DIR"):
        assert pl.env[var] == str(folder)
    assert pl.env["SGLANG_IN_DEEPGEMM_PRECOMPILE_STAGE"] == "1"
    assert pl.env["SGLANG_ENABLE_JIT_DEEPGEMM"] == "1"
    # SGLang 0.5.16 renames every SGL_ variable itself, warning for each: the kit sets the old
    # names only for versions before that
    old = {"SGL_DG_CACHE_DIR", "SGL_ENABLE_JIT_DEEPGEMM", "SGL_JIT_DEEPGEMM_PRECOMPILE"}
    assert (old <= set(pl.env)) == (version == "0.5.10")
    assert pl.spec.url == "http://127.0.0.1:30000"


def _profile_without_context_length(tmp_path: Path) -> Path:
    data = {"model": {"path": "m"}, "server": {"port": 30123}, "cache": {"root": str(tmp_path)}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_requires_a_context_length(tmp_path):
    path = _profile_without_context_length(tmp_path)
    with pytest.raises(ConfigError, match=r"server\.context_length: required") as e:
        deepgemm.plan(str(path))
    assert e.value.exit_code == 2
    pl = deepgemm.plan(str(path), context_length=8192)
    assert pl.spec.flag_values()["--context-length"] == "8192"


def test_context_length_flag_must_agree_with_the_profile(cpu_dev):
    with pytest.raises(ConfigError, match=r"--context-length: 8192 differs"):
        deepgemm.plan(cpu_dev, context_length=8192)
    assert deepgemm.plan(cpu_dev, context_length=4096).argv == deepgemm.plan(cpu_dev).argv


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"context_length": 0}, "--context-length"),
        ({"context_length": "abc"}, "--context-length"),
        ({"launcher": ""}, "--launcher"),
        ({"port": 70000}, "--port"),
        ({"timeout": 0}, "--timeout"),
        ({"model": " "}, "--model"),
    ],
)
def test_bad_flags_name_the_flag(cpu_dev, kwargs, flag):
    with pytest.raises(ConfigError) as e:
        deepgemm.plan(cpu_dev, **kwargs)
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_model_and_launcher_overrides(cpu_dev):
    pl = deepgemm.plan(
        cpu_dev, model="org/Other", launcher="python3 standin.py --x 'a b'", port=31000
    )
    assert pl.argv[:4] == ["python3", "standin.py", "--x", "a b"]
    assert pl.argv[pl.argv.index("--model-path") + 1] == "org/Other"
    assert pl.profile.model_config_path() is None  # the profile's config.json is another model's
    assert pl.spec.url.endswith(":31000")


def test_shape_args_keeps_only_flags_that_change_kernels(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "m"}, "server": {
        "tp": 8, "port": 30000, "chunked_prefill_size": -1, "context_length": 32768,
        "host": "h", "args": {"enable-dp-attention": True}}}))  # fmt: skip
    spec = server_spec.build(profiles.load(path), server_spec.Overrides(load_format="dummy"))
    assert fingerprint.shape_args(spec) == {
        "--tp-size": "8",
        "--enable-dp-attention": True,
        "--chunked-prefill-size": "-1",
        "--context-length": "32768",
    }


def test_deep_gemm_version_is_read_under_sglangs_distribution_name(tmp_path, monkeypatch):
    """SGLang installs DeepGEMM as `sgl-deep-gemm`; the module is still `deep_gemm`."""
    site = tmp_path / "site"
    dist = site / "sgl_deep_gemm-0.1.4.post1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sgl-deep-gemm\nVersion: 0.1.4.post1\n"
    )
    (dist / "top_level.txt").write_text("deep_gemm\n")
    (site / "deep_gemm").mkdir()
    (site / "deep_gemm" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    assert fingerprint.deep_gemm_version() == "0.1.4.post1"


def test_compute_hashes_the_model_config_and_names_unknowns(cpu_dev):
    p = profiles.load(cpu_dev)
    fp = fingerprint.compute(server_spec.build(p))
    cfg = REPO / "profiles/models/Qwen3-30B-A3B/config.json"
    assert fp.fields["model_config_sha256"] == hashlib.sha256(cfg.read_bytes()).hexdigest()
    assert fp.fields["server_args"]["--context-length"] == "4096"
    for key in fp.unknown:  # every unknown field says why
        assert fp.reasons[key]
    assert fp.to_json()["unknown"] == fp.unknown


def F(**fields) -> fingerprint.Fingerprint:
    base = {k: None for k in fingerprint.ORDER}
    base["server_args"] = {"--tp-size": "1"}
    base.update(fields)
    return fingerprint.Fingerprint(base, {"gpu_name": "no GPU visible"})


def test_unknown_equals_unknown_but_not_a_known_value():
    assert fingerprint.differences(F(), F()) == []
    assert fingerprint.differences(F(gpu_name="H200"), F(gpu_name="H200")) == []
    [line] = fingerprint.differences(F(gpu_name="NVIDIA GH200 480GB"), F())
    assert line == "gpu_name: marker 'NVIDIA GH200 480GB', here unknown (no GPU visible)"
    [line] = fingerprint.differences(F(), F(gpu_name="H200"))
    assert line == "gpu_name: marker unknown, here 'H200'"


def test_server_args_difference_names_the_flag():
    [line] = fingerprint.differences(F(server_args={"--tp-size": "8"}), F())
    assert line.startswith("server_args: --tp-size '8' -> '1'")


def test_import_fields_ignore_shapes():
    only = fingerprint.IMPORT_FIELDS
    assert fingerprint.differences(F(server_args={"--tp-size": "8"}), F(), only=only) == []
    [line] = fingerprint.differences(F(sglang_version="0.5.5"), F(), only=only, label="archive")
    assert line.startswith("sglang_version: archive '0.5.5', here unknown")


def test_lock_is_exclusive_and_names_the_holder(tmp_path):
    import os

    folder = tmp_path / "deepgemm"
    with store.locked(folder, what="test"):
        with pytest.raises(SglkitError) as e, store.locked(folder, wait=0.2):
            pass
        assert e.value.exit_code == 75
        assert f"pid {os.getpid()} (test)" in str(e.value)
    with store.locked(folder):  # released
        pass


def test_ensure_writable_names_the_field(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"^cache\.root: cache folder .* is not writable"):
        store.ensure_writable(tmp_path / "file" / "deepgemm", "cache.root")
    store.ensure_writable(tmp_path / "ok" / "deepgemm", "cache.root")
    assert (tmp_path / "ok" / "deepgemm").is_dir()
    assert list((tmp_path / "ok" / "deepgemm").iterdir()) == []


def test_marker_round_trip_and_corrupt_marker_counts_as_none(tmp_path):
    assert store.read_marker(tmp_path) is None
    store.write_marker(tmp_path, {"kind": "deepgemm"})
    assert store.read_marker(tmp_path) == {"kind": "deepgemm"}
    store.marker_path(tmp_path).write_text("{not json")
    assert store.read_marker(tmp_path) is None
    store.remove_marker(tmp_path)
    store.remove_marker(tmp_path)
    assert not store.marker_path(tmp_path).exists()


def test_folder_stats_skip_the_marker(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "k").write_bytes(b"x" * 10)
    store.write_marker(tmp_path, {"kind": "deepgemm"})
    size, files, newest = store.folder_stats(tmp_path)
    assert (size, files) == (10, 1) and newest is not None
    assert store.human_bytes(10) == "10 B" and store.human_bytes(3 * 1024**2) == "3.0 MiB"


def test_describe_is_what_warm_would_run(cpu_dev):
    pl = deepgemm.plan(cpu_dev)
    d = deepgemm.describe(pl)
    assert d["argv"] == pl.argv and d["folder"] == str(pl.folder)
    assert d["marker"] == "none"
    assert d["fingerprint"]["fields"]["server_args"]["--chunked-prefill-size"] == "2048"
    assert not pl.folder.exists()  # a dry run creates nothing
