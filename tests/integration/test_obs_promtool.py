"""Every scrape config the template can render passes the real `promtool check config`."""

from __future__ import annotations

import itertools

import pytest

from sglkit import paths
from sglkit import profile as profiles
from sglkit.errors import SglkitError
from sglkit.observability import config as promconfig

pytestmark = pytest.mark.requires("prometheus")

PORTS = {
    "prometheus": 19090,
    "node_exporter": 19100,
    "gpu_exporter": 19400,
    "jaeger_ui": 26686,
    "jaeger_otlp": 14317,
    "jaeger_admin": 24269,
}
PROFILES = sorted(p.stem for p in paths.asset("profiles").glob("*.yaml"))
COMBOS = list(
    itertools.product([True, False], [None, "dcgm", "nvitop"], [None, 24269], [True, False])
)


@pytest.mark.parametrize("name", PROFILES)
def test_every_rendered_config_passes_promtool(tmp_path, name):
    profile = profiles.load(name)
    files = []
    for i, (node, gpu, jaeger, server) in enumerate(COMBOS):
        for bind in ("127.0.0.1", "0.0.0.0"):
            text = promconfig.render(
                promconfig.context(
                    profile=profile,
                    run_id=f"r{i}",
                    host="gh200-node-1",
                    bind=bind,
                    ports=PORTS,
                    node_exporter=node,
                    gpu_exporter_kind=gpu,
                    jaeger_metrics_port=jaeger,
                    scrape_server=server,
                )
            )
            f = tmp_path / f"{i}-{bind}.yml"
            f.write_text(text)
            files.append(f)
    out = promconfig.promtool_check(*files)
    assert out.count("SUCCESS") == len(files) == 2 * len(COMBOS), out


def test_promtool_rejection_is_one_line(tmp_path):
    f = tmp_path / "bad.yml"
    f.write_text("global:\n  scrape_interval: soon\n")
    with pytest.raises(SglkitError, match="promtool check config failed") as e:
        promconfig.promtool_check(f)
    assert "\n" not in str(e.value)
