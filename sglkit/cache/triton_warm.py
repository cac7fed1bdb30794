"""Warm TRITON_CACHE_DIR with SGLang's fused-MoE Triton kernel for a profile's tuned configs.

What SGLang will compile at serving time is decided by three things, all mirrored here:

1. Which config file it reads: `<SGLANG_MOE_CONFIG_DIR>/configs/triton_<version>/<name>`, else
   the same name under another `triton_*` folder, in the overlay of the kit's store over SGLang's
   shipped configs (replayed by sglkit.kernels.overlay.replay).
2. Which entry of it a batch of M tokens uses: the key nearest to M, first key on a tie.
3. Which Triton specialization that call compiles: the kernel's integer arguments EM (length of
   the aligned token list) and num_valid_tokens (M * topk) are specialized on "divisible by 16"
   and "equal to 1", so one config compiles up to four binaries depending on M.

`plan()` walks every M from 1 to the profile's largest batch, keeps one M per distinct (config,
specialization), and `warm()` runs the real kernel (both GEMMs of the MoE layer) once for each,
so the server's first requests find every binary in the cache. Pure parts (lookup, plan) run
without a GPU; `warm()` needs torch, Triton and the SGLang wheel.

`python -m sglkit.cache.triton_warm --profile P [--config-file F] [--json OUT]` runs it in a fresh
process (what `invoke cache.triton` and benchmarks/triton_warm.py use).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sglkit.errors import ConfigError, SglkitError
from sglkit.kernels.moe_align import max_padded_tokens
from sglkit.versions import SGLang

KERNEL_KEYS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps",
               "num_stages")  # fmt: skip
DEFAULT_MAX_TOKENS = 8192
GDC_EARLY_ROWS = 512  # fused_moe_triton_kernels.invoke_fused_moe_kernel, SGLang 0.5.19-0.5.23


# ----------------------------------------------------------------------------- config lookup


def load_configs(path: Path) -> dict[int, dict[str, int]]:
    """{M: config} from a tuned config file; a ConfigError names the file and the bad entry."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read tuned config file: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: expected an object of batch size -> config")
    out: dict[int, dict[str, int]] = {}
    for key, cfg in raw.items():
        try:
            m = int(key)
        except ValueError:
            raise ConfigError(f"{path}: key {key!r}: expected a batch size (integer)") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path}: {key}: expected a config object")
        missing = [k for k in KERNEL_KEYS[:4] if k not in cfg]
        if missing:
            raise ConfigError(f"{path}: {key}.{missing[0]}: missing")
        for k in KERNEL_KEYS:
            if k in cfg and (isinstance(cfg[k], bool) or not isinstance(cfg[k], int)):
                raise ConfigError(f"{path}: {key}.{k}: expected an integer, got {cfg[k]!r}")
        out[m] = cfg
    return out


# ----------------------------------------------------------------------------- the plan


def _spec(v: int) -> str:
    """Triton's integer specialization: '1', 'D' (divisible by 16) or '' (neither)."""
    return "1" if v == 1 else ("D" if v % 16 == 0 else "")


def specialization(M: int, topk: int, block_m: int, num_experts: int,
                   sglang: SGLang | None = None) -> tuple:  # fmt: skip
    """What of a call with M tokens picks a distinct binary besides the config, on `sglang`
    (default: the installed one).

    EM and num_valid_tokens specializations; EM is max_padded_tokens, rounded to 4 from SGLang
    0.5.22 on. From 0.5.19 on, SGLang's PDL switch GDC_EARLY too (a constexpr, `A.shape[0] <=
    512`: M rows for the gate/up GEMM, M * topk rows for the down GEMM); None before.
    """
    sg = sglang or SGLang.here()
    numel = M * topk
    em = _spec(max_padded_tokens(numel, block_m, num_experts, sg.moe_align_pads_to_4()))
    if not sg.moe_kernel_has_gdc_early():
        return em, _spec(numel), None, None
    return em, _spec(numel), M <= GDC_EARLY_ROWS, numel <= GDC_EARLY_ROWS


def _flag(v) -> str:
    return ("e" if v is True else "-") if isinstance(v, bool) else (v or "-")


def nearest_key(keys: list[int], M: int) -> int:
    """SGLang's choice: min(keys, key=|k - M|), the first of equals in file order."""
    return min(keys, key=lambda k: abs(k - M))


@dataclass(frozen=True)
class Item:
    M: int
    key: int
    config: dict
    spec: tuple

    def label(self) -> str:
        c = self.config
        spec = "".join(_flag(v) for v in self.spec)
        return (
            f"M={self.M} (key {self.key}) BM{c['BLOCK_SIZE_M']} BN{c['BLOCK_SIZE_N']} "
            f"BK{c['BLOCK_SIZE_K']} G{c['GROUP_SIZE_M']} w{c.get('num_warps', 4)} "
            f"s{c.get('num_stages', 2)} spec {spec}"
        )


