"""The smoke test's frame: layered checks that each end PASS, SKIP (with why) or FAIL (with what).

A check is a function `fn(ctx)`; it reports facts with `ctx.note(...)` and figures for the summary
table with `ctx.figure(name, text)`, raises `Skip(reason)` when it cannot run here and
`Fail(what, expected, seen)` when it ran and the host is wrong. Any other exception is a FAIL too:
a check that crashes has not shown the host is fine.

A Skip can name the component it lacks (`needs="gpu"`); when $SGLKIT_REQUIRE names it (CI, or a
run on a GPU host that must not silently skip), the SKIP becomes a FAIL.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

PASS, SKIP, FAIL = "PASS", "SKIP", "FAIL"
TABLE_TEXT = 120  # widest figures / reason cell in the summary table


class Skip(Exception):
    """The check cannot run here; `reason` says why, `needs` names the missing component."""

    def __init__(self, reason: str, needs: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.needs = needs


class Fail(Exception):
    """The check ran and the host is wrong: `what` was measured, `expected` vs `seen`."""

    def __init__(self, what: str, expected: str, seen: str):
        super().__init__(f"{what}: expected {expected}, saw {seen}")
        self.what, self.expected, self.seen = what, expected, seen


@dataclass
class Context:
    """What a running check reports: notes (printed under its line) and table figures."""

    notes: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    data: dict[str, object] = field(default_factory=dict)

    def note(self, line: str) -> None:
        self.notes.append(line)

    def figure(self, name: str, text: str, value: object = None) -> None:
        self.figures[name] = text
        if value is not None:
            self.data[name] = value


@dataclass(frozen=True)
class Check:
    number: int
    key: str
    title: str
    fn: Callable[[Context], None]


@dataclass
class Result:
    number: int
    key: str
    title: str
    status: str
    detail: str
    notes: list[str]
    figures: dict[str, str]
    data: dict[str, object]
    seconds: float


def required_here() -> set[str]:
    return {n.strip() for n in os.environ.get("SGLKIT_REQUIRE", "").split(",") if n.strip()}


def run_check(check: Check) -> Result:
    """Run one check; never raises (a crash is a FAIL with the exception named)."""
    ctx = Context()
    start = time.monotonic()
    status, detail = PASS, ""
    try:
        check.fn(ctx)
    except Skip as e:
        status, detail = SKIP, e.reason
        if e.needs and e.needs in required_here():
            status = FAIL
            detail = f"{e.needs} is required (SGLKIT_REQUIRE) but absent: {e.reason}"
    except Fail as e:
        status, detail = FAIL, str(e)
    except Exception as e:
        status = FAIL
        where = traceback.extract_tb(e.__traceback__)[-1]
        detail = (
            f"unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"({os.path.basename(where.filename)}:{where.lineno})"
        )
    if status == PASS and not detail:
        detail = "; ".join(f"{k} {v}" for k, v in ctx.figures.items())
    return Result(
        number=check.number,
        key=check.key,
        title=check.title,
        status=status,
        detail=detail,
        notes=ctx.notes,
        figures=ctx.figures,
        data=ctx.data,
        seconds=time.monotonic() - start,
    )


def format_result(r: Result) -> str:
    """The check's own block: its status line, then its notes indented."""
    lines = [f"[{r.status}] {r.number}. {r.title} ({r.seconds:.1f}s): {r.detail}"]
    lines += [f"       {n}" for n in r.notes]
    return "\n".join(lines)


def summary_table(results: Iterable[Result]) -> str:
    """Plain-text table, one row per check (status, time, figures or the reason)."""
    rows = [("#", "check", "status", "time", "figures / reason")]
    for r in results:
        text = r.detail if r.status != PASS else "; ".join(f"{k} {v}" for k, v in r.figures.items())
        if len(text) > TABLE_TEXT:  # the check's own line above the table has all of it
            text = text[: TABLE_TEXT - 3] + "..."
        rows.append((str(r.number), r.title, r.status, f"{r.seconds:.1f}s", text or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]

    rule = "-" * (sum(widths) + 8 + max(len(r[4]) for r in rows))
    out = ["GPU smoke summary", rule, fmt(rows[0]), rule, *map(fmt, rows[1:]), rule]
    counts = {s: sum(1 for row in rows[1:] if row[2] == s) for s in (PASS, SKIP, FAIL)}
    out.append(f"{counts[PASS]} passed, {counts[SKIP]} skipped, {counts[FAIL]} failed")
    return "\n".join(out)


def exit_status(results: Iterable[Result]) -> int:
    """Non-zero when any check that ran failed."""
    return 1 if any(r.status == FAIL for r in results) else 0


def write_json(path: str | os.PathLike, results: Iterable[Result]) -> None:
    from sglkit.fsutil import atomic_write_json

    atomic_write_json(path, [asdict(r) for r in results])


def dumps(results: Iterable[Result]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
