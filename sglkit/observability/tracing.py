"""Traces: the server argv gains SGLang's OTLP flags when the profile traces and Jaeger runs.

SGLang exports OTLP/gRPC traces with `--enable-trace --otlp-traces-endpoint host:port`; the run
manifest names the endpoint (services.jaeger.otlp_endpoint) and the UI (services.jaeger.ui_url).
"""

from __future__ import annotations

from typing import Any

LIVE = ("starting", "running", "restarting")


def otlp_endpoint(manifest: dict[str, Any] | None) -> str | None:
    """host:port of the run's OTLP receiver, or None when Jaeger is not running in that run."""
    if not manifest:
        return None
    jaeger = manifest.get("services", {}).get("jaeger") or {}
    if jaeger.get("status") not in LIVE:
        return None
    return jaeger.get("otlp_endpoint") or None


def endpoint(profile, manifest: dict[str, Any] | None = None) -> str | None:
    """The server's OTLP endpoint: only when the profile traces and the run's Jaeger runs
    (a server.spec.Overrides(tracing_endpoint=...) turns it into SGLang's flags)."""
    return otlp_endpoint(manifest) if profile.telemetry["tracing"] else None
