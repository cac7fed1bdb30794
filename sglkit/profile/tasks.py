"""invoke profile.*: show and check serving profiles."""

from __future__ import annotations

import json

import yaml
from invoke import Collection

from sglkit import profile as profiles
from sglkit.cli import PROFILE_HELP, task
from sglkit.console import echo
from sglkit.profile.check import check as check_profile
from sglkit.server import parse
from sglkit.server import spec as server_spec
from sglkit.versions import SGLang


@task(
    help={
        "profile": PROFILE_HELP,
        "json": "print one JSON object instead of text",
        "sglang-version": "names for this SGLang version (default: the installed one)",
    }
)
def show(c, profile=None, json_=False, sglang_version=None):
    """Print the resolved profile, the exact server argv and its environment."""
    p = profiles.load(profile)
    sglang = SGLang(sglang_version) if sglang_version else SGLang.here()
    tracing = p.tracing_endpoint() if p.telemetry["tracing"] else None
    spec = server_spec.build(p, server_spec.Overrides(tracing_endpoint=tracing), sglang)
    env = profiles.redact_env({**spec.environment(), **profiles.passthrough_secrets()})
    argv = spec.argv()
    if json_:
        echo(json.dumps({"profile": p.data, "argv": argv, "env": env, "hash": p.hash(),
                          "sglang_version": sglang.version}, indent=2))  # fmt: skip
        return
    echo(f"# profile {p.name}  ({p.path})  sha256 {p.hash()[:16]}")
    echo(yaml.safe_dump(p.data, sort_keys=False).rstrip())
    echo(f"\n# server argv (SGLang {sglang.version or 'not installed: newest names'})")
    echo(profiles.shell_line(argv))
    echo("\n# environment")
    for k, v in sorted(env.items()):
        echo(f"{k}={v}")


@task(help={"profile": PROFILE_HELP})
def check(c, profile=None):
    """Validate a profile: fields, values, and the server argv with SGLang's parser."""
    p = profiles.load(profile)
    for note in [*check_profile(p), *parse.parse_with_sglang(server_spec.build(p))]:
        echo(f"  {note}")
    echo(f"ok: {p.path}")


ns = Collection("profile", show, check)
