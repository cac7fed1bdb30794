"""Scrape config rendering and service planning (pure: no process is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sglkit import profile as profiles
from sglkit.errors import ConfigError
from sglkit.observability import config as promconfig
from sglkit.observability import services as svcs
from sglkit.observability import tracing
from sglkit.server import spec as server_spec

PORTS = {
    "prometheus": 19090,
    "node_exporter": 19100,
    "gpu_exporter": 19400,
    "jaeger_ui": 26686,
    "jaeger_otlp": 14317,
    "jaeger_admin": 24269,
}


def ctx(profile="cpu-dev", **over):
    kw = dict(
        profile=profiles.load(profile),
        run_id="r1",
        host="box",
        bind="127.0.0.1",
        ports=PORTS,
        node_exporter=True,
        gpu_exporter_kind=None,
        jaeger_metrics_port=None,
        scrape_server=False,
    )
    kw.update(over)
    return promconfig.context(**kw)


def jobs(text):
    return {j["job_name"]: j for j in yaml.safe_load(text)["scrape_configs"]}


def test_minimal_config_has_self_and_node_and_labels():
    cfg = yaml.safe_load(promconfig.render(ctx()))
    assert cfg["global"]["scrape_interval"] == "5s"
    assert cfg["global"]["external_labels"] == {"run_id": "r1", "host": "box", "profile": "cpu-dev"}
    j = jobs(promconfig.render(ctx()))
    assert set(j) == {"prometheus", "node"}
    assert j["node"]["static_configs"][0]["targets"] == ["127.0.0.1:19100"]


def test_every_optional_job_appears_when_its_service_runs():
    text = promconfig.render(
        ctx(
            "deepseek-v3-gh200",
            gpu_exporter_kind="dcgm",
            jaeger_metrics_port=24269,
            scrape_server=True,
            bind="0.0.0.0",
        )
    )
    j = jobs(text)
    assert set(j) == {"prometheus", "node", "sglang", "gpu", "jaeger"}
    # 0.0.0.0 listeners are scraped on loopback; the server target comes from the profile
    assert j["sglang"]["static_configs"][0]["targets"] == ["127.0.0.1:30000"]
    assert j["gpu"]["static_configs"][0]["labels"]["exporter"] == "dcgm"
    assert j["jaeger"]["static_configs"][0]["targets"] == ["127.0.0.1:24269"]


def test_only_the_sglang_job_respells_escaped_names():
    """OpenMetrics from prometheus_client escapes "sglang:x" to "sglang_x"; the sglang job maps
    it back (tests/integration/test_obs_relabel.py shows a real Prometheus doing it)."""
    j = jobs(promconfig.render(ctx(gpu_exporter_kind="dcgm", scrape_server=True)))
    assert j["sglang"]["metric_relabel_configs"] == [
        {
            "source_labels": ["__name__"],
            "regex": "sglang_(.+)",
            "target_label": "__name__",
            "replacement": "sglang:${1}",
            "action": "replace",
        }
    ]
    assert [n for n, job in j.items() if "metric_relabel_configs" in job] == ["sglang"]


def test_node_job_is_left_out_when_node_exporter_is_missing():
    assert "node" not in jobs(promconfig.render(ctx(node_exporter=False)))


def test_label_values_are_quoted_not_injected():
    text = promconfig.render(ctx(host='evil"\n  injected: yes'))
    labels = yaml.safe_load(text)["global"]["external_labels"]
    assert labels["host"] == 'evil"\n  injected: yes'
    assert "injected" not in labels


def test_missing_template_variable_is_a_config_error_naming_it(tmp_path):
    t = tmp_path / "t.yml.j2"
    t.write_text("global:\n  scrape_interval: {{ scrape_intervall }}\n")
    with pytest.raises(ConfigError, match="scrape_intervall") as e:
        promconfig.render(ctx(), t)
    assert str(t) in str(e.value) and "\n" not in str(e.value)


def test_template_cannot_reach_python_internals(tmp_path):
    t = tmp_path / "t.yml.j2"
    t.write_text("{{ run_id.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(ConfigError, match=r"unsafe|undefined"):
        promconfig.render(ctx(), t)


def test_missing_template_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="template not found"):
        promconfig.render(ctx(), tmp_path / "nope.j2")


# ---- planning ---------------------------------------------------------------------------------
def which_from(*names):
    return lambda n: f"/opt/bin/{n}" if n in names else None


def plan(which, **kw):
    return svcs.plan(
        bind="127.0.0.1",
        ports=PORTS,
        prometheus_config=Path("/run/p.yml"),
        prometheus_data=Path("/run/data"),
        which=which,
        gpu_probe=kw.pop("gpu", lambda: (0, "NVML reports no GPU")),
        dcgm_probe=kw.pop("dcgm", lambda: False),
        nvitop_importable=kw.pop("nvitop", lambda: False),
        **kw,
    )


def test_plan_prefers_debian_names_and_pins_every_listener():
    s = plan(which_from("prometheus", "prometheus-node-exporter", "node_exporter"))
    p = s["prometheus"].argv
    assert p[0] == "/opt/bin/prometheus"
    assert "--storage.tsdb.path=/run/data" in p and "--config.file=/run/p.yml" in p
    assert "--web.listen-address=127.0.0.1:19090" in p
    assert s["prometheus"].health_url == "http://127.0.0.1:19090/-/ready"
    assert s["node_exporter"].argv == [
        "/opt/bin/prometheus-node-exporter",
        "--web.listen-address=127.0.0.1:19100",
    ]


def test_upstream_node_exporter_name_is_found():
    s = plan(which_from("prometheus", "node_exporter"))
    assert s["node_exporter"].argv[0] == "/opt/bin/node_exporter"


def test_missing_core_binary_is_unavailable_not_optional():
    s = plan(which_from("prometheus"))
    n = s["node_exporter"]
    assert n.argv is None and not n.optional
    assert "prometheus-node-exporter" in n.unavailable and "node_exporter" in n.unavailable


def test_no_gpu_means_gpu_exporter_absent_with_reason():
    g = plan(which_from("prometheus"))["gpu_exporter"]
    assert g.optional and g.argv is None
    assert "NVML reports no GPU" in g.unavailable


def test_dcgm_wins_where_dcgm_exists():
    g = plan(which_from("dcgm-exporter"), dcgm=lambda: True, gpu=lambda: (1, ""))["gpu_exporter"]
    assert g.kind == "dcgm"
    assert g.argv == ["/opt/bin/dcgm-exporter", "--address", "127.0.0.1:19400"]


def test_nvitop_where_a_gpu_exists_without_dcgm():
    g = plan(which_from(), gpu=lambda: (1, ""), nvitop=lambda: True)["gpu_exporter"]
    assert g.kind == "nvitop"
    assert g.argv[1:] == ["-m", "nvitop_exporter", "--bind-address", "127.0.0.1", "--port", "19400"]


def test_jaeger_absent_when_tracing_is_off_or_binary_missing():
    off = plan(which_from("jaeger-all-in-one"), jaeger_wanted=False)["jaeger"]
    assert off.argv is None and "tracing is off" in off.unavailable
    missing = plan(which_from(), jaeger_wanted=True)["jaeger"]
    assert missing.argv is None and "jaeger-all-in-one" in missing.unavailable


def test_jaeger_binds_every_listener_to_the_bind_address():
    j = plan(which_from("jaeger"), jaeger_wanted=True)["jaeger"]
    assert j.argv[0] == "/opt/bin/jaeger"
    host_ports = [a.split("=", 1)[1] for a in j.argv[1:] if a.endswith(tuple("0123456789"))]
    assert host_ports and all(hp.startswith("127.0.0.1:") for hp in host_ports)
    assert "--collector.otlp.grpc.host-port=127.0.0.1:14317" in j.argv
    assert j.extra["otlp_endpoint"] == "127.0.0.1:14317"
    assert j.extra["ui_url"] == "http://127.0.0.1:26686"


# ---- tracing wiring -----------------------------------------------------------------------------
def traced_profile(tmp_path, tracing: bool):
    src = profiles.resolve_path("cpu-dev").read_text()
    p = tmp_path / "traced.yaml"
    p.write_text(
        src.replace(
            "  scrape_interval: 5s", f"  scrape_interval: 5s\n  tracing: {str(tracing).lower()}"
        ).replace("config: models/", f"config: {profiles.resolve_path('cpu-dev').parent}/models/")
    )
    return profiles.load(p)


def manifest_with_jaeger(status):
    return {"services": {"jaeger": {"status": status, "otlp_endpoint": "127.0.0.1:14317"}}}


def server_argv(profile, manifest):
    endpoint = tracing.endpoint(profile, manifest)
    return server_spec.build(profile, server_spec.Overrides(tracing_endpoint=endpoint)).argv()


def test_server_argv_gains_otlp_flags_only_when_tracing_and_jaeger_runs(tmp_path):
    on = traced_profile(tmp_path, True)
    argv = server_argv(on, manifest_with_jaeger("running"))
    assert argv[-3:] == ["--enable-trace", "--otlp-traces-endpoint", "127.0.0.1:14317"]
    assert "--enable-trace" not in server_argv(on, manifest_with_jaeger("absent"))
    assert "--enable-trace" not in server_argv(on, None)
    off = traced_profile(tmp_path, False)
    assert "--enable-trace" not in server_argv(off, manifest_with_jaeger("running"))
