"""Deeper checks of a profile than the schema can do (SGLang's own parser: sglkit.server.parse)."""

from __future__ import annotations

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
    return notes
