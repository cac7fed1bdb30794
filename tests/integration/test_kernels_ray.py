"""The Ray path of the tuner on a real local Ray cluster with CPU-only workers.

The measure is the deterministic synthetic cost of tests/unit/test_kernels_search.py (no GPU
here); the workers import it by module path. One cluster is shared by the module: Ray takes
10-20 s to start.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]')")

from sglkit.errors import SglkitError  # noqa: E402
from sglkit.kernels import ray_tune  # noqa: E402
from sglkit.kernels import search as se  # noqa: E402
from tests.unit.test_kernels_search import Cost, candidates, default  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BATCH_SIZES = [1, 4, 16, 64, 256, 1024, 4096]


@pytest.fixture(scope="module")
def cluster():
    # pytest imports this file under a name workers cannot import: ship its classes by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=80 * 1024 * 1024,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    yield ray
    ray.shutdown()


class CostFactory:
    """Runs on a worker: records each shard start, and can stall one shard until it is killed."""

    def __init__(self, marks: Path, victim: int | None = None):
        self.marks, self.victim = marks, victim

    def __call__(self):
        cost = Cost()
        marks, victim = self.marks, self.victim

        def measure(cfg, M):
            first = not (marks / f"started-{M}-{os.getpid()}").exists()
            if first:
                (marks / f"started-{M}-{os.getpid()}").touch()
            if victim == M and not (marks / "victim.pid").exists():
                (marks / "victim.pid").write_text(str(os.getpid()))
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:  # the test kills this worker meanwhile
                    time.sleep(0.2)
            return cost(cfg, M)

        return measure


def serial(tmp_path: Path) -> dict[int, se.Result]:
    return se.tune(
        BATCH_SIZES, candidates, Cost(), state_path=tmp_path / "serial.json", default_config=default
    )


def test_ray_run_equals_the_one_worker_run_and_streams_into_the_state(cluster, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    state = tmp_path / "ray.json"
    events = []
    res = ray_tune.tune(
        BATCH_SIZES,
        candidates,
        CostFactory(marks),
        state_path=state,
        default_config=default,
        gpus_per_task=0,
        cpus_per_task=1,
        progress=lambda ev, info: events.append((ev, info["M"])),
    )
    ref = serial(tmp_path)
    assert {m: r.config for m, r in res.items()} == {m: r.config for m, r in ref.items()}
    assert {m: r.time for m, r in res.items()} == {m: r.time for m, r in ref.items()}
    assert sorted(m for ev, m in events if ev == "done") == BATCH_SIZES
    # the shards ran in worker processes, not in this one
    pids = {p.name.rsplit("-", 1)[1] for p in marks.glob("started-*")}
    assert pids and str(os.getpid()) not in pids
    # the state is the serial tuner's: resuming it serially measures nothing
    cost = Cost()
    again = se.tune(
        BATCH_SIZES, candidates, cost, state_path=state, resume=True, default_config=default
    )
    assert cost.calls == [] and {m: r.config for m, r in again.items()} == {
        m: r.config for m, r in ref.items()
    }


def test_a_killed_worker_loses_only_its_shard(cluster, tmp_path, wait_for):
    marks = tmp_path / "marks"
    marks.mkdir()
    victim = 256  # in the second wave, so the first wave's results are in the state by then
    killed = {}

    def killer():
        pid = int(
            wait_for(
                lambda: (marks / "victim.pid").exists() and (marks / "victim.pid").read_text(),
                timeout=120,
                what="the victim shard to start",
            )
        )
        killed["pid"] = pid
        os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = ray_tune.tune(
        BATCH_SIZES,
        candidates,
        CostFactory(marks, victim=victim),
        state_path=tmp_path / "ray.json",
        default_config=default,
        gpus_per_task=0,
        cpus_per_task=1,
    )
    t.join(timeout=5)
    assert killed, "the victim worker was never killed"
    started_victim = sorted(p.name for p in marks.glob(f"started-{victim}-*"))
    assert len(started_victim) == 2, started_victim  # the shard ran again, in a new worker
    assert f"started-{victim}-{killed['pid']}" in started_victim
    ref = serial(tmp_path)
    assert {m: r.config for m, r in res.items()} == {m: r.config for m, r in ref.items()}
    # other shards ran once each
    for M in BATCH_SIZES:
        if victim != M:
            assert len(list(marks.glob(f"started-{M}-*"))) == 1, M


def test_asking_for_gpus_on_a_cpu_cluster_is_one_line(cluster, tmp_path):
    with pytest.raises(SglkitError, match="no GPU"):
        ray_tune.tune([1], candidates, CostFactory(tmp_path), state_path=tmp_path / "s.json")


def test_ray_resumes_an_interrupted_one_worker_run(cluster, tmp_path):
    state = tmp_path / "s.json"
    first = Cost(fail_after=300)
    with pytest.raises(KeyboardInterrupt):
        se.tune(BATCH_SIZES, candidates, first, state_path=state, default_config=default)
    done_before = set(se.results_from_state(state))
    assert done_before and done_before != set(BATCH_SIZES)
    marks = tmp_path / "marks"
    marks.mkdir()
    res = ray_tune.tune(
        BATCH_SIZES,
        candidates,
        CostFactory(marks),
        state_path=state,
        resume=True,
        default_config=default,
        gpus_per_task=0,
        cpus_per_task=1,
    )
    started = {int(p.name.split("-")[1]) for p in marks.glob("started-*")}
    assert started == set(BATCH_SIZES) - done_before  # finished batch sizes were not redone
    ref = serial(tmp_path)
    assert {m: r.config for m, r in res.items()} == {m: r.config for m, r in ref.items()}


def test_run_tune_on_ray_writes_the_store_file(cluster, tmp_path):
    """kernels.tune --ray's core with CPU workers: the same store file as the serial run."""
    from sglkit.kernels.target import profile_shape
    from sglkit.kernels.tune import run_tune
    from tests.unit.test_kernels_tune import make_profile, stand_in_cost

    p = make_profile(tmp_path)
    shape = profile_shape(p)
    kw = {"device": "NVIDIA H200", "triton_version": "3.4.0", "sglang_version": "0.5.23",
          "store_root": tmp_path / "store"}  # fmt: skip
    out, _, _ = run_tune(
        p, shape, [1, 64, 4096], measure_factory=StandInFactory(), ray_address=None,
        ray_options={"gpus_per_task": 0, "cpus_per_task": 1}, **kw,
    )  # fmt: skip
    on_ray = json.loads(out.read_text())
    out.unlink()
    run_tune(p, shape, [1, 64, 4096], measure=stand_in_cost, **kw)
    assert json.loads(out.read_text()) == on_ray
    assert out.name == "E=128,N=768,device_name=NVIDIA_H200.json"


