"""cache.bytecode: byte-compile the Python packages a server imports, before it starts.

Every SGLang start imports SGLang twice (the launcher, then the scheduler process). Where its
site folder holds no bytecode (installed with `pip --no-compile`, and PYTHONDONTWRITEBYTECODE set
so that no import writes any), each import compiles every module from source again. On the
device (one H100, SGLang 0.5.16 installed that way) importing `sglang.srt.entrypoints.http_server`
took 25.7 s and 20.4 s; after `python3 -m compileall -q -j 16` over the site folder (2.5 s),
15.9 s and 16.5 s (docs/serving-start.md).

The folders are the ones holding the packages in MODULES, as the server's own interpreter finds
them with the server's environment: the launcher's Python where the launcher is one (`python3 -m
sglang.launch_server`), else this one. compileall skips a module whose bytecode is current, so a
second run compiles nothing. A folder this user cannot write is named and left alone: bytecode for
it belongs where it was installed (the image build does it, containers/Dockerfile.j2); so is, for
root, a folder another user owns (root's .pyc files would block that user's pip later).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sglkit.errors import ConfigError, SglkitError
from sglkit.server import spec as server_spec

# the packages a server start imports, whose site folders get compiled (their neighbours too:
# a site folder holds a package's dependencies)
MODULES = ("sglang", "torch")

_PROBE = """\
import importlib.util, json, os, sys
out = {}
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        out[name] = os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))
print(json.dumps({"python": sys.executable, "folders": out}))
"""


@dataclass
class Result:
    python: str
    folders: list[Path] = field(default_factory=list)  # compiled
    unwritable: list[Path] = field(default_factory=list)
    compiled: int = 0  # .pyc files added or rewritten
    seconds: float = 0.0
    errors: bool = False  # some file did not compile (it is then compiled at import, as before)


def interpreter(spec: server_spec.ServerSpec) -> str:
    """The Python the server runs: the launcher's where it is a Python, else this one."""
    first = spec.launcher[0] if spec.launcher else ""
    if Path(first).name.startswith("python"):
        found = shutil.which(first)
        if found is None:
            raise ConfigError(f"server.launcher: {first!r} is not on PATH")
        return found
    return sys.executable


def find_folders(python: str, env: dict[str, str]) -> tuple[str, dict[str, Path]]:
    """(sys.executable there, {module: the site folder holding it}) as `python` sees them."""
    try:
        r = subprocess.run([python, "-c", _PROBE, *MODULES], env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SglkitError(
            f"cache.bytecode: cannot ask {python} where its packages are ({e})"
        ) from None
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise SglkitError(f"cache.bytecode: {python} failed to list its packages: {tail}")
    data = json.loads(r.stdout.strip().splitlines()[-1])
    return data["python"], {k: Path(v) for k, v in data["folders"].items()}


def pyc_stamps(folder: Path) -> dict[str, int]:
    """Every .pyc under `folder` -> its mtime in ns: what compileall adds or rewrites."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        if os.path.basename(root) != "__pycache__":
            continue
        for f in files:
            if f.endswith(".pyc"):
                p = os.path.join(root, f)
                with contextlib.suppress(OSError):  # removed meanwhile
                    out[p] = os.stat(p).st_mtime_ns
    return out


def _foreign_owner(folder: Path) -> int | None:
    """The owner's uid where this process runs as root and the folder is another user's."""
    if os.geteuid() != 0:
        return None
    try:
        uid = folder.stat().st_uid
    except OSError:
        return None
    return uid if uid != 0 else None


def run(spec: server_spec.ServerSpec, say=print, workers: int = 0) -> Result:
    """Byte-compile the site folders of MODULES for the server's interpreter."""
    env = spec.process_environment()
    python, found = find_folders(interpreter(spec), env)
    res = Result(python=python)
    folders = list(dict.fromkeys(found.values()))
    if not folders:
        say(f"bytecode: none of {', '.join(MODULES)} is importable by {python}; nothing to do")
        return res
    for folder in folders:
        owner = _foreign_owner(folder)
        if owner is not None:  # root may write anywhere, but its files would block the owner's
            res.unwritable.append(folder)  # pip (upgrade, uninstall) later
            say(f"bytecode: {folder} belongs to uid {owner}; not compiled as root (run "
                "cache.bytecode as that user)")  # fmt: skip
        elif os.access(folder, os.W_OK):
            res.folders.append(folder)
        else:
            res.unwritable.append(folder)
            say(f"bytecode: {folder} is not writable here; left as it is (compile it where it "
                "was installed, as the image build does)")  # fmt: skip
    if not res.folders:
        return res
    say(f"bytecode: compiling {', '.join(map(str, res.folders))} with {python}")
    before = {}
    for folder in res.folders:
        before.update(pyc_stamps(folder))
    t0 = time.perf_counter()
    # -j 0: one process per core; errors (a file that is not valid Python for this interpreter,
    # such as a template) leave that file to be compiled at import, as without this step
    r = subprocess.run([python, "-m", "compileall", "-q", "-j", str(workers),
                        *map(str, res.folders)], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)  # fmt: skip
    res.seconds = time.perf_counter() - t0
    res.errors = r.returncode != 0
    after = {}
    for folder in res.folders:
        after.update(pyc_stamps(folder))
    res.compiled = sum(1 for p, t in after.items() if before.get(p) != t)
    note = "; some files did not compile (they compile at import, as before)" if res.errors else ""
    say(f"bytecode: {res.compiled} modules compiled in {res.seconds:.1f} s "
        f"({len(after)} up to date){note}")  # fmt: skip
    return res
