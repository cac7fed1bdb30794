"""cache.deepgemm --jobs end to end on CPU: `python -m sglkit.cache deepgemm` (and `invoke`) with
SGLang's compile utilities replaced by tests/fixtures/standin_deepgemm (on PYTHONPATH) and the
server by tests/fixtures/standin_sglang_server.py, whose warm-up request sweeps the shapes in
$STANDIN_DG_SWEEP through the same stand-in, as SGLang's server does.

The stand-in writes one kernel file per (shape, bit length of M) the way DeepGEMM does (temporary
file under tmp/, renamed into cache/kernel.<name>/kernel.cubin beside its kernel.cu, as DeepGEMM
0.1.4 leaves it on the device). For M in 1..16384 that is 15 kernels, 30 files, a shape, so the
model's two planned shapes give exactly 60 files.

Every run carries a token of its own in its environment ($SGLKIT_TEST_RUN). Children inherit the
environment they start with, whoever starts them: the compile workers (multiprocessing spawn
runs `python -c "from multiprocessing.spawn import spawn_main..."`), its resource tracker and the
server's process group. "Nothing left" means no live process in /proc carries the token; each
test waits for that with a deadline, and kills by pid whatever still carries it at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from sglkit.cache import store
from sglkit.cache.deepgemm_parallel import kernel_files
from sglkit.proc import group_members

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "fixtures" / "standin_sglang_server.py"
STANDIN_DG = REPO / "tests" / "fixtures" / "standin_deepgemm"
CONFIG = REPO / "profiles" / "models" / "Qwen3-MoE-FP8-2L" / "config.json"
MARK = "SGLKIT_TEST_RUN"
KIND = "GEMM_NT_F8F8BF16"
# the plan of CONFIG at TP 1: qkv_proj and o_proj (tests/unit/test_gemm_shapes.py)
PLANNED = [[KIND, 9216, 4096, 1], [KIND, 4096, 8192, 1]]
LABELS = [f"{KIND} N=9216 K=4096", f"{KIND} N=4096 K=8192"]
EXTRA = [KIND, 1024, 4096, 1]  # a shape the plan lacks
BITS = range(1, (16384).bit_length() + 1)  # the stand-in's kernels for M 1..16384: b1..b15


def expected_files(shapes) -> set[str]:
    return {
        f"cache/kernel.{kind.lower()}.{n}x{k}x{g}.b{b}/{name}"
        for kind, n, k, g in shapes
        for b in BITS
        for name in ("kernel.cu", "kernel.cubin")
    }


# ---- the processes of one run --------------------------------------------------------------------


def marked(token: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment carries MARK=token."""
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        found.append((int(entry), cmd))
    return found


def compile_workers(procs: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, cmd in procs if "multiprocessing.spawn" in cmd]


def assert_nothing_left(token: str, wait_for, timeout: float = 30) -> None:
    try:
        wait_for(lambda: not marked(token), timeout=timeout, what="the run's processes to end")
    except TimeoutError:
        left = marked(token)
        pytest.fail(f"left running: compile workers {compile_workers(left)}; all: {left}")


@pytest.fixture
def token():
    """A token for one run's environment; what still carries it at teardown is killed by pid."""
    t = uuid.uuid4().hex
    yield t
    for pid, _ in marked(t):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_scan_finds_a_marked_process_and_only_while_it_lives(token, wait_for):
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, env={**os.environ, MARK: token},
    )  # fmt: skip
    try:
        found = wait_for(lambda: marked(token), timeout=30, what="the marked child")
        assert [pid for pid, _ in found] == [child.pid]
        assert marked(uuid.uuid4().hex) == []
    finally:
        child.stdin.close()  # it reads to the end, then exits
        child.wait(timeout=30)
    assert_nothing_left(token, wait_for)


# ---- running the warm ----------------------------------------------------------------------------


def write_profile(tmp_path: Path, port: int) -> Path:
    data = {
        "name": "standin-jobs",
        "model": {"path": "Qwen/x", "config": str(CONFIG)},
        "server": {
            "launcher": [sys.executable, str(STANDIN), "--standin-mode", "ready",
                         "--standin-ready-after", "0.5"],
            "tp": 1,
            "chunked_prefill_size": 2048,
            "context_length": 4096,
            "host": "127.0.0.1",
            "port": port,
        },
        "cache": {"root": str(tmp_path / "cache")},
    }  # fmt: skip
    path = tmp_path / "standin-jobs.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def env_for(token: str, *, standin: bool = True, sweep=PLANNED, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("SGLKIT_CACHE_ROOT", "SGLANG_JIT_DEEPGEMM_FAST_WARMUP", "STANDIN_DG_SWEEP",
                "STANDIN_DG_CRASH", "STANDIN_DG_RAISE", "STANDIN_DG_BLOCK",
                "STANDIN_DG_OFF", "STANDIN_DG_CUT"):  # fmt: skip
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN_DG), str(REPO)] if standin else [str(REPO)])
    if sweep is not None:
        env["STANDIN_DG_SWEEP"] = json.dumps(sweep)
    env[MARK] = token
    env.update(extra)
    return env


