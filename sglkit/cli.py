"""The edge between invoke and the code: `task` turns SglkitError into one line and an exit code."""

from __future__ import annotations

import functools

from invoke import Task
from invoke import task as _invoke_task
from invoke.exceptions import Exit
from invoke.parser import Argument

from sglkit.errors import ConfigError, SglkitError

# Short flags no task may take: `-h` is invoke's help, for every task.
RESERVED_SHORT_FLAGS = frozenset("h")


HELP_ARG = "help"

# Help strings every concern's tasks share (one spelling of the default profile's rule)
PROFILE_HELP = "profile name under profiles/ or a YAML path (default: $SGLKIT_PROFILE or cpu-dev)"
ROOT_HELP = "telemetry root (default: the profile's telemetry.root)"
LOCK_TIMEOUT_HELP = "seconds to wait for another warm of the same folder (default 0: fail)"
NODE_RANK_HELP = "this node's rank where server.nnodes > 1 (0: the leader, which serves HTTP)"
DIST_INIT_HELP = "the leader's host:port for torch.distributed (default server.dist_init_addr)"


class SglkitTask(Task):
    """invoke's Task where `-h` / `--help` after the task name always shows its help.

    Automatic short flags skip the reserved letters, and every task has a `-h, --help` flag of
    its own: invoke's core --help is only seen where no task argument wants the token, and a
    task's missing positional argument does (`invoke cache.import -h` would look for an archive
    named -h). While the flag is set, positional arguments count as given, and the task prints
    its help instead of running.
    """

    def arg_opts(self, name, default, taken_names):
        return super().arg_opts(name, default, set(taken_names) | RESERVED_SHORT_FLAGS)

    def get_arguments(self, ignore_unknown_help=None):
        args = super().get_arguments(ignore_unknown_help=ignore_unknown_help)
        help_flag = Argument(names=(HELP_ARG, "h"), kind=bool, default=False, help="show this help")
        for arg in args:
            if arg.positional:
                arg.__class__ = _Positional
                arg._help = help_flag
        return [*args, help_flag]

    def __call__(self, *args, **kwargs):
        if kwargs.pop(HELP_ARG, False):
            _print_help(self)
            return None
        return super().__call__(*args, **kwargs)


class _Positional(Argument):
    """A positional argument that counts as given while the task's --help flag is set."""

    _help: Argument

    @property
    def value(self):
        got = Argument.value.fget(self)
        if got is None and self._help.value:
            return ""
        return got

    @value.setter
    def value(self, arg):
        Argument.value.fset(self, arg)


def _print_help(t: Task) -> None:
    """What `invoke --help <task>` prints, from the collection invoke loaded (tasks.py)."""
    import sys

    from invoke import Program

    root = getattr(sys.modules.get("tasks"), "ns", None)
    names = [n for n in (root.task_names if root else ()) if root[n].body is t.body]
    if root is None or not names:
        raise Exit(f"{t.name}: see `invoke --list` and `invoke --help <task>`", code=2)
    Program(namespace=root, binary="inv[oke]", name="Invoke").run(
        ["invoke", "--help", names[0]], exit=False
    )


def task(*args, **kwargs):
    """Like invoke's @task, but a SglkitError ends the command with its one-line message, and no
    automatic short flag takes `-h` (so `invoke <task> -h` always shows the task's help)."""
    kwargs.setdefault("klass", SglkitTask)

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
    """The stdout console (sglkit.console.out): on a pipe URLs and paths are printed whole."""
    from sglkit.console import out

    return out()


def number(value, flag: str, kind=float, minimum: float = 0, default=None):
    """A flag's value as a number. Task flags default to None, never to a number: invoke casts a
    flag with a numeric default itself, and a bad value would end in its traceback. None gives
    `default`; anything else not a number >= `minimum` is a ConfigError naming the flag."""

    if value is None:
        return default
    try:
        n = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag}: expected a number, got {value!r}") from None
    if n < minimum:
        raise ConfigError(f"{flag}: expected a number >= {minimum}, got {value!r}")
    return n
