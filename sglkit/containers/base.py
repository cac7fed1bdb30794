"""The base image (Debian bookworm): pulled, or built offline from the Debian archive.

`pull_or_build` is what container.build and container.up use. Where no registry is reachable
(this CI, air-gapped sites) `debian:bookworm` cannot be pulled; we build the same thing from the
archive: `debootstrap --variant=minbase bookworm <dir> <mirror>`, tar the tree, and import it
with the docker SDK.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sglkit import logs as kitlogs
from sglkit.containers import engine
from sglkit.errors import SglkitError

BASE_IMAGE = "sglkit/base:bookworm"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"

# what the imported image gets that `docker import` alone would not give it
CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
]


def debootstrap_argv(target: str | os.PathLike, suite: str = SUITE, mirror: str = MIRROR) -> list:
    return ["debootstrap", "--variant=minbase", suite, str(target), mirror]


def tar_argv(root: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    return ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(out), "."]


def ensure(
    c=None, tag: str = BASE_IMAGE, mirror: str = MIRROR, rebuild: bool = False, console=None
) -> str:
    """Build the base image unless `tag` exists; return the image id."""
    c = c or engine.client()
    if not rebuild and engine.image_exists(c, tag):
        return c.images.get(tag).id
    return build(c, tag=tag, mirror=mirror, console=console)


def pull_or_build(c, console, offline: bool | None = None, tag: str = BASE_IMAGE) -> str:
    """The base image: present, else pulled (unless offline), else built with debootstrap.

    offline None: pull, and where no registry answers build instead (a note names the log with
    why); False: pull or fail; True: never pull.
    """
    if engine.image_exists(c, tag):
        return c.images.get(tag).id
    if not offline:
        console.print(f"[bold]base[/]: {tag} is not here yet; pulling debian:{SUITE}")
        try:
            img = c.images.pull("debian", tag=SUITE)
            repo, _, version = tag.rpartition(":")
            img.tag(repo, version)
            console.print(f"[bold]base[/]: pulled debian:{SUITE} as {tag}")
            return img.id
        except Exception as e:
            if offline is False:
                raise SglkitError(
                    f"container.base: cannot pull debian:{SUITE} "
                    f"({engine._short(e)}); run `invoke container.base --offline`"
                ) from None
            log = kitlogs.append("container", f"base: pull debian:{SUITE} failed", str(e))
            console.print(
                f"[bold]base[/]: no registry answers, so {tag} will be built from the Debian "
                f"archive with debootstrap (once; about a minute or two; details in {log})"
            )
    return build(c, tag=tag, console=console)


def build(c, tag: str = BASE_IMAGE, mirror: str = MIRROR, console=None) -> str:
    """debootstrap into a temporary folder, tar it, import it as `tag`; return the image id."""
    from sglkit.console import err

    console = console or err()
    if shutil.which("debootstrap") is None:
        raise SglkitError(
            "container.base --offline: debootstrap is not installed "
            "(apt-get install debootstrap), or load a base image and pass --tag"
        )
    if os.geteuid() != 0:
        raise SglkitError("container.base --offline: debootstrap needs root (run it with sudo)")
    repo, _, version = tag.rpartition(":")
    if not repo or "/" in version:
        repo, version = tag, "latest"
    workdir = Path(tempfile.mkdtemp(prefix="sglkit-base-"))
    try:
        root = workdir / "rootfs"
        t0 = time.monotonic()
        _debootstrap(root, mirror, console)
        console.print(f"[bold]base[/]: debootstrap done in {time.monotonic() - t0:.0f}s; packing")
        _trim(root)
        tarball = workdir / "rootfs.tar"
        subprocess.run(tar_argv(root, tarball), check=True, stdin=subprocess.DEVNULL)
        size_mb = tarball.stat().st_size / 1e6
        console.print(f"[bold]base[/]: importing {size_mb:.0f} MB as {tag}")
        labels = {engine.LABEL: "base", **engine.test_labels()}
        changes = [*CHANGES, *(f'LABEL {k}="{v}"' for k, v in labels.items())]
        c.api.import_image(src=str(tarball), repository=repo, tag=version, changes=changes)
        image = c.images.get(tag)
        console.print(f"[bold]base[/]: {tag} {image.short_id} in {time.monotonic() - t0:.0f}s")
        return image.id
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _debootstrap(root: Path, mirror: str, console) -> None:
    """Run debootstrap with a live status line (package being fetched / unpacked / configured)."""
    argv = debootstrap_argv(root, mirror=mirror)
    log: list[str] = []
    counts = {"Retrieving": 0, "Extracting": 0, "Unpacking": 0, "Configuring": 0}
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        with console.status(f"debootstrap {SUITE} from {mirror}") as status:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                log.append(line)
                words = line.split()
                if len(words) >= 2 and words[0] == "I:" and words[1] in counts:
                    counts[words[1]] += 1
                done = ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v)
                status.update(f"debootstrap {SUITE}: {done or 'resolving'} | {line[:70]}")
        rc = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()
        raise
    if rc != 0:
        tail = [ln for ln in log if ln.startswith(("E:", "W:"))] or log[-3:]
        raise SglkitError(
            f"container.base --offline: debootstrap exited {rc}: "
            f"{(tail[-1] if tail else 'no output')} (mirror {mirror})"
        )


def _trim(root: Path) -> None:
    """Drop what an image does not need: downloaded .debs and apt lists (fetched again on use)."""
    for folder in (root / "var/cache/apt/archives", root / "var/lib/apt/lists"):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and p.name not in ("lock",):
                    p.unlink()
