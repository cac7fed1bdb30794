"""The typed server spec: a profile plus explicit overrides -> flags, argv, environment, URL.

It mirrors the part of SGLang's ServerArgs that the kit sets. argv is derived from `flags()`,
and everything else that needs a flag's value (the cache fingerprint, the URL, profile.check)
reads the spec's fields or `flags()`, never the argv back. Names that differ by SGLang version
come from sglkit.versions for the version the spec is built for (the installed one by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sglkit import net
from sglkit.errors import ConfigError
from sglkit.profile import Profile
from sglkit.versions import SGLang

FlagValue = str | bool | list[str]

# profile field -> SGLang flag, in argv order; the rest of server.* is structural
PROFILE_FLAGS = {
    "tp": "--tp-size",
    "dp": "--dp-size",
    "ep": "--ep-size",
    "context_length": "--context-length",
    "chunked_prefill_size": "--chunked-prefill-size",
    "kv_cache_dtype": "--kv-cache-dtype",
    "mem_fraction_static": "--mem-fraction-static",
    "host": "--host",
    "port": "--port",
    "nnodes": "--nnodes",
    "dist_init_addr": "--dist-init-addr",
}
BOOL_FLAGS = {"enable_metrics": "--enable-metrics", "trust_remote_code": "--trust-remote-code"}
# a flag equal to SGLang's own default is still written, except these
OMIT_AT = {"dp": 1, "ep": 1, "nnodes": 1}


@dataclass(frozen=True)
class Overrides:
    """What a task changes on top of the profile, each a typed value (None: keep the profile's)."""

    model_path: str | None = None
    port: int | None = None
    host: str | None = None
    launcher: tuple[str, ...] | None = None
    context_length: int | None = None
    # this node of a server over several nodes: its rank, and the leader's address if the
    # profile's server.dist_init_addr does not fit this deployment
    node_rank: int | None = None
    dist_init_addr: str | None = None
    # flags the kit adds for its own runs (warm-ups, tests)
    load_format: str | None = None
    skip_tokenizer_init: bool = False
    disable_cuda_graph: bool = False
    watchdog_timeout: float | None = None
    tracing_endpoint: str | None = None
    extra_args: dict[str, Any] = field(default_factory=dict)
    # the MoE config files the server reads (sglkit.kernels.overlay.CONFIG_SOURCES): the kit's
    # store over SGLang's (kit), SGLang's alone (sglang), none (SGLang's default config)
    moe_configs: str = "kit"


@dataclass(frozen=True)
class ServerSpec:
    profile: Profile
    server: dict[str, Any]  # the profile's server section with the overrides applied
    model_path: str
    overrides: Overrides
    sglang: SGLang

    # ---- flags and argv -----------------------------------------------------------------------
    def flags(self) -> list[tuple[str, FlagValue]]:
        """(flag, value) in argv order; True is a bare flag, a list is several values."""
        s, o = self.server, self.overrides
        out: list[tuple[str, FlagValue]] = [("--model-path", self.model_path)]
        for key, flag in PROFILE_FLAGS.items():
            value = s[key]
            if value is None or OMIT_AT.get(key) == value:
                continue
            out.append((flag, fmt(value)))
        if s["nnodes"] > 1:
            out.append(("--node-rank", str(self.node_rank)))
        out += [(flag, True) for key, flag in BOOL_FLAGS.items() if s[key]]
        kit: list[tuple[str, FlagValue]] = []
        if o.load_format:
            kit.append(("--load-format", o.load_format))
        if o.skip_tokenizer_init:
            kit.append(("--skip-tokenizer-init", True))
        if o.disable_cuda_graph:
            kit += self.sglang.disable_cuda_graph()
        if o.watchdog_timeout is not None:
            kit.append(("--watchdog-timeout", f"{o.watchdog_timeout:g}"))
        if o.tracing_endpoint:
            kit += [("--enable-trace", True), ("--otlp-traces-endpoint", o.tracing_endpoint)]
        # an override replaces the profile's own `server.args` entry of the same flag
        taken = {flag for flag, _ in kit}
        out += [f for f in args_flags({**s["args"], **o.extra_args}) if f[0] not in taken]
        return out + kit

    @property
    def launcher(self) -> list[str]:
        return list(self.server["launcher"])

    def server_args(self) -> list[str]:
        """The argv after the launcher: what SGLang's own parser reads."""
        return flatten(self.flags())

    def argv(self) -> list[str]:
        return [*self.launcher, *self.server_args()]

    def flag_values(self, wanted: set[str] | None = None) -> dict[str, FlagValue]:
        return {f: v for f, v in self.flags() if wanted is None or f in wanted}

    # ---- where it answers, what it runs with ------------------------------------------------
    @property
    def host(self) -> str:
        return self.server["host"]

    @property
    def port(self) -> int:
        return self.server["port"]

    @property
    def node_rank(self) -> int:
        return self.overrides.node_rank or 0

    @property
    def node(self) -> int | None:
        """The rank where the server spans nodes (markers and logs are per node), else None."""
        return self.node_rank if self.server["nnodes"] > 1 else None

    @property
    def serves_http(self) -> bool:
        """Only rank 0 runs SGLang's HTTP server; the other nodes run schedulers alone."""
        return self.node_rank == 0

    @property
    def client_host(self) -> str:
        """The address a client uses: this machine's (a wildcard bind is reached on loopback),
        or, on a node other than rank 0, the leader's (the host of --dist-init-addr)."""
        if not self.serves_http:
            return self.server["dist_init_addr"].rsplit(":", 1)[0].strip("[]")
        return net.client_host(self.host)

    @property
    def url(self) -> str:
        return f"http://{net.host_port(self.client_host, self.port)}"

    def environment(self) -> dict[str, str]:
        """The cache and kit environment for this SGLang version (secrets pass through), with
        the MoE config overlay of --moe-configs."""
        env = self.profile.environment(self.sglang)
        if "SGLANG_MOE_CONFIG_DIR" in env:
            env["SGLANG_MOE_CONFIG_DIR"] = str(self.moe_config_dir)
        return env

    def process_environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The whole environment a process of this server runs with: the caller's, then
        environment(), then `extra` (a warm's additions)."""
        return {**os.environ, **self.environment(), **(extra or {})}

    @property
    def moe_config_dir(self) -> Path:
        """The MoE config overlay this server reads (overlay.prepare builds it before a start)."""
        return self.profile.moe_config_dir(self.overrides.moe_configs)


def build(
    profile: Profile, overrides: Overrides | None = None, sglang: SGLang | None = None
) -> ServerSpec:
    """The spec of serving `profile` with `overrides` under `sglang` (default: the installed)."""
    o = overrides or Overrides()
    server = dict(profile.server)
    for key in ("port", "host", "context_length", "dist_init_addr"):
        value = getattr(o, key)
        if value is not None:
            server[key] = value
    if o.launcher is not None:
        server["launcher"] = list(o.launcher)
    where = profile.path
    if server["nnodes"] > 1:
        if not server["dist_init_addr"]:
            raise ConfigError(
                f"{where}: server.dist_init_addr: required where server.nnodes is "
                f"{server['nnodes']} (the leader's host:port; or --dist-init-addr)"
            )
        if o.node_rank is not None and not 0 <= o.node_rank < server["nnodes"]:
            raise ConfigError(
                f"--node-rank: expected 0 to {server['nnodes'] - 1} "
                f"(server.nnodes is {server['nnodes']}), got {o.node_rank}"
            )
    elif o.node_rank:
        raise ConfigError(f"--node-rank: {o.node_rank} given, but server.nnodes is 1 in {where}")
    return ServerSpec(
        profile=profile,
        server=server,
        model_path=o.model_path or profile.model_path,
        overrides=o,
        sglang=sglang or SGLang.here(),
    )


def require_node_rank(spec: ServerSpec) -> None:
    """Starting a server that spans nodes needs this node's rank said (showing one does not)."""
    n = spec.server["nnodes"]
    if n > 1 and spec.overrides.node_rank is None:
        raise ConfigError(
            f"--node-rank: required where server.nnodes is {n}: this node's rank, "
            f"0 (the leader, which serves HTTP) to {n - 1}"
        )


def args_flags(args: dict[str, Any]) -> list[tuple[str, FlagValue]]:
    """The profile's free-form `server.args`: {'enable-dp-attention': True, 'x': 8} -> flags."""
    out: list[tuple[str, FlagValue]] = []
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is True or value is None:
            out.append((flag, True))
        elif value is False:
            continue
        elif isinstance(value, list):
            out.append((flag, [fmt(v) for v in value]))
        else:
            out.append((flag, fmt(value)))
    return out


def flatten(flags: list[tuple[str, FlagValue]]) -> list[str]:
    argv: list[str] = []
    for flag, value in flags:
        argv.append(flag)
        if isinstance(value, list):
            argv += value
        elif value is not True:
            argv.append(value)
    return argv


def fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    return str(value)
