"""invoke cache.*: bytecode, deepgemm, triton, status, export, import (flags in, lines out).

The work: sglkit.cache.bytecode, .deepgemm, .triton_warm (also `python -m
sglkit.cache.triton_warm`), .status, .archive; every cache folder's marker and lock:
sglkit.cache.store."""

from __future__ import annotations

import json

from invoke import Collection
from rich.table import Table

from sglkit import profile as profiles
from sglkit.cache import archive, bytecode, deepgemm, store, triton_warm
from sglkit.cache import status as cache_status
from sglkit.cli import (
    DIST_INIT_HELP,
    LOCK_TIMEOUT_HELP,
    NODE_RANK_HELP,
    PROFILE_HELP,
    number,
    table_console,
    task,
)
from sglkit.console import echo
from sglkit.errors import ConfigError
from sglkit.server import spec as server_spec


@task(
    help={
        "profile": PROFILE_HELP,
        "model": "warm this model (path or hub id) with the profile's other settings",
        "context-length": "context length when the profile has none (must equal it otherwise)",
        "launcher": "replace server.launcher, e.g. 'python3 -m sglang.launch_server'",
        "port": "port for the warm-up server (default server.port; not a kernel shape)",
        "timeout": "seconds before giving up (default 3600)",
        "grace": "seconds between TERM and KILL when stopping the server (default 10)",
        "force": "warm again even when the completion marker matches",
        "lock-timeout": LOCK_TIMEOUT_HELP,
        "node-rank": NODE_RANK_HELP + "; each node warms and marks its own",
        "dist-init-addr": DIST_INIT_HELP,
        "dry-run": "print the argv, environment, folder and fingerprint as JSON; run nothing",
        "jobs": "compile the kernels in N worker processes first (auto: the cores here, "
        "capped by GPU memory), then let the server check them (default 1: the server warms "
        "alone; docs/caching.md says when workers pay)",
        "triton": "then compile the fused-MoE Triton kernels of the config file the server reads "
        "(auto: where one exists and a GPU runs SGLang's kernel here; on: required; off)",
    }
)
def deepgemm_(
    c,
    profile=None,
    model=None,
    context_length=None,
    launcher=None,
    port=None,
    timeout=None,
    grace=None,
    force=False,
    lock_timeout=None,
    dry_run=False,
    node_rank=None,
    dist_init_addr=None,
    jobs=None,
    triton=None,
):
    """Warm the caches a server start needs: DeepGEMM's and Triton's, through one server start
    with the profile's argv and one warm-up request; then the MoE kernels of every batch size."""
    pl = deepgemm.plan(
        profile,
        model=model,
        context_length=context_length,
        launcher=launcher,
        port=number(port, "--port", int),
        timeout=number(timeout, "--timeout", float, default=3600.0),
        node_rank=number(node_rank, "--node-rank", int),
        dist_init_addr=dist_init_addr,
        jobs=jobs,
        triton=triton,
    )
    if dry_run:
        echo(json.dumps(deepgemm.describe(pl), indent=2))
        return
    deepgemm.warm(
        pl,
        force=force,
        lock_timeout=number(lock_timeout, "--lock-timeout", float, default=0.0),
        grace=number(grace, "--grace", float, default=10.0),
    )


@task(help={"profile": PROFILE_HELP})
def bytecode_(c, profile=None):
    """Byte-compile the Python packages the profile's server imports (SGLang's and torch's site
    folders), so that its starts do not compile them from source."""
    spec = server_spec.build(profiles.load(profile))
    bytecode.run(spec, say=echo)


@task(
    help={
        "profile": PROFILE_HELP,
        "config-file": "warm this tuned config file instead of the one SGLang would look up",
        "max-tokens": "largest batch to plan for (default: the profile's chunked_prefill_size)",
        "device-name": "GPU name for the config file name (default: this GPU's)",
        "json": "also write per-variant first-call times here",
        "lock-timeout": LOCK_TIMEOUT_HELP,
        "keys-only": "one variant per config at its own batch size (quicker, partial)",
    }
)
def triton(c, profile=None, config_file=None, max_tokens=None, device_name=None, json=None,
           lock_timeout=None, keys_only=False):  # fmt: skip
    """Compile the profile's tuned fused-MoE kernels into TRITON_CACHE_DIR (needs a GPU)."""
    if max_tokens is not None:
        try:
            max_tokens = int(max_tokens)
        except ValueError:
            raise ConfigError(f"--max-tokens: expected an integer, got {max_tokens!r}") from None
        if max_tokens < 1:
            raise ConfigError("--max-tokens: expected a positive integer")
    try:
        wait = float(lock_timeout or 0)
    except ValueError:
        raise ConfigError(f"--lock-timeout: expected seconds, got {lock_timeout!r}") from None
    s = triton_warm.run(
        profile, config_file, max_tokens, json, device_name, lock_timeout=wait, keys_only=keys_only
    )
    echo(f"warm: {len(s['items'])} kernel variants in {s['triton_cache_dir']} "
          f"(first calls {s['total_first_call_s']:.1f}s)")  # fmt: skip


@task(help={"profile": PROFILE_HELP, "json": "print JSON instead of a table"})
def status(c, profile=None, json_=False):
    """Per cache kind: folder, size, file count, last warm, and whether its marker matches."""
    rows = cache_status.status(profile)
    if json_:
        echo(json.dumps(rows, indent=2))
        return
    table = Table("kind", "folder", "size", "files", "last warm", "marker")
    for r in rows:
        table.add_row(
            r["kind"],
            r["folder"] + ("" if r["exists"] else " (absent)"),
            store.human_bytes(r["bytes"]),
            str(r["files"]),
            r["last_warm"] or "-",
            r["marker"],
        )
    console = table_console()
    console.print(table)


@task(help={"profile": PROFILE_HELP, "output": "archive path (default ./sglkit-deepgemm-...)"})
def export(c, profile=None, output=None):
    """Pack the warmed DeepGEMM cache and its marker into one .tar.gz."""
    out = archive.export(profile, output)
    echo(f"exported: {out}")


@task(
    help={
        "archive": "a .tar.gz written by cache.export",
        "profile": PROFILE_HELP,
        "force": "replace a cache that already has a completion marker",
    }
)
def import_(c, archive_, profile=None, force=False):
    """Unpack an exported cache when this node is compatible (GPU arch, SGLang, DeepGEMM)."""
    folder = archive.import_(archive_, profile, force=force)
    echo(f"imported: {folder}")


ns = Collection("cache")
ns.add_task(bytecode_, name="bytecode")
ns.add_task(deepgemm_, name="deepgemm")
ns.add_task(status)
ns.add_task(export)
ns.add_task(import_, name="import")
ns.add_task(triton)
