"""invoke cache.*: deepgemm, status, export, import (and triton, from sglkit.cache.triton)."""

from __future__ import annotations

import json

from invoke import Collection
from rich.table import Table

from sglkit.cache import archive, deepgemm, store
from sglkit.cache import status as cache_status
from sglkit.cache.triton import triton
from sglkit.cli import number, table_console, task
from sglkit.console import echo

PROFILE_HELP = "profile name under profiles/ or a YAML path (default: $SGLKIT_PROFILE or cpu-dev)"


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
        "lock-timeout": "seconds to wait for another warm of the same folder (default 0: fail)",
        "dry-run": "print the argv, environment, folder and fingerprint as JSON; run nothing",
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
):
    """Warm the DeepGEMM cache: run the server with the profile's argv and one warm-up request."""
    pl = deepgemm.plan(
        profile,
        model=model,
        context_length=context_length,
        launcher=launcher,
        port=number(port, "--port", int),
        timeout=number(timeout, "--timeout", float, default=3600.0),
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
ns.add_task(deepgemm_, name="deepgemm")
ns.add_task(status)
ns.add_task(export)
ns.add_task(import_, name="import")
ns.add_task(triton)
