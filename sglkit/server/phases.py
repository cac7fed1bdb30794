"""Where a server start's time went, from SGLang's own log: the seconds between its milestones.

SGLang stamps each log line `[YYYY-MM-DD HH:MM:SS]` (local time; `[... TP0]` etc. on ranks), and
logs the same milestones from 0.5.16 to 0.5.23. A phase ends at its milestone and starts at the
previous milestone found (a milestone missing from the log, e.g. no CUDA graphs, merges its time
into the next phase); the first starts at the launch:

  launcher imports   launch -> the first stamped line (the launcher has imported SGLang)
  scheduler start    -> "Init torch distributed begin." (the scheduler process and its imports)
  model init         -> "Load weight begin."
  weights            -> "Load weight end."
  KV cache           -> "Memory pool end."
  CUDA graphs        -> "Capture ... CUDA graph end."
  warm-up            -> "The server is fired up and ready to roll!" (its warm-up request, with
                        the DeepGEMM sweep where that is on)

Stamps have one-second resolution, so each phase is good to about a second.
"""

from __future__ import annotations

import re
import time

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:[ ,.][^\]]*)?\]")
MILESTONES = (
    ("scheduler start", re.compile(r"Init torch distributed begin")),
    ("model init", re.compile(r"Load weight begin")),
    ("weights", re.compile(r"Load weight end")),
    ("KV cache", re.compile(r"Memory pool end")),
    ("CUDA graphs", re.compile(r"Capture .*(?:CUDA|cuda) graph end")),
    ("warm-up", re.compile(r"The server is fired up and ready to roll")),
)


def _epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))


def breakdown(log_text: str, launched_at: float) -> list[tuple[str, float]]:
    """[(phase, seconds)] of one start whose log is `log_text` (from its launch on), launched
    at `launched_at` (epoch seconds); empty where the log has no SGLang stamps."""
    stamped = [(m.group(1), line) for line in log_text.splitlines() if (m := STAMP.match(line))]
    if not stamped:
        return []
    out = [("launcher imports", max(0.0, _epoch(stamped[0][0]) - launched_at))]
    last = _epoch(stamped[0][0])
    for name, pattern in MILESTONES:
        hit = next((s for s, line in stamped if pattern.search(line)), None)
        if hit is None:
            continue
        at = _epoch(hit)
        out.append((name, max(0.0, at - last)))
        last = at
    return out


def line(phases: list[tuple[str, float]]) -> str:
    return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases)
