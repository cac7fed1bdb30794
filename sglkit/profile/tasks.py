"""invoke profile.*: show and check serving profiles."""

from __future__ import annotations

import json

import yaml
from invoke import Collection

from sglkit import profile as profiles
from sglkit.cli import task
from sglkit.console import echo
from sglkit.profile.check import check as check_profile

PROFILE_HELP = "profile name under profiles/ or a YAML path (default: $SGLKIT_PROFILE or cpu-dev)"


@task(help={"profile": PROFILE_HELP, "json": "print one JSON object instead of text"})
def show(c, profile=None, json_=False):
    """Print the resolved profile, the exact server argv and its environment."""
    p = profiles.load(profile)
    env = profiles.redact_env({**p.environment(), **profiles.passthrough_secrets()})
    argv = p.server_argv(p.tracing_endpoint() if p.telemetry["tracing"] else None)
    if json_:
        echo(json.dumps({"profile": p.data, "argv": argv, "env": env, "hash": p.hash()}, indent=2))
        return
    echo(f"# profile {p.name}  ({p.path})  sha256 {p.hash()[:16]}")
    echo(yaml.safe_dump(p.data, sort_keys=False).rstrip())
    echo("\n# server argv")
    echo(profiles.shell_line(argv))
    echo("\n# environment")
    for k, v in sorted(env.items()):
        echo(f"{k}={v}")


@task(help={"profile": PROFILE_HELP})
def check(c, profile=None):
    """Validate a profile: fields, values, and the server argv with SGLang's parser."""
    p = profiles.load(profile)
    for note in check_profile(p):
        echo(f"  {note}")
    echo(f"ok: {p.path}")


ns = Collection("profile", show, check)
