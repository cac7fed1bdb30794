"""cache.bytecode against a real interpreter: a virtual environment made in the test's folder
(`python -m venv --without-pip`), whose site-packages holds a small package named `sglang`, a
neighbour package, and a file that is not valid Python. The profile's launcher is that
environment's Python, so the task asks it where `sglang` is and runs its compileall there; nothing
outside the test's folder is read for packages or written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = ["sglang/__init__.py", "sglang/srt/__init__.py", "sglang/srt/server.py",
           "neighbour/__init__.py"]  # fmt: skip


def make_env(tmp_path: Path, with_sglang: bool = True) -> Path:
    """A venv without pip; returns its Python."""
    root = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())  # fmt: skip
    if with_sglang:
        for rel in MODULES:
            (site / rel).parent.mkdir(parents=True, exist_ok=True)
            (site / rel).write_text(f"NAME = {rel!r}\n")
        (site / "sglang" / "template.py").write_text("def {{ name }}(:\n")  # not Python
    return python


def write_profile(tmp_path: Path, launcher: list[str]) -> Path:
    data = {
        "name": "bytecode-test",
        "model": {"path": "Qwen/x"},
        "server": {"launcher": launcher, "tp": 1, "host": "127.0.0.1", "port": 31999},
        "cache": {"root": str(tmp_path / "cache")},
    }
    path = tmp_path / "bytecode-test.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def bytecode(profile: Path) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "invoke", "cache.bytecode", "-p", str(profile)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    return r.returncode, r.stdout + r.stderr


def site_of(python: Path) -> Path:
    return Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())  # fmt: skip


def compiled(site: Path) -> set[str]:
    """The modules that have bytecode: 'pkg/mod.py' for pkg/__pycache__/mod.<tag>.pyc."""
    out = set()
    for pyc in site.rglob("__pycache__/*.pyc"):
        out.add(str((pyc.parent.parent / (pyc.name.split(".")[0] + ".py")).relative_to(site)))
    return out


def test_the_site_folder_of_the_servers_python_is_compiled_once(tmp_path):
    python = make_env(tmp_path)
    site = site_of(python)
    profile = write_profile(tmp_path, [str(python), "-m", "sglang.launch_server"])
    assert compiled(site) == set()

    rc, out = bytecode(profile)
    assert rc == 0, out
    assert f"bytecode: compiling {site} with {python}" in out, out
    assert "bytecode: 4 modules compiled in" in out, out
    assert "some files did not compile" in out, out  # template.py
    assert compiled(site) == set(MODULES)

    rc, out = bytecode(profile)  # current bytecode is left alone
    assert rc == 0, out
    assert "bytecode: 0 modules compiled in" in out and "(4 up to date)" in out, out


def test_without_sglang_there_is_nothing_to_do(tmp_path):
    python = make_env(tmp_path, with_sglang=False)
    profile = write_profile(tmp_path, [str(python), "-m", "sglang.launch_server"])
    rc, out = bytecode(profile)
    assert rc == 0, out
    assert f"bytecode: none of sglang, torch is importable by {python}; nothing to do" in out
    assert compiled(site_of(python)) == set()


def test_a_launcher_python_not_on_path_is_one_line_exit_2(tmp_path):
    profile = write_profile(tmp_path, ["python3-sglkit-missing", "-m", "sglang.launch_server"])
    rc, out = bytecode(profile)
    assert rc == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    assert "server.launcher: 'python3-sglkit-missing' is not on PATH" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="root's view of another user's folder")
def test_root_leaves_another_users_site_folder_alone(tmp_path):
    python = make_env(tmp_path)
    site = site_of(python)
    os.chown(site, 12345, 12345)
    profile = write_profile(tmp_path, [str(python), "-m", "sglang.launch_server"])
    rc, out = bytecode(profile)
    assert rc == 0, out
    assert f"bytecode: {site} belongs to uid 12345; not compiled as root" in out, out
    assert compiled(site) == set()