def kernel_config(config: Mapping[str, Any]) -> dict[str, int]:
    return {k: int(config[k]) for k in KERNEL_KEYS if k in config}


def plan(configs: Mapping[int, dict], topk: int, num_experts: int, max_tokens: int,
         keys_only: bool = False, sglang: SGLang | None = None) -> list[Item]:  # fmt: skip
    """One M per distinct (kernel config, specialization) over batches 1..max_tokens.

    The config keys themselves come first where they are in range (those are the batch sizes
    the file was tuned for, often the CUDA-graph sizes the server captures). `keys_only`: one
    item per distinct config at its own key, every key (a quicker, partial warm).
    """
    keys = list(configs)
    sglang = sglang or SGLang.here()  # once, not per M
    seen: set[tuple] = set()
    items: list[Item] = []
    if keys_only:
        candidates = keys
    else:
        candidates = [k for k in keys if 1 <= k <= max_tokens] + list(range(1, max_tokens + 1))
    for M in candidates:
        key = nearest_key(keys, M)
        cfg = kernel_config(configs[key])
        spec = specialization(M, topk, cfg["BLOCK_SIZE_M"], num_experts, sglang)
        sig = (tuple(sorted(cfg.items())), spec)
        if sig in seen:
            continue
        seen.add(sig)
        items.append(Item(M=M, key=key, config=cfg, spec=spec))
    return items


# ----------------------------------------------------------------------------- the profile


@dataclass(frozen=True)
class Target:
    """What to warm: the MoE problem of a profile and the tuned file SGLang would read."""

    shape: Any  # sglkit.kernels.shapes.MoEShape
    file_name: str
    config_file: Path | None
    max_tokens: int
    lookup: str  # how the file was found: "--config-file", or store.lookup's status


def locate(prof, device: str, triton_version: str, config_file: str | None = None,
           max_tokens: int | None = None, store_root: Path | None = None,
           sglang_dir: Any = "installed") -> Target:  # fmt: skip
    """The profile's MoE shape, its config file name on GPU `device`, and the file SGLang
    `triton_version` would load through SGLANG_MOE_CONFIG_DIR (the overlay of the kit's store,
    `store_root` or kernels/, over SGLang's shipped configs: `sglang_dir`, a configs folder or
    None, default the installed SGLang's); no GPU needed."""
    from sglkit.kernels import overlay, target

    kt = target.kernel_target(prof, device, triton_version, store_root=store_root)
    shape, file_name = kt.shape, kt.file_name
    limit = int(max_tokens or prof.server.get("chunked_prefill_size") or DEFAULT_MAX_TOKENS)
    if config_file:
        if not Path(config_file).is_file():
            raise ConfigError(f"--config-file: {config_file}: no such file")
        return Target(shape, file_name, Path(config_file), limit, "--config-file")
    # SGLang's lookup over the overlay the server will read (the store over SGLang's own files)
    (found,) = overlay.replay(
        [file_name],
        triton_version,
        kt.rule,
        prof.moe_config_dir(),
        kt.store_root,
        overlay.INSTALLED if sglang_dir == "installed" else sglang_dir,
    )
    if found.lookup.status == "error":
        raise ConfigError(f"kernels store: {found.lookup.warning}")
    return Target(shape, file_name, found.origin, limit, found.lookup.status)


def profile_target(prof, config_file: str | None = None, max_tokens: int | None = None,
                   device: str | None = None) -> Target:  # fmt: skip
    """locate() on this GPU with the installed Triton."""
    import triton

    from sglkit.kernels import names

    return locate(prof, names.device_name(device), triton.__version__, config_file, max_tokens)


def _dims(shape):
    from sglkit.kernels.moe_kernel import dims_from

    return dims_from(shape)


def preflight() -> None:
    """torch with a GPU, Triton and SGLang's kernel module, or a one-line SglkitError."""
    for module in ("torch", "triton", "sglang.kernels.ops.moe.fused_moe_triton_kernels"):
        try:
            __import__(module)
        except Exception as e:
            raise SglkitError(
                f"cache.triton runs on a GPU host: {module} does not import ({type(e).__name__})"
            ) from None
    import torch

    if not torch.cuda.is_available():
        raise SglkitError(f"cache.triton runs on a GPU host: torch {torch.__version__} sees none")


# ----------------------------------------------------------------------------- warming


@dataclass
class Timing:
    M: int
    key: int
    label: str
    first_call_s: float


