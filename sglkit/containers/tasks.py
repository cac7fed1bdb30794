"""invoke container.*: base image, build, storage, up/down/status/logs/shell, devcontainer.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from invoke import Collection

from sglkit import profile as profiles
from sglkit.cli import PROFILE_HELP, number, task
from sglkit.console import echo, err
from sglkit.containers import base as base_mod
from sglkit.containers import build as build_mod
from sglkit.containers import devcontainer as devc
from sglkit.containers import engine, lifecycle, render
from sglkit.containers import up as up_mod
from sglkit.errors import ConfigError, SglkitError
from sglkit.observability import manifest as manifests

NAME_HELP = "container name (default: the profile's container.name)"


@task(
    help={
        "offline": "build from the Debian archive with debootstrap (no registry needed)",
        "tag": f"image tag (default {base_mod.BASE_IMAGE})",
        "mirror": f"Debian mirror for --offline (default {base_mod.MIRROR})",
        "rebuild": "build even when the tag exists",
    }
)
def base(c, offline=False, tag=base_mod.BASE_IMAGE, mirror=base_mod.MIRROR, rebuild=False):
    """Base image (Debian bookworm): pulled, or with --offline built by debootstrap + import."""
    console = err()
    client = engine.client()
    if rebuild and offline:
        image_id = base_mod.build(client, tag=tag, mirror=mirror, console=console)
    elif rebuild:
        raise ConfigError("--rebuild: only with --offline (a pull always fetches the latest)")
    elif offline:
        image_id = base_mod.ensure(client, tag=tag, mirror=mirror, console=console)
    else:
        image_id = base_mod.pull_or_build(client, console, offline=False, tag=tag)
    echo(f"{tag} {image_id}")


@task(
    iterable=["build_arg"],
    help={
        "profile": PROFILE_HELP,
        "variant": "gh200, hopper-x86 or cpu (default: the profile's container.variant)",
        "tag": "image tag (default: the profile's container.image)",
        "build_arg": "NAME=VALUE build argument (repeatable), e.g. BASE_IMAGE=... or versions",
        "ca_bundle": "extra CA bundle for TLS-intercepting proxies (default $PIP_CERT etc.)",
        "no_cache": "do not reuse cached layers",
    },
)
def build(c, profile=None, variant=None, tag=None, build_arg=None, ca_bundle=None, no_cache=False):
    """Build the devcontainer image, streaming the build log; tag it and record its id."""
    p = profiles.load(profile)
    client = engine.client()
    image = build_mod.for_profile(client, p, variant, tag, build_arg or (), ca_bundle, no_cache)
    echo(image.id)


@task(help={"profile": PROFILE_HELP, "variant": "gh200, hopper-x86 or cpu (default: profile's)"})
def render_dockerfile(c, profile=None, variant=None):
    """Print the Dockerfile of a variant, as the build would use it."""
    p = profiles.load(profile)
    sys.stdout.write(render.dockerfile(variant or p.container["variant"]))


@task(help={"profile": PROFILE_HELP})
def storage(c, profile=None):
    """Create the host folders (models, cache, telemetry) owned by the image's dev user."""
    p = profiles.load(profile)
    uid, gid = build_mod.dev_ids()
    dirs = lifecycle.host_dirs(p)
    lifecycle.prepare_storage(dirs, uid, gid)
    for kind, d in dirs.items():
        target = render.MOUNT_POINTS[kind]
        echo(f"{kind:<10} {d} -> {target}{' (read-only)' if kind == 'profiles' else ''}")
    echo(f"owner      {uid}:{gid}")


@task(
    help={
        "profile": PROFILE_HELP,
        "name": NAME_HELP,
        "image": "image to run (default: the profile's container.image)",
        "gpus": "auto (when the engine has the NVIDIA runtime), all, or none",
        "host_ports": "same (host port = container port) or auto (free host ports)",
        "timeout": "seconds to wait for the manifest (default: container.ready_timeout)",
        "build": "build the base and the image when missing (default on; --no-build to fail)",
        "json": "print one JSON object instead of text",
    }
)
def up(
    c,
    profile=None,
    name=None,
    image=None,
    gpus="auto",
    host_ports="same",
    timeout=None,
    build=True,
    json_=False,
):
    """Start the devcontainer and wait until its run manifest says ready; print where things are."""
    p = profiles.load(profile)
    started = up_mod.start(
        engine.client(),
        p,
        err(),
        name=name,
        image=image,
        gpus=gpus,
        host_ports_mode=host_ports,
        timeout=timeout,
        build=build,
    )
    plan, out = started.plan, started.outcome
    if json_:
        echo(
            json.dumps(
                {
                    "name": plan.name,
                    "run_id": out.run_id,
                    "run_dir": str(out.run_dir),
                    "manifest": str(out.run_dir / manifests.MANIFEST),
                    "urls": out.urls,
                    "container_id": out.container_id,
                },
                indent=2,
            )
        )
        return
    echo(f"container  {plan.name} ({out.container_id[:12]})")
    echo(f"run id     {out.run_id}")
    echo(f"manifest   {out.run_dir / manifests.MANIFEST}")
    for svc, url in sorted(out.urls.items()):
        echo(f"{svc:<10} {url}")
    absent = {
        n: s.get("reason")
        for n, s in (out.manifest.get("services") or {}).items()
        if s.get("status") != "running"
    }
    for svc, why in sorted(absent.items()):
        echo(f"{svc:<10} not running: {why}")