def warm(profile: Path, *args: str, env: dict[str, str], invoke: bool = False) -> tuple[int, str]:
    """Exit status and output (stdout and stderr as they came). The output goes to a file, not a
    pipe: a worker left running would hold a pipe open, and the test would wait for it instead
    of failing at once on the process check."""
    cmd = (["invoke", "cache.deepgemm"] if invoke
           else [sys.executable, "-m", "sglkit.cache", "deepgemm"])  # fmt: skip
    log = profile.parent / f"out-{uuid.uuid4().hex[:8]}.txt"
    with open(log, "w") as f:
        r = subprocess.run(
            [*cmd, "--profile", str(profile), "--grace", "3", *args],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
            timeout=180,
        )  # fmt: skip
    return r.returncode, log.read_text()


def server_group(out: str) -> int:
    m = re.search(r"process group (\d+)", out)
    assert m, f"no server started:\n{out}"
    return int(m.group(1))


def error_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("error:")]


def assert_no_partial_entries(folder: Path) -> None:
    """No temporary file, and every kernel folder holds its whole file."""
    tmp = folder / "tmp"
    assert not tmp.exists() or list(tmp.rglob("*")) == []
    cache = folder / "cache"
    for d in cache.iterdir() if cache.is_dir() else ():
        assert d.is_dir() and sorted(p.name for p in d.iterdir()) == [
            "kernel.cu",
            "kernel.cubin",
        ], d
        assert (d / "kernel.cubin").stat().st_size == 512, d


@pytest.fixture
def setup(tmp_path, free_port, token):
    profile = write_profile(tmp_path, free_port())
    return profile, tmp_path / "cache" / "deepgemm", token


# ---- (a) complete --------------------------------------------------------------------------------


def test_complete_parallel_warm_is_verified_by_the_server(setup, wait_for):
    profile, folder, token = setup
    rc, out = warm(profile, "--jobs", "3", env=env_for(token))
    assert rc == 0, out
    assert "verified: the server swept 2 shapes on this cache and compiled nothing new (60 files)" \
        in out  # fmt: skip
    # the workers compiled first, the server only checked
    assert out.index("parallel compile: 60 kernel files") < out.index("server pid")
    assert "on 3 workers" in out
    marker = store.read_marker(folder)
    assert marker is not None and marker["kind"] == "deepgemm"
    par = marker["parallel"]
    assert par["verified"] is True and par["server_added"] == 0
    assert par["swept_shapes"] == 2 and par["unplanned_shapes"] == []
    assert par["jobs"] == 3 and par["shapes"] == LABELS and par["files"] == 60
    assert par["cut"] == []
    assert par["m_values"] == 16384 and par["chunked_prefill_size"] == 2048
    assert kernel_files(folder) == expected_files(PLANNED)
    assert_no_partial_entries(folder)
    pgid = server_group(out)
    wait_for(lambda: not group_members(pgid), timeout=30, what=f"process group {pgid} to end")
    assert_nothing_left(token, wait_for)


def test_complete_parallel_warm_through_invoke(setup, wait_for):
    profile, folder, token = setup
    rc, out = warm(profile, "--jobs", "2", env=env_for(token), invoke=True)
    assert rc == 0, out
    assert "verified: the server swept 2 shapes" in out
    par = store.read_marker(folder)["parallel"]
    assert par["verified"] is True and par["server_added"] == 0 and par["jobs"] == 2
    assert kernel_files(folder) == expected_files(PLANNED)
    assert_nothing_left(token, wait_for)


# ---- (b) a shape the plan lacks ------------------------------------------------------------------


def test_a_shape_the_plan_lacks_is_named_and_the_marker_says_unverified(setup, wait_for):
    profile, folder, token = setup
    rc, out = warm(profile, "--jobs", "2", env=env_for(token, sweep=[*PLANNED, EXTRA]))
    assert rc == 0, out
    incomplete = [ln for ln in out.splitlines() if "incomplete:" in ln]
    assert len(incomplete) == 1, out
    assert "the server compiled 30 more kernel files" in incomplete[0]
    assert f"shapes not in the plan: {KIND} N=1024 K=4096 groups=1" in incomplete[0]
    assert "verified:" not in out
    par = store.read_marker(folder)["parallel"]
    assert par["verified"] is False and par["server_added"] == 30
    assert par["unplanned_shapes"] == [f"{KIND} N=1024 K=4096 groups=1"]
    assert par["swept_shapes"] == 3
    # the server's own sweep completed the cache
    assert kernel_files(folder) == expected_files([*PLANNED, EXTRA])
    assert_nothing_left(token, wait_for)


