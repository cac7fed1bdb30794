"""The one YAML reader of the kit: every YAML file it reads (profiles, cache/layout.yaml, the
metrics catalog, rendered Prometheus configs) goes through `load_file` or `loads`.

PyYAML's `safe_load` alone is not enough for a file a hostile user may hand us:

- **size**: the file is read up to a limit and refused past it (a profile is a few KB; 50 MB of
  YAML took PyYAML half a minute);
- **aliases**: an alias bomb (anchors nested 9 wide and 9 deep) is a 414-byte document whose
  expansion has 10^9 nodes; it loads fast because PyYAML shares the nodes, and then anything that
  walks it (a `repr`, `json.dumps`) takes gigabytes. Aliases are refused outright where
  `aliases=False` (profiles) and otherwise capped by the size of their expansion;
- **depth**: the pure-Python loader recurses once per level (`[` x 100000 is a RecursionError),
  libyaml stops at 1000; we stop at `max_depth`;
- **encoding**: the bytes must be UTF-8, and a bad byte is named by its offset.

Limits are checked on the parser's event stream (libyaml's iterative parser where PyYAML has
it), before anything is composed or constructed. Every failure is a ConfigError (exit 2) of one
line that names the file and the limit or the line, and never quotes the file's contents.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from sglkit.errors import ConfigError

# libyaml's C loader where PyYAML was built with it (it is in the PyPI wheels); else pure Python
LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_BYTES = 4 * 1024 * 1024  # any file the kit reads (the metrics catalog is ~42 KB)
MAX_DEPTH = 32  # nested mappings and lists (a profile uses 4, the catalog 3)
MAX_NODES = 200_000  # nodes after every alias is expanded


def load_file(
    path: str | os.PathLike,
    *,
    what: str = "file",
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    aliases: bool = True,
) -> Any:
    """Read and parse one YAML document from `path` within the limits; ConfigError otherwise.

    `what` names the kind of file in messages ("profile", "catalog").
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: {what} is a folder, not a file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read {what}: {e.strerror or type(e).__name__}") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{p}: {what} is larger than the {_size(max_bytes)} limit")
    return loads(
        data,
        source=str(p),
        max_bytes=max_bytes,
        max_depth=max_depth,
        max_nodes=max_nodes,
        aliases=aliases,
    )


def loads(
    data: bytes | str,
    *,
    source: str = "<yaml>",
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    aliases: bool = True,
) -> Any:
    """Parse one YAML document (bytes must be UTF-8) within the limits; ConfigError otherwise."""
    if isinstance(data, bytes):
        if len(data) > max_bytes:
            raise ConfigError(f"{source}: larger than the {_size(max_bytes)} limit")
        text = decode(data, source)
    else:
        text = data
        if len(text) > max_bytes:  # characters: at least as many bytes
            raise ConfigError(f"{source}: larger than the {_size(max_bytes)} limit")
    try:
        _check_events(text, source, max_depth, max_nodes, aliases)
        return yaml.load(text, Loader=LOADER)
    except ConfigError:
        raise
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(e):  # libyaml's own limit (1000) met while scanning
            raise ConfigError(
                f"{source}:{_where(e)} nested deeper than the limit of {max_depth} levels"
            ) from None
        raise ConfigError(f"{source}:{_where(e)} {_problem(e)}") from None
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, RecursionError) as e:
        # a constructor refusing a value: `!!int 0x`, an empty `!!float`, 5000 digits, month 13
        kind = type(e).__name__
        raise ConfigError(f"{source}: a value cannot be read as its type ({kind})") from None


def decode(data: bytes, source: str) -> str:
    """UTF-8 (a BOM is allowed), or one line naming the first bad byte's offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{source}: not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} ({e.reason})"
        ) from None


def _check_events(text: str, source: str, max_depth: int, max_nodes: int, aliases: bool) -> None:
    """Walk the event stream once: depth, alias use and the expanded size, before composing."""
    depth = 0
    nodes = 0
    # for each open collection: (anchor, expanded nodes counted when it opened)
    open_: list[tuple[str | None, int]] = []
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    opening: set[str] = set()  # anchors of collections not closed yet
    documents = 0
    for ev in yaml.parse(text, Loader=LOADER):
        if isinstance(ev, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                line = ev.start_mark.line + 1 if ev.start_mark else 0
                raise ConfigError(f"{source}: line {line}: a second YAML document (only one)")
            continue
        if isinstance(ev, yaml.AliasEvent):
            if not aliases:
                line = ev.start_mark.line + 1 if ev.start_mark else 0
                raise ConfigError(
                    f"{source}: line {line}: YAML aliases (*name) are not allowed here; "
                    "write the value out"
                )
            if ev.anchor in opening:
                line = ev.start_mark.line + 1 if ev.start_mark else 0
                raise ConfigError(
                    f"{source}: line {line}: a recursive alias (a node inside itself)"
                )
            nodes += sizes.get(ev.anchor, 1)
        elif isinstance(ev, yaml.ScalarEvent):
            nodes += 1
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
        elif isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > max_depth:
                line = ev.start_mark.line + 1 if ev.start_mark else 0
                raise ConfigError(
                    f"{source}: line {line}: nested deeper than the limit of {max_depth} levels"
                )
            nodes += 1
            open_.append((ev.anchor, nodes))
            if ev.anchor is not None:
                opening.add(ev.anchor)
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            anchor, at_open = open_.pop()
            if anchor is not None:
                sizes[anchor] = nodes - at_open + 1
                opening.discard(anchor)
        else:
            continue
        if nodes > max_nodes:
            raise ConfigError(
                f"{source}: more than the limit of {max_nodes} nodes once aliases are expanded"
            )


def _where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if mark is not None:
        return f" line {mark.line + 1}:"
    pos = getattr(e, "position", None)  # ReaderError
    return f" offset {pos}:" if pos is not None else ""


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|#x[0-9a-fA-F]+")


def _problem(e: yaml.YAMLError) -> str:
    """PyYAML's problem, without anything it quotes from the file (tags, aliases, characters)."""
    if isinstance(e, yaml.reader.ReaderError):
        return "a control character is not allowed in YAML"
    text = getattr(e, "problem", None) or getattr(e, "context", None) or "invalid YAML"
    text = _QUOTED.sub("…", " ".join(str(text).split()))
    return text[:120] or "invalid YAML"


def _size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"
