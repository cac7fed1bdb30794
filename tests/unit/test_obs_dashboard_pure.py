"""The dashboard is the report's query table; Grafana's files for a run; the grafana service."""

from __future__ import annotations

import configparser
import json
from pathlib import Path

import pytest

from sglkit import profile as profiles
from sglkit.containers import lifecycle
from sglkit.observability import dashboard, grafana, services
from sglkit.observability import report_queries as rq


@pytest.mark.parametrize("scheme", sorted(rq.GPU_SCHEMES))
@pytest.mark.parametrize("interval", [1.0, 5.0, 15.0])
def test_dashboard_queries_are_the_reports_queries(scheme, interval):
    model = dashboard.build(scheme, interval, run_id="r1")
    window = rq.rate_window(interval)
    expected = [
        (p.title, rq.fill(line.expr, window)) for p in rq.panels(scheme) for line in p.lines
    ]
    assert dashboard.panel_queries(model) == expected
    assert all("{w}" not in e for _, e in expected)
    assert model["uid"] == dashboard.DASHBOARD_UID and model["editable"] is False
    rows = [p["title"] for p in model["panels"] if p["type"] == "row"]
    assert rows == ["Serving (SGLang)", "GPU", "Host"]
    for p in model["panels"]:
        if p["type"] == "timeseries":
            assert p["datasource"]["uid"] == dashboard.DATASOURCE_UID
            assert p["fieldConfig"]["defaults"]["unit"] in set(dashboard.UNITS.values())
    legends = [t["legendFormat"] for p in model["panels"] for t in p.get("targets") or []]
    device = rq.GPU_SCHEMES[scheme]["device_label"]
    assert f"GPU {{{{{device}}}}}" in legends


def test_every_report_unit_has_a_grafana_unit():
    units = {p.unit for s in rq.GPU_SCHEMES for p in rq.panels(s)}
    assert units <= set(dashboard.UNITS)


def test_grafana_files_anonymous_read_only_and_the_runs_prometheus(tmp_path):
    files = grafana.files(
        tmp_path,
        bind="0.0.0.0",
        port=3123,
        prometheus_url="http://127.0.0.1:9090",
        gpu_scheme=None,
        scrape_interval_s=5.0,
        run_id="r1",
    )
    layout = grafana.layout(tmp_path)
    assert set(files) == {layout[k] for k in ("ini", "datasource", "provider", "dashboard")}
    ini = configparser.ConfigParser()
    ini.read_string(files[layout["ini"]])
    assert ini["server"]["http_port"] == "3123" and ini["server"]["http_addr"] == "0.0.0.0"
    assert ini["auth.anonymous"]["enabled"] == "true"
    assert ini["auth.anonymous"]["org_role"] == "Viewer"
    assert ini["auth"]["disable_login_form"] == "true"
    assert ini["auth.basic"]["enabled"] == "false"
    assert ini["security"]["disable_initial_admin_creation"] == "true"
    assert ini["paths"]["data"].startswith(str(tmp_path))
    ds = json.loads(files[layout["datasource"]])["datasources"]
    assert ds == [
        {
            "name": "Prometheus (this run)",
            "type": "prometheus",
            "uid": dashboard.DATASOURCE_UID,
            "access": "proxy",
            "url": "http://127.0.0.1:9090",
            "isDefault": True,
            "editable": False,
        }
    ]
    prov = json.loads(files[layout["provider"]])["providers"][0]
    assert prov["options"]["path"] == str(layout["dashboards"]) and not prov["allowUiUpdates"]
    board = json.loads(files[layout["dashboard"]])
    assert "gpu:dcgm" in board["tags"]  # no GPU exporter: the dcgm names, panels empty


def _plan(tmp_path, which, homes=()):
    ports = {n: 20000 + i for i, n in enumerate(services.PORT_NAMES)}
    return services.plan(
        bind="127.0.0.1",
        ports=ports,
        prometheus_config=tmp_path / "p.yml",
        prometheus_data=tmp_path / "d",
        which=which,
        gpu_probe=lambda: (0, "none"),
        dcgm_probe=lambda: False,
        jaeger_wanted=False,
        grafana_config=tmp_path / "grafana.ini",
        grafana_homes=homes,
    )["grafana"]


def test_grafana_service_argv_health_and_absent_reasons(tmp_path):
    missing = _plan(tmp_path, lambda n: None)
    assert missing.argv is None and missing.optional
    assert "binary not found on PATH (looked for grafana, grafana-server)" in missing.unavailable
    no_home = _plan(tmp_path, lambda n: f"/usr/sbin/{n}", homes=(str(tmp_path / "nohome"),))
    assert no_home.argv is None and "no Grafana home" in no_home.unavailable
    home = tmp_path / "share" / "grafana"
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "defaults.ini").write_text("")
    g = _plan(tmp_path, lambda n: f"/usr/sbin/{n}", homes=(str(home),))
    assert g.argv == [
        "/usr/sbin/grafana",
        "server",
        f"--homepath={home}",
        f"--config={tmp_path / 'grafana.ini'}",
    ]
    assert g.health_url == f"http://127.0.0.1:{g.port}/api/health"
    old = _plan(
        tmp_path,
        lambda n: "/usr/sbin/grafana-server" if n == "grafana-server" else None,
        (str(home),),
    )
    assert old.argv[:2] == ["/usr/sbin/grafana-server", f"--homepath={home}"]


def test_grafana_port_is_published_like_every_telemetry_port():
    profile = profiles.load("cpu-dev")
    assert lifecycle.container_ports(profile)["telemetry.ports.grafana"] == 3000
    assert Path(grafana.layout(Path("/r"))["ini"]) == Path("/r/grafana/grafana.ini")
