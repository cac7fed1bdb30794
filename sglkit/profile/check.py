"""Deeper checks of a profile than the schema can do, including SGLang's own argument parser."""

from __future__ import annotations

import argparse
import contextlib
import io

from sglkit.errors import ConfigError
from sglkit.profile import Profile


def check(profile: Profile) -> list[str]:
    """Raise ConfigError for the first impossible value; return notes on what was not checked."""
    s = profile.server
    where = profile.path
    if profile.container["variant"] != "cpu" and s["context_length"] is None:
        raise ConfigError(
            f"{where}: server.context_length: required for a GPU profile "
            "(the DeepGEMM warm-up and the server must cover the same lengths)"
        )
    if s["tp"] % s["ep"]:
        raise ConfigError(f"{where}: server.ep: {s['ep']} does not divide server.tp {s['tp']}")
    ports = profile.telemetry["ports"]
    taken: dict[int, str] = {s["port"]: "server.port"}
    for name, port in ports.items():
        field = f"telemetry.ports.{name}"
        if port in taken:
            raise ConfigError(f"{where}: {field}: port {port} is also {taken[port]}")
        taken[port] = field
    notes = []
    cfg = profile.model_config_path()
    if cfg is None:
        notes.append("model.config: not set and model.path is not a local folder (not checked)")
    elif not cfg.is_file():
        notes.append(f"model.config: {cfg} not found on this machine (not checked)")
    notes.append(parse_with_sglang(profile))
    return notes


def parse_with_sglang(profile: Profile) -> str:
    """Parse the server argv with SGLang's own ServerArgs parser where sglang is importable."""
    try:
        from sglang.srt.server_args import ServerArgs  # type: ignore[import-not-found]
    except Exception as e:  # ImportError, or sglang failing to import on this host
        return f"sglang: not importable here ({type(e).__name__}); server flags not parsed"
    parser = argparse.ArgumentParser(prog="sglang.launch_server", exit_on_error=False)
    ServerArgs.add_cli_args(parser)
    argv = profile.server_argv()[len(profile.server["launcher"]) :]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        last = (err.getvalue().strip().splitlines() or [str(e)])[-1]
        raise ConfigError(f"{profile.path}: server: SGLang rejects the argv: {last}") from None
    return "sglang: server argv parsed by SGLang's ServerArgs parser"
