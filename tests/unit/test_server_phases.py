"""Where a start's time went, read from SGLang's stamped log lines (sglkit.server.phases). The
messages are SGLang 0.5.16's (model_runner.py, kv_cache_configurator.py, distributed/bootstrap.py,
http_server.py); the stamps and figures are made up for the test."""

import time

from sglkit.server import phases


def at(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))


LOG = """\
some launcher noise before logging starts
[2026-12-06 12:00:39] server_args=ServerArgs(model_path='/m', tp_size=1)
[2026-12-06 12:00:45 TP0] Init torch distributed begin.
[2026-12-06 12:00:47 TP0] Init torch distributed ends. elapsed=1.90 s, mem usage=0.12 GB
[2026-12-06 12:00:50 TP0] Load weight begin. avail mem=78.00 GB
[2026-12-06 12:00:55 TP0] Load weight end. elapsed=0.19 s, type=DeepseekV3ForCausalLM, quant=fp8
[2026-12-06 12:00:55 TP0] Memory pool end. avail mem=31.25 GB
[2026-12-06 12:01:21 TP0] Try DeepGEMM JIT Compiling for <GEMM_NT_F8F8BF16> N=2112, K=7168, \
num_groups=1 with all Ms.
[2026-12-06 12:05:30] The server is fired up and ready to roll!
"""


def test_each_phase_runs_from_the_previous_milestone_found_and_the_first_from_the_launch():
    got = phases.breakdown(LOG, at("2026-12-06 12:00:20"))
    # no CUDA graph lines (the warm-up server disables them): that phase is left out
    assert got == [("launcher imports", 19.0), ("scheduler start", 6.0), ("model init", 5.0),
                   ("weights", 5.0), ("KV cache", 0.0), ("warm-up", 275.0)]  # fmt: skip
    assert sum(s for _, s in got) == at("2026-12-06 12:05:30") - at("2026-12-06 12:00:20")
    assert phases.line(got).startswith("launcher imports 19 s, scheduler start 6 s, ")


def test_cuda_graph_capture_is_its_own_phase():
    log = LOG.replace(
        "[2026-12-06 12:01:21 TP0] Try",
        "[2026-12-06 12:01:00 TP0] Capture cuda graph begin. This can take up to several minutes.\n"
        "[2026-12-06 12:01:09 TP0] Capture decode CUDA graph end. Time elapsed: 9.1 s\n"
        "[2026-12-06 12:01:21 TP0] Try",
    )
    got = dict(phases.breakdown(log, at("2026-12-06 12:00:20")))
    assert got["CUDA graphs"] == 14.0 and got["warm-up"] == 261.0


def test_a_log_without_sglang_stamps_has_no_phases():
    assert phases.breakdown("standin: mode=ready\nno stamps here\n", time.time()) == []
