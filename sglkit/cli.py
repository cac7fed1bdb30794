"""The edge between invoke and the code: `task` turns SglkitError into one line and an exit code."""

from __future__ import annotations

import functools

from invoke import task as _invoke_task
from invoke.exceptions import Exit

from sglkit.errors import SglkitError


def task(*args, **kwargs):
    """Like invoke's @task, but a SglkitError ends the command with its one-line message."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except SglkitError as e:
                raise Exit(f"error: {e}", code=e.exit_code) from None

        return _invoke_task(*args, **kwargs)(run)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        fn, args = args[0], ()
        return wrap(fn)
    return wrap


def main_guard(fn):
    """For `python -m sglkit.x` entry points: same one-line error and exit code, no traceback."""

    @functools.wraps(fn)
    def run(*a, **kw):
        import sys

        try:
            return fn(*a, **kw)
        except SglkitError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)

    return run


def table_console():
    """A rich Console for tables on stdout: on a pipe or in a log it is wide enough that URLs
    and paths are printed whole instead of cut with an ellipsis."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = 200
    return console
