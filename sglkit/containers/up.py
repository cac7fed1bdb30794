"""container.up from a profile: the image (built when missing), host ports, the plan, storage,
then `lifecycle.up` starts the container and waits for its run to be ready.

The task (`containers/tasks.py`) parses the flags and prints the outcome; everything between
is here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sglkit.containers import build as build_mod
from sglkit.containers import engine, lifecycle
from sglkit.errors import ConfigError, SglkitError
from sglkit.net import free_port
from sglkit.observability import manifest as manifests
from sglkit.profile import Profile


@dataclass
class Started:
    plan: lifecycle.Plan
    outcome: lifecycle.Outcome


def host_ports(mode: str, profile: Profile) -> dict[int, int]:
    """--host-ports same|auto -> container port -> host port."""
    ports = lifecycle.container_ports(profile)
    if mode == "same":
        return {v: v for v in ports.values()}
    if mode == "auto":
        chosen: dict[int, int] = {}
        for v in ports.values():
            chosen[v] = _free_port(set(chosen.values()))
        return chosen
    raise ConfigError(f"--host-ports: {mode!r} is not one of same, auto")


def _free_port(avoid: set[int]) -> int:
    while True:
        port = free_port()
        if port not in avoid:
            return port


def start(
    client,
    profile: Profile,
    console,
    *,
    name: str | None = None,
    image: str | None = None,
    gpus: str = "auto",
    host_ports_mode: str = "same",
    timeout: float | None = None,
    build: bool = True,
) -> Started:
    """Start the profile's devcontainer and wait until its run manifest says ready; progress
    goes to `console` (stderr). SglkitError where it cannot; nothing is left behind then."""
    p = profile
    image = image or p.container["image"]
    if not engine.image_exists(client, image):
        if not build or image != p.container["image"]:
            raise SglkitError(
                f"container.image: image {image} not found on this engine; "
                f"build it with `invoke container.build --profile {p.path}`"
            )
        console.print(f"[bold]up[/]: image {image} missing; building it first")
        build_mod.for_profile(client, p, console=console)
    runtime = engine.has_nvidia_runtime(client.info())
    use_gpus = lifecycle.want_gpus(gpus, p.container["variant"], runtime)
    ports = host_ports(host_ports_mode, p)
    run_id = manifests.new_run_id()
    forwarded = lifecycle.secrets(p)
    plan = lifecycle.plan(
        p,
        run_id=run_id,
        gpus=use_gpus,
        host_ports=ports,
        name=name,
        image=image,
        secrets=forwarded,
    )
    uid, gid = build_mod.dev_ids()
    lifecycle.prepare_storage(plan.host_dirs, uid, gid)
    t_wait = float(timeout) if timeout is not None else p.container["ready_timeout"]
    lifecycle.preflight(client, plan)
    console.print(f"[bold]up[/]: {plan.name} from {image}, run {run_id}, gpus={use_gpus}")
    note = lifecycle.secret_note(forwarded)
    if note:
        console.print(f"[bold]up[/]: {note}")
    with console.status(f"waiting for run {run_id} to be ready") as status:
        out = lifecycle.up(
            client,
            plan,
            timeout=t_wait,
            say=lambda s: console.print(s, markup=False),
            on_status=lambda s: status.update(f"run {run_id}: {s}"),
        )
    return Started(plan, out)
