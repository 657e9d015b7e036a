"""Generated kernels on a real GPU (``pytest -m gpu``): realistic sizes, 16-bit inputs, against the
float64 reference executor (and a float32 torch formula at lengths the reference is too slow for)."""

import math

import numpy as np
import pytest
import torch

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.lowering.onepass import analyze
from einfuse.lowering.tile_order import grid_of

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def rel_err(out, ref):
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def inputs(B, H, Hkv, N, M, D, dtype, seed=0, Dv=None):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, H, N, D, device="cuda", generator=gen).to(dtype)
    k = torch.randn(B, Hkv, M, D, device="cuda", generator=gen).to(dtype)
    v = torch.randn(B, Hkv, M, Dv or D, device="cuda", generator=gen).to(dtype)
    return q, k, v


def check(spec, B=1, H=4, Hkv=2, N=777, M=None, D=128, dtype=torch.bfloat16, tol=1e-2, Dv=None, **options):
    c = einfuse.load_spec(spec)
    q, k, v = inputs(B, H, Hkv, N, M or N, D, dtype, Dv=Dv)
    f = einfuse.compile(c, **options)
    out = f(q, k, v)
    torch.cuda.synchronize()
    ref = run_cascade(c, {"Q": q.float().cpu(), "K": k.float().cpu(), "V": v.float().cpu()})["O"]
    err = rel_err(out.float().cpu().numpy(), ref)
    assert torch.isfinite(out).all(), spec
    assert err < tol, f"{spec}: rel err {err}"
    return f


@pytest.mark.parametrize("spec", [
    "softmax:head_dim=128", "causal:head_dim=128", "sliding_window:window=100,head_dim=128",
    "alibi:head_dim=128", "softcap:cap=20,causal=true,head_dim=128", "sigmoid:head_dim=128",
    "sigmoid:causal=true,head_dim=128,bias=-2", "s2attn:stride=4,window=64,head_dim=128",
    "duo:retrieval_heads=1,recent=64,head_dim=128",
])
def test_variants_bf16_ragged_gqa(spec):
    check(spec)


@pytest.mark.parametrize("D,dtype,tol", [(96, torch.float16, 3e-3), (256, torch.bfloat16, 1e-2),
                                         (64, torch.float32, 1e-4), (24, torch.bfloat16, 1e-2)])
def test_head_dims_and_dtypes(D, dtype, tol):
    check("causal", D=D, dtype=dtype, tol=tol, N=515)


def test_cross_attention_and_decode_lengths():
    check("decode:causal=true,head_dim=128", N=300, M=1000)
    check("decode:causal=true,head_dim=128", N=5, M=1000)  # goes to the split-KV decode kernel


@pytest.mark.parametrize("spec", ["na2d:shape=24x40,kernel=7", "na3d:shape=6x12x12,kernel=5",
                                  "na2d:shape=32x32,kernel=9,dilation=2"])
def test_neighborhood_grids(spec):
    n = math.prod(grid_of(einfuse.load_spec(spec).attrs, {}))
    for order in ("flat", "box"):
        check(spec, H=2, Hkv=2, N=n, D=64, tile_order=order)


def test_long_causal_against_float32_torch():
    q, k, v = inputs(1, 4, 4, 4096, 4096, 128, torch.bfloat16, seed=3)  # whole tiles: no bounds checks
    out = einfuse.compile("causal:head_dim=128")(q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert float((out.float() - ref).norm() / ref.norm()) < 1e-2


def test_fully_masked_rows_and_large_logits_on_gpu():
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: kv <= q - 70, head_dim=64)
    q, k, v = inputs(2, 2, 2, 300, 300, 64, torch.bfloat16, seed=4)
    out = einfuse.compile(c)(q * 20, k * 20, v)
    assert torch.isfinite(out).all() and torch.all(out[:, :, :70] == 0)
    ref = run_cascade(c, {"Q": (q * 20).float().cpu(), "K": (k * 20).float().cpu(), "V": v.float().cpu()})["O"]
    assert rel_err(out.float().cpu().numpy(), ref) < 2e-2


def test_inductor_graph_with_the_custom_op():
    f = einfuse.compile("sliding_window:window=64,head_dim=64")
    q, k, v = inputs(2, 4, 4, 500, 500, 64, torch.float16, seed=5)
    g = torch.compile(lambda a, b, c: f(a, b, c).sum(-1), fullgraph=True)
    assert torch.allclose(g(q, k, v), f(q, k, v).sum(-1), atol=1e-2, rtol=1e-2)


def test_autotune_times_candidates_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("EINFUSE_CACHE_DIR", str(tmp_path))
    f = einfuse.compile("causal:head_dim=64", autotune=True)
    q, k, v = inputs(1, 4, 4, 1024, 1024, 64, torch.bfloat16, seed=6)
    out = f(q, k, v)
    assert (tmp_path / "autotune.json").exists()
    ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True,
                                                           scale=0.125)
    assert float((out.float() - ref).norm() / ref.norm()) < 1e-2
    assert analyze(f.lowered).family == "softmax"


def _reference_inputs(tensors: dict) -> dict:
    return {name: t.float().cpu() for name, t in tensors.items()}


@pytest.mark.parametrize("decode", [True, False])
def test_agent_two_stages_on_gpu(decode):
    # multi-stage: agents attend to K/V (split-KV decode kernel or the main kernel), queries to agents
    c = einfuse.load_spec("agent:head_dim=64")
    q, k, v = inputs(2, 4, 2, 1000, 1200, 64, torch.bfloat16, seed=7)
    ag = torch.randn(2, 4, 49, 64, device="cuda", generator=torch.Generator(device="cuda").manual_seed(8))
    ag = ag.to(torch.bfloat16)
    out = einfuse.compile(c, decode=decode)(q, k, v, AG=ag)
    ref = run_cascade(c, _reference_inputs({"Q": q, "K": k, "V": v, "AG": ag}))["O"]
    assert torch.isfinite(out).all()
    assert rel_err(out.float().cpu().numpy(), ref) < 1e-2


def test_based_normalised_sum_and_window_stages_on_gpu():
    c = einfuse.load_spec("based:window=64")
    q, k, v = inputs(1, 4, 4, 700, 700, 64, torch.bfloat16, seed=9)
    f = einfuse.compile(c, decode=False)
    q, k = q * 0.3, k * 0.3  # keep the Taylor weights 1 + s + s^2/2 away from cancellation in bf16
    out = f(q, k, v)
    ref = run_cascade(c, _reference_inputs({"Q": q, "K": k, "V": v}))["O"]
    assert torch.isfinite(out).all()
    assert rel_err(out.float().cpu().numpy(), ref) < 2e-2
    # the Taylor (normsum) stage alone, so the window branch cannot hide an error in it
    i, st = next((i, s) for i, s in enumerate(f.plan.stages) if s.family == "normsum")
    t_out = f.kernels[i].run(q, k, v)
    t_ref = run_cascade(st.cascade, _reference_inputs({"Q": q, "K": k, "V": v}))[st.cascade.outputs[0]]
    assert rel_err(t_out.float().cpu().numpy(), t_ref) < 2e-2


@pytest.mark.parametrize("spec", ["lightning", "linear:feature_map=elu1,normalize=true",
                                  "linear:feature_map=relu,causal=false"])
def test_linear_family_on_gpu(spec):
    # ragged length (not a multiple of the chunk), GQA heads
    check(spec, B=2, H=4, Hkv=2, N=1000, D=64, tol=2e-2)


def test_split_kv_decode_gqa_long_context():
    check("decode:head_dim=128", B=2, H=8, Hkv=2, N=1, M=20000, D=128)
