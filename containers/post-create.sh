#!/usr/bin/env bash
# devcontainer post-create: check the mounts and the cache environment, create the cache folders,
# and say where everything is. Runs as the dev user inside the container; safe to run again.
set -euo pipefail

fail=0
for d in /models /cache /telemetry; do
  if [ ! -d "$d" ]; then
    echo "post-create: $d is not mounted (run invoke container.storage on the host)" >&2; fail=1
  elif [ ! -w "$d" ]; then
    echo "post-create: $d is not writable by $(id -un) ($(id -u)); on the host: invoke container.storage" >&2
    fail=1
  fi
done
[ -d /profiles ] || { echo "post-create: /profiles is not mounted" >&2; fail=1; }
[ "$fail" = 0 ] || exit 1

# every cache variable of cache/layout.yaml points under /cache: create those folders
for var in SGLANG_DG_CACHE_DIR DG_JIT_CACHE_DIR TRITON_CACHE_DIR FLASHINFER_WORKSPACE_BASE \
           TORCHINDUCTOR_CACHE_DIR HF_HOME; do
  dir="${!var:-}"
  [ -n "$dir" ] && mkdir -p "$dir"
done
# ~/.cache/flashinfer links into the cache mount: make sure it does not dangle
if [ -L "$HOME/.cache/flashinfer" ]; then mkdir -p "$(readlink "$HOME/.cache/flashinfer")"; fi

python3 -c 'import sglkit, sglkit.profile as p; pr = p.load(); print("post-create: profile", pr.name, "ok")'
echo "post-create: telemetry runs in /telemetry/runs (latest: $(readlink /telemetry/latest 2>/dev/null || echo none))"
echo "post-create: caches in /cache, models in /models, profiles in /profiles"
