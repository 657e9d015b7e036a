"""CUTLASS back end on a real GPU (``pytest -m gpu tests/codegen/test_cutlass_gpu.py``).

Every check compares the generated CuTe kernel (SM80-style path: mma.sync, cp.async; built with nvcc
on first use, sm_90a on Hopper) with the float64 reference executor at ragged sizes (lengths that
are not multiples of the 128x64 tiles, queries != keys, GQA 4/2 heads), for bf16 and fp16 and head
dims 64 and 128. Needs nvcc and ``pip install nvidia-cutlass==4.2.0.0``; the first call of each
(variant, dtype, head dim) compiles for about a minute.

What a failure means: ``rel err`` above the tolerance is a wrong kernel (score, mask, softmax or
tile walk); a non-finite output is a masked-row bug; a CodegenError names what is missing.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError
from einfuse.lowering.tile_order import grid_of

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def inputs(B, H, Hkv, N, M, D, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, N, D, device="cuda", generator=gen).to(dtype)
    k = torch.randn(B, Hkv, M, D, device="cuda", generator=gen).to(dtype)
    v = torch.randn(B, Hkv, M, D, device="cuda", generator=gen).to(dtype)
    return q, k, v


def reference(c, q, k, v):
    return run_cascade(c, {"Q": q.double().cpu(), "K": k.double().cpu(), "V": v.double().cpu()})[c.outputs[0]]


def check(spec, B=1, H=4, Hkv=2, N=777, M=None, D=128, dtype=torch.bfloat16, tol=1e-2, seed=0, path="auto"):
    """On Hopper ``path="auto"`` is the wgmma kernel (sm90); ``path="sm80"`` the mma.sync one."""
    c = spec if not isinstance(spec, str) else einfuse.load_spec(spec)
    q, k, v = inputs(B, H, Hkv, N, M or N, D, dtype, seed)
    f = einfuse.compile(c, target="cutlass", path=path)
    out = f(q, k, v)
    torch.cuda.synchronize()
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), f"{spec}: non-finite output"
    err = rel_err(out, reference(c, q, k, v))
    assert err < tol, f"{spec} D={D} {dtype}: rel err {err:.3g} (tol {tol})"
    return f


@pytest.mark.parametrize("spec", [
    "softmax", "causal", "sliding_window:window=100", "sliding_window:window=200,causal=false", "alibi",
    "softcap:cap=20,causal=true", "sigmoid", "sigmoid:causal=true,bias=-2", "s2attn:stride=4,window=64",
    "duo:retrieval_heads=1,recent=64", "na1d:kernel=7,dilation=3", "decode:causal=true",
])
def test_variants_bf16_hd128_ragged_gqa(spec):
    check(spec)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_head_dims_and_dtypes(D, dtype):
    check("causal", D=D, dtype=dtype, tol=1e-2 if dtype == torch.bfloat16 else 3e-3, N=515)
    check("softmax:scale=0.1", D=D, dtype=dtype, tol=1e-2 if dtype == torch.bfloat16 else 3e-3, N=300, M=1000)


@pytest.mark.parametrize("Hkv", [1, 2, 8])
def test_gqa_and_mqa(Hkv):
    check("sliding_window:window=150", H=8, Hkv=Hkv, N=640, D=64, B=2)


@pytest.mark.parametrize("spec", ["na2d:shape=24x20,kernel=5", "na2d:shape=16x32,kernel=7,dilation=2,causal=true",
                                  "na3d:shape=6x8x10,kernel=3"])
def test_neighborhood_block_tables(spec):
    n = math.prod(grid_of(einfuse.load_spec(spec).attrs, {}))
    f = check(spec, H=2, Hkv=2, N=n, D=64)
    assert not f.kernel.last_tables.dense  # empty key tiles were skipped through the tables


def test_cross_lengths_and_short_queries():
    check("causal", N=300, M=1000)  # causal over m <= p: the last 700 keys are never visible
    check("softmax", N=5, M=1000)   # a single ragged query tile
    check("softmax", N=1000, M=37)  # one ragged key tile, no full tile


def test_log_sum_exp_matches_float64():
    q, k, v = inputs(2, 4, 2, 333, 333, 64, torch.bfloat16, seed=1)
    f = einfuse.compile("causal", target="cutlass")
    out, lse = f.kernel(q, k, v, return_lse=True)
    qd, kd = q.double(), k.double().repeat_interleave(2, dim=1)
    scale = f.plan.detail.plain_scale or 64 ** -0.5  # None: the default 1/sqrt(D), resolved at call time
    s = qd @ kd.transpose(-1, -2) * scale
    s = s.masked_fill(torch.ones(333, 333, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
    want = torch.logsumexp(s, dim=-1)
    assert lse.shape == (2, 4, 333) and lse.dtype == torch.float32
    assert float((lse.double() - want).abs().max()) < 2e-2
    assert rel_err(out, reference(einfuse.load_spec("causal"), q, k, v)) < 1e-2


def test_fully_masked_rows_store_zero_and_lse_minus_inf():
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: kv <= q - 70, head_dim=64)
    q, k, v = inputs(2, 2, 2, 300, 300, 64, torch.bfloat16, seed=4)
    f = einfuse.compile(c, target="cutlass")
    out, lse = f.kernel(q * 20, k * 20, v, return_lse=True)  # large logits too
    assert torch.isfinite(out).all() and torch.all(out[:, :, :70] == 0)
    assert torch.all(lse[:, :, :70] == float("-inf")) and torch.isfinite(lse[:, :, 70:]).all()
    assert rel_err(out, reference(c, q * 20, k * 20, v)) < 2e-2


def test_normsum_stage_of_based():
    from einfuse.codegen.cutlass.runtime import CutlassAttention

    plan = einfuse.plan("based:window=64")
    st = next(s for s in plan.stages if s.family == "normsum")
    q, k, v = inputs(1, 4, 4, 700, 700, 64, torch.bfloat16, seed=9)
    q, k = q * 0.3, k * 0.3  # keep the Taylor weights 1 + s + s^2/2 away from cancellation in bf16
    out = CutlassAttention.build(st)(q, k, v)
    assert rel_err(out, reference(st.cascade, q, k, v)) < 2e-2


def test_matches_triton_back_end_on_long_causal():
    q, k, v = inputs(1, 4, 4, 4096, 4096, 128, torch.bfloat16, seed=3)  # whole tiles: no ragged edge
    out = einfuse.compile("causal", target="cutlass")(q, k, v)
    ref = einfuse.compile("causal")(q, k, v)
    assert rel_err(out, ref.float()) < 1e-2


def test_refuses_float32_and_other_head_dims():
    f = einfuse.compile("causal", target="cutlass")
    for dt, D in ((torch.float32, 64), (torch.bfloat16, 96)):
        q, k, v = inputs(1, 2, 2, 64, 64, D, dt)
        with pytest.raises(CodegenError, match="CUTLASS"):
            f(q, k, v)


def test_auto_target_times_both_backends_and_matches_float64(tmp_path, monkeypatch):
    from einfuse.codegen.backend_choice import FastestBackend

    monkeypatch.setenv("EINFUSE_CACHE_DIR", str(tmp_path))  # a fresh choice cache: both are timed
    f = einfuse.compile("causal", target="auto")
    q, k, v = inputs(2, 4, 2, 1000, 1000, 128, torch.bfloat16, seed=5)
    out = f(q, k, v)
    assert isinstance(f.kernel, FastestBackend) and f.kernel.last_backend in ("triton", "cutlass")
    assert rel_err(out, reference(einfuse.load_spec("causal"), q, k, v)) < 1e-2
    (entry,) = f.kernel.cache.read().values()
    assert set(entry["ms"]) == {"triton", "cutlass"} and all(isinstance(t, float) for t in entry["ms"].values())


@pytest.mark.parametrize("spec,D,dtype", [
    ("causal", 128, torch.bfloat16), ("softcap:cap=20,causal=true", 64, torch.float16),
    ("na2d:shape=24x20,kernel=5", 64, torch.bfloat16), ("sigmoid:causal=true,bias=-2", 128, torch.float16),
])
def test_the_sm80_path_on_every_gpu(spec, D, dtype):
    n = math.prod(grid_of(einfuse.load_spec(spec).attrs, {})) if spec.startswith("na") else 777
    check(spec, H=4, Hkv=2, N=n, D=D, dtype=dtype, tol=1e-2 if dtype == torch.bfloat16 else 3e-3, path="sm80")


# ---- the warp-specialised Hopper kernels (path="sm90ws": TMA loads, multi-stage pipeline, producer and
# consumer warpgroups; path="sm90pp": the same with intra-warpgroup overlap and ping-pong). Their loads
# differ from the other paths (TMA zero-fills rows past the end of a head instead of predicated
# cp.async), so ragged tiles, GQA strides, strided inputs and empty tile lists are checked again; the
# per-tile softmax and masks are the shared code.
hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                            reason="the sm90ws/sm90pp paths need a Hopper GPU")
WS_PATHS = ("sm90ws", "sm90pp")
ws_paths = pytest.mark.parametrize("path", WS_PATHS)
WS_VARIANTS = [
    ("causal", 128, torch.bfloat16, 777, 777, 2),
    ("causal", 64, torch.float16, 515, 515, 4),
    ("softcap:cap=20,causal=true", 128, torch.bfloat16, 300, 1000, 1),
    ("alibi", 128, torch.bfloat16, 1000, 300, 2),
    ("sliding_window:window=150", 64, torch.bfloat16, 640, 640, 1),
    ("sigmoid:causal=true,bias=-2", 128, torch.float16, 777, 777, 2),
    ("softmax", 128, torch.bfloat16, 5, 1000, 2),    # one ragged query tile
    ("softmax", 128, torch.bfloat16, 1000, 37, 2),   # one ragged key tile, no full tile
]
WS_NEIGHBORHOODS = ["na2d:shape=24x20,kernel=5", "na3d:shape=6x8x10,kernel=3"]


def masked_prefix_cascade():
    """Query tile 0 (rows 0-127) sees no key: its tile list is empty (no load is issued); rows 128
    and 129 have every key masked inside a tile that is walked."""
    return einfuse.attention(mask_mod=lambda b, h, q, kv: kv <= q - 130, head_dim=128)


@pytest.fixture(scope="module")
def ws_prebuilt():
    """Build the sm90ws/sm90pp kernels of the tests below at once, one process each (nvcc takes ~1 min
    per kernel; one after another they would take most of the GPU session). The tests then load them
    from the build cache; a kernel missing here is simply built by its test."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from einfuse.codegen.cutlass.build import arch_of, prebuild

    names = {torch.bfloat16: "bf16", torch.float16: "fp16"}
    jobs = [(spec, (names[dt], D)) for spec, D, dt, *_ in WS_VARIANTS]
    jobs += [(spec, ("bf16", 64)) for spec in WS_NEIGHBORHOODS]
    jobs += [(masked_prefix_cascade(), ("bf16", 128))]
    sources = {einfuse.compile(spec, target="cutlass", path=path).kernel.source((config,), path)
               for spec, config in jobs for path in WS_PATHS}
    arch = arch_of(0)
    with ProcessPoolExecutor(max_workers=min(len(sources), os.cpu_count() or 1),
                             mp_context=get_context("spawn")) as pool:
        list(pool.map(prebuild, sorted(sources), [arch] * len(sources)))


