"""Loading the kit's tasks (what every `invoke ...` does first) imports no torch: torch's import
takes seconds on a GPU host, and `server.up` or `cache.status` must not pay it. Checked with a
stand-in `torch` package first on the path, which a GPU host's real torch cannot shadow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_loading_the_tasks_imports_no_torch(tmp_path):
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    probe = "import sys, tasks; print('torch' in sys.modules, 'tasks' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    r = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"], r.stdout + r.stderr
