"""Grafana for a run: its config and provisioning files (pure), written by init-run.

Grafana OSS reads `<run>/grafana/grafana.ini`; everything it writes stays under `<run>/grafana/`.
The run's Prometheus is provisioned as the only data source, and the dashboard generated from
obs.report's query table (sglkit.observability.dashboard) as the home dashboard. Access is
anonymous and read-only (Viewer): no login form, no basic auth, no admin user, no sign-up; the
dashboard and the data source are provisioned read-only. container.up publishes the port on
127.0.0.1 only, like every telemetry port.
"""

from __future__ import annotations

import json
from pathlib import Path

from sglkit.observability import dashboard

DASHBOARD_FILE = "sglkit-run.json"


def layout(run_dir: Path) -> dict[str, Path]:
    g = run_dir / "grafana"
    return {
        "root": g,
        "ini": g / "grafana.ini",
        "data": g / "data",
        "plugins": g / "plugins",
        "provisioning": g / "provisioning",
        "datasource": g / "provisioning" / "datasources" / "sglkit.yaml",
        "provider": g / "provisioning" / "dashboards" / "sglkit.yaml",
        "dashboards": g / "dashboards",
        "dashboard": g / "dashboards" / DASHBOARD_FILE,
        "logs": run_dir / "logs" / "grafana",
    }


def ini(run_dir: Path, *, bind: str, port: int) -> str:
    p = layout(run_dir)
    return "\n".join(
        [
            "; Rendered by sglkit init-run; do not edit.",
            "[paths]",
            f"data = {p['data']}",
            f"logs = {p['logs']}",
            f"plugins = {p['plugins']}",
            f"provisioning = {p['provisioning']}",
            "[server]",
            f"http_addr = {bind}",
            f"http_port = {port}",
            "[auth]",
            "disable_login_form = true",
            "[auth.basic]",
            "enabled = false",
            "[auth.anonymous]",
            "enabled = true",
            "org_name = Main Org.",
            "org_role = Viewer",
            "[security]",
            "disable_initial_admin_creation = true",
            "[users]",
            "allow_sign_up = false",
            "[analytics]",
            "reporting_enabled = false",
            "check_for_updates = false",
            "check_for_plugin_updates = false",
            "[news]",
            "news_feed_enabled = false",
            "[dashboards]",
            f"default_home_dashboard_path = {p['dashboard']}",
            "",
        ]
    )


def datasource(prometheus_url: str) -> str:
    # JSON is YAML: one serializer, no quoting questions
    return json.dumps(
        {
            "apiVersion": 1,
            "datasources": [
                {
                    "name": "Prometheus (this run)",
                    "type": "prometheus",
                    "uid": dashboard.DATASOURCE_UID,
                    "access": "proxy",
                    "url": prometheus_url,
                    "isDefault": True,
                    "editable": False,
                }
            ],
        },
        indent=2,
    )


def provider(run_dir: Path) -> str:
    return json.dumps(
        {
            "apiVersion": 1,
            "providers": [
                {
                    "name": "sglkit",
                    "type": "file",
                    "disableDeletion": True,
                    "allowUiUpdates": False,
                    "options": {"path": str(layout(run_dir)["dashboards"])},
                }
            ],
        },
        indent=2,
    )


def files(
    run_dir: Path,
    *,
    bind: str,
    port: int,
    prometheus_url: str,
    gpu_scheme: str | None,
    scrape_interval_s: float,
    run_id: str,
) -> dict[Path, str]:
    """Every file Grafana needs for this run, path -> text."""
    p = layout(run_dir)
    return {
        p["ini"]: ini(run_dir, bind=bind, port=port),
        p["datasource"]: datasource(prometheus_url),
        p["provider"]: provider(run_dir),
        p["dashboard"]: dashboard.render(gpu_scheme or "dcgm", scrape_interval_s, run_id),
    }
