"""Where the kit keeps its own logs: details that would clutter the console.

`$XDG_STATE_HOME/sglkit/logs/<name>.log` (default `~/.local/state/sglkit/logs`); each write
appends a block with a timestamp, so the last attempt is at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def folder() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local/state"
    )
    return Path(state) / "sglkit" / "logs"


def path(name: str) -> Path:
    return folder() / f"{name}.log"


def append(name: str, title: str, text: str = "") -> Path:
    """Append a titled block to log `name`; return its path."""
    p = path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with p.open("a", encoding="utf-8") as f:
        f.write(f"--- {stamp} {title}\n")
        if text:
            f.write(text if text.endswith("\n") else text + "\n")
    return p
