"""Where the kit's data folders are: the one function that resolves asset paths.

In a checkout they are the top-level folders beside `sglkit/`; in an image where the kit is
installed as a package, `SGLKIT_HOME` names the folder that holds them (the image sets it).
"""

from __future__ import annotations

import os
from pathlib import Path

_ASSET_DIRS = ("profiles", "containers", "observability", "kernels", "cache")


def home() -> Path:
    env = os.environ.get("SGLKIT_HOME")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parent.parent


def asset(*parts: str) -> Path:
    """Path of a data file, e.g. asset("observability", "prometheus.yml.j2")."""
    if not parts or parts[0] not in _ASSET_DIRS:
        raise ValueError(f"asset path must start with one of {_ASSET_DIRS}: {parts}")
    return home().joinpath(*parts)


def expand(value: str) -> str:
    """Expand ${VAR:-default}, $VAR and ~ in a path from a profile."""
    import re

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(3)
        got = os.environ.get(name)
        if got:
            return got
        return default if default is not None else ""

    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", sub, value)
    return os.path.expanduser(os.path.expandvars(value))


def state_dir() -> Path:
    """Where the kit keeps the state of what it left running (detached servers):
    $SGLKIT_STATE_DIR, else $XDG_STATE_HOME/sglkit, else ~/.local/state/sglkit."""
    env = os.environ.get("SGLKIT_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "sglkit"
