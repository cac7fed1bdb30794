"""invoke cache.triton: compile SGLang's fused-MoE Triton kernel for the profile's tuned configs.

The work is in sglkit.gpu.triton_warm (also `python -m sglkit.gpu.triton_warm`, which needs no
invoke): it reads the tuned config file SGLang would read for the profile's MoE shape on this
GPU, plans one batch size per distinct compiled variant, and runs the real kernel once for each
with TRITON_CACHE_DIR set to the profile's triton cache folder.
"""

from __future__ import annotations

from sglkit.cli import task

PROFILE_HELP = "profile name under profiles/ or a YAML path (default: $SGLKIT_PROFILE or cpu-dev)"


@task(
    help={
        "profile": PROFILE_HELP,
        "config-file": "warm this tuned config file instead of the one SGLang would look up",
        "max-tokens": "largest batch to plan for (default: the profile's chunked_prefill_size)",
        "device-name": "GPU name for the config file name (default: this GPU's)",
        "json": "also write per-variant first-call times here",
        "lock-timeout": "seconds to wait for another warm of the same folder (default 0: fail)",
        "keys-only": "one variant per config at its own batch size (quicker, partial)",
    }
)
def triton(c, profile=None, config_file=None, max_tokens=None, device_name=None, json=None,
           lock_timeout=None, keys_only=False):  # fmt: skip
    """Compile the profile's tuned fused-MoE kernels into TRITON_CACHE_DIR (needs a GPU)."""
    from sglkit.errors import ConfigError
    from sglkit.gpu import triton_warm

    if max_tokens is not None:
        try:
            max_tokens = int(max_tokens)
        except ValueError:
            raise ConfigError(f"--max-tokens: expected an integer, got {max_tokens!r}") from None
        if max_tokens < 1:
            raise ConfigError("--max-tokens: expected a positive integer")
    try:
        wait = float(lock_timeout or 0)
    except ValueError:
        raise ConfigError(f"--lock-timeout: expected seconds, got {lock_timeout!r}") from None
    s = triton_warm.run(
        profile, config_file, max_tokens, json, device_name, lock_timeout=wait, keys_only=keys_only
    )
    print(f"warm: {len(s['items'])} kernel variants in {s['triton_cache_dir']} "
          f"(first calls {s['total_first_call_s']:.1f}s)")  # fmt: skip
