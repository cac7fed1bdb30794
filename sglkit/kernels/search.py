"""The tuner's search: find the fastest config per batch size without measuring every config.

    tune(batch_sizes, space, measure, state_path=..., budget=None, resume=False) -> {M: Result}

`space` is a list of configs (dicts with the six fields of space.KEYS) or a function M -> list
(typically `lambda M: space.candidates(shape, M)`). `measure(config, M)`
returns seconds (a median); a config whose measure raises or returns inf/nan is dropped. When
`measure` accepts a `reps` keyword, cheap rounds pass fewer repetitions.

Per batch size (`search_one`), deterministic for a deterministic `measure`:

1. population: the default config, the winners of neighbouring batch sizes (seeds), and a
   spread sample of the space (a fixed-seed shuffle stratified over BLOCK_SIZE_M/N/K);
2. successive halving: measure the population cheaply, keep the best 1/eta, re-measure them
   with eta x more repetitions, until a few remain;
3. local search: from the best configs, measure their unmeasured neighbours (one field one grid
   step away, among the candidates) and move while it improves;
4. the winner is re-measured at full repetitions beside the default config.

`budget` caps the configs measured per batch size (default: 12% of the candidates, at least
24). Batch sizes run in two waves: anchors (every `anchor_stride`-th, and the last) and then
the rest, seeded by the winners of their nearest anchors; a parallel run (sglkit.kernels.
ray_tune) uses the same waves, so it finds the same configs.

State (`state_path`, JSON, written atomically after every round and every batch size): the
problem's identity, each finished batch size's Result, and every measurement so far. `resume`
reloads it: finished batch sizes are not redone and measurements already taken are reused.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError
from sglkit.fsutil import atomic_write_json
from sglkit.kernels.space import GRID, KEYS, from_key, key

STATE_VERSION = 1
FULL_REPS_LEVEL = 2  # fidelity levels 0 (cheap), 1, 2 (full)


@dataclass
class Result:
    """The outcome for one batch size."""

    M: int
    config: dict[str, int]
    time: float  # seconds, at full repetitions
    default_config: dict[str, int] | None
    default_time: float | None
    evaluations: int  # distinct configs measured
    measurements: int  # measure() calls (all fidelities)
    candidates: int  # configs left after pruning
    seconds: float = 0.0  # wall time spent on this batch size
    method: str = "search"

    @property
    def speedup(self) -> float | None:
        if not self.default_time or not self.time or math.isinf(self.default_time):
            return None
        return self.default_time / self.time

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Result:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class SearchParams:
    """Knobs of search_one; the defaults are what `invoke kernels.tune` uses."""

    eta: int = 3
    init_fraction: float = 0.4  # share of the budget spent on the first population
    keep_final: int = 3  # configs left after halving
    local_starts: int = 2  # best configs that local search starts from
    reps: tuple[int, int, int] = (3, 8, 20)  # repetitions per fidelity level
    seed: int = 0
    anchor_stride: int = 3
    seeds_per_neighbour: int = 3


def default_budget(n_candidates: int) -> int:
    return min(n_candidates, max(24, math.ceil(0.12 * n_candidates)))


# ---- measurement memo ---------------------------------------------------------------------------


def _mkey(cfg_key: Sequence[int], level: int) -> str:
    return ",".join(str(v) for v in cfg_key) + f"@{level}"


class Evaluator:
    """measure() with a memo (config, fidelity) -> seconds; failures become inf."""

    def __init__(
        self,
        measure: Callable[..., float],
        M: int,
        params: SearchParams,
        memo: dict[str, float] | None = None,
        on_measure: Callable[[], None] | None = None,
    ):
        self.measure, self.M, self.params = measure, M, params
        self.memo: dict[str, float] = memo if memo is not None else {}
        self.calls = 0
        self.on_measure = on_measure
        self.last_error: str | None = None  # why the last failed measurement failed
        try:
            self._takes_reps = "reps" in inspect.signature(measure).parameters
        except (TypeError, ValueError):
            self._takes_reps = False

    def prefetch(self, configs: Iterable[dict[str, int]], level: int) -> None:
        """Let a measure that can compile ahead (bench's `.prefetch(configs, M)`) do so for the
        configs of a round not measured yet; a failure here is not fatal."""
        fn = getattr(self.measure, "prefetch", None)
        if fn is None:
            return
        todo = [dict(c) for c in configs if _mkey(key(c), level) not in self.memo]
        if todo:
            with contextlib.suppress(Exception):
                fn(todo, self.M)

    def distinct(self) -> int:
        return len({k.split("@")[0] for k in self.memo})

    def seen(self, cfg_key: Sequence[int]) -> bool:
        return any(_mkey(cfg_key, lvl) in self.memo for lvl in range(FULL_REPS_LEVEL + 1))

    def __call__(self, cfg: dict[str, int], level: int) -> float:
        mk = _mkey(key(cfg), level)
        if mk in self.memo:
            return self.memo[mk]
        if getattr(self.measure, "last_failure", None) is not None:
            self.measure.last_failure = None  # so a reason read below is this call's
        try:
            if self._takes_reps:
                t = float(self.measure(dict(cfg), self.M, reps=self.params.reps[level]))
            else:
                t = float(self.measure(dict(cfg), self.M))
        except Exception as e:
            t, self.last_error = math.inf, f"{type(e).__name__}: {str(e)[:200]}"
        if math.isnan(t) or t <= 0:
            t = math.inf
        if math.isinf(t):  # a measure that catches its own errors says why (bench.make_measure)
            self.last_error = getattr(self.measure, "last_failure", None) or self.last_error
        self.memo[mk] = t
        self.calls += 1
        if self.on_measure:
            self.on_measure()
        return t


# ---- one batch size -----------------------------------------------------------------------------


def _stratified_sample(cands: list[dict[str, int]], n: int, rng: random.Random) -> list[dict]:
    """n configs spread over (BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K) cells, round-robin."""
    cells: dict[tuple[int, int, int], list[dict]] = {}
    for c in cands:
        cells.setdefault((c["BLOCK_SIZE_M"], c["BLOCK_SIZE_N"], c["BLOCK_SIZE_K"]), []).append(c)
    order = sorted(cells)
    rng.shuffle(order)
    for cell in order:
        rng.shuffle(cells[cell])
    out: list[dict] = []
    depth = 0
    while len(out) < n and any(depth < len(cells[c]) for c in order):
        for cell in order:
            if depth < len(cells[cell]) and len(out) < n:
                out.append(cells[cell][depth])
        depth += 1
    return out


def neighbours(cfg: dict[str, int], allowed: dict[tuple[int, ...], dict]) -> list[dict[str, int]]:
    """Configs one grid step away in one field, among the allowed candidates."""
    out = []
    for field_name in KEYS:
        values = GRID[field_name]
        i = values.index(cfg[field_name]) if cfg[field_name] in values else None
        if i is None:
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                cand = dict(cfg, **{field_name: values[j]})
                k = key(cand)
                if k in allowed:
                    out.append(allowed[k])
    return out


def search_one(
    M: int,
    candidates: list[dict[str, int]],
    measure: Callable[..., float],
    *,
    seeds: Iterable[dict[str, int]] = (),
    default: dict[str, int] | None = None,
    budget: int | None = None,
    params: SearchParams | None = None,
    memo: dict[str, float] | None = None,
    on_round: Callable[[dict[str, float]], None] | None = None,
) -> Result:
    """Search the best of `candidates` at batch size M (see the module docstring)."""
    params = params or SearchParams()
    t0 = time.monotonic()
    allowed = {key(c): c for c in candidates}
    if not allowed:
        raise ConfigError(f"batch size {M}: no candidate config left after pruning")
    budget = min(len(allowed), budget or default_budget(len(allowed)))
    ev = Evaluator(measure, M, params, memo)

    def round_done() -> None:
        if on_round:
            on_round(ev.memo)

    # 1. population: seeds first (deduplicated, only real candidates), then a spread sample
    rng = random.Random(params.seed * 1_000_003 + M)
    pop: list[dict] = []
    pop_keys: set[tuple[int, ...]] = set()

    def add(c: dict) -> None:
        k = key(c)
        if k in allowed and k not in pop_keys:
            pop_keys.add(k)
            pop.append(allowed[k])

    if default is not None and _complete(default):
        add(default)
    for s in seeds:
        add(s)
    n_init = max(
        len(pop),
        min(budget, max(params.keep_final * params.eta, int(budget * params.init_fraction))),
    )
    for c in _stratified_sample(list(allowed.values()), len(allowed), rng):
        if len(pop) >= n_init:
            break
        add(c)

    # 2. successive halving over fidelity levels
    level = 0
    alive = pop
    while True:
        ev.prefetch(alive, level)
        scored = sorted(((ev(c, level), key(c)) for c in alive), key=lambda t: (t[0], t[1]))
        round_done()
        finite = [(t, k) for t, k in scored if math.isfinite(t)]
        if level >= FULL_REPS_LEVEL - 1 or len(finite) <= params.keep_final:
            alive = [allowed[k] for _, k in finite]
            break
        n_keep = max(params.keep_final, math.ceil(len(finite) / params.eta))
        alive = [allowed[k] for _, k in finite[:n_keep]]
        level += 1

    # 3. local search from the best few, at the current level
    def score(c: dict) -> float:
        return ev(c, level)

    ranked = sorted(alive, key=lambda c: (score(c), key(c)))
    starts = ranked[: params.local_starts]
    best_pool: dict[tuple[int, ...], float] = {key(c): score(c) for c in ranked}
    for start in starts:
        cur, cur_t = start, score(start)
        improved = True
        while improved and ev.distinct() < budget:
            improved = False
            nbrs = [n for n in neighbours(cur, allowed) if not ev.seen(key(n))]
            nbrs.sort(key=key)
            ev.prefetch(nbrs[: max(0, budget - ev.distinct())], level)
            for n in nbrs:
                if ev.distinct() >= budget:
                    break
                t = score(n)
                best_pool[key(n)] = t
                if t < cur_t:
                    cur, cur_t, improved = n, t, True
            round_done()

    # 4. final: the best few at full repetitions, beside the default config
    finalists = sorted((t, k) for k, t in best_pool.items() if math.isfinite(t))[
        : params.keep_final
    ]
    if not finalists:
        why = f" (last: {ev.last_error})" if ev.last_error else ""
        raise ConfigError(f"batch size {M}: every measured config failed to run{why}")
    final = sorted((ev(allowed[k], FULL_REPS_LEVEL), k) for _, k in finalists)
    best_t, best_k = final[0]
    best_cfg = from_key(best_k)
    default_t = None
    if default is not None:
        in_space = _complete(default) and key(default) in allowed
        default_t = (
            ev(default, FULL_REPS_LEVEL)
            if in_space
            else _measure_default(measure, default, M, params)
        )
        if math.isfinite(default_t) and default_t < best_t:
            best_t, best_cfg = default_t, dict(default)  # never pick one slower than the default
    round_done()
    return Result(
        M=M,
        config=best_cfg,
        time=best_t,
        default_config=dict(default) if default else None,
        default_time=default_t,
        evaluations=ev.distinct(),
        measurements=ev.calls,
        candidates=len(allowed),
        seconds=round(time.monotonic() - t0, 3),
    )


def _complete(cfg: dict[str, Any]) -> bool:
    return all(k in cfg for k in KEYS)


def _measure_default(measure, default, M, params) -> float:
    """The default config may lie outside the candidates (pruned, or without num_warps and
    num_stages, as SGLang's bf16 default): measured once at full repetitions, not memoized."""
    ev = Evaluator(measure, M, params, memo={})
    if _complete(default):
        return ev(default, FULL_REPS_LEVEL)
    try:
        kw = {"reps": params.reps[FULL_REPS_LEVEL]} if ev._takes_reps else {}
        t = float(measure(dict(default), M, **kw))
    except Exception:
        t = math.inf
    return t if math.isfinite(t) and t > 0 else math.inf


def exhaustive(
    M: int,
    candidates: list[dict[str, int]],
    measure: Callable[..., float],
    *,
    default: dict[str, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """Measure every candidate at full repetitions (the benchmark's reference optimum)."""
    params = SearchParams()
    t0 = time.monotonic()
    ev = Evaluator(measure, M, params)
    ev.prefetch(candidates, FULL_REPS_LEVEL)  # parallel compile, as search_one gets per round
    best_t, best_k = math.inf, None
    for i, c in enumerate(candidates):
        t = ev(c, FULL_REPS_LEVEL)
        if t < best_t or (t == best_t and best_k is not None and key(c) < best_k):
            best_t, best_k = t, key(c)
        if progress:
            progress(i + 1, len(candidates))
    if best_k is None:
        raise ConfigError(f"batch size {M}: every config failed to run")
    default_t = _measure_default(measure, default, M, params) if default else None
    return Result(
        M=M,
        config=from_key(best_k),
        time=best_t,
        default_config=dict(default) if default else None,
        default_time=default_t,
        evaluations=ev.distinct(),
        measurements=ev.calls,
        candidates=len(candidates),
        seconds=round(time.monotonic() - t0, 3),
        method="exhaustive",
    )


# ---- waves and seeds ----------------------------------------------------------------------------


def waves(batch_sizes: Sequence[int], anchor_stride: int = 3) -> list[list[int]]:
    """[anchors, rest]: every anchor_stride-th batch size (and the last), then the others."""
    bs = sorted(set(int(b) for b in batch_sizes))
    if not bs:
        return []
    anchors = [b for i, b in enumerate(bs) if i % anchor_stride == 0]
    if bs[-1] not in anchors:
        anchors.append(bs[-1])
    rest = [b for b in bs if b not in anchors]
    return [anchors, rest] if rest else [anchors]


def seeds_for(M: int, finished: dict[int, dict], per_neighbour: int = 3) -> list[dict[str, int]]:
    """Top configs of the nearest finished batch sizes below and above M (from their records)."""
    below = [b for b in finished if b < M]
    above = [b for b in finished if b > M]
    out: list[dict[str, int]] = []
    for b in ([max(below)] if below else []) + ([min(above)] if above else []):
        out.extend(finished[b].get("top", [])[:per_neighbour] or [finished[b]["result"]["config"]])
    return out


def top_configs(memo: dict[str, float], n: int) -> list[dict[str, int]]:
    """The n fastest configs of a memo (best level each config reached)."""
    best: dict[tuple[int, ...], tuple[int, float]] = {}
    for mk, t in memo.items():
        ks, lvl = mk.split("@")
        k = tuple(int(v) for v in ks.split(","))
        lvl_i = int(lvl)
        if k not in best or lvl_i > best[k][0]:
            best[k] = (lvl_i, t)
    order = sorted(((-lvl, t, k) for k, (lvl, t) in best.items() if math.isfinite(t)))
    return [from_key(k) for _, _, k in order[:n]]


# ---- state file ---------------------------------------------------------------------------------


class PartialTune(ConfigError):
    """Some batch sizes could not be tuned (`failed`: M -> why); `results` holds the others."""

    def __init__(self, results: dict[int, Result], failed: dict[int, str]):
        self.results, self.failed = results, failed
        sizes = ", ".join(str(m) for m in sorted(failed))
        super().__init__(f"batch size(s) {sizes} could not be tuned: {failed[min(failed)]}")


class State:
    """The resumable state: identity, finished batch sizes, measurements per batch size."""

    def __init__(self, path: str | Path, identity: dict[str, Any]):
        self.path = Path(path)
        self.identity = identity
        self.done: dict[int, dict[str, Any]] = {}  # M -> {"result": ..., "top": [...]}
        self.memo: dict[int, dict[str, float]] = {}
        self.failed: dict[int, str] = {}  # this run's batch sizes whose every config failed
        self.started = time.time()

    @classmethod
    def open(cls, path: str | Path, identity: dict[str, Any], resume: bool) -> State:
        st = cls(path, identity)
        if not resume:
            return st
        p = Path(path)
        if not p.exists():
            return st
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--resume: cannot read state {p}: {e}") from None
        if data.get("version") != STATE_VERSION:
            raise ConfigError(f"--resume: {p} has state version {data.get('version')!r}")
        if data.get("identity") != identity:
            diff = sorted(
                k for k in set(identity) | set(data.get("identity", {}))
                if identity.get(k) != data.get("identity", {}).get(k)
            )  # fmt: skip
            raise ConfigError(
                f"--resume: {p} belongs to another tuning job ({', '.join(diff)} differ)"
            )
        st.done = {int(m): v for m, v in data.get("done", {}).items()}
        st.memo = {
            int(m): {k: _from_json_time(t) for k, t in v.items()}
            for m, v in data.get("memo", {}).items()
        }
        return st

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "identity": self.identity,
            "done": {str(m): v for m, v in sorted(self.done.items())},
            "memo": {
                str(m): {k: _to_json_time(t) for k, t in sorted(v.items())}
                for m, v in sorted(self.memo.items())
            },
        }

    def save(self) -> None:
        atomic_write_json(self.path, self.to_json())

    def results(self) -> dict[int, Result]:
        return {m: Result.from_json(v["result"]) for m, v in sorted(self.done.items())}

    def fail(self, M: int, why: str) -> None:
        """Batch size M could not be tuned: its measurements are dropped (--resume tries it
        again) and `results_or_raise` names it."""
        self.failed[M] = why
        self.memo.pop(M, None)

    def results_or_raise(self) -> dict[int, Result]:
        """The finished results, or PartialTune with them where a batch size failed."""
        if self.failed:
            raise PartialTune(self.results(), self.failed)
        return self.results()

    def finish(self, result: Result, memo: dict[str, float], top_n: int = 3) -> None:
        self.done[result.M] = {"result": result.to_json(), "top": top_configs(memo, top_n)}
        self.memo[result.M] = memo
        self.save()


def _to_json_time(t: float) -> float | str:
    return t if math.isfinite(t) else "inf"


def _from_json_time(t: float | str) -> float:
    return math.inf if t == "inf" else float(t)


# ---- the driver ---------------------------------------------------------------------------------


Space = Sequence[dict[str, int]] | Callable[[int], Sequence[dict[str, int]]]


def candidates_at(space: Space, M: int) -> list[dict[str, int]]:
    return list(space(M) if callable(space) else space)


def tune(
    batch_sizes: Sequence[int],
    space: Space,
    measure: Callable[..., float],
    *,
    state_path: str | Path,
    budget: int | None = None,
    resume: bool = False,
    progress: Callable[[str, dict[str, Any]], None] | None = None,
    default_config: Callable[[int], dict[str, int] | None] | None = None,
    identity: dict[str, Any] | None = None,
    params: SearchParams | None = None,
) -> dict[int, Result]:
    """Tune every batch size (see the module docstring); returns {M: Result} in M order.

    `default_config(M)` gives SGLang's default config (measured as the baseline and always in
    the population). `identity` (JSON-able) names the job; `resume` refuses a state file of
    another job. `progress(event, info)` gets "start", "round", "done", "skip" (--resume) and
    "failed" events. Batch sizes whose every config fails raise PartialTune at the end, with the
    results of the others.
    """
    params = params or SearchParams()
    bs = sorted(set(int(b) for b in batch_sizes))
    if not bs or any(b < 1 for b in bs):
        raise ConfigError(f"--batch-sizes: need positive integers (got {list(batch_sizes)})")
    if budget is not None and budget < 1:
        raise ConfigError(f"--budget: must be >= 1 (got {budget})")
    ident = dict(identity or {})
    ident.setdefault("batch_sizes", bs)
    ident.setdefault("budget", budget)
    ident.setdefault("params", asdict(params))
    ident["params"] = json.loads(json.dumps(ident["params"]))
    state = State.open(state_path, ident, resume)
    state.save()
    try:
        _run_waves(bs, space, measure, state, budget, params, progress, default_config)
    finally:  # an interruption (Ctrl-C, an error) keeps every measurement taken so far
        state.save()
    return state.results_or_raise()


def _run_waves(bs, space, measure, state, budget, params, progress, default_config) -> None:
    """Search each batch size, wave by wave; one whose every config fails is `state.fail`ed and
    the others go on."""
    for wave in waves(bs, params.anchor_stride):
        finished_before = dict(state.done)  # seeds come from earlier waves only
        for M in wave:
            if M in state.done:
                if progress:
                    progress("skip", {"M": M})
                continue
            cands = candidates_at(space, M)
            memo = state.memo.setdefault(M, {})
            if progress:
                progress("start", {"M": M, "candidates": len(cands)})

            def on_round(_memo, M=M):
                state.save()
                if progress:
                    progress(
                        "round", {"M": M, "evaluations": len({k.split("@")[0] for k in _memo})}
                    )

            try:
                res = search_one(
                    M,
                    cands,
                    measure,
                    seeds=seeds_for(M, finished_before, params.seeds_per_neighbour),
                    default=default_config(M) if default_config else None,
                    budget=budget,
                    params=params,
                    memo=memo,
                    on_round=on_round,
                )
            except ConfigError as e:
                state.fail(M, str(e))
                if progress:
                    progress("failed", {"M": M, "error": str(e)})
                continue
            state.finish(res, memo)
            if progress:
                progress("done", {"M": M, "result": res})


def configs_json(results: dict[int, Result]) -> dict[str, dict[str, int]]:
    """{"1": {...}, "2": {...}}: the store file's content, as SGLang reads it."""
    return {str(m): {k: int(v) for k, v in r.config.items()} for m, r in sorted(results.items())}


def results_from_state(state_path: str | Path) -> dict[int, Result]:
    data = json.loads(Path(state_path).read_text(encoding="utf-8"))
    return {int(m): Result.from_json(v["result"]) for m, v in data.get("done", {}).items()}


__all__ = [
    "PartialTune",
    "Result",
    "SearchParams",
    "State",
    "configs_json",
    "default_budget",
    "exhaustive",
    "neighbours",
    "search_one",
    "seeds_for",
    "tune",
    "waves",
]
