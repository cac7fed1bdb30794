"""Static checks of the Dockerfile renderings (gh200, hopper-x86, cpu) and of the run plan."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sglkit import paths
from sglkit import profile as profiles
from sglkit.containers import build, devcontainer, lifecycle, render
from sglkit.errors import ConfigError, SglkitError

VARIANTS = ["gh200", "hopper-x86", "cpu"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {v: render.dockerfile(v) for v in VARIANTS}


@pytest.fixture
def context(tmp_path) -> Path:
    return tmp_path / "ctx"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variable_used_is_declared_in_scope(rendered, variant):
    assert render.undeclared_args(rendered[variant]) == []


def test_undeclared_arg_checker_catches_a_missing_declaration():
    text = "ARG BASE=x\nFROM ${BASE}\nRUN echo ${NOT_DECLARED}\n"
    assert render.undeclared_args(text) == [
        "RUN uses $NOT_DECLARED with no ARG or ENV in its stage"
    ]
    # an ARG declared before FROM is not visible inside the stage (Docker's scoping)
    text = "ARG V=1\nFROM scratch\nRUN echo $V\n"
    assert render.undeclared_args(text) == ["RUN uses $V with no ARG or ENV in its stage"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_copy_source_exists_in_the_build_context(rendered, variant, context):
    build.make_context(context, variant, ca=None)
    sources = render.copy_sources(rendered[variant])
    assert "requirements.txt" in sources and "sglkit/" in sources
    for src in sources:
        assert (context / src).exists(), f"COPY {src}: not in the build context"
    assert (context / "Dockerfile").read_text() == rendered[variant]


@pytest.mark.parametrize(
    ("variant", "platform", "arch"),
    [("gh200", "linux/arm64", "arm64"), ("hopper-x86", "linux/amd64", "amd64")],
)
def test_gpu_variants_pin_their_platform_and_arch(rendered, variant, platform, arch):
    text = rendered[variant]
    assert render.from_platforms(text) == [platform, platform]
    assert f"ARG TARGET_ARCH={arch}" in text
    assert "FROM --platform=" not in rendered["cpu"]


@pytest.mark.parametrize("variant", ["gh200", "hopper-x86"])
def test_gpu_downloads_are_verified_against_published_checksum_files(rendered, variant):
    runs = [rest for word, rest in render.instructions(rendered[variant]) if word == "RUN"]
    fetch = next(r for r in runs if "releases/download" in r)
    tarballs = re.findall(r'curl -fsSLO "\$\{base\}/([^"]+\.tar\.gz)"', fetch)
    assert len(tarballs) == 3  # prometheus, node_exporter, jaeger
    for tb in tarballs:
        # each tarball is checked by sha256sum -c against the release's own checksum file,
        # and the check must name that very tarball as OK
        assert f'grep -q "{tb}: OK"' in fetch, tb
    assert fetch.count("sha256sum -c") == 3
    assert "sha256sums.txt" in fetch and ".sha256sum.txt" in fetch
    # no checksum typed into the Dockerfile: no 64-hex string anywhere
    assert not re.search(r"\b[0-9a-f]{64}\b", rendered[variant])
    for name, version in render.RELEASE_VERSIONS.items():
        assert f"ARG {name.upper()}_VERSION={version}" in rendered[variant]


def test_gpu_variants_carry_dcgm_and_its_exporter_from_nvidia(rendered):
    text = rendered["gh200"]
    assert "nvcr.io/nvidia/k8s/dcgm-exporter:" in text
    assert '"datacenter-gpu-manager=1:${DCGM_VERSION}"' in text
    assert "COPY --from=dcgm-exporter /usr/bin/dcgm-exporter" in text
    assert "dcgm" not in rendered["cpu"].lower()


def test_cpu_variant_uses_debian_packages_and_no_downloads(rendered):
    text = rendered["cpu"]
    assert "prometheus prometheus-node-exporter" in text
    assert "releases/download" not in text
    assert "ARG BASE_IMAGE=sglkit/base:bookworm" in text


def test_variants_share_everything_below_the_from_block(rendered):
    def tail(text):
        return text[text.index("ARG DEV_USER=dev") :]

    gh, cpu = tail(rendered["gh200"]), tail(rendered["cpu"])
    # the shared part: user, CA, venv, kit install, env, entrypoint
    for marker in (
        "useradd -m",
        "COPY build-ca/",
        "python3 -m venv",
        "ENTRYPOINT",
        "ENV SGLKIT_HOME",
    ):
        assert marker in gh and marker in cpu

    def shared(text):  # from the user step on, only the variant label differs
        return text[text.index("# 3. The dev user") :].replace('variant="gh200"', 'variant="cpu"')

    assert shared(gh) == shared(cpu)


def test_layer_order_keeps_code_changes_off_the_apt_layer(rendered):
    ins = render.instructions(rendered["cpu"])
    idx = {
        "apt": next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "apt-get install" in r),
        "deps": next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "requirements.txt" in r),
        "code": next(i for i, (w, r) in enumerate(ins) if w == "COPY" and r.endswith("sglkit/")),
    }
    assert idx["apt"] < idx["deps"] < idx["code"]


def test_the_image_environment_agrees_with_the_kit_inside_the_container(rendered, monkeypatch):
    """A server started by hand in the container (the image's environment) and one the kit starts
    there (Profile.environment, the profile loaded under the image's SGLKIT_* roots) use the
    same cache folders and the same telemetry root; the Dockerfile carries that environment."""
    image = render.container_env()
    for name, value in image.items():
        assert f"{name}={value}" in rendered["cpu"]
        if name.startswith("SGLKIT_"):
            monkeypatch.setenv(name, value)
    p = profiles.load("cpu-dev")
    cache_vars = {v for kind in profiles.load_cache_layout().values() for v in kind["env"]}
    kit = {k: v for k, v in p.environment().items() if k in cache_vars}
    assert kit
    assert kit == {k: image[k] for k in kit}
    assert profiles.telemetry_root(p) == Path(image["SGLKIT_TELEMETRY_ROOT"])


def test_a_cache_dirs_override_reaches_the_container_environment(tmp_path, monkeypatch):
    """Issue 17: the container's environment named the layout's default cache folders only, so in
    the container of a profile that moves a cache (cache.dirs) a server started by hand used
    another folder than the kit's own warmers and launchers. What the container sees (the image's
    environment, then the container's own) now names the profile's folders, as the kit does."""
    prof = tmp_path / "prof" / "moved.yaml"
    prof.parent.mkdir(parents=True)
    prof.write_text(
        "model: {path: m}\n"
        "cache: {dirs: {deepgemm: dg-moved, hf: hub}}\n"
        f"container: {json.dumps({'storage': str(tmp_path / 'st')})}\n"
    )
    monkeypatch.setenv("SGLKIT_CACHE_ROOT", str(tmp_path / "cache"))  # the host's cache root
    p = profiles.load(prof)
    seen = {**render.container_env(), **lifecycle.plan(p, run_id="r", gpus=False).environment}
    layout = profiles.load_cache_layout()
    assert {seen[v] for v in layout["deepgemm"]["env"]} == {"/cache/dg-moved"}
    assert seen["HF_HOME"] == "/cache/hub"
    assert seen["TRITON_CACHE_DIR"] == "/cache/triton"  # not moved: the image's own folder
    assert devcontainer.plan(p, tmp_path)["environment"]["HF_HOME"] == "/cache/hub"
    # the kit inside the container reads the profile under the image's roots: the same folders
    monkeypatch.setenv("SGLKIT_CACHE_ROOT", render.MOUNT_POINTS["cache"])
    cache_vars = {v for kind in layout.values() for v in kind["env"]}
    kit = {k: v for k, v in profiles.load(prof).environment().items() if k in cache_vars}
    assert kit and kit == {k: seen[k] for k in kit}


def test_entrypoint_is_init_run(rendered):
    ep = [r for w, r in render.instructions(rendered["cpu"]) if w == "ENTRYPOINT"]
    assert json.loads(ep[0])[-2:] == ["-m", "sglkit.observability.init_run"]


def test_requirements_are_the_pinned_runtime_dependencies(tmp_path):
    reqs = render.requirements().splitlines()
    assert reqs and all("==" in r for r in reqs)
    assert any(r.startswith("docker==") for r in reqs)
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\nname="x"\ndependencies=["docker>=7"]\n')
    with pytest.raises(ConfigError, match="not pinned"):
        render.requirements(bad)


def test_unknown_variant_is_one_line_error():
    with pytest.raises(ConfigError, match="--variant: 'arm' is not one of"):
        render.dockerfile("arm")


def test_gpu_variant_needs_a_base_image():
    with pytest.raises(ConfigError, match=r"container\.base_image"):
        build.build_args("gh200", {})
    assert build.build_args("gh200", {"BASE_IMAGE": "x"})["BASE_IMAGE"] == "x"


def test_build_args_parse():
    assert build.parse_build_args(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(ConfigError, match="--build-arg: 'nope'"):
        build.parse_build_args(["nope"])


def _profile(tmp_path, **container) -> profiles.Profile:
    c = {"name": "sglkit-t", "storage": str(tmp_path / "st"), **container}
    text = (
        "model: {path: m}\n"
        f"telemetry: {{root: {tmp_path / 'tel'}}}\n"
        f"cache: {{root: {tmp_path / 'cache'}}}\n"
        f"container: {json.dumps(c)}\n"
    )
    p = tmp_path / "prof" / "t.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return profiles.load(p)


def test_plan_mounts_ports_env_and_labels(tmp_path):
    p = _profile(tmp_path)
    plan = lifecycle.plan(p, run_id="r1", gpus=False, secrets={"HF_TOKEN": "hf-secret-value-123"})
    by_target = {m["target"]: m for m in plan.mounts}
    assert by_target["/telemetry"]["source"] == str(tmp_path / "tel")
    assert by_target["/cache"]["source"] == str(tmp_path / "cache")
    assert by_target["/models"]["source"] == str(tmp_path / "st" / "models")
    assert by_target["/profiles"] == {
        "source": str(tmp_path / "prof"),
        "target": "/profiles",
        "read_only": True,
    }
    assert plan.command == [
        "--profile",
        "/profiles/t.yaml",
        "--root",
        "/telemetry",
        "--run-id",
        "r1",
        "--bind",
        "0.0.0.0",
        "--host-ports",
        "3000=3000,4317=4317,9090=9090,9100=9100,9400=9400,16686=16686,30000=30000",
    ]
    assert plan.ports[9090] == 9090 and plan.ports[30000] == 30000
    assert plan.environment["HF_TOKEN"] == "hf-secret-value-123"
    # the secret is passed through, never recorded in labels
    assert "hf-secret-value-123" not in json.dumps(plan.labels)
    assert plan.labels["org.sglkit.run-id"] == "r1"


def test_only_the_secrets_the_profile_names_are_forwarded(tmp_path):
    """Issue 18: every caller variable named like a secret used to go into the container."""
    caller = {
        "HF_TOKEN": "hf-value",
        "UNRELATED_TOKEN": "u-value",
        "AWS_SECRET": "a-value",
        "DB_PASSWORD": "d-value",
        "WANDB_API_KEY": "w-value",
        "PATH": "/usr/bin",
    }
    default = lifecycle.secrets(_profile(tmp_path), caller)
    assert default == {"HF_TOKEN": "hf-value"}
    assert lifecycle.secret_note(default) == "secrets passed in (container.secrets): HF_TOKEN"
    named = lifecycle.secrets(_profile(tmp_path, secrets=["HF_TOKEN", "WANDB_API_KEY"]), caller)
    assert named == {"HF_TOKEN": "hf-value", "WANDB_API_KEY": "w-value"}
    note = lifecycle.secret_note(named)
    assert "WANDB_API_KEY" in note and "w-value" not in note and "hf-value" not in note
    plan = lifecycle.plan(_profile(tmp_path), run_id="r", gpus=False, secrets=default)
    assert "UNRELATED_TOKEN" not in plan.environment
    assert lifecycle.secrets(_profile(tmp_path), {}) == {}  # unset: nothing, no empty value
    with pytest.raises(ConfigError, match=r"container\.secrets: \[0\]: 1BAD is not an environment"):
        _profile(tmp_path, secrets=["1BAD"])


def test_plan_rejects_a_mount_over_a_kit_mount(tmp_path):
    p = _profile(tmp_path, mounts=[{"source": "/x", "target": "/cache"}])
    with pytest.raises(ConfigError, match=r"container.mounts\[0\].target: /cache is already"):
        lifecycle.plan(p, run_id="r", gpus=False)


def test_host_url_maps_container_ports_to_published_ones():
    assert lifecycle.host_url("http://0.0.0.0:9090/x?y=1", {9090: 41000}) == (
        "http://127.0.0.1:41000/x?y=1"
    )
    assert lifecycle.host_url("http://127.0.0.1:9100/metrics", {9100: 9100}) == (
        "http://127.0.0.1:9100/metrics"
    )
    assert lifecycle.host_url(None, {}) is None


@pytest.mark.parametrize(
    ("mode", "variant", "runtime", "expected"),
    [
        ("auto", "cpu", False, False),
        ("auto", "cpu", True, True),
        ("auto", "gh200", True, True),
        ("all", "cpu", False, True),
        ("none", "gh200", True, False),
    ],
)
def test_want_gpus(mode, variant, runtime, expected):
    assert lifecycle.want_gpus(mode, variant, runtime) is expected


def test_gpu_variant_without_nvidia_runtime_says_what_to_install():
    with pytest.raises(SglkitError, match="NVIDIA Container Toolkit"):
        lifecycle.want_gpus("auto", "gh200", False)
    with pytest.raises(ConfigError, match="--gpus: 'some'"):
        lifecycle.want_gpus("some", "cpu", False)


def test_devcontainer_json_mirrors_the_plan(tmp_path):
    p = _profile(tmp_path)
    out = devcontainer.write(p, tmp_path / ".devcontainer" / "devcontainer.json", tmp_path)
    data = json.loads(out.read_text())
    assert data["image"] == "sglkit/dev:cpu"
    assert f"type=bind,source={tmp_path / 'tel'},target=/telemetry" in data["mounts"]
    assert f"type=bind,source={tmp_path / 'prof'},target=/profiles,readonly" in data["mounts"]
    assert "127.0.0.1:9090:9090" in data["runArgs"]
    assert "--gpus" not in data["runArgs"]
    assert data["containerEnv"] == {"SGLKIT_PROFILE": "/profiles/t.yaml"}
    assert data["postCreateCommand"][-1] == "/opt/sglkit/src/containers/post-create.sh"
    assert (paths.asset("containers", "post-create.sh")).is_file()


def test_devcontainer_for_a_gpu_profile_asks_for_gpus(tmp_path):
    p = profiles.load("qwen3-30b-a3b-gh200")
    data = json.loads(render.devcontainer(devcontainer.plan(p, tmp_path)))
    assert data["runArgs"][-2:] == ["--gpus", "all"]
    assert data["image"] == "sglkit/dev:gh200"


def test_dev_ids_map_root_to_1000(monkeypatch):
    monkeypatch.delenv("SUDO_UID", raising=False)
    monkeypatch.delenv("SUDO_GID", raising=False)
    monkeypatch.setattr("os.getuid", lambda: 0)
    monkeypatch.setattr("os.getgid", lambda: 0)
    assert build.dev_ids() == (1000, 1000)
    monkeypatch.setenv("SUDO_UID", "1234")
    monkeypatch.setenv("SUDO_GID", "99")
    assert build.dev_ids() == (1234, 99)


def test_devcontainer_runs_the_storage_step_on_the_host_first(tmp_path):
    p = _profile(tmp_path)
    data = json.loads(render.devcontainer(devcontainer.plan(p, tmp_path)))
    init = data["initializeCommand"]
    # the opened folder is tmp_path: the profile under it through the variable, the kit's
    # checkout (elsewhere) absolute
    assert init[:3] == ["env", f"PYTHONPATH={paths.home().resolve()}", "python3"]
    assert init[3:] == [
        "-m",
        "sglkit.containers",
        "storage",
        "--profile",
        "${localWorkspaceFolder}/" + str(p.path.resolve().relative_to(tmp_path.resolve())),
    ]
    assert sys.executable not in json.dumps(data)  # not the interpreter that rendered it


def test_devcontainer_names_the_opened_folder_not_this_checkout():
    p = profiles.load("cpu-dev")  # profiles/cpu-dev.yaml inside the checkout
    data = json.loads(render.devcontainer(devcontainer.plan(p, paths.home())))
    assert data["initializeCommand"] == [
        "env",
        "PYTHONPATH=${localWorkspaceFolder}",
        "python3",
        "-m",
        "sglkit.containers",
        "storage",
        "--profile",
        "${localWorkspaceFolder}/profiles/cpu-dev.yaml",
    ]
    assert data["workspaceMount"] == "type=bind,source=${localWorkspaceFolder},target=/workspace"
    assert str(paths.home().resolve()) not in json.dumps(
        {k: data[k] for k in ("initializeCommand", "workspaceMount")}
    )
    assert data["remoteUser"] == data["containerUser"] == "devuser"
    assert devcontainer.workspace_of(paths.home() / ".devcontainer" / "devcontainer.json") == (
        paths.home().resolve()
    )


def test_storage_creates_folders_and_refuses_an_unreadable_profile_folder(tmp_path):
    p = _profile(tmp_path)
    dirs = lifecycle.host_dirs(p)
    uid, gid = os.getuid(), os.getgid()
    made = lifecycle.prepare_storage(dirs, uid, gid)
    flashinfer = dirs["cache"] / "flashinfer" / ".cache" / "flashinfer"
    assert sorted(made) == sorted(
        [*(dirs[k] for k in ("models", "cache", "telemetry")), flashinfer]
    )
    assert all(d.is_dir() for d in made)
    # the image's ~/.cache/flashinfer points at that folder through the /cache mount
    assert render.home_links() == {".cache/flashinfer": "/cache/flashinfer/.cache/flashinfer"}
    dirs["profiles"].chmod(0o700)
    other = uid + 1 if uid else 1000  # a user who is neither owner nor in the group
    with pytest.raises(SglkitError, match="is not readable by the container's user"):
        lifecycle.prepare_storage(dirs, other, gid + 1)
    dirs["profiles"].chmod(0o755)
    lifecycle.prepare_storage(dirs, uid, gid)  # readable again: no error


def test_python_m_entry_point_runs_the_storage_step(tmp_path):
    p = _profile(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "sglkit.containers", "storage", "--profile", str(p.path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=paths.home(),
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "tel").is_dir() and (tmp_path / "cache").is_dir()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "sglkit.containers",
            "storage",
            "--profile",
            str(tmp_path / "no.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=paths.home(),
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"error: {tmp_path / 'no.yaml'}: profile not found"]


def test_ca_bundle_choice(tmp_path, monkeypatch):
    for var in build.CA_ENV:
        monkeypatch.delenv(var, raising=False)
    assert build.ca_bundle() is None
    with pytest.raises(ConfigError, match=r"--ca-bundle: .* is not a file"):
        build.ca_bundle(str(tmp_path / "none.pem"))
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    assert build.ca_bundle() == pem
    ctx = build.make_context(tmp_path / "ctx", "cpu", build.ca_bundle())
    assert (ctx / "build-ca" / "sglkit-build-ca.crt").read_text() == pem.read_text()


@pytest.mark.parametrize("variant", VARIANTS)
def test_build_ca_is_trusted_before_any_https_download(rendered, variant):
    ins = render.instructions(rendered[variant])
    ca = next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "update-ca-certificates" in r)
    fetches = [
        i
        for i, (w, r) in enumerate(ins)
        if w == "RUN" and ("curl -" in r or "pip install" in r or "datacenter-gpu-manager" in r)
    ]
    assert fetches and all(ca < i for i in fetches)