def test_a_slice_sglang_cuts_for_gpu_memory_is_named_and_the_server_compiles_the_rest(
    setup, wait_for
):
    profile, folder, token = setup
    # the workers of N=9216 stop at M=4096: the kernels of M 8192-16383 (b14, b15) are missing
    rc, out = warm(profile, "--jobs", "2", env=env_for(token, STANDIN_DG_CUT="9216:4096"))
    assert rc == 0, out
    cut = [ln for ln in out.splitlines() if "SGLang cut" in ln and "slices short" in ln]
    assert len(cut) == 1, out
    assert f"{LABELS[0]} M " in cut[0] and "at M=4096" in cut[0], cut[0]
    assert f"{LABELS[1]} M " not in cut[0], cut[0]
    assert "the server compiled 4 more kernel files" in out, out
    par = store.read_marker(folder)["parallel"]
    assert par["verified"] is False and par["server_added"] == 4
    assert par["cut"] and all(c.startswith(LABELS[0]) and c.endswith("at M=4096")
                              for c in par["cut"])  # fmt: skip
    # the slices of N=9216 that SGLang warned about but left whole are not called cut
    warned = [ln for ln in out.splitlines() if re.search(r"\] GEMM_NT_F8F8BF16 N=9216 ", ln)]
    whole = [ln for ln in warned if "SGLang cut" not in ln]
    assert whole and all(int(re.search(r"M \d+-(\d+) ", ln).group(1)) <= 4096 for ln in whole)
    assert kernel_files(folder) == expected_files(PLANNED)  # the server's sweep completed it
    assert_nothing_left(token, wait_for)


@pytest.mark.parametrize(
    ("sweep", "says"),
    [([], "unchecked: the server's log shows no DeepGEMM sweep"),
     (PLANNED[:1], f"unchecked: the server swept 1 shapes but not the planned {LABELS[1]}")],
    ids=["no-sweep-lines", "a-planned-shape-unswept"],
)  # fmt: skip
def test_a_check_that_did_not_sweep_every_planned_shape_is_not_called_verified(
    setup, wait_for, sweep, says
):
    """Nothing added proves nothing where the server did not sweep a planned shape (its log
    level hid the lines, or the warm-up never reached that layer)."""
    profile, folder, token = setup
    rc, out = warm(profile, "--jobs", "2", env=env_for(token, sweep=sweep))
    assert rc == 0, out
    assert says in out, out
    assert "verified:" not in out
    par = store.read_marker(folder)["parallel"]
    assert par["verified"] is False and par["server_added"] == 0
    assert par["unswept_shapes"] == [lb for lb, sh in zip(LABELS, PLANNED, strict=True)
                                     if sh not in sweep]  # fmt: skip
    assert_nothing_left(token, wait_for)


# ---- (c), (d) a worker that dies or raises -------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "says"),
    [({"STANDIN_DG_CRASH": "4096"}, ("a compile worker died", "no marker written")),
     ({"STANDIN_DG_RAISE": "4096"}, ("RuntimeError: stand-in compile error for N=4096",))],
    ids=["dies", "raises"],
)  # fmt: skip
def test_a_worker_that_dies_or_raises_fails_the_warm_in_one_line_and_leaves_nothing_behind(
    setup, wait_for, fault, says
):
    profile, folder, token = setup
    rc, out = warm(profile, "--jobs", "2", env=env_for(token, **fault))
    assert rc == 1, out
    errors = error_lines(out)
    assert len(errors) == 1, out
    assert all(part in errors[0] for part in says), errors[0]
    assert "Traceback" not in out
    if "STANDIN_DG_CRASH" in fault:
        # the dead worker left a temporary file and a kernel folder without its binary; removed
        assert re.search(r"removed \d+ partial entries", out), out
    assert store.read_marker(folder) is None
    assert_no_partial_entries(folder)
    assert "server pid" not in out  # no server after a failed compile
    assert_nothing_left(token, wait_for)


# ---- (e) bad --jobs ------------------------------------------------------------------------------


@pytest.mark.parametrize("invoke", [False, True], ids=["python-m", "invoke"])
@pytest.mark.parametrize("value", ["0", "x", "-2"])
def test_bad_jobs_is_one_line_exit_2_and_starts_nothing(setup, wait_for, value, invoke):
    profile, folder, token = setup
    rc, out = warm(profile, f"--jobs={value}", env=env_for(token), invoke=invoke)
    assert rc == 2, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--jobs" in lines[0], out
    assert not folder.parent.exists()  # not even the cache root
    assert_nothing_left(token, wait_for)


