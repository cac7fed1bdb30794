"""`nox -s gpu_smoke`: the layered GPU checks of sglkit.gpu.smoke, one test each, in order.

Each check PASSes, SKIPs with its reason (no GPU, no SGLang...) or FAILs with what it expected
and saw. tests/gpu/conftest.py prints the summary table after pytest's own report. Set
SGLKIT_REQUIRE=gpu on a GPU host so a check that cannot find the GPU fails instead of skipping;
SGLKIT_GPU_SMOKE_JSON=path also writes the results as JSON.
"""

from __future__ import annotations

import pytest

from sglkit.gpu.checks import FAIL, SKIP, format_result, run_check
from sglkit.gpu.smoke import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=[f"{c.number}-{c.key}" for c in CHECKS])
def test_check(check, smoke_results):
    result = run_check(check)
    smoke_results.append(result)
    print(format_result(result))
    if result.status == SKIP:
        pytest.skip(result.detail)
    if result.status == FAIL:
        pytest.fail(result.detail, pytrace=False)
