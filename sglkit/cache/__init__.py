"""Warm caches: DeepGEMM and Triton warm-up, completion markers, status, export/import."""