def warm(dims, items: Iterable[Item], progress: Callable[[Item, float], None] | None = None,
         seed: int = 0) -> list[Timing]:  # fmt: skip
    """Run both GEMMs of SGLang's MoE layer once per item; the first call compiles or loads.

    Each item's time is its first forward (compile or cache load, plus the run), synchronized.
    """
    import torch

    from sglkit.kernels import moe_kernel as mk

    weights = mk.random_weights(dims, seed=seed)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    out: list[Timing] = []
    for item in items:
        runner = mk.MoERunner(dims, weights, item.M, item.config["BLOCK_SIZE_M"])
        _use_server_length(runner, item, dims)
        topk_w, topk_ids = mk.random_routing(item.M, dims, gen=gen)
        hidden = torch.randn(item.M, dims.K, device="cuda", generator=gen, dtype=torch.bfloat16)
        runner.load(hidden, topk_w, topk_ids)
        torch.cuda.synchronize()
        start = time.perf_counter()
        runner.forward(item.config)
        torch.cuda.synchronize()
        secs = time.perf_counter() - start
        if not bool(torch.isfinite(runner.out).all()):
            raise SglkitError(f"fused-MoE kernel gave non-finite output for {item.label()}")
        out.append(Timing(item.M, item.key, item.label(), secs))
        if progress:
            progress(item, secs)
        del runner
    return out


def _use_server_length(runner, item: Item, dims) -> None:
    """Give the runner the aligned-token list length SGLang allocates (the tuner rounds it to 16,
    which would compile only the 'divisible by 16' variant)."""
    import torch

    length = max_padded_tokens(item.M * dims.topk, item.config["BLOCK_SIZE_M"], dims.E)
    if runner.length == length:
        return
    runner.length = length
    runner.sorted_ids = torch.zeros(length, device="cuda", dtype=torch.int32)


# ----------------------------------------------------------------------------- entry point


def cache_folder(prof) -> tuple[Path, str]:
    """(the Triton cache folder to warm, the setting that names it): $SGLKIT_TRITON_CACHE_DIR
    where set (benchmarks/triton_warm.py uses fresh ones), else the profile's TRITON_CACHE_DIR."""
    override = os.environ.get("SGLKIT_TRITON_CACHE_DIR")
    if override:
        return Path(override), "SGLKIT_TRITON_CACHE_DIR"
    return Path(prof.environment()["TRITON_CACHE_DIR"]), "cache.root"


def run(profile, config_file: str | None, max_tokens: int | None,
        json_out: str | None, device: str | None = None, quiet: bool = False,
        lock_timeout: float = 0.0, keys_only: bool = False) -> dict:  # fmt: skip
    """Set TRITON_CACHE_DIR from the profile (a name, a path or a loaded Profile), plan, warm
    with progress, write the marker.

    $SGLKIT_TRITON_CACHE_DIR overrides the folder (benchmarks/triton_warm.py uses fresh ones).
    """
    from sglkit import profile as profiles
    from sglkit.cache import store

    prof = profile if isinstance(profile, profiles.Profile) else profiles.load(profile)
    cache_dir, field = cache_folder(prof)
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir)  # before triton is first imported below
    start = time.perf_counter()
    preflight()
    store.ensure_writable(cache_dir, field)
    target = profile_target(prof, config_file, max_tokens, device)
    if target.config_file is None:
        raise ConfigError(
            f"no tuned config {target.file_name} in the kernels store for this Triton; "
            "run kernels.tune or pass --config-file"
        )
    configs = load_configs(target.config_file)
    dims = _dims(target.shape)
    items = plan(configs, dims.topk, dims.E, target.max_tokens, keys_only)
    setup_s = time.perf_counter() - start
    with store.locked(cache_dir, wait=lock_timeout, what="cache.triton"):
        store.remove_marker(cache_dir)
        timings = _warm_with_progress(target, dims, items, quiet)
        summary = {
            "profile": prof.name,
            "config_file": str(target.config_file),
            "config_sha256": hashlib.sha256(target.config_file.read_bytes()).hexdigest(),
            "file_name": target.file_name,
            "triton_cache_dir": str(cache_dir),
            "versions": _versions(),
            "lookup": target.lookup,
            "dims": asdict(dims),
            "max_tokens": target.max_tokens,
            "keys_only": keys_only,
            "setup_s": setup_s,
            "total_first_call_s": sum(t.first_call_s for t in timings),
            "items": [asdict(t) for t in timings],
        }
        store.write_marker(cache_dir, {
            **warmed_for(prof, target, summary["config_sha256"], keys_only),
            "warmed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config_file": summary["config_file"],
            "dims": summary["dims"],
            "variants": len(timings),
        })  # fmt: skip
    if json_out:
        from sglkit.fsutil import atomic_write_json

        atomic_write_json(json_out, summary)
    return summary


