"""invoke host.*: set this machine up for container.up (and, with --tests, for the tests)."""

from __future__ import annotations

from invoke import Collection

from sglkit import host as host_mod
from sglkit.cli import task
from sglkit.console import err


@task(
    help={
        "tests": "also what the tests need: Prometheus, node_exporter, the devcontainer CLI",
        "dry_run": "print the steps without running them",
    }
)
def setup(c, tests=False, dry_run=False):
    """Install and start what container.up needs (Docker engine, debootstrap); no-op if there."""
    console = err()
    host = host_mod.probe()
    steps = host_mod.plan(host, tests=tests)
    wanted = ", ".join(n.key for n in host_mod.needs(tests))
    if not steps:
        console.print(
            f"host.setup: nothing to do ({wanted} present; Docker engine "
            f"{host_mod.engine_version()} answers)",
            markup=False,
        )
        return
    if dry_run:
        for i, step in enumerate(steps, 1):
            console.print(f"host.setup: [{i}/{len(steps)}] would run: {step.shown()}", markup=False)
        return
    console.print(
        f"host.setup: {len(steps)} step{'s' if len(steps) > 1 else ''} on {host.os_name} "
        f"for {wanted}; "
        f"full output in {host_mod.logs.path(host_mod.LOG)}",
        markup=False,
    )
    with console.status("host.setup") as status:
        secs = host_mod.run(
            steps, host, say=lambda s: console.print(s, markup=False), status=status
        )
    after = host_mod.probe()
    left = host_mod.missing(after, tests)
    if left or after.engine_error:
        what = ", ".join(n.what for n in left) or after.engine_error
        raise host_mod.SglkitError(f"host.setup: still missing after set-up: {what}")
    console.print(
        f"host.setup: ready in {secs:.0f}s (Docker engine {host_mod.engine_version()})",
        markup=False,
    )


ns = Collection("host")
ns.add_task(setup)
