"""The import graph of the sglkit package follows its floors (docs/architecture.md, "Floors").

Every `import` and `from ... import` in sglkit/ (at module level or inside a function: a lazy
import is still a dependency) is read with `ast`. A module may import from its own unit or from
a lower floor; never from a higher floor, and never from a sibling unit on its own floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sglkit"

# Bottom to top. A unit is a module or a package (its submodules included); the longest matching
# unit places a module. Task modules (`*.tasks`, `*.__main__`) are the top floor: they parse
# flags and print, and nothing in sglkit imports them.
FLOORS: list[tuple[str, ...]] = [
    # base: no concern of its own, used by all (the package itself is its __init__ alone)
    ("sglkit", "sglkit.errors"),
    (
        "sglkit.paths",
        "sglkit.fsutil",
        "sglkit.net",
        "sglkit.proc",
        "sglkit.console",
        "sglkit.logs",
        "sglkit.yamlsafe",
        "sglkit.versions",
        "sglkit.nvml",
    ),
    ("sglkit.cli",),  # invoke's edge: the task decorator, shared help strings, flag parsing
    ("sglkit.profile",),
    # telemetry runs, and MoE kernel configs: each reads profiles; they never import each other
    ("sglkit.observability", "sglkit.kernels"),
    # the server room's core: spec, runner (builds the kernels overlay), state, telemetry, load
    ("sglkit.server",),
    # caches: the DeepGEMM warm starts a server through server.runner; fingerprints take the
    # server spec's shape flags; the Triton warm reads the kernels' target
    ("sglkit.cache",),
    # orchestrators: server.up/status/down (asks cache.deepgemm whether to skip the precompile),
    # the devcontainer, the GPU smoke test
    ("sglkit.server.serve", "sglkit.containers", "sglkit.gpu"),
    # host set-up probes the Docker engine through containers.engine
    ("sglkit.host",),
    ("<task modules>",),
]
TASK_MODULES = "<task modules>"

# (importer, imported) -> why the edge stays although it goes up or sideways. Empty: every edge
# that broke the floors was fixed (gpu.nvml -> sglkit.nvml, cache.store.locked -> fsutil.locked,
# gpu.triton_warm -> cache.triton_warm). An entry here must name its reason; a stale one fails.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """sglkit modules `path` imports (`from a import b`: a.b where that is a module, else a);
    `source` stands in for the file's text."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    text = path.read_text(encoding="utf-8") if source is None else source
    out: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([base] if base else [])])
            for a in node.names:
                out.add(f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base)
    return {m for m in out if m == "sglkit" or m.startswith("sglkit.")}


def is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (
        PACKAGE.parent / rel / "__init__.py"
    ).is_file()


def unit_of(module: str) -> tuple[int, str]:
    """(floor, unit) of a module: task modules on top, else the longest unit that contains it."""
    if module.rpartition(".")[2] in ("tasks", "__main__"):
        return len(FLOORS) - 1, TASK_MODULES
    best: tuple[int, str] | None = None
    for floor, units in enumerate(FLOORS):
        for unit in units:
            inside = module == unit or (unit != "sglkit" and module.startswith(unit + "."))
            if inside and (best is None or len(unit) > len(best[1])):
                best = (floor, unit)
    if best is None:
        raise AssertionError(f"{module}: on no floor; add it to FLOORS in {__file__}")
    return best


def edges() -> list[tuple[str, str]]:
    """(importer, imported) for every sglkit import in the package."""
    return sorted((module_name(p), m) for p in PACKAGE.rglob("*.py") for m in imports_of(p))


def bad_edges(graph: list[tuple[str, str]] | None = None) -> list[tuple[str, str, str]]:
    """(importer, imported, why) of each edge that goes up a floor or sideways to a sibling."""
    bad = []
    for importer, imported in edges() if graph is None else graph:
        (f_from, u_from), (f_to, u_to) = unit_of(importer), unit_of(imported)
        if u_from == u_to or f_to < f_from:
            continue
        how = "up" if f_to > f_from else "sideways"
        why = f"{how}: {u_from} (floor {f_from}) -> {u_to} (floor {f_to})"
        bad.append((importer, imported, why))
    return bad


def test_no_module_imports_from_a_higher_floor_or_a_sibling():
    found = [b for b in bad_edges() if (b[0], b[1]) not in EXCEPTIONS]
    assert not found, "\n".join(f"{a} imports {b}: {why}" for a, b, why in found)


def test_every_exception_is_still_needed_and_says_why():
    bad = {(a, b) for a, b, _ in bad_edges()}
    for edge, reason in EXCEPTIONS.items():
        assert reason.strip(), f"{edge}: an exception must say why"
        assert edge in bad, f"{edge}: no longer crosses a floor; drop it from EXCEPTIONS"


def test_every_module_is_on_a_floor():
    for p in PACKAGE.rglob("*.py"):
        unit_of(module_name(p))
    with pytest.raises(AssertionError, match="on no floor"):
        unit_of("sglkit.newconcern")  # the package's own unit holds its __init__ only


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from sglkit.gpu import moe\n", {"sglkit.gpu.moe"}),
        ("from sglkit.gpu import nothing_here\n", {"sglkit.gpu"}),
        ("from sglkit.cache.store import locked\n", {"sglkit.cache.store"}),
        ("def f():\n    from sglkit.server import serve\n", {"sglkit.server.serve"}),
        ("import sglkit.containers.engine\n", {"sglkit.containers.engine"}),
        ("from . import store\n", {"sglkit.kernels.store"}),
        ("from .names import Rule\n", {"sglkit.kernels.names"}),
        ("import json\nfrom invoke import task\n", set()),
    ],
)
def test_the_reader_sees_every_kind_of_import(source, expected):
    """The check is only as good as its reader: lazy, relative and plain imports all count."""
    assert imports_of(PACKAGE / "kernels" / "overlay.py", source) == expected


@pytest.mark.parametrize(
    ("edge", "how"),
    [
        (("sglkit.kernels.overlay", "sglkit.cache.store"), "up"),  # the edge issue 17 removed
        (("sglkit.kernels.names", "sglkit.gpu.nvml"), "up"),  # likewise
        (("sglkit.cache.status", "sglkit.server.serve"), "up"),  # the core may not orchestrate
        (("sglkit.kernels.tune", "sglkit.observability.tracing"), "sideways"),
        (("sglkit.fsutil", "sglkit.console"), "sideways"),
        (("sglkit.server.spec", "sglkit.profile.tasks"), "up"),  # nothing imports a task module
    ],
)
def test_a_crossing_edge_is_reported(edge, how):
    (found,) = bad_edges([edge])
    assert found[:2] == edge and found[2].startswith(how)


@pytest.mark.parametrize(
    "edge",
    [
        ("sglkit.server.serve", "sglkit.cache.deepgemm"),
        ("sglkit.cache.triton_warm", "sglkit.kernels.target"),
        ("sglkit.kernels.tasks", "sglkit.kernels.tune"),
        ("sglkit.profile.tasks", "sglkit.server.spec"),
    ],
)
def test_a_downward_or_inner_edge_is_allowed(edge):
    assert bad_edges([edge]) == []