def warmed_for(prof, target: Target, config_sha256: str, keys_only: bool = False) -> dict:
    """What a Triton folder's marker names: the folder is warm for a target where its marker
    holds all of this (written by `run`, compared by `fold`)."""
    return {"kind": "triton", "profile_hash": prof.hash(), "config_sha256": config_sha256,
            "file_name": target.file_name, "max_tokens": target.max_tokens,
            "keys_only": keys_only, "versions": _versions()}  # fmt: skip


FOLD_CHOICES = ("auto", "on", "off")


def fold_target(prof, choice: str) -> tuple[Target | None, str]:
    """Whether the warm's Triton step runs: (the target, "") where it does, (None, why) where it
    is skipped; with choice "on", a SglkitError instead of a skip (the warm checks that before
    its server starts, so that it fails at once rather than after the long part)."""
    if choice == "off":
        return None, "off (--triton off)"
    try:
        preflight()
        target = profile_target(prof)
        if target.config_file is None:
            raise ConfigError(f"no MoE config file {target.file_name} for this Triton")
    except SglkitError as e:
        if choice == "on":
            raise SglkitError(f"--triton on: {e}", e.exit_code) from None
        return None, f"skipped ({e})"
    return target, ""


def fold(prof, choice: str, say: Callable[[str], None], lock_timeout: float = 0.0) -> str:
    """The warm's Triton step (`cache.deepgemm --triton`): `run` for the MoE config file the
    profile's server will read, once the warm's server has stopped; returns one line. auto: where
    this host runs SGLang's kernel on a GPU and such a file exists; on: required; off: nothing.
    A Triton folder whose marker names that file's content, this profile, batch range and these
    versions is left as it is."""
    from sglkit.cache import store

    target, why = fold_target(prof, choice)
    if target is None:
        return f"triton: {why}"
    cache_dir, _ = cache_folder(prof)
    marker = store.read_marker(cache_dir) or {}
    digest = hashlib.sha256(target.config_file.read_bytes()).hexdigest()
    if all(marker.get(k) == v for k, v in warmed_for(prof, target, digest).items()):
        return f"triton: already warm for {target.config_file.name} ({cache_dir})"
    say(f"triton: warming the fused-MoE kernels of {target.config_file}")
    try:
        s = run(prof, None, None, None, lock_timeout=lock_timeout)
    except SglkitError:
        raise
    except Exception as e:  # torch, Triton or SGLang failing on this host: one line, not a trace
        raise SglkitError(
            f"--triton {choice}: warming the MoE kernels failed ({type(e).__name__}: {e}); "
            "the DeepGEMM cache is warm; --triton off skips this step"
        ) from None
    return (f"triton: {len(s['items'])} kernel variants in {cache_dir} "
            f"(first calls {s['total_first_call_s']:.1f} s)")  # fmt: skip


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("sglang", "triton", "torch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    import torch

    out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _warm_with_progress(target: Target, dims, items: list[Item], quiet: bool) -> list[Timing]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sglkit.console import err

    console = err()
    if not quiet:
        console.print(f"warming {len(items)} kernel variants from {target.config_file}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=quiet) as bar:  # fmt: skip
        task = bar.add_task("fused-MoE kernels", total=len(items))

        def step(item: Item, secs: float) -> None:
            bar.advance(task)
            if not quiet:
                bar.console.print(f"  {item.label()}  {secs * 1e3:8.1f} ms")

        return warm(dims, items, progress=step)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sglkit.cache.triton_warm", description=__doc__)
    p.add_argument("--profile", default=None)
    p.add_argument("--config-file", default=None, help="warm this tuned file instead")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="largest batch to plan for (default: the profile's chunked_prefill_size)",
    )
    p.add_argument("--device-name", default=None, help="GPU name for the config file name")
    p.add_argument("--json", dest="json_out", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--lock-timeout", type=float, default=0.0)
    p.add_argument("--keys-only", action="store_true", help="one variant per config, at its key")
    a = p.parse_args(argv)
    if a.max_tokens is not None and a.max_tokens < 1:
        raise ConfigError("--max-tokens: expected a positive integer")
    s = run(
        a.profile,
        a.config_file,
        a.max_tokens,
        a.json_out,
        a.device_name,
        a.quiet,
        a.lock_timeout,
        a.keys_only,
    )
    print(json.dumps({k: s[k] for k in ("total_first_call_s", "setup_s")} | {"n": len(s["items"])}))
    return 0


if __name__ == "__main__":
    from sglkit.cli import main_guard

    sys.exit(main_guard(main)())
