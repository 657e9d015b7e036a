"""Backward kernels on a real GPU (``pytest -m gpu``): realistic sizes, 16-bit inputs, GQA, ragged
lengths, against autograd of the float64 torch reference of the same plan."""

import pytest
import torch
from _helpers import rel_err
from _torch_reference import sigmoid_reference, softmax_plan_attention

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


def _inputs(B, H, Hkv, N, D, dtype=torch.bfloat16, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, h, N, D, device="cuda", generator=gen).to(dtype).requires_grad_() for h in (H, Hkv, Hkv)]


@pytest.mark.parametrize("causal", [False, True])
def test_sigmoid_bf16_ragged_gqa(causal):
    f = einfuse.compile(f"sigmoid:bias=-6.0,causal={str(causal).lower()},head_dim=128")
    q, k, v = _inputs(1, 4, 2, 777, 128)
    out = f(q, k, v)
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = sigmoid_reference(q64, k64, v64, -6.0, causal)
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    assert rel_err(out, ref) < 2e-2
    for g, w in zip(got, want):
        assert torch.isfinite(g).all() and rel_err(g, w) < 2e-2


def test_torch_compile_inductor_matches_eager():
    f = einfuse.compile("softcap:cap=20,causal=true,head_dim=128")
    q, k, v = _inputs(2, 8, 2, 1000, 128)
    do = torch.randn(2, 8, 1000, 128, device="cuda", dtype=torch.bfloat16)
    want_out = f(q, k, v)
    want = torch.autograd.grad(want_out, (q, k, v), do)
    g = torch.compile(lambda q, k, v: f(q, k, v) * 2.0, fullgraph=True)   # inductor around the custom ops
    got_out = g(q, k, v)
    got = torch.autograd.grad(got_out, (q, k, v), do)
    assert rel_err(got_out, 2.0 * want_out.double()) < 1e-2
    for a, b in zip(got, want):
        assert rel_err(a, 2.0 * b.double()) < 1e-2


def test_mirrored_tiles_and_query_offsets():
    from einfuse.codegen.autograd import backward_kernel
    from einfuse.codegen.triton.backward import BackwardKernel

    f = einfuse.compile("sliding_window:window=300,head_dim=128,align=offset")
    q, k, v = _inputs(1, 4, 1, 700, 128)
    k2, v2 = (torch.cat([t.detach()] * 2, dim=2).requires_grad_() for t in (k, v))   # 1400 keys
    out, lse = f.kernel.forward_with_lse(q.detach(), k2.detach(), v2.detach(), q_offset=500)
    do = torch.randn_like(out)
    kern = BackwardKernel(f.kernel, backward_kernel(f).plan, block_m=64, block_n=128, dq_block_m=128, dq_block_n=32)
    got = kern(q.detach(), k2.detach(), v2.detach(), out, lse, do, q_offset=500)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k2, v2))
    ref = softmax_plan_attention(f.plan, q64, k64, v64, sizes={"QOFF": 500})
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    for g, w in zip(got, want):
        assert torch.isfinite(g).all() and rel_err(g, w) < 2e-2


def test_small_dkdv_query_tiles_are_refused_for_16_bit_inputs():
    """block_m 32 gave wrong dK on the H200 (Triton 3.6); it must be an error, not a wrong gradient."""
    from einfuse.codegen.autograd import backward_kernel
    from einfuse.codegen.triton.backward import BackwardKernel
    from einfuse.errors import CodegenError

    f = einfuse.compile("causal:head_dim=128")
    q, k, v = _inputs(1, 4, 2, 300, 128)
    out, lse = f.kernel.forward_with_lse(q.detach(), k.detach(), v.detach())
    kern = BackwardKernel(f.kernel, backward_kernel(f).plan, block_m=32, block_n=128)
    with pytest.raises(CodegenError, match="block_m=32"):
        kern(q.detach(), k.detach(), v.detach(), out, lse, torch.randn_like(out))


@pytest.mark.parametrize("spec", ["causal:head_dim=128", "na2d:shape=24x24,kernel=7,head_dim=128"])
def test_atomic_dq_layout_bf16(spec):
    from einfuse.codegen.autograd import backward_kernel
    from einfuse.codegen.triton.backward import BackwardKernel

    f = einfuse.compile(spec)
    q, k, v = _inputs(2, 4, 2, 576, 128)
    out, lse = f.kernel.forward_with_lse(q.detach(), k.detach(), v.detach())
    do = torch.randn_like(out)
    got = BackwardKernel(f.kernel, backward_kernel(f).plan, dq_layout="atomic")(
        q.detach(), k.detach(), v.detach(), out, lse, do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(softmax_plan_attention(f.plan, q64, k64, v64), (q64, k64, v64), do.double())
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16 and torch.isfinite(g).all() and rel_err(g, w) < 2e-2
