"""The serving profile's schema: one table of fields, types, defaults and checks.

Validation is ours (no pydantic): each error is one line naming the file and the dotted field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

VARIANTS = ("gh200", "hopper-x86", "cpu")
KV_CACHE_DTYPES = ("auto", "fp8_e5m2", "fp8_e4m3", "bf16", "bfloat16", "fp4_e2m1")
SECRET_NAME = re.compile(r"(^HF_TOKEN$|_TOKEN$|_KEY$|_SECRET$|_PASSWORD$)", re.IGNORECASE)
_DURATION = re.compile(r"[0-9]+(ms|s|m|h)")
_FLAG = re.compile(r"[a-z0-9][a-z0-9-_]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Invalid(ValueError):
    """One field is wrong; `path` is the dotted field name."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class F:
    """A leaf field: a checker returns the normalised value or raises ValueError(message)."""

    check: Callable[[Any], Any]
    default: Any = None
    required: bool = False


@dataclass(frozen=True)
class Section:
    fields: dict[str, F | Section]
    required: bool = False
    # a section may allow free-form keys checked by `extra`
    extra: Callable[[str, Any], Any] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)


_KINDS = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a mapping",
    list: "a list",
    bytes: "binary data",
    type(None): "null",
}
SHOW_MAX = 32  # a value is quoted in a message only when it is a scalar this short


def kind(v: Any) -> str:
    """What a YAML value is, in words ('a string', 'a mapping'), never what it holds."""
    for t, words in _KINDS.items():
        if type(v) is t:
            return words
    return f"a {type(v).__name__}"


def secret_key(key: Any) -> bool:
    """A key named like a secret (HF_TOKEN, api-key, db_password): its value is never shown."""
    return isinstance(key, str) and bool(SECRET_NAME.search(key.replace("-", "_")))


def _type_name(v: Any, key: Any = None) -> str:
    """'got' part of a message: the kind, and the value only when it is a short scalar that is
    not under a secret-like key (a whole file, a list, a long string are never echoed)."""
    shown = isinstance(v, bool | int | float) or (isinstance(v, str) and v.isprintable())
    if shown and not secret_key(key):
        text = repr(v)
        if len(text) <= SHOW_MAX:
            return f"{text} ({kind(v)})"
    return kind(v)


def key_name(k: Any) -> str:
    """A key from the file, for a message: short printable strings as they are, else its kind."""
    if isinstance(k, str) and k.isprintable() and len(k) <= SHOW_MAX:
        return k
    return f"<{kind(k)} key>"


def string(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a non-empty string, got {_type_name(v)}")
    return v


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {_type_name(v)}")
    return v


def pos_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"expected a positive integer, got {_type_name(v)}")
    return v


def port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValueError(f"expected a port number 1-65535, got {_type_name(v)}")
    return v


def host_port(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"\[?[A-Za-z0-9.:_-]+\]?:[0-9]{1,5}", v):
        raise ValueError(f"expected host:port, got {_type_name(v)}")
    return v


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(v: Any) -> Any:
        return None if v is None else check(v)

    return inner


def chunked_prefill(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1):
        raise ValueError(f"expected a positive integer or -1 (disabled), got {_type_name(v)}")
    return v


def fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
        raise ValueError(f"expected a number in (0, 1], got {_type_name(v)}")
    return float(v)


def positive_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < math.inf:
        raise ValueError(f"expected a positive number, got {_type_name(v)}")
    return float(v)


