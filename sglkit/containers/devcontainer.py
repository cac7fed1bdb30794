"""devcontainer.json from a profile, checked with the reference devcontainer CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sglkit import paths
from sglkit.containers import lifecycle, render
from sglkit.errors import SglkitError
from sglkit.fsutil import atomic_write_text
from sglkit.profile import Profile


def plan(profile: Profile, workspace: Path | None = None, gpus: bool | None = None) -> dict:
    """What devcontainer.json says: the same mounts, ports and environment as container.up."""
    gpus = profile.container["variant"] in render.GPU_VARIANTS if gpus is None else gpus
    ws = (workspace or paths.home()).resolve()
    p = lifecycle.plan(profile, run_id="devcontainer", gpus=gpus)
    run_args = [f"--shm-size={p.shm_size}", "--label", "org.sglkit.managed=devcontainer"]
    for cport, hport in sorted(p.ports.items()):
        run_args += ["-p", f"127.0.0.1:{hport}:{cport}"]
    if gpus:
        run_args += ["--gpus", "all"]
    env = {k: v for k, v in p.environment.items() if k != "SGLKIT_RUN_ID"}
    return {
        "profile_name": profile.name,
        "variant": p.variant,
        "image": p.image,
        "user": profile.container["user"],
        "workspace": str(ws),
        "mounts": p.mounts,
        "run_args": run_args,
        "environment": env,
        # the storage step, on the host, before the container is created: `python3` found on
        # PATH and paths under the opened folder as ${localWorkspaceFolder}, so the file works
        # for anyone who opens the folder (not only for the interpreter that rendered it)
        "initialize": [
            "env",
            f"PYTHONPATH={portable(paths.home(), ws)}",
            "python3",
            "-m",
            "sglkit.containers",
            "storage",
            "--profile",
            portable(profile.path, ws),
        ],
    }


WORKSPACE_VAR = "${localWorkspaceFolder}"


def portable(path: Path, workspace: Path) -> str:
    """`path` as devcontainer.json should name it: under the opened folder through
    ${localWorkspaceFolder} (the CLI and VS Code substitute it), else absolute."""
    path = Path(path).resolve()
    try:
        rel = path.relative_to(workspace)
    except ValueError:
        return str(path)
    return WORKSPACE_VAR if rel == Path(".") else f"{WORKSPACE_VAR}/{rel.as_posix()}"


def workspace_of(output: Path) -> Path:
    """The folder a devcontainer.json serves: the parent of its `.devcontainer/` folder, else
    the kit's checkout."""
    out = Path(output).resolve()
    return out.parent.parent if out.parent.name == ".devcontainer" else paths.home().resolve()


def write(profile: Profile, output: Path, workspace: Path | None = None) -> Path:
    text = render.devcontainer(plan(profile, workspace or workspace_of(output)))
    return atomic_write_text(output, text)


# what the CLI must read back exactly as we wrote it
CHECKED_KEYS = (
    "image",
    "mounts",
    "runArgs",
    "containerEnv",
    "remoteUser",
    "overrideCommand",
    "initializeCommand",
    "postCreateCommand",
)


def check(path: Path, workspace: Path | None = None) -> dict:
    """The CLI parses the file (it is lenient) and reads back every key we rely on unchanged."""
    try:
        ours = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as e:
        raise SglkitError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise SglkitError(f"{path}: cannot read: {e.strerror or e}") from None
    workspace = (workspace or workspace_of(path)).resolve()
    theirs = read_configuration(path, workspace)["configuration"]
    # the CLI substitutes ${localWorkspaceFolder}: compare with what it should have made of it
    ours = json.loads(json.dumps(ours).replace(WORKSPACE_VAR, str(workspace)))
    for key in CHECKED_KEYS:
        if key in ours and theirs.get(key) != ours[key]:
            raise SglkitError(
                f"devcontainer read-configuration: {path}: {key} reads back as "
                f"{json.dumps(theirs.get(key))[:120]}, not as written"
            )
    return theirs


def read_configuration(path: Path, workspace: Path | None = None, timeout: float = 120) -> dict:
    """Run `devcontainer read-configuration` on the file; SglkitError with its message if bad."""
    exe = shutil.which("devcontainer")
    if exe is None:
        raise SglkitError(
            "--check: the devcontainer CLI is not installed (npm install -g @devcontainers/cli)"
        )
    folder = (workspace or workspace_of(path)).resolve()
    argv = [
        exe,
        "read-configuration",
        "--workspace-folder",
        str(folder),
        "--config",
        str(Path(path).resolve()),
        "--log-format",
        "json",
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        detail = _last_message(proc.stderr) or _last_message(proc.stdout) or "no output"
        raise SglkitError(f"devcontainer read-configuration rejected {path}: {detail}")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise SglkitError(
            f"devcontainer read-configuration: unreadable output for {path}"
        ) from None


def _last_message(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            obj: Any = json.loads(line)
        except ValueError:
            return line[:300]
        if isinstance(obj, dict) and obj.get("text"):
            return str(obj["text"]).strip().splitlines()[0][:300]
    return ""
