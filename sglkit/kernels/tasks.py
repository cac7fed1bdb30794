"""invoke kernels.*: name, check, overlay, validate, migrate, tune (flags in, lines out).

The work: sglkit.kernels.target (shape, file name, store path), .overlay (SGLang's lookup),
.store, and .tune (the tuner's orchestration)."""

from __future__ import annotations

import json
from pathlib import Path

from invoke import Collection

from sglkit import profile as profiles
from sglkit.cli import PROFILE_HELP, number, task
from sglkit.console import echo
from sglkit.errors import ConfigError, SglkitError
from sglkit.kernels import names, store, target
from sglkit.kernels import tune as tuner
from sglkit.kernels.shapes import moe_shape


@task(
    help={
        "model": "model folder or its config.json",
        "tp": "tensor-parallel size",
        "ep": "expert-parallel size (default 1)",
        "dtype": "fp8_w8a8|int8_w8a8|int8_w8a16|int4_w4a16|bf16 (default: quantization_config)",
        "per_channel_quant": "per-channel quantized weights",
        "down": "the separately tuned down-projection file",
        "device_name": "GPU name as torch reports it (default: ask the GPU)",
        "sglang_version": "naming rule of this SGLang version (default: installed, else newest)",
        "verbose": "explain the shape and the rule on stderr",
    }
)
def name(
    c,
    model,
    tp,
    ep=None,
    dtype=None,
    per_channel_quant=False,
    down=False,
    device_name=None,
    sglang_version=None,
    verbose=False,
):
    """Print the config file name SGLang looks up (stdout: the name only)."""
    shape = moe_shape(
        model,
        tp=number(tp, "--tp", int, 1),
        ep=number(ep, "--ep", int, 1, default=1),
        dtype=dtype,
        per_channel_quant=True if per_channel_quant else None,
    )
    rule = names.rule_for(sglang_version)
    device = names.device_name(device_name)
    out = target.shape_file_name(shape, device, down, rule.version)
    if verbose:
        echo(
            f"# {shape.architecture}: E={shape.E} N={shape.N} K={shape.K} topk={shape.topk} "
            f"dtype={shape.dtype or 'bf16/fp16 (not in the name)'} block_shape="
            f"{list(shape.block_shape) if shape.block_shape else None} tp={shape.tp} ep={shape.ep}"
            + (" (+1 fused shared expert)" if shape.shared_expert_fused else ""),
            stderr=True,
        )
        echo(f"# rule: {rule.explain()}", stderr=True)
        for n in shape.notes:
            echo(f"# note: {n}", stderr=True)
    echo(out)


@task(
    help={
        "profile": PROFILE_HELP,
        "device_name": "GPU name (default: ask the GPU)",
        "triton_version": "Triton version SGLang runs with (default: installed)",
        "sglang_version": "SGLang version (default: installed, else newest read)",
        "store": "the kit's store folder holding configs/ (default: kernels/)",
        "moe-configs": "as server.up --moe-configs: kit (default), sglang, none",
        "json": "one JSON object on stdout",
    }
)
def check(
    c,
    profile=None,
    device_name=None,
    triton_version=None,
    sglang_version=None,
    store_=None,
    moe_configs="kit",
    json_=False,
):
    """Which file the server reads for this profile, GPU and Triton, from where, and why."""
    from sglkit.kernels import explain

    r = explain.lookup(profile, device_name, triton_version, sglang_version, store_,
                       moe_configs)  # fmt: skip
    if json_:
        echo(json.dumps(r, indent=2))
        return
    echo(
        f"# profile {r['profile']}: {r['architecture']} tp={r['tp']} ep={r['ep']} on {r['device']}"
    )
    echo(f"# SGLang {r['sglang']}, Triton {r['triton']}, SGLANG_MOE_CONFIG_DIR={r['overlay']}")
    shipped = r["sglang_configs"]
    if r["moe_configs"] == "none":
        echo("# overlay empty (--moe-configs none): SGLang runs its default config")
    elif r["moe_configs"] == "sglang":
        echo(
            f"# overlay of SGLang's shipped configs {shipped} alone (--moe-configs sglang)"
            if shipped
            else "# overlay empty: no installed SGLang's configs folder found"
        )
    else:
        echo(f"# overlay of the kit's store {Path(r['store']) / 'configs'}")
        echo(
            f"#   over SGLang's shipped configs {shipped}"
            if shipped
            else "#   alone: no installed SGLang's configs folder found"
        )
    report = r["files"]
    for f in report:
        label = "down projection" if f["down"] else ("gate/up" if len(report) > 1 else "both GEMMs")
        echo(f"{label}: {f['file']}")
        echo(
            f"  status: {f['status']}"
            + (f" -> {f['loads']}" if f["loads"] and f["status"] != "found" else "")
        )
        if f["source"]:
            echo(f"  reads: {f['source_path']} ({explain.SOURCES[f['source']]})")
        echo(f"  why: {f['reason']}")
        if f["warning"]:
            echo(f"  SGLang logs: {f['warning']}")
        if f["batch_sizes"]:
            echo(f"  batch sizes: {', '.join(str(b) for b in f['batch_sizes'])}")