def one_of(*choices: str) -> Callable[[Any], str]:
    def inner(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {_type_name(v)}")
        return v

    return inner


def duration(v: Any) -> str:
    if not isinstance(v, str) or not _DURATION.fullmatch(v):
        raise ValueError(f"expected a duration such as 5s or 500ms, got {_type_name(v)}")
    return v


def argv_list(v: Any) -> list[str]:
    if isinstance(v, str) or not isinstance(v, list) or not v:
        raise ValueError("expected a non-empty list of strings (argv, never a shell string)")
    if not all(isinstance(x, str) and x for x in v):
        raise ValueError("expected a list of non-empty strings")
    return list(v)


def string_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError(f"expected a mapping, got {_type_name(v)}")
    out = {}
    for k, val in v.items():
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k):
            raise ValueError(f"{key_name(k)} is not an environment variable name")
        if SECRET_NAME.search(k):
            raise ValueError(
                f"{key_name(k)} looks like a secret: secrets come only from the environment, "
                "never from a profile"
            )
        if isinstance(val, bool) or not isinstance(val, str | int | float):
            raise ValueError(
                f"{key_name(k)}: expected a string or number, got {_type_name(val, k)}"
            )
        out[k] = str(val)
    return out


# Set by the kit itself (Profile.environment()); a profile's env may not override them.
KIT_OWNED_ENV = {
    "SGLANG_MOE_CONFIG_DIR": (
        "set by the kit to the MoE config overlay under cache.root (the kit's store over "
        "SGLang's shipped configs); put tuned files in kernels/configs/ instead"
    ),
}


def profile_env(v: Any) -> dict[str, str]:
    """The profile's `env`: a string map without the variables the kit sets itself."""
    out = string_map(v)
    for k in out:
        if k in KIT_OWNED_ENV:
            raise ValueError(f"{k}: {KIT_OWNED_ENV[k]}")
    return out


_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# the image's login user, as the user's fork named it (container.user overrides it)
DEFAULT_USER = "devuser"


def user_name(v: Any) -> str:
    """A POSIX login name for the image's dev user (useradd's rule); never root."""
    if not isinstance(v, str) or not _USER_NAME.fullmatch(v):
        raise ValueError(
            f"expected a login name ([a-z_][a-z0-9_-]*, at most 32), got {key_name(v)}"
        )
    if v == "root":
        raise ValueError("root is the image's own; name a non-root dev user")
    return v


def env_names(v: Any) -> list[str]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list of environment variable names, got {_type_name(v)}")
    for i, k in enumerate(v):
        if not isinstance(k, str) or not _ENV_NAME.fullmatch(k):
            raise ValueError(f"[{i}]: {key_name(k)} is not an environment variable name")
    return list(dict.fromkeys(v))


def extra_args(v: Any) -> dict[str, Any]:
    """Any other SGLang `--flag`: name without dashes -> value (true for a bare flag, list)."""
    if not isinstance(v, dict):
        raise ValueError(f"expected a mapping of flag name to value, got {_type_name(v)}")
    for k, val in v.items():
        if not isinstance(k, str) or not _FLAG.fullmatch(k):
            raise ValueError(f"{key_name(k)} is not a flag name (write it without the leading --)")
        ok = (
            val is None
            or isinstance(val, str | int | float | bool)
            or (isinstance(val, list) and all(isinstance(x, str | int | float) for x in val))
        )
        if not ok:
            raise ValueError(
                f"{key_name(k)}: expected a scalar, true, or a list, got {_type_name(val, k)}"
            )
    return dict(v)


def cache_dirs(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError(f"expected a mapping of cache kind to folder, got {_type_name(v)}")
    return {str(k): string(val) for k, val in v.items()}


def mounts(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list):
        raise ValueError(f"expected a list of mounts, got {_type_name(v)}")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict) or set(m) - {"source", "target", "read_only"}:
            raise ValueError(f"[{i}]: expected {{source, target, read_only}}")
        if "source" not in m or "target" not in m:
            raise ValueError(f"[{i}]: source and target are required")
        target = string(m["target"])
        if not target.startswith("/"):
            raise ValueError(f"[{i}].target: must be an absolute path inside the container")
        out.append(
            {
                "source": string(m["source"]),
                "target": target,
                "read_only": boolean(m.get("read_only", False)),
            }
        )
    return out