@task(help={"profile": PROFILE_HELP, "name": NAME_HELP, "grace": "seconds before SIGKILL"})
def down(c, profile=None, name=None, grace=None):
    """Stop and remove the devcontainer; telemetry and caches stay on the host."""
    grace_s = number(grace, "--grace", default=10.0)
    p = profiles.load(profile)
    name = name or p.container["name"]
    labels = lifecycle.down(engine.client(), name, grace=grace_s)
    if labels is None:
        echo(f"{name}: no such container (nothing to do)")
        return
    run_id = labels.get(engine.LABEL_RUN)
    root = labels.get("org.sglkit.telemetry-root")
    echo(f"{name}: stopped and removed")
    if run_id and root:
        echo(f"run {run_id} kept at {manifests.run_dir(root, run_id)}")


@task(help={"profile": PROFILE_HELP, "name": NAME_HELP, "json": "print one JSON object"})
def status(c, profile=None, name=None, json_=False):
    """The devcontainer's state, its run id, the manifest status and each service's URL."""
    p = profiles.load(profile)
    name = name or p.container["name"]
    info = lifecycle.describe(engine.client(), name)
    if info is None:
        if json_:
            echo(json.dumps({"name": name, "state": "absent"}))
        else:
            echo(f"{name}: no such container")
        raise SystemExit(3)
    if json_:
        echo(json.dumps(info, indent=2))
        return
    echo(f"container  {info['name']} ({info['id']}) {info['state']}, image {info['image']}")
    echo(f"run id     {info['run_id']}  manifest: {info['manifest_status']}")
    echo(f"run dir    {info['run_dir']}")
    for svc, s in sorted(info["services"].items()):
        echo(f"{svc:<14} {s['status']:<9} {s['url'] or ''}")


@task(
    help={
        "profile": PROFILE_HELP,
        "name": NAME_HELP,
        "follow": "keep printing new lines (Ctrl-C to stop)",
        "tail": "number of last lines (default: all)",
    }
)
def logs(c, profile=None, name=None, follow=False, tail="all"):
    """Print the devcontainer's log (init-run's progress lines); -f follows."""
    p = profiles.load(profile)
    name = name or p.container["name"]
    container = lifecycle.find(engine.client(), name)
    if container is None:
        raise SglkitError(f"--name: no container named {name}")
    tail_arg = tail if tail == "all" else int(tail)
    if follow:
        try:
            for chunk in container.logs(stream=True, follow=True, tail=tail_arg):
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        return
    sys.stdout.write(container.logs(tail=tail_arg).decode("utf-8", "replace"))


@task(
    help={
        "profile": PROFILE_HELP,
        "name": NAME_HELP,
        "command": "run this (with bash -lc) instead of an interactive shell; exit with its status",
        "user": "user inside the container (default: the image's dev user)",
    }
)
def shell(c, profile=None, name=None, command=None, user=None):
    """An interactive shell in the running devcontainer (or one command with --command)."""
    from sglkit.containers import tty

    p = profiles.load(profile)
    name = name or p.container["name"]
    client = engine.client()
    container = lifecycle.find(client, name)
    if container is None or container.status != "running":
        raise SglkitError(f"--name: no running container named {name} (invoke container.up)")
    if command:
        res = container.exec_run(["bash", "-lc", command], user=user or "", demux=False)
        sys.stdout.write((res.output or b"").decode("utf-8", "replace"))
        raise SystemExit(res.exit_code)
    raise SystemExit(tty.interactive(client, container, ["bash", "-l"], user=user or ""))


@task(
    help={
        "profile": PROFILE_HELP,
        "output": "where to write it (default .devcontainer/devcontainer.json)",
        "check": "validate it with the devcontainer CLI (devcontainer read-configuration)",
    }
)
def devcontainer(c, profile=None, output=".devcontainer/devcontainer.json", check=False):
    """Generate devcontainer.json from the profile (mounts, ports, env, post-create)."""
    p = profiles.load(profile)
    path = devc.write(p, Path(output))
    echo(path)
    if check:
        devc.check(path)
        echo("devcontainer read-configuration: ok")


ns = Collection("container")
for t in (base, build, render_dockerfile, storage, up, down, status, logs, shell, devcontainer):
    ns.add_task(t)