# ---- (f) --dry-run -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "jobs"), [(["--jobs", "3"], 3), (["--jobs", "auto"], "auto"), ([], 1)]
)
def test_dry_run_shows_the_shapes_and_the_workers(setup, args, jobs):
    profile, folder, token = setup
    rc, out = warm(profile, "--dry-run", *args, env=env_for(token))
    assert rc == 0, out
    plan = json.loads(out)
    assert plan["shapes"] == LABELS
    assert plan["jobs"] == jobs
    assert not folder.exists()


# ---- (g) no parallel compile ---------------------------------------------------------------------


def test_without_sglang_the_parallel_compile_is_skipped_and_the_server_warms(setup, wait_for):
    if find_spec("sglang") is not None or find_spec("deep_gemm") is not None:
        pytest.skip("sglang or deep_gemm is importable here: the parallel compile would run")
    profile, folder, token = setup
    rc, out = warm(profile, "--jobs", "2", env=env_for(token, standin=False, sweep=None))
    assert rc == 0, out
    assert ("parallel compile: skipped (sglang and deep_gemm not importable here); "
            "the server warms alone") in out  # fmt: skip
    assert "verified:" not in out and "incomplete:" not in out
    marker = store.read_marker(folder)
    assert marker is not None and "parallel" not in marker
    # the stand-in server "compiled" its one file into the cache
    assert kernel_files(folder) == {"cache/kernel.standin.cubin"}
    assert_nothing_left(token, wait_for)


def test_where_sglang_has_deepgemm_off_the_server_warms_alone(setup, wait_for):
    """SGLang turns DeepGEMM off on a GPU older than sm90 (its compile routine then has no
    deep_gemm to call): the workers only ask, and the server warms as with --jobs 1."""
    profile, folder, token = setup
    rc, out = warm(profile, "--jobs", "2", env=env_for(token, STANDIN_DG_OFF="1"))
    assert rc == 0, out
    assert "parallel compile: skipped (SGLang has DeepGEMM off here" in out, out
    assert "slices of" not in out and "verified:" not in out
    marker = store.read_marker(folder)
    assert marker is not None and "parallel" not in marker
    assert kernel_files(folder) == expected_files(PLANNED)  # the server's sweep, alone
    assert_nothing_left(token, wait_for)


def test_jobs_1_lets_the_server_warm_alone(setup, wait_for):
    profile, folder, token = setup
    rc, out = warm(profile, "--jobs", "1", env=env_for(token))
    assert rc == 0, out
    assert "parallel compile" not in out and "verified:" not in out
    marker = store.read_marker(folder)
    assert marker is not None and "parallel" not in marker
    # the server's own sweep compiled every kernel
    assert kernel_files(folder) == expected_files(PLANNED)
    assert_nothing_left(token, wait_for)


# ---- stopping the warm while the workers compile -------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    ("block", "line"),
    [("4096", "blocked on N=4096"), ("import", "blocked importing compile_utils")],
    ids=["mid-compile", "starting-workers"],
)
def test_stopping_the_warm_while_workers_run_stops_them_in_one_line(
    setup, wait_for, sig, block, line, ctrl_c_able
):
    """SIGTERM (a supervisor stopping the task) or SIGINT to the warm, while a worker is stuck in
    a compile or in SGLang's import: status 130, one line, the workers stopped and their partial
    entries removed, as when the server phase is interrupted (test_cache_deepgemm.py).

    The signal goes to the warm alone, as in test_cache_deepgemm.py: Ctrl-C at a terminal also
    reaches the workers, and what they print as they die would race with their being killed."""
    profile, folder, token = setup
    log = profile.parent / "out.txt"
    with open(log, "w") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "sglkit.cache", "deepgemm", "--profile", str(profile),
             "--jobs", "2"],
            cwd=REPO, env=env_for(token, STANDIN_DG_BLOCK=block), stdin=subprocess.DEVNULL,
            stdout=f, stderr=subprocess.STDOUT, preexec_fn=ctrl_c_able,
        )  # fmt: skip
    try:
        wait_for(lambda: line in log.read_text(), timeout=60, what=f"a worker {line}")
        p.send_signal(sig)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
    assert_nothing_left(token, wait_for)  # first: a worker left running is the worst outcome
    out = log.read_text()
    assert rc == 130, out
    errors = error_lines(out)
    assert len(errors) == 1, out
    assert "interrupted while compiling 2 DeepGEMM shapes on 2 workers" in errors[0]
    assert "Traceback" not in out
    assert store.read_marker(folder) is None
    assert "server pid" not in out
    assert_no_partial_entries(folder)