@hopper
@ws_paths
@pytest.mark.parametrize("spec,D,dtype,N,M,Hkv", WS_VARIANTS)
def test_sm90ws_variants_ragged_gqa(spec, D, dtype, N, M, Hkv, path, ws_prebuilt):
    check(spec, B=2, H=4, Hkv=Hkv, N=N, M=M, D=D, dtype=dtype, tol=1e-2 if dtype == torch.bfloat16 else 3e-3,
          path=path)


@hopper
@ws_paths
@pytest.mark.parametrize("spec", WS_NEIGHBORHOODS)
def test_sm90ws_neighborhood_block_tables(spec, path, ws_prebuilt):
    n = math.prod(grid_of(einfuse.load_spec(spec).attrs, {}))
    f = check(spec, H=2, Hkv=2, N=n, D=64, path=path)
    assert not f.kernel.last_tables.dense  # the producer walked the same sparse tile lists


@hopper
@ws_paths
def test_sm90ws_strided_inputs_lse_fully_masked_rows_and_empty_tiles(path, ws_prebuilt):
    c = masked_prefix_cascade()
    gen = torch.Generator(device="cuda").manual_seed(11)
    # (B, N, H, D) storage seen as (B, H, N, D): the tensor maps take the strides as given; large logits
    q, k, v = ((torch.randn(2, 333, h, 128, device="cuda", generator=gen) * scale).to(torch.bfloat16).transpose(1, 2)
               for h, scale in ((4, 20), (2, 20), (2, 1)))
    assert not q.is_contiguous() and q.stride(2) == 4 * 128
    f = einfuse.compile(c, target="cutlass", path=path)
    out, lse = f.kernel(q, k, v, return_lse=True)
    assert torch.isfinite(out).all() and torch.all(out[:, :, :130] == 0)
    assert torch.all(lse[:, :, :130] == float("-inf")) and torch.isfinite(lse[:, :, 130:]).all()
    assert rel_err(out, reference(c, q, k, v)) < 2e-2
    assert int(f.kernel.last_tables.full_num[..., 0].sum() + f.kernel.last_tables.part_num[..., 0].sum()) == 0


@hopper
@ws_paths
def test_sm90ws_matches_triton_back_end_on_long_causal(path, ws_prebuilt):
    q, k, v = inputs(2, 4, 4, 4096, 4096, 128, torch.bfloat16, seed=3)  # many tiles: every stage reused
    out = einfuse.compile("causal", target="cutlass", path=path)(q, k, v)
    ref = einfuse.compile("causal")(q, k, v)
    assert rel_err(out, ref.float()) < 1e-2
