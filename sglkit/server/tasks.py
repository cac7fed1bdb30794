"""invoke server.*: up, status, down, flush-cache, trace, bench (parse and print only)."""

from __future__ import annotations

import json

from invoke import Collection
from invoke.exceptions import Exit
from rich.table import Table

from sglkit.cli import DIST_INIT_HELP, NODE_RANK_HELP, PROFILE_HELP, number, task
from sglkit.console import echo, out
from sglkit.kernels import overlay
from sglkit.server import load, phases, serve
from sglkit.server.spec import Overrides


@task(
    help={
        "profile": PROFILE_HELP,
        "detach": "return once the server is ready and leave it running (server.down stops it)",
        "port": "serve on this port instead of server.port",
        "model": "serve this model path instead of model.path",
        "load-format": "SGLang's --load-format, e.g. dummy (random weights, no download)",
        "skip-tokenizer-init": "SGLang's --skip-tokenizer-init (requests send input_ids)",
        "timeout": "seconds to wait for the server to be ready (default 1800)",
        "grace": "seconds between SIGTERM to the server and KILL of its group (default 30)",
        "precompile": "SGLang's all-M DeepGEMM sweep at start: auto (off where cache.deepgemm's "
        "marker matches this server), on, off",
        "moe-configs": "the MoE config files SGLang reads: kit (the kit's store over SGLang's "
        "shipped files), sglang (SGLang's alone), none (SGLang's default config)",
        "node-rank": NODE_RANK_HELP,
        "dist-init-addr": DIST_INIT_HELP,
    }
)
def up(c, profile=None, detach=False, port=None, model=None, load_format=None,
       skip_tokenizer_init=False, timeout=None, grace=None, precompile="auto", moe_configs="kit",
       node_rank=None, dist_init_addr=None):  # fmt: skip
    """Serve the profile with SGLang: its argv, caches, MoE configs, inside the live run."""
    overrides = Overrides(
        port=number(port, "--port", int, 1),
        model_path=model,
        load_format=load_format,
        skip_tokenizer_init=bool(skip_tokenizer_init),
        node_rank=number(node_rank, "--node-rank", int),
        dist_init_addr=dist_init_addr,
        moe_configs=overlay.check_source(moe_configs),
    )
    serve.up(
        profile,
        overrides,
        detach=detach,
        timeout=number(timeout, "--timeout", default=1800.0),
        grace=number(grace, "--grace", default=30.0),
        precompile=precompile,
    )


@task(help={"profile": PROFILE_HELP, "json": "print one JSON object"})
def status(c, profile=None, json_=False):
    """Up or down, model, health, uptime, server_info's figures; exit 3 when down."""
    st = serve.status(profile)
    if json_:
        echo(json.dumps(st, indent=2))
    else:
        table = Table("field", "value")
        for key, value in st.items():
            if key == "figures":
                for k, v in value.items():
                    table.add_row(f"  {k}", str(v))
            elif key == "start_phases":
                table.add_row("start", phases.line(value) or "-")
            else:
                table.add_row(key, "-" if value is None else str(value))
        out().print(table)
    if st["status"] != "up":
        raise Exit(code=serve.EXIT_DOWN)


@task(help={"profile": PROFILE_HELP, "grace": "seconds before the group is killed (default 30)"})
def down(c, profile=None, grace=None):
    """Stop the profile's server gracefully; no process of its group is left."""
    echo(serve.down(profile, grace=number(grace, "--grace", default=30.0)))


@task(help={"profile": PROFILE_HELP})
def flush_cache(c, profile=None):
    """Flush the server's prefix (radix) cache: SGLang's /flush_cache."""
    echo(serve.flush_cache(profile))


@task(
    help={
        "profile": PROFILE_HELP,
        "seconds": "how long to record (default 5)",
        "output": "folder for the trace files (default: the run's traces/<time>)",
    }
)
def trace(c, profile=None, seconds=None, output=None):
    """Record a torch profiler trace of the server (/start_profile, /stop_profile)."""
    folder, files = serve.trace(profile, number(seconds, "--seconds", default=5.0), output)
    echo(f"trace: {folder}")
    for f in files:
        echo(f"  {f.name}  {f.stat().st_size} bytes")


@task(
    help={
        "profile": PROFILE_HELP,
        "requests": "number of requests (default 64)",
        "concurrency": "requests in flight at once (default 8)",
        "input-len": "input tokens per request (default 256)",
        "output-len": "output tokens per request (default 64)",
        "vocab": "draw input ids below this (default 32000)",
        "json": "print the summary as JSON",
    }
)
def bench(c, profile=None, requests=None, concurrency=None, input_len=None, output_len=None,
          vocab=None, json_=False):  # fmt: skip
    """A short load of /generate with random input ids; throughput and latency percentiles."""
    spec = load.LoadSpec(
        requests=number(requests, "--requests", int, 1, default=64),
        concurrency=number(concurrency, "--concurrency", int, 1, default=8),
        input_len=number(input_len, "--input-len", int, 1, default=256),
        output_len=number(output_len, "--output-len", int, 1, default=64),
        vocab=number(vocab, "--vocab", int, 2, default=32000),
    )
    st = serve.require(profile)

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            echo(f"server.bench: {done}/{total} requests", stderr=True)

    summary = load.run(st["url"], spec, progress).summary()
    if json_:
        echo(json.dumps(summary, indent=2))
        return
    out().print(bench_table(summary))
    if summary["failed"]:
        raise Exit(f"error: {summary['failed']} requests failed: {summary['first_error']}", 1)


def bench_table(s: dict) -> Table:
    def ms(v):
        return "-" if v is None else f"{v * 1000:.1f}"

    table = Table("concurrency", "requests", "req/s", "out tok/s", "TTFT p50 ms",
                  "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "E2E p50 ms")  # fmt: skip
    table.add_row(
        str(s["concurrency"]), f"{s['completed']}/{s['requests']}",
        f"{s['request_throughput']:.2f}", f"{s['output_throughput']:.1f}",
        ms(s["ttft_p50_s"]), ms(s["ttft_p99_s"]), ms(s["tpot_p50_s"]), ms(s["tpot_p99_s"]),
        ms(s["e2e_p50_s"]),
    )  # fmt: skip
    return table


ns = Collection("server")
ns.add_task(up)
ns.add_task(status)
ns.add_task(down)
ns.add_task(flush_cache, name="flush-cache")
ns.add_task(trace)
ns.add_task(bench)
