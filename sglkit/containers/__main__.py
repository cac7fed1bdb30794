"""python -m sglkit.containers storage --profile P: the storage step without invoke.

devcontainer.json's initializeCommand runs it on the host before the container is created.
"""

from __future__ import annotations

import argparse

from sglkit import profile as profiles
from sglkit.cli import PROFILE_HELP, main_guard
from sglkit.containers import build, lifecycle, render


@main_guard
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sglkit.containers")
    sub = ap.add_subparsers(dest="command", required=True)
    st = sub.add_parser("storage", help="create the host folders the container mounts")
    st.add_argument("--profile", help=PROFILE_HELP)
    args = ap.parse_args(argv)
    p = profiles.load(args.profile)
    uid, gid = build.dev_ids()
    dirs = lifecycle.host_dirs(p)
    lifecycle.prepare_storage(dirs, uid, gid)
    for kind, d in dirs.items():
        print(f"{kind:<10} {d} -> {render.MOUNT_POINTS[kind]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
