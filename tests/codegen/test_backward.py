"""Generated backward kernels in the Triton interpreter: gradients of ``einfuse.compile`` outputs
against autograd of a float64 torch reference of the same plan, on ragged sizes, GQA, masks with
empty rows, large logits, box tile orders, and torch.autograd.gradcheck in float64."""

import pytest
import sympy
import torch
from _helpers import rel_err
from _torch_reference import sigmoid_reference, softmax_plan_attention

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError


def rand(*shape, seed=0, scale=1.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_()


def grads(spec_or_cascade, B=1, H=4, Hkv=2, N=45, M=None, D=24, scale=1.0, dtype=torch.float32, check_fwd=False,
          **options):
    f = einfuse.compile(spec_or_cascade, decode=False, **options)
    q = rand(B, H, N, D, seed=1, scale=scale, dtype=dtype)
    k, v = rand(B, Hkv, M or N, D, seed=2, scale=scale, dtype=dtype), rand(B, Hkv, M or N, D, seed=3, dtype=dtype)
    out = f(q, k, v)
    do = rand(*out.shape, seed=4).detach().to(dtype)
    got = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = softmax_plan_attention(f.plan, q64, k64, v64)
    if check_fwd:  # the torch reference computes what the golden executor computes
        gold = run_cascade(f.cascade, {"Q": q64.detach(), "K": k64.detach(), "V": v64.detach()})[f.cascade.outputs[0]]
        assert rel_err(ref, gold) < 1e-12
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    return f, out, ref, got, want


@pytest.mark.parametrize("spec", [
    "causal:head_dim=24", "softmax:head_dim=24", "alibi:head_dim=24", "softcap:cap=5,causal=true,head_dim=24",
    "sliding_window:window=20,head_dim=24", "duo:retrieval_heads=1,recent=16,head_dim=24",
])
def test_gradients_match_float64_reference_ragged_gqa(spec):
    _, out, ref, got, want = grads(spec, check_fwd=spec.startswith("alibi"))
    assert rel_err(out, ref) < 1e-5
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5, spec


def test_user_score_mod_with_relu_and_position_select_differentiates_by_chain_rule():
    c = einfuse.attention(score_mod=lambda s, b, h, q, kv: (s * 0.3).tanh() * 4.0 + 0.05 * (kv - q) * h,
                          mask_mod=lambda b, h, q, kv: (kv <= q) | (kv % 7 == 0))
    _, _, _, got, want = grads(c, N=37, D=16, check_fwd=True)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_score_mod_with_a_condition_on_the_score_and_silu():
    c = einfuse.attention(score_mod=lambda s, b, h, q, kv: einfuse.where(s > 0.5, s * 0.5, s * s.sigmoid()),
                          mask_mod=lambda b, h, q, kv: kv <= q)
    _, _, _, got, want = grads(c, H=2, Hkv=1, N=37, D=16, check_fwd=True)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_cross_attention_lengths_and_bottom_right_causal_mask():
    _, _, _, got, want = grads("decode:causal=true,head_dim=24", B=2, H=4, Hkv=1, N=19, M=70)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_neighbourhood_attention_on_box_tiles():
    f, _, _, got, want = grads("na2d:shape=7x9,kernel=3", H=2, Hkv=2, N=63, D=16)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_fully_masked_rows_get_zero_gradients_not_nan():
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: kv <= q - 5)
    _, out, _, (dq, dk, dv), want = grads(c, N=40, D=24)
    assert torch.all(out[:, :, :5] == 0)
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all() and torch.isfinite(dv).all()
    assert torch.all(dq[:, :, :5] == 0)
    assert torch.all(dk[:, :, 35:] == 0) and torch.all(dv[:, :, 35:] == 0)  # keys no query sees
    for g, w in zip((dq, dk, dv), want):
        assert rel_err(g, w) < 1e-5


def test_large_logits_give_finite_gradients():
    # logits ~ +-1000: P is one-hot, so dQ and dK are ~1e-6 in float64 and fp32 cancellation in
    # dP - D leaves ~1e-5 there; dV (= P^T dO) stays exact
    _, _, _, (dq, dk, dv), (wq, wk, wv) = grads("causal:head_dim=32", H=2, Hkv=2, N=41, D=32, scale=30.0)
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert rel_err(dv, wv) < 1e-5
    assert (dq.double() - wq).abs().max() < 1e-3 and (dk.double() - wk).abs().max() < 1e-3


def test_bf16_gradients():
    _, _, _, got, want = grads("sliding_window:window=20,head_dim=32", H=2, Hkv=1, N=50, D=32, dtype=torch.bfloat16)
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        assert rel_err(g, w) < 2e-2