@task(help={"profile": PROFILE_HELP, "store": "the kit's store folder (default: kernels/)"})
def overlay(c, profile=None, store_=None):
    """(Re)build the MoE config overlay SGLANG_MOE_CONFIG_DIR names (server launchers do this)."""
    from sglkit.kernels import overlay as ov

    p = profiles.load(profile)
    dest = ov.build(
        p.moe_config_dir(),
        Path(store_) if store_ else store.root(),
    )
    counts: dict[str, int] = {}
    for e in (ov.read_sources(dest) or {}).values():
        counts[e["source"]] = counts.get(e["source"], 0) + 1
    shipped = ov.sglang_configs_dir()
    echo(
        f"{dest}: {counts.get(ov.KIT, 0)} file(s) from the kit's store, "
        f"{counts.get(ov.SGLANG, 0)} shipped by SGLang"
        + ("" if shipped else " (no installed SGLang's configs folder found)")
    )


@task(help={"store": "store folder holding configs/ (default: the kit's kernels/)"})
def validate(c, store_=None):
    """Check every store file: integer keys, the six required fields, sane values."""
    root = Path(store_) if store_ else store.root()
    count, problems = store.validate(root)
    for msg in problems:
        echo(msg)
    if problems:
        raise SglkitError(f"{len(problems)} problem(s) in {count} file(s) under {root / 'configs'}")
    echo(f"ok: {count} file(s) under {root / 'configs'}")


@task(help={"store": "store folder (default: kernels/)", "dry_run": "print the renames only"})
def migrate(c, store_=None, dry_run=False):
    """Rename files of the old fork's scheme (,per_channel_quant=1) to SGLang's current names."""
    root = Path(store_) if store_ else store.root()
    plan = store.migrate(root, dry_run=dry_run)
    for old, new in plan:
        verb = "would rename" if dry_run else "renamed"
        echo(f"{verb}: {old.parent.name}/{old.name} -> {new.name}")
    if not plan:
        echo("nothing to migrate")


@task(
    optional=["ray"],
    help={
        "profile": PROFILE_HELP,
        "batch_sizes": "comma-separated batch sizes (default: SGLang's 18, 1..4096)",
        "budget": "most configs measured per batch size (default: 12%% of the candidates, >= 24)",
        "resume": "continue an interrupted run from its state file",
        "dtype": "override the model's dtype (fp8_w8a8, bf16, ...)",
        "down": "tune the down projection separately (needs bench support)",
        "device_name": "GPU name for the file name (default: ask the GPU)",
        "ray": "run on Ray: --ray (RAY_ADDRESS or a local cluster) or --ray=ADDRESS; one GPU/task",
    },
)
def tune(
    c,
    profile=None,
    batch_sizes=None,
    budget=None,
    resume=False,
    dtype=None,
    down=False,
    device_name=None,
    ray=None,
):
    """Tune the fused-MoE kernel for the profile's model; write the best configs to the store."""

    p = profiles.load(profile)
    shape = target.profile_shape(p, dtype)
    bs = tuner.parse_batch_sizes(batch_sizes)
    budget_n = number(budget, "--budget", int, 1)
    if down:
        raise ConfigError(
            "--down: sglkit.kernels.bench times both GEMMs together; no down-only bench yet"
        )
    tuner.tune_profile(
        p, shape, bs, budget=budget_n, resume=resume, device_name=device_name, ray=ray
    )


ns = Collection("kernels", name, check, overlay, validate, migrate, tune)
