"""Pure functions: the Dockerfile of a variant, requirements.txt, devcontainer.json, run plans.

Templates render with a sandboxed jinja2 environment and StrictUndefined (a missing variable is an
error, never an empty string).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from sglkit import paths
from sglkit.errors import ConfigError

if TYPE_CHECKING:
    from sglkit.profile import Profile

DOCKERFILE_TEMPLATE = "Dockerfile.j2"
DEVCONTAINER_TEMPLATE = "devcontainer.json.j2"

# variant -> (platform, dpkg arch); None: the host's own platform (the cpu variant builds here)
PLATFORMS: dict[str, tuple[str | None, str | None]] = {
    "gh200": ("linux/arm64", "arm64"),
    "hopper-x86": ("linux/amd64", "amd64"),
    "cpu": (None, None),
}
GPU_VARIANTS = ("gh200", "hopper-x86")

# Upstream release versions baked into the GPU variants as build-arg defaults (override with
# container.build --build-arg NAME=VALUE). Each tarball is verified in the RUN step against the
# checksum file published with its release.
# The user's fork ran Prometheus 3.5.0 (the 3.5 LTS line) and Jaeger 1.73.0: the kit's scrape config
# and flags are valid for 2.x and 3.x alike (docs/containers.md, "Prometheus 2.x and 3.x").
RELEASE_VERSIONS = {"prometheus": "3.5.0", "node_exporter": "1.9.1", "jaeger": "1.73.0"}
# Grafana OSS from Grafana's own apt repository (apt.grafana.com, signed by its gpg.key), GPU
# variants only; "" installs the repository's newest.
GRAFANA_VERSION = "12.1.1"
SETUPTOOLS_VERSION = "84.2.1"  # the kit installs without build isolation

COMMON_APT = [
    "ca-certificates",
    "curl",
    "git",
    "less",
    "procps",
    "python3",
    "python3-venv",
    "sudo",
    "tini",
    "zsh",
]
# The image's Python tools beyond the kit's runtime: pyproject.toml's `devcontainer` extra
# (uv, typer, ray as in the user's fork; nox and pytest for `nox -s gpu_smoke` in the image).
IMAGE_EXTRA = "devcontainer"
CPU_APT = ["prometheus", "prometheus-node-exporter"]

# Where host storage appears inside the container.
MOUNT_POINTS = {
    "models": "/models",
    "cache": "/cache",
    "telemetry": "/telemetry",
    "profiles": "/profiles",
}

# Files and folders of the kit copied into the image (relative to the kit's home). The tests and
# the noxfile come along, so `nox -s gpu_smoke` runs in the image against the kit it holds
# (docs/containers.md, "The GPU smoke test inside the container").
KIT_FILES = ("pyproject.toml", "README.md", "noxfile.py", "tasks.py")
KIT_DIRS = ("sglkit", "profiles", "containers", "observability", "kernels", "cache", "tests")


def environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


def check_variant(variant: str) -> str:
    if variant not in PLATFORMS:
        raise ConfigError(f"--variant: {variant!r} is not one of {', '.join(PLATFORMS)}")
    return variant


def cache_env(profile: Profile | None = None) -> dict[str, str]:
    """Every cache variable, pointing under the /cache mount: at the profile's folders (its
    cache.dirs) where a profile is given, else at the layout's default folders."""
    from sglkit import profile as profiles

    cache = MOUNT_POINTS["cache"]
    dirs = profile.cache_dirs(root=cache) if profile else profiles.cache_folders(cache)
    return profiles.cache_environment(dirs)


def profile_env(profile: Profile) -> dict[str, str]:
    """What a container of `profile` sets over the image's environment: the cache variables
    whose folder the profile's cache.dirs moves ({} where it moves none)."""
    image = cache_env()
    return {k: v for k, v in cache_env(profile).items() if image.get(k) != v}


def container_env() -> dict[str, str]:
    """Environment baked into the image: kit roots and every cache variable under /cache (the
    layout's folders: the image serves every profile; `profile_env` adds a profile's own)."""
    env = {
        "SGLKIT_MODELS_ROOT": MOUNT_POINTS["models"],
        "SGLKIT_CACHE_ROOT": MOUNT_POINTS["cache"],
        "SGLKIT_TELEMETRY_ROOT": MOUNT_POINTS["telemetry"],
        "SGLKIT_PROFILES": MOUNT_POINTS["profiles"],
        **cache_env(),
    }
    # No SGLANG_MOE_CONFIG_DIR here: it would make every SGLang in the image read one folder
    # instead of its own shipped configs. The kit's launchers set it per run to the overlay they
    # build (sglkit.kernels.overlay.prepare); an SGLang started by hand reads its own configs.
    return env


def home_links() -> dict[str, str]:
    """Links in the dev user's HOME -> where they point under /cache (the user's fork had
    FlashInfer's cache there). FlashInfer appends `.cache/flashinfer` to its
    FLASHINFER_WORKSPACE_BASE (the image's: cache_env()), so the link and the variable name the
    same folder."""
    from sglkit.profile import cache_folders

    fi = cache_folders(MOUNT_POINTS["cache"])["flashinfer"]
    return {".cache/flashinfer": f"{fi}/.cache/flashinfer"}


