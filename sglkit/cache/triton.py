"""invoke cache.triton (placeholder until the Triton warm-up lands)."""

from sglkit.cli import task
from sglkit.errors import SglkitError


@task
def triton(c, profile=None):
    """Compile the profile's tuned fused-MoE kernels into TRITON_CACHE_DIR."""
    raise SglkitError("cache.triton is not built yet")
