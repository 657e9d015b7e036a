"""The linear-attention backward on a real GPU (``pytest -m gpu``): the benchmark size of lightning
(B4 H16 N8192 D128 bf16) and smaller ragged ones with GQA, against autograd of the float64 torch
reference of the same plan (at the large size on a few heads of the last batch: the quadratic
float64 reference of one head is 8192 x 8192)."""

import pytest
import torch
from _helpers import rel_err
from _torch_reference import linear_plan_attention

import einfuse

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def check(spec, B=1, H=4, Hkv=2, N=777, D=128, DV=None, dtype=torch.bfloat16, tol=2e-2, kv_heads=None,
          backward_options=None, **options):
    """Gradients of every query head of the K/V heads ``kv_heads`` (default all) of the last batch."""
    f = einfuse.compile(spec, backward_options=backward_options, **options)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = (torch.randn(B, H, N, D, device="cuda", generator=gen) * D ** -0.5).to(dtype).requires_grad_()
    k = (torch.randn(B, Hkv, N, D, device="cuda", generator=gen) * D ** -0.5).to(dtype).requires_grad_()
    v = torch.randn(B, Hkv, N, DV or D, device="cuda", generator=gen).to(dtype).requires_grad_()
    out = f(q, k, v)
    do = torch.randn(out.shape, device="cuda", generator=gen).to(dtype)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    torch.cuda.synchronize()
    for g in (dq, dk, dv):
        assert g.dtype == dtype and torch.isfinite(g).all(), spec
    group, b = H // Hkv, B - 1
    for hk in kv_heads if kv_heads is not None else range(Hkv):
        heads = list(range(hk * group, (hk + 1) * group))
        q64 = q[b:b + 1, heads].detach().double().requires_grad_()
        k64, v64 = (t[b:b + 1, hk:hk + 1].detach().double().requires_grad_() for t in (k, v))
        ref = linear_plan_attention(f.plan, q64, k64, v64, heads=heads, n_heads=H)
        want = torch.autograd.grad(ref, (q64, k64, v64), do[b:b + 1, heads].double())
        assert rel_err(out[b:b + 1, heads], ref) < tol, spec
        for name, g, w in zip(("dq", "dk", "dv"), (dq[b:b + 1, heads], dk[b:b + 1, hk:hk + 1],
                                                   dv[b:b + 1, hk:hk + 1]), want):
            assert rel_err(g, w) < tol, f"{spec} {name} head {hk}: rel err {rel_err(g, w)}"
        del ref, want


def test_lightning_benchmark_size_bf16():
    """B4 H16 N8192 D128: the fastest- and slowest-decaying heads (0 and 15)."""
    check("lightning", B=4, H=16, Hkv=16, N=8192, D=128, kv_heads=[0, 15])


@pytest.mark.parametrize("spec", ["lightning", "linear", "linear:normalize=true",
                                  "linear:feature_map=relu,causal=false,normalize=true"])
def test_variants_bf16_ragged_gqa(spec):
    check(spec, B=2, H=8, Hkv=2, N=1000, D=96, DV=64)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.float32, 5e-3)])  # fp32 dots: tf32
def test_dtypes_and_fp32_states(dtype, tol):
    check("lightning", H=4, Hkv=1, N=777, D=64, dtype=dtype, tol=tol, backward_options={"state_dtype": "fp32"})


@pytest.mark.parametrize("chunk", [32, 128])
def test_backward_chunks(chunk):
    check("lightning", H=4, Hkv=2, N=1500, D=128, backward_options={"chunk": chunk})