class StandInFactory:
    def __call__(self):
        from tests.unit.test_kernels_tune import stand_in_cost

        return stand_in_cost


class FailAtFactory:
    """Runs on a worker: every config fails at one batch size (as an out-of-memory card would)."""

    def __init__(self, bad: int):
        self.bad = bad

    def __call__(self):
        import math

        cost, broken = Cost(), {self.bad}

        def measure(cfg, M):
            return math.inf if M in broken else cost(cfg, M)

        return measure


def test_a_batch_size_whose_every_config_fails_leaves_the_others_tuned(cluster, tmp_path):
    events = []
    with pytest.raises(se.PartialTune) as err:
        ray_tune.tune(
            BATCH_SIZES,
            candidates,
            FailAtFactory(64),
            state_path=tmp_path / "s.json",
            default_config=default,
            gpus_per_task=0,
            cpus_per_task=1,
            progress=lambda ev, info: events.append((ev, info["M"])),
        )
    assert set(err.value.failed) == {64} and "every measured config failed" in str(err.value)
    assert set(err.value.results) == set(BATCH_SIZES) - {64}
    assert ("failed", 64) in events
    # nothing of the failed size is kept: --resume searches it again
    assert set(se.results_from_state(tmp_path / "s.json")) == set(BATCH_SIZES) - {64}
    assert "64" not in json.loads((tmp_path / "s.json").read_text())["memo"]
