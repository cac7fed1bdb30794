"""container.build: assemble the build context, stream the build log live, tag, record the id.

`for_profile` is the whole of container.build (and of container.up's build of a missing image):
the profile's variant and tag, the base image first for the cpu variant, the record.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sglkit import paths
from sglkit.containers import base, engine, render
from sglkit.errors import ConfigError, SglkitError
from sglkit.fsutil import atomic_write_json
from sglkit.profile import Profile

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
CA_ENV = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


def dev_ids() -> tuple[int, int]:
    """UID/GID of the image's dev user: the invoking user (under sudo, the sudo caller).

    root (0) maps to 1000: the image keeps its own root, and storage is chowned to 1000.
    """
    uid = int(os.environ.get("SUDO_UID") or os.getuid())
    gid = int(os.environ.get("SUDO_GID") or os.getgid())
    if uid == 0:
        return 1000, 1000
    return uid, gid


def ca_bundle(explicit: str | None = None) -> Path | None:
    """Extra CA bundle for the build (TLS-intercepting proxies): --ca-bundle, else $PIP_CERT..."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"--ca-bundle: {p} is not a file")
        return p
    for var in CA_ENV:
        v = os.environ.get(var)
        if v and Path(v).is_file():
            return Path(v)
    return None


def parse_build_args(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--build-arg: {item!r} is not NAME=VALUE")
        out[name] = value
    return out


def build_args(
    variant: str,
    extra: dict[str, str] | None = None,
    base_image: str | None = None,
    user: str | None = None,
):
    uid, gid = dev_ids()
    args = {"DEV_UID": str(uid), "DEV_GID": str(gid)}
    if user:
        args["DEV_USER"] = user
    if base_image:
        args["BASE_IMAGE"] = base_image
    args.update(extra or {})
    if variant in render.GPU_VARIANTS and not args.get("BASE_IMAGE"):
        raise ConfigError(
            f"container.base_image: variant {variant} needs a CUDA + SGLang base image for "
            f"{render.PLATFORMS[variant][0]} (set container.base_image in the profile or pass "
            "--build-arg BASE_IMAGE=...)"
        )
    return args


def make_context(dest: Path, variant: str, ca: Path | None) -> Path:
    """Write the build context into `dest`: Dockerfile, requirements.txt, build-ca/, the kit."""
    home = paths.home()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Dockerfile").write_text(render.dockerfile(variant), encoding="utf-8")
    (dest / "requirements.txt").write_text(render.requirements(), encoding="utf-8")
    (dest / "build-ca").mkdir()
    if ca:
        shutil.copyfile(ca, dest / "build-ca" / "sglkit-build-ca.crt")
    for f in render.KIT_FILES:
        shutil.copyfile(home / f, dest / f)
    for d in render.KIT_DIRS:
        src = home / d
        if src.is_dir():
            shutil.copytree(src, dest / d, ignore=_IGNORE, symlinks=False)
        else:
            (dest / d).mkdir()
    return dest


def build(
    c,
    *,
    variant: str,
    tag: str,
    extra_args: dict[str, str] | None = None,
    base_image: str | None = None,
    ca: Path | None = None,
    labels: dict[str, str] | None = None,
    no_cache: bool = False,
    on_line: Callable[[str], None] = print,
    user: str | None = None,
) -> Any:
    """Build `variant` as `tag`, calling on_line for each log line; return the image."""
    render.check_variant(variant)
    args = build_args(variant, extra_args, base_image, user)
    platform = render.PLATFORMS[variant][0]
    all_labels = {
        engine.LABEL: "image",
        engine.LABEL_VARIANT: variant,
        **engine.test_labels(),
        **(labels or {}),
    }
    with tempfile.TemporaryDirectory(prefix="sglkit-build-") as tmp:
        ctx = make_context(Path(tmp) / "ctx", variant, ca)
        t0 = time.monotonic()
        try:
            chunks = c.api.build(
                path=str(ctx),
                tag=tag,
                buildargs=args,
                labels=all_labels,
                platform=platform,
                rm=True,
                forcerm=True,  # intermediate containers go, even when a step fails
                nocache=no_cache,
                decode=True,
                pull=False,
            )
            for line in engine.stream_lines(chunks):
                on_line(line)
        except engine.BuildFailed as e:
            raise SglkitError(f"container.build: {variant} build failed: {e}") from None
        except Exception as e:
            if isinstance(e, SglkitError):
                raise
            raise SglkitError(f"container.build: {variant}: {engine._short(e)}") from None
    image = c.images.get(tag)
    on_line(f"built {tag} {image.short_id} in {time.monotonic() - t0:.0f}s")
    return image


def record(storage: Path, variant: str, tag: str, image_id: str, args: dict[str, str]) -> Path:
    """<storage>/images/<variant>.json: what was built, when, with which build args."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return atomic_write_json(
        storage / "images" / f"{variant}.json",
        {"variant": variant, "tag": tag, "id": image_id, "built_at": now, "build_args": args},
    )


def default_tag(profile: Profile, variant: str) -> str:
    """The profile's container.image for its own variant, else sglkit/dev:<variant>."""
    if variant == profile.container["variant"]:
        return profile.container["image"]
    return f"sglkit/dev:{variant}"


def for_profile(
    client,
    profile: Profile,
    variant: str | None = None,
    tag: str | None = None,
    build_arg=(),
    ca_bundle_path: str | None = None,
    no_cache: bool = False,
    console=None,
) -> Any:
    """Build a profile's image (variant and tag default to its container section), streaming
    the log to `console`, and record it under container.storage; return the image."""
    if console is None:
        from sglkit.console import err

        console = err()
    variant = render.check_variant(variant or profile.container["variant"])
    tag = tag or default_tag(profile, variant)
    extra = parse_build_args(build_arg)
    base_image = profile.container["base_image"] if variant in render.GPU_VARIANTS else None
    if variant == "cpu" and "BASE_IMAGE" not in extra:
        base.pull_or_build(client, console)
    user = profile.container["user"]
    args = build_args(variant, extra, base_image, user)
    ca = ca_bundle(ca_bundle_path)
    console.print(
        f"[bold]build[/]: {variant} -> {tag} (dev user {args['DEV_USER']} uid {args['DEV_UID']}"
        f"{', extra CA ' + str(ca) if ca else ''})"
    )
    image = build(
        client,
        variant=variant,
        tag=tag,
        extra_args=extra,
        base_image=base_image,
        ca=ca,
        no_cache=no_cache,
        on_line=lambda line: console.print(f"  {line}", markup=False, style="dim"),
        user=user,
    )
    rec = record(Path(profile.container["storage"]), variant, tag, image.id, args)
    console.print(f"[bold]build[/]: {tag} = {image.id} (recorded in {rec})")
    return image
