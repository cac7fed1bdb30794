"""The tuner's adapter around SGLang's fused-MoE Triton kernel, on a real GPU.

Small shapes (a few experts) so the file runs in seconds; the real model shapes are exercised by
benchmarks/tune_moe.py. Needs a GPU, torch and the SGLang wheel (skips with the reason if not).
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.requires("gpu"), pytest.mark.requires("sglang")]

BF16 = dict(E=8, N=128, K=256, topk=2)
FP8 = dict(E=8, N=256, K=512, topk=2, dtype="fp8_w8a8", block_shape=(128, 128))


@pytest.fixture(scope="module")
def mk():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from sglkit.kernels import moe_kernel

    return moe_kernel


@pytest.fixture(scope="module")
def bench(mk):
    from sglkit.kernels import bench

    return bench


def test_align_matches_sglang_triton_align(mk):
    """Our torch alignment equals SGLang's own single-CTA Triton align (numel <= 64), block by
    block: same padded total, same expert per block, same token ids in each block."""
    import torch
    import triton
    from sglang.kernels.ops.moe.moe_align_small_numel import moe_align_small_numel

    gen = torch.Generator(device="cuda").manual_seed(3)
    for trial in range(12):
        E, M, bs = (257, 64, 33)[trial % 3], 1 + trial % 7, (16, 32, 64)[trial % 3]
        d = mk.MoEDims(E, 128, 256, 8 if E > 8 else 2)
        _, ids = mk.random_routing(M, d, gen=gen)
        n = mk.max_padded_tokens(ids.numel(), bs, E)
        s1 = torch.empty(n, dtype=torch.int32, device="cuda")
        e1 = torch.empty(triton.cdiv(n, bs), dtype=torch.int32, device="cuda")
        p1 = torch.empty(1, dtype=torch.int32, device="cuda")
        moe_align_small_numel(ids, E + 1, bs, s1, e1, p1)
        s2, e2, p2 = mk.align_block_size(ids, bs, E, n)
        total = int(p1.item())
        assert int(p2.item()) == total
        nb = total // bs
        assert torch.equal(e1[:nb], e2[:nb])
        a = torch.sort(s1[:total].view(nb, bs), dim=1).values
        b = torch.sort(s2[:total].view(nb, bs), dim=1).values
        assert torch.equal(a, b)


def test_align_invariants_at_large_batch(mk):
    """Beyond the Triton align's range: every (token, slot) pair appears once, in a block of its
    own expert; every other slot below the total is padding (= numel)."""
    import torch

    d = mk.MoEDims(E=64, N=128, K=256, topk=8)
    _, ids = mk.random_routing(300, d)
    s, e, n = mk.align_block_size(ids, 32, d.E)
    total, numel = int(n.item()), ids.numel()
    body = s[:total].long()
    real = body[body < numel]
    assert torch.equal(torch.sort(real).values, torch.arange(numel, device="cuda"))
    assert int((body == numel).sum()) == total - numel
    flat = ids.reshape(-1).long()
    block_of = torch.arange(total, device="cuda") // 32
    mask = body < numel
    assert torch.equal(flat[body[mask]], e[block_of[mask]].long())


@pytest.mark.parametrize("dims", [BF16, FP8], ids=["bf16", "fp8-block"])
@pytest.mark.parametrize("M", [1, 7, 64])
def test_layer_matches_float32_reference(mk, bench, dims, M):
    d = mk.MoEDims(**dims)
    cfg = bench.default_config(d, M)
    err = bench.reference_check(d, None, cfg, M, mirror_quant=True)
    # bf16 on H200: ~4e-3. fp8: ~1.3e-2 even mirrored (an fp8 rounding flip of the intermediate
    # moves an element by up to 1/16), against ~4e-2 unmirrored
    limit = 2.5e-2 if d.fp8 else 1e-2
    assert err < limit, f"relative error {err:.2e} with SGLang's default config {cfg}"


def test_fp8_error_without_mirroring_is_the_quantization(mk, bench):
    """Against a float32-activation reference the fp8 error is the activation quantization's:
    bounded, and well above the mirrored figure (so the mirror does change what is compared)."""
    d = mk.MoEDims(**FP8)
    cfg = bench.default_config(d, 16)
    plain = bench.reference_check(d, None, cfg, 16)
    mirrored = bench.reference_check(d, None, cfg, 16, mirror_quant=True)
    assert plain < 0.08
    assert mirrored < plain


def test_reference_check_detects_a_wrong_routing(mk):
    """The comparison can fail: the same outputs against the reference of another routing."""
    import torch

    d = mk.MoEDims(**BF16)
    w = mk.random_weights(d, seed=1)
    r = mk.MoERunner(d, w, 16, 16)
    x = torch.randn(16, d.K, device="cuda", dtype=torch.bfloat16)
    tw, ids = mk.random_routing(16, d)
    r.load(x, tw, ids)
    out = r.forward({"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1})
    good = mk.rel_error(out, mk.reference(d, w, x, tw, ids))
    bad = mk.rel_error(out, mk.reference(d, w, x, tw, (ids + 1) % d.E))
    assert good < 1e-2 < 0.5 < bad


def test_measure_times_and_rejects_impossible_configs(mk, bench):
    """measure() gives a positive finite median; a config too large for shared memory is +inf."""
    import math

    d = mk.MoEDims(**BF16)
    measure = bench.make_measure(d, reps=5, sets=2)
    t = measure(bench.default_config(d, 16), 16)
    assert 0 < t < 0.1
    huge = dict(BLOCK_SIZE_M=256, BLOCK_SIZE_N=256, BLOCK_SIZE_K=256, GROUP_SIZE_M=1,
                num_warps=4, num_stages=5)  # fmt: skip
    assert math.isinf(measure(huge, 16))
    assert measure.bench.failures


def test_copy_bandwidth_is_plausible(bench):
    bw = bench.copy_bandwidth(nbytes=512 * 2**20, reps=10)
    assert 1e11 < bw < 2e13  # 0.1 to 20 TB/s: any current GPU
