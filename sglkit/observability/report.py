"""invoke obs.report / obs.compare (placeholder until the report work lands)."""

from sglkit.cli import task
from sglkit.errors import SglkitError


@task
def report(c, run=None, root=None, out=None):
    """Build plots, an HTML page and a JSON summary for one run."""
    raise SglkitError("obs.report is not built yet")


@task
def compare(c, run_a, run_b):
    """Print the differences between two runs' summaries."""
    raise SglkitError("obs.compare is not built yet")
