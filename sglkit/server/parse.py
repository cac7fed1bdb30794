"""The server argv through the installed SGLang's own parser: rejections and deprecations."""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings

from sglkit.errors import ConfigError
from sglkit.server import spec


def parse_with_sglang(server: spec.ServerSpec) -> list[str]:
    """Parse the server argv with the installed SGLang's own ServerArgs parser; warn for every
    flag that parser marks deprecated (its Deprecated*Action names the replacement)."""
    try:
        from sglang.srt.server_args import ServerArgs  # type: ignore[import-not-found]
    except Exception as e:  # ImportError, or sglang failing to import on this host
        return [f"sglang: not importable here ({type(e).__name__}); server flags not parsed"]
    parser = argparse.ArgumentParser(prog="sglang.launch_server", exit_on_error=False)
    ServerArgs.add_cli_args(parser)
    where = server.profile.path
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser.parse_args(server.server_args())
    except (argparse.ArgumentError, SystemExit) as e:
        last = (err.getvalue().strip().splitlines() or [str(e)])[-1]
        raise ConfigError(f"{where}: server: SGLang rejects the argv: {last}") from None
    return [
        *deprecated_flags(parser, server),
        f"sglang {server.sglang.version}: server argv parsed by SGLang's ServerArgs parser",
    ]


def deprecated_flags(parser: argparse.ArgumentParser, server: spec.ServerSpec) -> list[str]:
    """'warning: ...' for each flag of the spec that `parser` declares deprecated."""
    by_flag = {
        option: action
        for action in parser._actions  # argparse keeps no public list of its actions
        for option in action.option_strings
    }
    out = []
    for flag, _value in server.flags():
        action = by_flag.get(flag)
        if action is not None and type(action).__name__.startswith("Deprecated"):
            new = getattr(action, "new_flag", None) or "see SGLang's --help"
            out.append(
                f"warning: {where_of(server, flag)}: {flag} is deprecated in SGLang "
                f"{server.sglang.version}; use {new}"
            )
    return out


def where_of(server: spec.ServerSpec, flag: str) -> str:
    """The profile field a flag comes from, for messages."""
    for key, name in {**spec.PROFILE_FLAGS, **spec.BOOL_FLAGS}.items():
        if name == flag:
            return f"server.{key}"
    if flag.lstrip("-") in server.server["args"]:
        return f"server.args.{flag.lstrip('-')}"
    return "the kit's own flags"
