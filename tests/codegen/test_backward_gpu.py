"""Backward kernels on a real GPU (``pytest -m gpu``): realistic sizes, 16-bit inputs, GQA, ragged
lengths, against autograd of the float64 torch reference of the same plan."""

import pytest
import torch
from _helpers import rel_err
from _torch_reference import softmax_plan_attention

import einfuse

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def check(spec, B=1, H=4, Hkv=2, N=777, D=128, dtype=torch.bfloat16, tol=2e-2, **options):
    f = einfuse.compile(spec, **options)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, h, N, D, device="cuda", generator=gen).to(dtype).requires_grad_()
               for h in (H, Hkv, Hkv))
    out = f(q, k, v)
    do = torch.randn(out.shape, device="cuda", generator=gen).to(dtype)
    got = torch.autograd.grad(out, (q, k, v), do)
    torch.cuda.synchronize()
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = softmax_plan_attention(f.plan, q64, k64, v64)
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    assert rel_err(out, ref) < tol
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == dtype and torch.isfinite(g).all(), (spec, name)
        assert rel_err(g, w) < tol, f"{spec} {name}: rel err {rel_err(g, w)}"


@pytest.mark.parametrize("spec", [
    "softmax:head_dim=128", "causal:head_dim=128", "sliding_window:window=100,head_dim=128",
    "alibi:head_dim=128", "softcap:cap=20,causal=true,head_dim=128",
    "s2attn:stride=4,window=64,head_dim=128", "duo:retrieval_heads=1,recent=64,head_dim=128",
])
def test_variants_bf16_ragged_gqa(spec):
    check(spec)


@pytest.mark.parametrize("D,dtype,tol", [(64, torch.float16, 5e-3), (96, torch.bfloat16, 2e-2),
                                         (64, torch.float32, 1e-4), (24, torch.bfloat16, 2e-2)])
def test_head_dims_and_dtypes(D, dtype, tol):
    check("causal", D=D, dtype=dtype, tol=tol, N=515)


def test_neighbourhood_2d_box_tiles():
    check("na2d:shape=24x24,kernel=7", H=2, Hkv=2, N=576, D=64)


def test_mqa_and_short_query_blocks():
    check("causal:head_dim=64", H=8, Hkv=1, N=300, D=64)
    check("causal:head_dim=64", H=2, Hkv=1, N=12, D=64)  # would go to the decode kernel without grad
