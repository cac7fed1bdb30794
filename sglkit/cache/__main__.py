"""python -m sglkit.cache {deepgemm,status,export,import}: the same as the invoke tasks, no invoke.

For container entrypoints and scripts; flags are those of `invoke cache.<task> --help`.
"""

from __future__ import annotations

import argparse
import json
import sys

from sglkit.cache import archive, deepgemm, status
from sglkit.cli import main_guard
from sglkit.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m sglkit.cache")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("deepgemm", help="warm the DeepGEMM cache")
    d.add_argument("--profile")
    d.add_argument("--model")
    d.add_argument("--context-length", type=int)
    d.add_argument("--launcher")
    d.add_argument("--port", type=int)
    d.add_argument("--timeout", type=float, default=3600.0)
    d.add_argument("--grace", type=float, default=10.0)
    d.add_argument("--force", action="store_true")
    d.add_argument("--lock-timeout", type=float, default=0.0)
    d.add_argument("--dry-run", action="store_true")
    d.add_argument("--jobs", help="workers, or auto (default 1: the server warms alone)")
    d.add_argument("--triton", default="auto", help="the MoE Triton step after it: auto, on, off")
    s = sub.add_parser("status", help="cache folders, sizes, markers")
    s.add_argument("--profile")
    e = sub.add_parser("export", help="pack the warmed DeepGEMM cache")
    e.add_argument("--profile")
    e.add_argument("--output")
    i = sub.add_parser("import", help="unpack an exported cache")
    i.add_argument("archive")
    i.add_argument("--profile")
    i.add_argument("--force", action="store_true")
    return ap


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "deepgemm":
        pl = deepgemm.plan(
            args.profile,
            model=args.model,
            context_length=args.context_length,
            launcher=args.launcher,
            port=args.port,
            timeout=args.timeout,
            jobs=args.jobs,
            triton=args.triton,
        )
        if args.dry_run:
            print(json.dumps(deepgemm.describe(pl), indent=2))
            return 0
        deepgemm.warm(pl, force=args.force, lock_timeout=args.lock_timeout, grace=args.grace)
    elif args.command == "status":
        print(json.dumps(status.status(args.profile), indent=2))
    elif args.command == "export":
        print(f"exported: {archive.export(args.profile, args.output)}")
    else:
        print(f"imported: {archive.import_(args.archive, args.profile, force=args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
