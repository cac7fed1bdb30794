"""GPU host checks behind `nox -s gpu_smoke`."""
