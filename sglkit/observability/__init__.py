"""Per-run telemetry: scrape config, metrics catalog, init-run supervisor, status and reports."""
