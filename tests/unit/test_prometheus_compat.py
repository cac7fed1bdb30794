"""Every Prometheus flag and config key the kit uses is valid in 3.5 as well as in 2.x.

The 3.x side is static: tests/data/prometheus_compat.yaml lists the 3.5 flags and config keys
the kit may use, what 3.x removed or renamed, and what only 3.x accepts, each with its source.
The 2.x side is live where the Debian build is installed (`prometheus --help`); promtool checks
every rendered config in tests/integration/test_obs_promtool.py.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sglkit import paths
from sglkit import profile as profiles
from sglkit.observability import config as promconfig
from sglkit.observability import report_prom, report_queries, services

DATA = yaml.safe_load((Path(__file__).parents[1] / "data" / "prometheus_compat.yaml").read_text())
PORTS = {n: 20000 + i for i, n in enumerate(services.PORT_NAMES)}
# mappings whose keys are label names chosen by the kit, not config keys
LABEL_MAPS = {"global.external_labels", "scrape_configs[].static_configs[].labels"}


def kit_argvs() -> list[list[str]]:
    out = []
    for lifecycle in (True, False):
        specs = services.plan(
            bind="127.0.0.1",
            ports=PORTS,
            prometheus_config=Path("/run/p.yml"),
            prometheus_data=Path("/run/data"),
            which=lambda n: f"/usr/bin/{n}" if n == "prometheus" else None,
            gpu_probe=lambda: (0, "none"),
            dcgm_probe=lambda: False,
            jaeger_wanted=False,
            lifecycle_api=lifecycle,
        )
        out.append(specs["prometheus"].argv)
    out.append(report_prom.temporary_argv("prometheus", Path("/t/p.yml"), Path("/t/d"), 9))
    return out


def flag_names(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")}


def key_paths(node: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every config key in a parsed config (`[]` for list items)."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(path)
            if path not in LABEL_MAPS:
                out |= key_paths(v, path)
    elif isinstance(node, list):
        for item in node:
            out |= key_paths(item, f"{prefix}[]")
    return out


def rendered_configs() -> list[str]:
    texts = [report_prom.TEMPORARY_CONFIG]
    for name in sorted(p.stem for p in paths.asset("profiles").glob("*.yaml")):
        profile = profiles.load(name)
        combos = itertools.product([True, False], [None, "dcgm", "nvitop"], [None, 24269])
        for node, gpu, jaeger in combos:
            texts.append(
                promconfig.render(
                    promconfig.context(
                        profile=profile,
                        run_id="r",
                        host="h",
                        bind="0.0.0.0",
                        ports=PORTS,
                        node_exporter=node,
                        gpu_exporter_kind=gpu,
                        jaeger_metrics_port=jaeger,
                        scrape_server=True,
                        sglang_sd_file="/run/prometheus/targets/sglang.json",
                    )
                )
            )
    return texts


def problems_3x(flags: set[str], keys: set[str]) -> list[str]:
    removed = DATA["removed_3x"]
    out = [f"flag {f} is not in Prometheus 3.5's flag table" for f in flags - set(DATA["flags_3x"])]
    out += [f"flag {f} was removed in 3.x" for f in flags & set(removed["flags"])]
    out += [f"config key {k} is not in 3.5's configuration" for k in keys - set(DATA["config_3x"])]
    leaves = {k.rsplit(".", 1)[-1] for k in keys}
    out += [
        f"config key {k} is 3.x-only (2.x rejects it)"
        for k in DATA["new_in_3x_config"]
        if k in leaves
    ]
    out += [f"config key {k} was renamed or removed in 3.x" for k in set(removed["config"]) & keys]
    return sorted(out)


def test_kit_flags_and_config_keys_are_valid_in_prometheus_3_5():
    flags = set().union(*map(flag_names, kit_argvs()))
    keys = set().union(*(key_paths(yaml.safe_load(t)) for t in rendered_configs()))
    assert "--web.enable-lifecycle" in flags and "scrape_configs[].file_sd_configs[].files" in keys
    assert problems_3x(flags, keys) == []


def test_the_checker_catches_3x_breakage():
    bad_keys = key_paths(
        yaml.safe_load(
            "scrape_configs:\n"
            "  - job_name: a\n    scrape_classic_histograms: true\n"
            "  - job_name: b\n    fallback_scrape_protocol: PrometheusText0.0.4\n"
        )
    )
    found = problems_3x({"--storage.tsdb.retention", "--web.enable-lifecycle"}, bad_keys)
    assert any("--storage.tsdb.retention was removed" in p for p in found)
    assert any("scrape_classic_histograms was renamed" in p for p in found)
    assert any("fallback_scrape_protocol is 3.x-only" in p for p in found)
    # label names under external_labels / labels are not config keys
    assert key_paths({"global": {"external_labels": {"anything": "x"}}}) == {
        "global",
        "global.external_labels",
    }


def test_no_removed_feature_flag_or_promql_function_is_used():
    argvs = " ".join(" ".join(a) for a in kit_argvs())
    assert "--enable-feature" not in argvs
    exprs = [
        line.expr
        for scheme in report_queries.GPU_SCHEMES
        for panel in report_queries.panels(scheme)
        for line in panel.lines
    ]
    for fn in DATA["removed_3x"]["promql_functions"]:
        assert not any(re.search(rf"\b{fn}\s*\(", e) for e in exprs), fn
    # 3.x normalises `le` to floats ("1.0"): no query may match a literal bucket bound
    assert not any(re.search(r'\ble\s*=~?\s*"', e) for e in exprs)


@pytest.mark.requires("prometheus")
def test_kit_flags_are_accepted_by_the_installed_2x():
    out = subprocess.run(
        [shutil.which("prometheus"), "--help"], capture_output=True, text=True, timeout=30
    )
    text = out.stdout + out.stderr
    for flag in set().union(*map(flag_names, kit_argvs())):
        assert re.search(rf"{re.escape(flag)}\b", text), flag