SCHEMA = Section(
    {
        "name": F(optional(string)),
        "description": F(optional(string)),
        "model": Section(
            {
                "path": F(string, required=True),
                "config": F(optional(string)),
            },
            required=True,
        ),
        "server": Section(
            {
                "launcher": F(argv_list, default=["python3", "-m", "sglang.launch_server"]),
                "tp": F(pos_int, default=1),
                "dp": F(pos_int, default=1),
                "ep": F(pos_int, default=1),
                "context_length": F(optional(pos_int)),
                "chunked_prefill_size": F(optional(chunked_prefill)),
                "kv_cache_dtype": F(optional(one_of(*KV_CACHE_DTYPES))),
                "mem_fraction_static": F(optional(fraction)),
                "host": F(string, default="127.0.0.1"),
                "port": F(port, default=30000),
                # a server over several nodes: how many, and the leader's host:port for
                # torch.distributed; each node's rank is given at launch (--node-rank)
                "nnodes": F(pos_int, default=1),
                "dist_init_addr": F(optional(host_port)),
                "enable_metrics": F(boolean, default=True),
                "trust_remote_code": F(boolean, default=False),
                "args": F(extra_args, default={}),
            }
        ),
        "env": F(profile_env, default={}),
        "cache": Section(
            {
                "root": F(string, default="${SGLKIT_CACHE_ROOT:-~/.cache/sglkit}"),
                "dirs": F(cache_dirs, default={}),
            }
        ),
        "telemetry": Section(
            {
                "root": F(
                    string, default="${SGLKIT_TELEMETRY_ROOT:-~/.local/share/sglkit/telemetry}"
                ),
                "scrape_interval": F(duration, default="5s"),
                "bind": F(string, default="127.0.0.1"),
                "tracing": F(boolean, default=False),
                # Prometheus' /-/quit and /-/reload: default on for loopback binds only
                "lifecycle_api": F(optional(boolean)),
                "ready_timeout": F(positive_number, default=60.0),
                "ports": Section(
                    {
                        "prometheus": F(port, default=9090),
                        "node_exporter": F(port, default=9100),
                        "gpu_exporter": F(port, default=9400),
                        "jaeger_ui": F(port, default=16686),
                        "jaeger_otlp": F(port, default=4317),
                        "grafana": F(port, default=3000),
                    }
                ),
            }
        ),
        "container": Section(
            {
                "variant": F(one_of(*VARIANTS), default="cpu"),
                "image": F(string, default="sglkit/dev:cpu"),
                "name": F(string, default="sglkit-dev"),
                "storage": F(string, default="${SGLKIT_STORAGE:-~/sglkit-data}"),
                "mounts": F(mounts, default=[]),
                "ready_timeout": F(positive_number, default=120.0),
                "shm_size": F(string, default="16g"),
                "base_image": F(optional(string)),
                # the image's dev user (login name; its UID/GID are the building user's)
                "user": F(user_name, default=DEFAULT_USER),
                # the caller's variables container.up passes in: these names only
                "secrets": F(env_names, default=["HF_TOKEN"]),
            }
        ),
    }
)


def validate(data: Any, section: Section = SCHEMA, prefix: str = "") -> dict[str, Any]:
    """Return `data` with defaults filled in; raise Invalid naming the first wrong field."""
    where = prefix.rstrip(".") or "profile"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Invalid(where, f"expected a mapping, got {kind(data)}")
    unknown = [k for k in data if k not in section.fields]
    if unknown:
        known = ", ".join(section.fields)
        raise Invalid(f"{prefix}{key_name(unknown[0])}", f"unknown key (known here: {known})")
    out: dict[str, Any] = {}
    for name, spec in section.fields.items():
        dotted = f"{prefix}{name}"
        if isinstance(spec, Section):
            if spec.required and name not in data:
                raise Invalid(dotted, "required section is missing")
            out[name] = validate(data.get(name), spec, f"{dotted}.")
            continue
        if name not in data:
            if spec.required:
                raise Invalid(dotted, "required field is missing")
            default = spec.default
            out[name] = (
                list(default)
                if isinstance(default, list)
                else (dict(default) if isinstance(default, dict) else default)
            )
            continue
        try:
            out[name] = spec.check(data[name])
        except ValueError as e:
            raise Invalid(dotted, str(e)) from None
    return out
