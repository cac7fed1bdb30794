"""invoke profile.*: show and check serving profiles."""

from __future__ import annotations

import json

import yaml
from invoke import Collection

from sglkit import profile as profiles
from sglkit.cli import task
from sglkit.profile.check import check as check_profile

PROFILE_HELP = "profile name under profiles/ or a YAML path (default: $SGLKIT_PROFILE or cpu-dev)"


@task(help={"profile": PROFILE_HELP, "json": "print one JSON object instead of text"})
def show(c, profile=None, json_=False):
    """Print the resolved profile, the exact server argv and its environment."""
    p = profiles.load(profile)
    env = profiles.redact_env({**p.environment(), **profiles.passthrough_secrets()})
    argv = p.server_argv(p.tracing_endpoint() if p.telemetry["tracing"] else None)
    if json_:
        print(json.dumps({"profile": p.data, "argv": argv, "env": env, "hash": p.hash()}, indent=2))
        return
    print(f"# profile {p.name}  ({p.path})  sha256 {p.hash()[:16]}")
    print(yaml.safe_dump(p.data, sort_keys=False).rstrip())
    print("\n# server argv")
    print(profiles.shell_line(argv))
    print("\n# environment")
    for k, v in sorted(env.items()):
        print(f"{k}={v}")


@task(help={"profile": PROFILE_HELP})
def check(c, profile=None):
    """Validate a profile: fields, values, and the server argv with SGLang's parser."""
    p = profiles.load(profile)
    for note in check_profile(p):
        print(f"  {note}")
    print(f"ok: {p.path}")


ns = Collection("profile", show, check)
