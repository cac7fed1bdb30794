"""A real Prometheus with our rendered scrape config stores SGLang's own `sglang:` names.

The SGLang target is the STAND-IN /metrics endpoint (tests/fixtures/standin_sglang_metrics.py:
prometheus_client, as SGLang uses, with its default content negotiation). Prometheus asks for
OpenMetrics first, and prometheus_client's OpenMetrics output writes `sglang:num_running_reqs`
as `sglang_num_running_reqs` (client_python #1177). The same target is also scraped by a control
job without the template's relabel rule: it must store the escaped names, which shows that the
scrape really was OpenMetrics and that the rule, not luck, gives the `sglang` job SGLang's names.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from sglkit import paths
from sglkit import profile as profiles
from sglkit.net import free_port, wait_for
from sglkit.observability import config as promconfig
from sglkit.proc import spawn, terminate_group

pytestmark = pytest.mark.requires("prometheus")

STANDIN = Path(__file__).resolve().parents[1] / "fixtures" / "standin_sglang_metrics.py"


def _query(url: str, expr: str) -> list[dict]:
    r = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def _names(url: str, job: str) -> set[str]:
    return {s["metric"]["__name__"] for s in _query(url, f'{{job="{job}"}}')}


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_rendered_config_stores_sglang_names_from_an_openmetrics_target(tmp_path):
    server_port, prom_port = free_port(), free_port()
    target = f"127.0.0.1:{server_port}"
    context = promconfig.context(
        profile=profiles.load("cpu-dev"),
        run_id="relabel",
        host="test",
        bind="127.0.0.1",
        ports={"prometheus": prom_port},
        node_exporter=False,
        gpu_exporter_kind=None,
        jaeger_metrics_port=None,
        scrape_server=True,
    )
    context["sglang_targets"] = [target]
    context["scrape_interval"] = "1s"
    cfg = yaml.safe_load(promconfig.render(context))
    sglang_job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "sglang")
    control = {k: v for k, v in sglang_job.items() if k != "metric_relabel_configs"}
    cfg["scrape_configs"].append(control | {"job_name": "control"})
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(cfg))
    promconfig.promtool_check(config)

    procs = []
    try:
        procs.append(
            spawn(
                [sys.executable, str(STANDIN), "--port", str(server_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        with open(tmp_path / "prometheus.log", "wb") as log:
            procs.append(
                spawn(
                    [
                        shutil.which("prometheus"),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{prom_port}"
        wait_for(lambda: _ready(url), 60, 0.2, "Prometheus ready")

        def both_scraped() -> bool:
            up = {s["metric"]["job"]: s["value"][1] for s in _query(url, "up")}
            return (
                up.get("sglang") == "1"
                and up.get("control") == "1"
                and any(n.startswith("sglang") for n in _names(url, "sglang"))
                and any(n.startswith("sglang") for n in _names(url, "control"))
            )

        wait_for(both_scraped, 60, 0.5, "both jobs to store the stand-in's samples")
        kept, control_names = _names(url, "sglang"), _names(url, "control")
    finally:
        for p in reversed(procs):
            terminate_group(p, grace=10)

    # without the rule: the escaped spelling, so the scrape was OpenMetrics
    assert "sglang_num_running_reqs" in control_names
    assert not any(n.startswith("sglang:") for n in control_names)
    # with it: SGLang's own names, histogram series included; nothing escaped left
    for name in (
        "sglang:num_running_reqs",
        "sglang:token_usage",
        "sglang:prompt_tokens_total",
        "sglang:time_to_first_token_seconds_bucket",
        "sglang:time_to_first_token_seconds_count",
        "sglang:standin_only_metric",
    ):
        assert name in kept, name
    assert not [n for n in kept if n.startswith("sglang_")]
    # other names in the same job are left as they are (prometheus_client's own collectors)
    assert {n for n in control_names if not n.startswith("sglang")} == {
        n for n in kept if not n.startswith("sglang")
    }


def _samples(body: str) -> set[str]:
    """Metric names of the sample lines of an exposition (comments skipped)."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


def test_prometheus_3_accept_header_keeps_the_colon_so_the_rule_is_idle():
    """Prometheus 3.x asks for `escaping=allow-utf-8` (tests/data/prometheus_compat.yaml, with its
    source): prometheus_client then writes `sglang:x` as it is, so the relabel rule finds no
    `sglang_` name to rename. 2.42's header gets the escaped `sglang_x`, which the rule undoes.
    Both answers carry a Content-Type (3.x fails a scrape without one)."""
    compat = yaml.safe_load(
        (Path(__file__).parents[1] / "data" / "prometheus_compat.yaml").read_text()
    )
    port = free_port()
    proc = spawn(
        [sys.executable, str(STANDIN), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def get(accept: str) -> requests.Response:
            return requests.get(url, headers={"Accept": accept}, timeout=5)

        def answers() -> bool:
            try:
                return get("*/*").status_code == 200
            except requests.RequestException:
                return False

        wait_for(answers, 30, 0.1, "the stand-in to answer")
        v3, v2 = get(compat["accept_3x"]), get(compat["accept_2x"])
    finally:
        terminate_group(proc, grace=10)
    assert v3.headers["Content-Type"].startswith("application/openmetrics-text")
    assert "escaping=allow-utf-8" in v3.headers["Content-Type"]
    assert v2.headers["Content-Type"].startswith("application/openmetrics-text")
    names3, names2 = _samples(v3.text), _samples(v2.text)
    assert "sglang:num_running_reqs" in names3
    assert "sglang:time_to_first_token_seconds_bucket" in names3
    assert not [n for n in names3 if n.startswith("sglang_")]
    assert "sglang_num_running_reqs" in names2
    # the rule is harmless under 3.x: no name SGLang registers starts with `sglang_`
    catalog = paths.asset("observability", "metrics_catalog.yaml").read_text()
    assert "sglang:" in catalog and not re.search(r"\bsglang_", catalog)
