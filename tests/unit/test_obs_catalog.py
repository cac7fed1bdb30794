"""The metrics catalog: its coverage, the generated docs page, and the endpoint check."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sglkit import paths
from sglkit.errors import ConfigError
from sglkit.observability import catalog as cat
from sglkit.observability import manifest as mf
from sglkit.observability import status as st

ISSUE_SGLANG = [
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:token_usage",
    "sglang:gen_throughput",
    "sglang:cache_hit_rate",
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
    "sglang:time_to_first_token_seconds",
    "sglang:inter_token_latency_seconds",
    "sglang:e2e_request_latency_seconds",
    "sglang:queue_time_seconds",
]
ISSUE_DCGM = [
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_SM_CLOCK",
]


@pytest.fixture(scope="module")
def catalog():
    return cat.load()


def by_name(catalog):
    return {m["name"]: m for m in catalog["metrics"]}


def test_catalog_covers_what_the_issue_names_as_core(catalog):
    names = by_name(catalog)
    for n in ISSUE_SGLANG + ISSUE_DCGM:
        assert names[n].get("core"), n
    assert {m["source"] for m in catalog["metrics"]} == set(cat.SOURCES)


def test_every_dcgm_core_metric_has_an_nvitop_equivalent_and_back(catalog):
    names = by_name(catalog)
    for n in ISSUE_DCGM:
        eq = names[n]["equivalent"]
        assert names[eq]["source"] == "nvitop"
        assert names[eq]["equivalent"] == n


def test_counters_carry_total_and_types_match_suffixes(catalog):
    for m in catalog["metrics"]:
        if m["source"] == "sglang" and m["type"] == "counter":
            assert m["name"].endswith("_total"), m["name"]
        if m["name"].endswith("_seconds") and m["source"] == "sglang":
            assert m["unit"] == "seconds", m["name"]


def test_docs_page_is_generated_from_the_catalog(catalog):
    page = (paths.home() / "docs" / "metrics.md").read_text()
    assert page == cat.render_markdown(catalog) + "\n", (
        "docs/metrics.md is stale: invoke obs.catalog"
    )
    for n in ISSUE_SGLANG + ISSUE_DCGM:
        assert f"`{n}`" in page


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "x", "source": "gpu", "type": "gauge", "unit": "1", "meaning": "m"}, "source"),
        ({"name": "x", "source": "node", "type": "rate", "unit": "1", "meaning": "m"}, "type"),
        ({"name": "9x", "source": "node", "type": "gauge", "unit": "1", "meaning": "m"}, "name"),
        ({"name": "x", "source": "node", "type": "gauge", "unit": "1"}, "meaning"),
    ],
)
def test_bad_catalog_entry_names_the_field(tmp_path, entry, match):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"metrics": [entry]}))
    with pytest.raises(ConfigError, match=match):
        cat.load(p)


def exposition(omit=(), extra=()):
    reg = CollectorRegistry()
    for n in ISSUE_SGLANG:
        if n in omit:
            continue
        if n.endswith("_total"):
            Counter(n, "c", registry=reg).inc()
        elif n.endswith("_seconds"):
            Histogram(n, "h", registry=reg).observe(0.1)
        else:
            Gauge(n, "g", registry=reg).set(1)
    for n in extra:
        Gauge(n, "g", registry=reg).set(1)
    return generate_latest(reg).decode()


def test_check_finds_missing_core_and_unknown_names(catalog):
    text = exposition(omit={"sglang:queue_time_seconds"}, extra=["sglang:brand_new_thing"])
    r = cat.check_text(text, catalog, "u")
    assert r.sources == ["sglang"]
    assert r.missing_core == ["sglang:queue_time_seconds"]
    assert r.unknown == ["sglang:brand_new_thing"]
    assert not r.ok
    # conditional metrics (speculative decoding...) are reported but not errors
    assert "sglang:spec_accept_length" in r.missing_other


def test_check_of_a_complete_exposition_is_ok(catalog):
    r = cat.check_text(exposition(), catalog)
    assert r.ok and r.unknown == []


def test_check_refuses_a_non_url(catalog):
    with pytest.raises(ConfigError, match="--check"):
        cat.check_url("localhost:9090", catalog)


# ---- obs.status helpers -------------------------------------------------------------------------
def test_age_of_prometheus_timestamps():
    now = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=dt.timezone.utc)
    assert st.age("2026-01-01T00:00:07.500000123Z", now) == "2.5s ago"
    assert st.age("2026-01-01T01:00:08+01:00", now) == "2.0s ago"
    assert st.age("0001-01-01T00:00:00Z", now) == "never"


def test_status_problems_are_down_targets_not_pending_ones():
    up = {"job": "node", "url": "u", "health": "up", "last_error": ""}
    pending = {**up, "health": "unknown"}
    down = {**up, "job": "sglang", "health": "down", "last_error": "connection refused"}
    assert st.problems({"error": None, "targets": [up, pending]}) == []
    assert st.problems({"error": None, "targets": [up, down]}) == [
        "sglang u is down: connection refused"
    ]
    assert st.problems({"error": "prometheus is failed", "targets": []}) == ["prometheus is failed"]


def test_status_notices_a_run_whose_init_run_is_gone(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = {"host": mf.hostname(), "pid_ns": mf.pid_namespace()}
    assert not mf.init_run_gone({**here, "pid": os.getpid()})
    assert mf.init_run_gone({**here, "pid": dead.pid})
    # another host or pid namespace: cannot tell, so not reported as gone
    assert not mf.init_run_gone({**here, "pid": dead.pid, "host": "elsewhere"})
    assert not mf.init_run_gone({**here, "pid": dead.pid, "pid_ns": "pid:[1]"})
    # a reused pid (same pid, another start time) is gone; another boot of the kernel too
    me = mf.identity()
    assert not mf.init_run_gone(me)
    assert mf.init_run_gone({**me, "pid_start": me["pid_start"] + 1})
    assert mf.init_run_gone({**me, "host": "elsewhere", "boot_id": "another-boot"})
