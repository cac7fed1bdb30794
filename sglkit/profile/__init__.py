"""Serving profiles: the one source of truth that warm, tune, serve and observe all read.

load("cpu-dev")            -> Profile (validated, defaults filled, paths expanded)
profile.environment()      -> cache and kit environment for a server of this profile

The server's argv is derived from the typed spec in sglkit.server.spec, built from a profile.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sglkit import paths, yamlsafe
from sglkit.errors import ConfigError
from sglkit.profile.schema import SECRET_NAME, Invalid, key_name, validate
from sglkit.versions import SGLang

DEFAULT_PROFILE = "cpu-dev"
# folder under cache.root that SGLANG_MOE_CONFIG_DIR names (not a cache kind: it is rebuilt from
# the store and the installed SGLang before every server start, never warmed or exported)
MOE_OVERLAY_DIR = "moe-configs"
# a profile is a few KB; past this it is refused before parsing (50 MB took PyYAML 30 s)
PROFILE_MAX_BYTES = 1024 * 1024
REDACTED = "<redacted>"


def resolve_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """A profile argument: a path to a YAML file, or a name under profiles/.

    None means $SGLKIT_PROFILE, else the default profile.
    """
    value = str(name_or_path or os.environ.get("SGLKIT_PROFILE") or DEFAULT_PROFILE)
    p = Path(value).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in value:
        return p
    return paths.asset("profiles", f"{value}.yaml")


@functools.cache
def cache_layout() -> dict[str, Any]:
    """cache/layout.yaml, read once: kinds (folder, variables, shape flags) and the warm env."""
    return yamlsafe.load_file(paths.asset("cache", "layout.yaml"), what="cache layout")


def load_cache_layout() -> dict[str, dict[str, Any]]:
    return cache_layout()["kinds"]


def cache_folders(
    root: str | os.PathLike, overrides: dict[str, str] | None = None, where: object = "profile"
) -> dict[str, Path]:
    """Folder of each cache kind (deepgemm, triton, flashinfer, inductor, hf) under `root`: the
    layout's folder, or the one `overrides` (a profile's cache.dirs) names; `where` names the
    profile in the error about an unknown kind."""
    layout = load_cache_layout()
    overrides = overrides or {}
    unknown = set(overrides) - set(layout)
    if unknown:
        raise ConfigError(
            f"{where}: cache.dirs.{key_name(sorted(unknown)[0])}: unknown cache kind "
            f"(known: {', '.join(layout)})"
        )
    return {k: Path(root) / overrides.get(k, v["dir"]) for k, v in layout.items()}


def cache_environment(dirs: dict[str, Path], sglang: SGLang | None = None) -> dict[str, str]:
    """The variables that point each library at its cache folder: every name cache/layout.yaml
    lists for a kind, or with `sglang` only the names that version reads."""
    layout = load_cache_layout()
    return {
        var: str(folder)
        for kind, folder in dirs.items()
        for var in layout[kind]["env"]
        if sglang is None or sglang.env_name_used(var)
    }


@dataclass(frozen=True)
class Profile:
    path: Path
    data: dict[str, Any]

    # ---- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.data["name"] or self.path.stem

    def hash(self) -> str:
        """sha256 of the resolved profile: what manifests and cache markers record."""
        blob = json.dumps(self.data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    # ---- sections ---------------------------------------------------------------------------
    @property
    def server(self) -> dict[str, Any]:
        return self.data["server"]

    @property
    def telemetry(self) -> dict[str, Any]:
        return self.data["telemetry"]

    @property
    def container(self) -> dict[str, Any]:
        return self.data["container"]

    @property
    def model_path(self) -> str:
        return self.data["model"]["path"]

    def model_config_path(self) -> Path | None:
        """config.json of the model where the profile names one or the model is a local folder."""
        cfg = self.data["model"]["config"]
        if cfg:
            return Path(cfg)
        local = Path(self.model_path)
        if local.is_dir():
            return local / "config.json"
        return None

    # ---- caches -------------------------------------------------------------------------------
    def cache_root(self) -> Path:
        return Path(self.data["cache"]["root"])

    def cache_dirs(self, root: str | os.PathLike | None = None) -> dict[str, Path]:
        """Folder of each cache kind (deepgemm, triton, flashinfer, inductor, hf) under cache.root,
        or under `root` where the cache root is mounted elsewhere (a container's /cache)."""
        return cache_folders(root or self.cache_root(), self.data["cache"]["dirs"], self.path)

    # ---- what the server runs with ----------------------------------------------------------
    def tracing_endpoint(self) -> str:
        t = self.telemetry
        return f"{t['bind']}:{t['ports']['jaeger_otlp']}"

    def environment(self, sglang: SGLang | None = None) -> dict[str, str]:
        """Environment the server and the kit's tools run with (cache dirs, MoE config store),
        in the variable names that `sglang` (default: the installed version) reads.

        Secrets are not here: they pass through from the caller's environment untouched.
        """
        env = cache_environment(self.cache_dirs(), sglang or SGLang.here())
        # the MoE config overlay (sglkit.kernels.overlay): the kit's store over SGLang's shipped
        # configs, rebuilt there by overlay.prepare(profile) before a server starts
        env["SGLANG_MOE_CONFIG_DIR"] = str(self.moe_config_dir())
        env.update(self.data["env"])
        return env

    def moe_config_dir(self, source: str = "kit") -> Path:
        """The overlay folder for one choice of MoE config files (overlay.CONFIG_SOURCES): the
        kit's store over SGLang's in moe-configs, the others beside it (moe-configs-sglang,
        moe-configs-none), so that a server started with one never rewrites another's."""
        name = MOE_OVERLAY_DIR if source == "kit" else f"{MOE_OVERLAY_DIR}-{source}"
        return self.cache_root() / name


def _expand_paths(data: dict[str, Any], base: Path) -> None:
    """Expand ~ and ${VAR:-default}; a relative model.config, and a model.path starting with ./
    or ../, are relative to the profile file."""
    for section, key in (("cache", "root"), ("telemetry", "root"), ("container", "storage")):
        data[section][key] = paths.expand(data[section][key])
    if data["model"]["config"]:
        cfg = Path(paths.expand(data["model"]["config"]))
        data["model"]["config"] = str(cfg if cfg.is_absolute() else (base / cfg).resolve())
    model = paths.expand(data["model"]["path"])
    if model.startswith(("./", "../")):  # a folder beside the profile (a hub id has no ./)
        model = str((base / model).resolve())
    data["model"]["path"] = model
    for m in data["container"]["mounts"]:
        m["source"] = paths.expand(m["source"])


def load(name_or_path: str | os.PathLike | None = None) -> Profile:
    """Read, validate and resolve a profile; a ConfigError names the file and the field."""
    path = resolve_path(name_or_path)
    # size, depth and encoding limits; no aliases: a profile is short enough to write out
    raw = yamlsafe.load_file(path, what="profile", max_bytes=PROFILE_MAX_BYTES, aliases=False)
    try:
        data = validate(raw)
    except Invalid as e:
        raise ConfigError(f"{path}: {e}") from None
    _expand_paths(data, path.parent)
    return Profile(path=path, data=data)


def telemetry_root(
    profile: Profile | str | os.PathLike | None = None, root: str | os.PathLike | None = None
) -> Path:
    """The telemetry root: `root` (a --root flag) where given, else the profile's telemetry.root
    (the profile is loaded only then); ~ expanded and made absolute, not resolved (a symlinked
    root keeps its name). The one resolution obs.*, init-run, server.up and container.up use."""
    if not root:
        root = (profile if isinstance(profile, Profile) else load(profile)).telemetry["root"]
    return Path(root).expanduser().absolute()


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if SECRET_NAME.search(k) else v) for k, v in env.items()}


def passthrough_secrets(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Secret-named variables of the caller's environment (passed to children, never written)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if SECRET_NAME.search(k)}


def shell_line(argv: list[str]) -> str:
    """argv for display only: joined with shlex at the edge."""
    return shlex.join(argv)
