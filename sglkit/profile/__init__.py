"""Serving profiles: the one source of truth that warm, tune, serve and observe all read.

load("cpu-dev")            -> Profile (validated, defaults filled, paths expanded)
profile.server_argv()      -> the exact argv the server runs with (a list)
profile.environment()      -> cache and kit environment for that server
"""

from __future__ import annotations

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

DEFAULT_PROFILE = "cpu-dev"
# a profile is a few KB; past this it is refused before parsing (50 MB took PyYAML 30 s)
PROFILE_MAX_BYTES = 1024 * 1024
REDACTED = "<redacted>"

# profile field -> SGLang flag; the rest of server.* is structural (launcher, args)
_FLAGS = {
    "tp": "--tp-size",
    "dp": "--dp-size",
    "ep": "--ep-size",
    "context_length": "--context-length",
    "chunked_prefill_size": "--chunked-prefill-size",
    "kv_cache_dtype": "--kv-cache-dtype",
    "mem_fraction_static": "--mem-fraction-static",
    "host": "--host",
    "port": "--port",
}
_BOOL_FLAGS = {"enable_metrics": "--enable-metrics", "trust_remote_code": "--trust-remote-code"}
# defaults SGLang itself uses; a flag equal to its SGLang default is still written, except these
_OMIT_AT = {"dp": 1, "ep": 1}


def resolve_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """A profile argument: a path to a YAML file, or a name under profiles/.

    None means $SGLKIT_PROFILE, else the default profile.
    """
    value = str(name_or_path or os.environ.get("SGLKIT_PROFILE") or DEFAULT_PROFILE)
    p = Path(value).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in value:
        return p
    return paths.asset("profiles", f"{value}.yaml")


def load_cache_layout() -> dict[str, dict[str, Any]]:
    return yamlsafe.load_file(paths.asset("cache", "layout.yaml"), what="cache layout")["kinds"]


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

    def cache_dirs(self) -> dict[str, Path]:
        """Folder of each cache kind (deepgemm, triton, flashinfer, inductor, hf)."""
        layout = load_cache_layout()
        overrides = self.data["cache"]["dirs"]
        unknown = set(overrides) - set(layout)
        if unknown:
            raise ConfigError(
                f"{self.path}: cache.dirs.{key_name(sorted(unknown)[0])}: unknown cache kind "
                f"(known: {', '.join(layout)})"
            )
        root = self.cache_root()
        return {k: root / overrides.get(k, v["dir"]) for k, v in layout.items()}

    # ---- what the server runs with ----------------------------------------------------------
    def server_argv(self, tracing_endpoint: str | None = None) -> list[str]:
        """The exact argv of the server; `tracing_endpoint` (host:port) adds OTLP tracing."""
        s = self.server
        argv = [*s["launcher"], "--model-path", self.model_path]
        for key, flag in _FLAGS.items():
            value = s[key]
            if value is None or _OMIT_AT.get(key) == value:
                continue
            argv += [flag, _fmt(value)]
        for key, flag in _BOOL_FLAGS.items():
            if s[key]:
                argv.append(flag)
        argv += flags_argv(s["args"])
        if tracing_endpoint:
            argv += ["--enable-trace", "--otlp-traces-endpoint", tracing_endpoint]
        return argv

    def tracing_endpoint(self) -> str:
        t = self.telemetry
        return f"{t['bind']}:{t['ports']['jaeger_otlp']}"

    def environment(self) -> dict[str, str]:
        """Environment the server and the kit's tools run with (cache dirs, MoE config store).

        Secrets are not here: they pass through from the caller's environment untouched.
        """
        env: dict[str, str] = {}
        layout = load_cache_layout()
        for kind, folder in self.cache_dirs().items():
            for var in layout[kind]["env"]:
                env[var] = str(folder)
        env["SGLANG_MOE_CONFIG_DIR"] = str(paths.asset("kernels"))
        env.update(self.data["env"])
        return env


def flags_argv(args: dict[str, Any]) -> list[str]:
    """{'enable-dp-attention': True, 'cuda-graph-max-bs': 8} -> ['--enable-dp-attention', ...]."""
    argv: list[str] = []
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is True or value is None:
            argv.append(flag)
        elif value is False:
            continue
        elif isinstance(value, list):
            argv += [flag, *(_fmt(v) for v in value)]
        else:
            argv += [flag, _fmt(value)]
    return argv


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    return str(value)


def _expand_paths(data: dict[str, Any], base: Path) -> None:
    """Expand ~ and ${VAR:-default}; a relative model.config is relative to the profile file."""
    for section, key in (("cache", "root"), ("telemetry", "root"), ("container", "storage")):
        data[section][key] = paths.expand(data[section][key])
    if data["model"]["config"]:
        cfg = Path(paths.expand(data["model"]["config"]))
        data["model"]["config"] = str(cfg if cfg.is_absolute() else (base / cfg).resolve())
    data["model"]["path"] = paths.expand(data["model"]["path"])
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


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if SECRET_NAME.search(k) else v) for k, v in env.items()}


def passthrough_secrets(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Secret-named variables of the caller's environment (passed to children, never written)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if SECRET_NAME.search(k)}


def shell_line(argv: list[str]) -> str:
    """argv for display only: joined with shlex at the edge."""
    return shlex.join(argv)
