"""invoke obs.*: up (the telemetry stack in the foreground), status, catalog, report, compare."""

from __future__ import annotations

from pathlib import Path

from invoke import Collection
from invoke.exceptions import Exit

from sglkit import profile as profiles
from sglkit.cli import PROFILE_HELP, ROOT_HELP, task
from sglkit.console import echo
from sglkit.errors import ConfigError


@task(
    help={
        "profile": PROFILE_HELP,
        "root": ROOT_HELP,
        "run_id": "run id (default: a new one); an existing id is refused",
        "bind": "listen address (default: the profile's telemetry.bind, 127.0.0.1)",
        "ports": "'auto' picks free ports on the bind address (default: the profile's ports)",
        "server_metrics": "scrape the SGLang server: auto (GPU profiles), on, off",
    }
)
def up(c, profile=None, root=None, run_id=None, bind=None, ports=None, server_metrics="auto"):
    """Start Prometheus, node_exporter, GPU exporter, Jaeger for a new run; Ctrl-C stops it."""
    from sglkit.observability.init_run import InitRun, Options

    run = InitRun(
        Options(
            profile=profile,
            root=root,
            run_id=run_id,
            bind=bind,
            ports=ports,
            server_metrics=server_metrics,
        )
    )
    code = run.run()
    if code:
        raise Exit(code=code)


@task(help={"profile": PROFILE_HELP, "root": ROOT_HELP, "json": "print one JSON object"})
def status(c, profile=None, root=None, json_=False):
    """The latest run's services and Prometheus targets; exits 1 when a target is down."""
    import json as _json

    from sglkit.observability import status as st

    result = st.collect(profiles.telemetry_root(profile, root))
    problems = st.problems(result)
    if json_:
        echo(_json.dumps({**result, "problems": problems}, indent=2))
    else:
        st.render(result)
    if problems:
        raise Exit(f"not healthy: {problems[0]}", code=1)


@task(
    help={
        "check": "a live /metrics URL: list catalog metrics it lacks and ones it has we don't know",
        "source": "with --check: compare only this source (sglang, dcgm, nvitop, node, prometheus)",
        "out": "where to write the generated page (default: docs/metrics.md)",
        "verify": "exit 1 when docs/metrics.md differs from what the catalog generates",
    }
)
def catalog(c, check=None, source=None, out=None, verify=False):
    """Generate docs/metrics.md from observability/metrics_catalog.yaml, or --check a URL."""
    from sglkit import paths
    from sglkit.fsutil import atomic_write_text
    from sglkit.observability import catalog as cat

    data = cat.load()
    if check:
        sources = [s.strip() for s in source.split(",")] if source else None
        r = cat.check_url(check, data, sources)
        echo(f"{r.url}: sources {', '.join(r.sources) or '(none recognised)'}")
        if not r.sources:
            raise Exit("no catalog metric found at that endpoint (wrong URL? use --source)", 1)
        echo(f"missing core metrics ({len(r.missing_core)}):")
        for n in r.missing_core:
            echo(f"  {n}")
        echo(f"missing optional metrics ({len(r.missing_other)}; present only with a feature):")
        for n in r.missing_other:
            echo(f"  {n}")
        echo(f"not in the catalog ({len(r.unknown)}):")
        for n in r.unknown:
            echo(f"  {n}")
        if not r.ok:
            raise Exit(
                f"{len(r.missing_core)} core metric(s) missing: {', '.join(r.missing_core)}",
                code=1,
            )
        return
    text = cat.render_markdown(data) + "\n"
    target = Path(out) if out else paths.home() / "docs" / "metrics.md"
    if verify:
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current != text:
            raise Exit(f"{target} is stale: run invoke obs.catalog", code=1)
        echo(f"ok: {target} matches the catalog")
        return
    if source:
        raise ConfigError("--source: only meaningful with --check")
    atomic_write_text(target, text)
    echo(f"wrote {target} ({len(data['metrics'])} metrics)", stderr=True)


@task(
    help={
        "run": "run id under <root>/runs, or a run folder (default: the latest run)",
        "root": ROOT_HELP,
        "out": "output folder (default: <run>/report; replaced as a whole)",
    }
)
def report(c, run=None, root=None, out=None):
    """Build PNG plots, one self-contained HTML page and summary.json for a run."""
    from sglkit.console import err
    from sglkit.observability import manifest as mf
    from sglkit.observability.report import build_report

    console = err()
    run_dir = mf.resolve_run(run, root)
    with console.status(f"report for {run_dir.name}") as status:

        def log(msg: str) -> None:
            status.update(f"report for {run_dir.name}: {msg}")

        summary = build_report(run_dir, Path(out) if out else None, log=log)
    folder = Path(out) if out else run_dir / "report"
    empty = [p["title"] for p in summary["panels"] if not p["has_data"]]
    console.print(
        f"report: {folder / 'index.html'} ({len(summary['panels']) - len(empty)} panels with "
        f"data, {len(empty)} without; data from {summary['prometheus']['how']} Prometheus)"
    )
    print(folder / "index.html")


@task(
    help={
        "run_a": "run id, run folder or summary.json (the baseline)",
        "run_b": "run id, run folder or summary.json",
        "root": ROOT_HELP,
    }
)
def compare(c, run_a, run_b, root=None):
    """Print a table of differences between two runs' report summaries (B against A)."""
    from sglkit.observability.compare import load_summary, print_compare

    a = load_summary(run_a, root, "RUN_A")
    b = load_summary(run_b, root, "RUN_B")
    print_compare(a, b)


ns = Collection("obs", up, status, catalog, report, compare)