def test_gradcheck_float64_in_the_interpreter():
    f = einfuse.compile("softcap:cap=5,causal=true,head_dim=8", decode=False)
    q, k, v = rand(1, 2, 9, 8, seed=5, dtype=torch.float64), rand(1, 1, 9, 8, seed=6, dtype=torch.float64), \
        rand(1, 1, 9, 8, seed=7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: f(a, b, c, block_m=16, block_n=16), (q, k, v),
                                     fast_mode=True)


def test_calls_without_grad_take_the_forward_only_path():
    f = einfuse.compile("causal:head_dim=16", decode=False)
    q = rand(1, 1, 20, 16)
    with torch.no_grad():
        assert f(q, q, q).grad_fn is None
    assert f._backward_kernel is None  # nothing built until gradients are asked for


def test_variants_without_backward_say_so_when_gradients_are_asked_for():
    f = einfuse.compile("linear", decode=False)
    q = rand(1, 1, 16, 16)
    with pytest.raises(CodegenError, match="no backward for linear"):
        f(q, q, q)


@pytest.mark.parametrize("causal", [False, True])
def test_sigmoid_gradients_ragged_gqa(causal):
    f = einfuse.compile(f"sigmoid:bias=-2.5,causal={str(causal).lower()},head_dim=24", decode=False)
    q, k, v = rand(1, 4, 45, 24, seed=1), rand(1, 2, 45, 24, seed=2), rand(1, 2, 45, 24, seed=3)
    out = f(q, k, v)
    do = rand(*out.shape, seed=4).detach()
    got = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = sigmoid_reference(q64, k64, v64, -2.5, causal)
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    assert rel_err(out, ref) < 1e-5
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_sigmoid_fully_masked_rows_and_unseen_keys_get_zero_gradients():
    c = einfuse.attention(normalization="sigmoid", score_mod=lambda s, b, h, q, kv: s - 1.0,
                          mask_mod=lambda b, h, q, kv: kv <= q - 6)
    assert einfuse.plan(c).family == "sigmoid"
    f = einfuse.compile(c, decode=False)
    q, k, v = rand(1, 2, 33, 16, seed=5), rand(1, 1, 33, 16, seed=6), rand(1, 1, 33, 16, seed=7)
    out = f(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    assert torch.all(out[:, :, :6] == 0) and torch.all(dq[:, :, :6] == 0)
    assert torch.all(dk[:, :, 27:] == 0) and torch.all(dv[:, :, 27:] == 0)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = sigmoid_reference(q64, k64, v64, -1.0, mask=lambda qi, ki: ki <= qi - 6)
    want = torch.autograd.grad(ref, (q64, k64, v64), torch.ones_like(ref))
    for g, w in zip((dq, dk, dv), want):
        assert rel_err(g, w) < 1e-5


def test_mask_with_floor_and_mod_classifies_tiles_for_both_loops():
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: sympy.Eq(sympy.Mod(q - kv, 3), 0) | (kv <= q // 4))
    _, _, _, got, want = grads(c, H=2, Hkv=2, N=53, D=16, block_m=16, block_n=32)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_query_offset_variant_gradients_follow_the_offset():
    # align=offset: query i sits at QOFF + i; the backward kernels take Q_OFF as the forward does
    f = einfuse.compile("sliding_window:window=7,head_dim=16,align=offset", decode=False)
    q, k, v = rand(1, 2, 13, 16, seed=1), rand(1, 1, 40, 16, seed=2), rand(1, 1, 40, 16, seed=3)
    out = f(q, k, v, q_offset=20)
    do = rand(*out.shape, seed=4).detach()
    got = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = softmax_plan_attention(f.plan, q64, k64, v64, sizes={"QOFF": 20})
    want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    assert rel_err(out, ref) < 1e-5
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5
    assert torch.all(got[1][:, :, 33:] == 0) and torch.all(got[1][:, :, :14] == 0)  # keys outside every window


def test_dq_kernel_tiles_independent_of_dkdv_tiles():
    # FlashAttention-2's Triton backward mirrors the tiles (dK/dV 32x128, dQ 128x32): each kernel gets
    # block tables at its own tile sizes
    from einfuse.codegen.autograd import backward_kernel
    from einfuse.codegen.triton.backward import BackwardKernel

    f = einfuse.compile("sliding_window:window=20,head_dim=24", decode=False)
    q, k, v = rand(1, 4, 75, 24, seed=1), rand(1, 2, 75, 24, seed=2), rand(1, 2, 75, 24, seed=3)
    do = rand(1, 4, 75, 24, seed=4).detach()
    out, lse = f.kernel.forward_with_lse(q.detach(), k.detach(), v.detach())
    kern = BackwardKernel(f.kernel, backward_kernel(f).plan, block_m=16, block_n=32, dq_block_m=32, dq_block_n=16)
    got = kern(q.detach(), k.detach(), v.detach(), out, lse, do)
    assert (kern.last_config.block_m, kern.last_config.block_n) == (16, 32)
    assert (kern.last_dq_config.block_m, kern.last_dq_config.block_n) == (32, 16)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(softmax_plan_attention(f.plan, q64, k64, v64), (q64, k64, v64), do.double())
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


@pytest.mark.parametrize("spec,dtype", [("causal:head_dim=24", torch.float32),
                                        ("na2d:shape=7x9,kernel=3,head_dim=24", torch.float32),
                                        ("sigmoid:bias=-1.0,causal=true,head_dim=24", torch.bfloat16)])
def test_atomic_dq_layout_matches_the_reference(spec, dtype):
    # dQ added by the dK/dV kernel with atomics (FlashAttention-2's CUDA layout) instead of a dQ kernel
    from einfuse.codegen.autograd import backward_kernel
    from einfuse.codegen.triton.backward import BackwardKernel

    f = einfuse.compile(spec, decode=False)
    q, k, v = (rand(1, h, 63, 24, seed=s, dtype=dtype).detach() for h, s in ((4, 1), (2, 2), (2, 3)))
    do = rand(1, 4, 63, 24, seed=4, dtype=dtype).detach()
    plan = backward_kernel(f).plan
    if plan.family == "softmax":
        out, lse = f.kernel.forward_with_lse(q, k, v)
    else:
        out, lse = f.kernel(q, k, v), torch.zeros(1, 4, 63)
    atomic = BackwardKernel(f.kernel, plan, dq_layout="atomic", block_m=16, block_n=32)(q, k, v, out, lse, do)
    separate = BackwardKernel(f.kernel, plan, block_m=16, block_n=32)(q, k, v, out, lse, do)
    assert atomic[0].dtype == dtype
    for a, s in zip(atomic, separate):
        assert rel_err(a, s) < (1e-6 if dtype == torch.float32 else 1e-2)
    with pytest.raises(CodegenError, match="dq_layout"):
        BackwardKernel(f.kernel, plan, dq_layout="fused")


def test_backward_options_reach_the_backward_kernels_and_bad_ones_are_refused():
    f = einfuse.compile("causal", backward_options={"dq_layout": "atomic", "block_m": 16, "block_n": 16})
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    f(q, k, v).sum().backward()
    kern = f._backward_kernel
    assert kern.dq_layout == "atomic" and kern.last_config.block_m == 16
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    s = (q2 @ k2.transpose(-1, -2)) / 4.0
    s = s.masked_fill(torch.ones(37, 37, dtype=torch.bool).triu(1), float("-inf"))
    (torch.softmax(s, -1) @ v2).sum().backward()
    for a, b in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        assert torch.allclose(a, b, atol=1e-9)
    with pytest.raises(CodegenError, match="unknown backward option.*block_q"):
        einfuse.compile("causal", backward_options={"block_q": 16})
    with pytest.raises(CodegenError, match="CUTLASS target has no backward"):
        einfuse.compile("causal", target="cutlass", backward_options={"block_m": 16})


def test_gpu_defaults_and_the_small_query_tile_guard():
    """The GPU defaults follow the H200 sweep (dK/dV 64x64 4 warps; dQ 128x128 8 warps for D 65..128) and
    a dK/dV block_m below 64 is refused for 16-bit GPU inputs (miscompiled dK there), not for fp32."""
    from dataclasses import astuple
    from types import SimpleNamespace

    from einfuse.codegen.autograd import backward_kernel
    from einfuse.codegen.triton.backward import BackwardKernel

    f = einfuse.compile("causal:head_dim=128")
    plan = backward_kernel(f).plan

    def fake(D, dtype=torch.bfloat16):
        return SimpleNamespace(device=SimpleNamespace(type="cuda"), dtype=dtype, shape=(1, 1, 64, D))

    kern = BackwardKernel(f.kernel, plan)
    assert astuple(kern.config(fake(128))) == (64, 64, 4, 2)
    assert astuple(kern.dq_config(fake(128))) == (128, 128, 8, 2)
    assert astuple(kern.dq_config(fake(64))) == (64, 64, 4, 2)
    assert astuple(kern.dq_config(fake(256))) == (64, 64, 4, 2)
    # an explicit dK/dV choice is also the dQ kernel's unless dq_* says otherwise
    assert astuple(BackwardKernel(f.kernel, plan, block_n=128).dq_config(fake(128))) == (64, 128, 4, 2)
    small = BackwardKernel(f.kernel, plan, block_m=32, block_n=128)
    with pytest.raises(CodegenError, match="block_m=32.*block_m >= 64.*bfloat16"):
        small.config(fake(128))
    assert small.config(fake(128, torch.float32)).block_m == 32
    assert small.config(SimpleNamespace(device=SimpleNamespace(type="cpu"), dtype=torch.bfloat16,
                                        shape=(1, 1, 64, 128))).block_m == 32
