"""A short load on a server: /generate with random input ids, streamed, at a fixed concurrency.

No tokenizer is needed (the ids are drawn from the model's vocabulary), so it runs against a
server started with --skip-tokenizer-init. Each request streams; the time to its first chunk
is TTFT, the rest divided by the tokens after the first is its time per output token (TPOT).
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import requests


@dataclass(frozen=True)
class LoadSpec:
    requests: int = 64
    concurrency: int = 8
    input_len: int = 256
    output_len: int = 64
    vocab: int = 32000
    seed: int = 0
    timeout: float = 600.0


@dataclass
class Sample:
    ok: bool
    ttft: float | None = None
    e2e: float | None = None
    output_tokens: int = 0
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.output_tokens < 2 or self.ttft is None:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass
class Result:
    spec: LoadSpec
    wall_s: float
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.ok]
        out_tokens = sum(s.output_tokens for s in ok)

        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            values = sorted(values)
            k = (len(values) - 1) * q
            lo, hi = int(k), min(int(k) + 1, len(values) - 1)
            return values[lo] + (values[hi] - values[lo]) * (k - lo)

        ttft = [s.ttft for s in ok if s.ttft is not None]
        tpot = [s.tpot for s in ok if s.tpot is not None]
        e2e = [s.e2e for s in ok if s.e2e is not None]
        return {
            **asdict(self.spec),
            "completed": len(ok),
            "failed": len(self.samples) - len(ok),
            "first_error": next((s.error for s in self.samples if not s.ok), ""),
            "wall_s": self.wall_s,
            "request_throughput": len(ok) / self.wall_s if self.wall_s else None,
            "output_throughput": out_tokens / self.wall_s if self.wall_s else None,
            "ttft_p50_s": pct(ttft, 0.5),
            "ttft_p99_s": pct(ttft, 0.99),
            "tpot_p50_s": pct(tpot, 0.5),
            "tpot_p99_s": pct(tpot, 0.99),
            "e2e_p50_s": pct(e2e, 0.5),
            "e2e_p99_s": pct(e2e, 0.99),
            "e2e_mean_s": statistics.fmean(e2e) if e2e else None,
        }


def request_body(spec: LoadSpec, rng: random.Random) -> dict[str, Any]:
    return {
        "input_ids": [rng.randrange(spec.vocab) for _ in range(spec.input_len)],
        "sampling_params": {
            "max_new_tokens": spec.output_len,
            "temperature": 0,
            "ignore_eos": True,
        },
        "stream": True,
    }


def one(url: str, body: dict[str, Any], timeout: float) -> Sample:
    """One streamed /generate: TTFT at the first chunk that carries a token."""
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        with requests.post(f"{url}/generate", json=body, stream=True, timeout=timeout) as r:
            if r.status_code != 200:
                return Sample(False, error=f"HTTP {r.status_code}: {r.text[:120]}")
            for line in r.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                n = (chunk.get("meta_info") or {}).get("completion_tokens")
                if n is None:
                    n = len(chunk.get("output_ids") or [])
                if n and ttft is None:
                    ttft = time.perf_counter() - t0
                tokens = max(tokens, int(n or 0))
    except (requests.RequestException, ValueError) as e:
        return Sample(False, error=type(e).__name__)
    return Sample(True, ttft=ttft, e2e=time.perf_counter() - t0, output_tokens=tokens)


def run(url: str, spec: LoadSpec, progress: Callable[[int, int], None] | None = None) -> Result:
    """`spec.requests` requests from `spec.concurrency` workers; bodies drawn from one seed."""
    rng = random.Random(spec.seed)
    bodies = [request_body(spec, rng) for _ in range(spec.requests)]
    samples: list[Sample] = []
    lock = threading.Lock()
    it = iter(bodies)

    def worker() -> None:
        while True:
            with lock:
                body = next(it, None)
            if body is None:
                return
            s = one(url, body, spec.timeout)
            with lock:
                samples.append(s)
                if progress:
                    progress(len(samples), spec.requests)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(spec.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result(spec=spec, wall_s=time.perf_counter() - t0, samples=samples)