def dockerfile(variant: str, base_image: str | None = None) -> str:
    """The Dockerfile text of `variant` (base_image: the cpu variant's FROM default)."""
    from sglkit.cache.bytecode import MODULES as BYTECODE_MODULES
    from sglkit.containers.base import BASE_IMAGE
    from sglkit.profile.schema import DEFAULT_USER

    check_variant(variant)
    platform, arch = PLATFORMS[variant]
    gpu = variant in GPU_VARIANTS
    text = (paths.asset("containers", DOCKERFILE_TEMPLATE)).read_text(encoding="utf-8")
    return (
        environment()
        .from_string(text)
        .render(
            variant=variant,
            gpu=gpu,
            platform=platform,
            arch=arch,
            base_image=base_image or BASE_IMAGE,
            dev_user=DEFAULT_USER,
            home_links=home_links(),
            setuptools_version=SETUPTOOLS_VERSION,
            versions=RELEASE_VERSIONS,
            grafana_version=GRAFANA_VERSION,
            apt_packages=COMMON_APT if gpu else [*COMMON_APT, *CPU_APT],
            mounts=list(MOUNT_POINTS.values()),
            kit_files=list(KIT_FILES),
            kit_dirs=list(KIT_DIRS),
            env=container_env(),
            bytecode_modules=list(BYTECODE_MODULES),
        )
    )


def requirements(pyproject: Path | None = None) -> str:
    """requirements.txt for the image: the pinned runtime dependencies of pyproject.toml."""
    import tomllib  # py311+; the image and CI run 3.11

    pyproject = pyproject or paths.home() / "pyproject.toml"
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project.get("optional-dependencies", {})
    pins: dict[str, tuple[str, str]] = {}
    for where, reqs in [("dependencies", project["dependencies"])] + [
        (f"optional-dependencies.{k}", v) for k, v in extras.items()
    ]:
        for d in reqs:
            name, sep, version = d.partition("==")
            if not sep:
                raise ConfigError(f"{pyproject}: project.{where}: {d!r} is not pinned with ==")
            seen = pins.setdefault(name.strip().lower(), (version.strip(), where))
            if seen[0] != version.strip():
                raise ConfigError(
                    f"{pyproject}: project.{where}: {d!r} disagrees with {seen[1]} "
                    f"({name.strip()}=={seen[0]})"
                )
    image = list(project["dependencies"]) + list(extras.get(IMAGE_EXTRA, []))
    return "".join(f"{d}\n" for d in dict.fromkeys(image))


# ---- static checks of a rendering (used by tests, and by `container.render --check`) ----------

_ARG = re.compile(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)(=.*)?$")
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    if buf.strip():
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def undeclared_args(text: str, env_names: set[str] | None = None) -> list[str]:
    """Variables used in a Dockerfile that no ARG (in scope) or ENV declares.

    Scope as Docker has it: ARGs before the first FROM are visible only in FROM lines; each stage
    sees the ARGs and ENVs declared in it. Shell variables set inside a RUN (`for f in ...`,
    `base=...`) are exempt.
    """
    problems: list[str] = []
    global_args: set[str] = set()
    stage: set[str] | None = None
    for word, rest in instructions(text):
        if word == "ARG":
            m = _ARG.match(f"ARG {rest}")
            if m:
                (global_args if stage is None else stage).add(m.group(1))
            continue
        if word == "FROM":
            for name in _VAR.findall(rest):
                if name not in global_args:
                    problems.append(f"FROM uses ${name} without a global ARG")
            stage = set()
            continue
        if stage is None:
            continue
        if word == "ENV":
            for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)=", rest):
                stage.add(m.group(1))
        local = set(re.findall(r"(?:^|[\s;(])([A-Za-z_][A-Za-z0-9_]*)=", rest))
        local |= set(re.findall(r"\bfor\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b", rest))
        known = stage | local | set(env_names or ()) | {"PATH", "HOME"}
        for name in _VAR.findall(rest):
            if name not in known:
                problems.append(f"{word} uses ${name} with no ARG or ENV in its stage")
    return problems


def copy_sources(text: str) -> list[str]:
    """Build-context paths that COPY/ADD read (COPY --from=<stage> excluded)."""
    out = []
    for word, rest in instructions(text):
        if word not in ("COPY", "ADD"):
            continue
        parts = rest.split()
        if any(p.startswith("--from=") for p in parts):
            continue
        args = [p for p in parts if not p.startswith("--")]
        out.extend(args[:-1])
    return out


def from_platforms(text: str) -> list[str | None]:
    """The --platform of each FROM line (None where a FROM has none)."""
    out: list[str | None] = []
    for word, rest in instructions(text):
        if word == "FROM":
            m = re.search(r"--platform=(\S+)", rest)
            out.append(m.group(1) if m else None)
    return out


# ---- devcontainer.json -----------------------------------------------------------------------


def devcontainer(plan: dict[str, Any]) -> str:
    """devcontainer.json (JSON, no comments) from a run plan (see lifecycle.plan)."""
    text = paths.asset("containers", DEVCONTAINER_TEMPLATE).read_text(encoding="utf-8")
    rendered = environment().from_string(text).render(plan=plan, tojson=_tojson)
    data = json.loads(rendered)  # the template must render valid JSON
    return json.dumps(data, indent=2) + "\n"


def _tojson(value: Any) -> str:
    return json.dumps(value)
