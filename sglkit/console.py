"""The one console every task writes through: rich on a terminal, never wrapped on a pipe.

On a terminal lines wrap at its width as usual. Piped or in a log, rich would assume 80 columns
and cut image ids, URLs, paths and Dockerfile steps across lines; here the width is set so large
that nothing is cut and nothing is padded, and plain lines are never wrapped (soft_wrap).

`out()` is stdout (results: ids, tables, JSON), `err()` is stderr (progress and plans);
`echo(...)` writes one plain line exactly as given, like print(): no markup, emoji, highlighting
or tab expansion, so ids and JSON reach a pipe byte for byte.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

# wide enough for any table row; rich pads nothing to the console width unless asked to
PIPE_WIDTH = 100_000


def console(stderr: bool = False) -> Console:
    """A Console on stdout (or stderr) with the kit's policy; cheap, so made per use.

    Made per call rather than cached so that it writes to whatever sys.stdout is now (pytest's
    capture, a redirect) and decides terminal-or-pipe for that stream.
    """
    from rich.console import Console

    con = Console(stderr=stderr, soft_wrap=True, highlight=False, emoji=False)
    if not con.is_terminal:
        con.width = PIPE_WIDTH
    elif os.environ.get("COLUMNS") is None and con.width < 20:
        con.width = 80  # a terminal that reports no size
    return con


def out() -> Console:
    return console(stderr=False)


def err() -> Console:
    return console(stderr=True)


def echo(*objects: object, sep: str = " ", stderr: bool = False) -> None:
    """One plain line, exactly as print() would write it, to the console's stream."""
    stream = console(stderr).file
    stream.write(sep.join(str(o) for o in objects) + "\n")
    stream.flush()
