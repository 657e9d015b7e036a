"""Prepared backward calls (einfuse.codegen.triton.backward.PreparedBackward): a backward whose
signature (q, k, v, out, lse, dout, the query offset, options, captured-tensor versions) was seen
before launches its bound kernels directly. In the interpreter every launch still goes through
Triton's path, with the bound argument order, so comparing against ``call_unprepared`` (keyword
constexprs, nothing cached) checks that order bit for bit; a float64 reference checks the values."""

import pytest
import torch
from _helpers import rel_err
from _torch_reference import softmax_plan_attention

import einfuse
from einfuse.codegen.autograd import backward_kernel
from einfuse.codegen.triton import launch
from einfuse.codegen.triton.backward import BackwardKernel


def rand(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def inputs(B, H, Hkv, N, M, D, seed, dtype=torch.float32):
    return (rand(B, H, N, D, seed=seed, dtype=dtype), rand(B, Hkv, M, D, seed=seed + 1, dtype=dtype),
            rand(B, Hkv, M, D, seed=seed + 2, dtype=dtype), rand(B, H, N, D, seed=seed + 3, dtype=dtype))


def forward(f, plan, q, k, v, **runtime):
    if plan.family == "softmax":
        return f.kernel.forward_with_lse(q, k, v, **runtime)
    out = f.kernel(q, k, v, **runtime)
    return out, torch.zeros(q.shape[:3], dtype=torch.float32)


def same(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


CASES = {
    "causal_gqa": ("causal:head_dim=16", dict(H=4, Hkv=2, N=37, M=37), {}, {}),
    "na2d_boxes": ("na2d:shape=6x7,kernel=3,head_dim=16", dict(H=2, Hkv=2, N=42, M=42), {}, {"tile_order": "box"}),
    "window_q_offset": ("sliding_window:window=7,head_dim=16,align=offset", dict(H=2, Hkv=1, N=13, M=40),
                        {}, {"q_offset": 20}),
    "sigmoid": ("sigmoid:bias=-1.0,causal=true,head_dim=16", dict(H=2, Hkv=1, N=29, M=29), {}, {}),
    "atomic_dq": ("causal:head_dim=16", dict(H=4, Hkv=2, N=37, M=37), {"dq_layout": "atomic"}, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prepared_backward_equals_the_unprepared_one_and_is_prepared_once(case):
    spec, dims, bwd_options, runtime = CASES[case]
    f = einfuse.compile(spec, decode=False)
    plan = backward_kernel(f).plan
    kern = BackwardKernel(f.kernel, plan, block_m=16, block_n=16, **bwd_options)
    qo = runtime.get("q_offset")
    for seed in (0, 10):  # the second call hits the prepared call and reads the new tensors
        q, k, v, do = inputs(1, dims["H"], dims["Hkv"], dims["N"], dims["M"], 16, seed)
        out, lse = forward(f, plan, q, k, v, **runtime)
        got = kern(q, k, v, out, lse, do, **runtime)
        same(got, kern.call_unprepared(q, k, v, out, lse, do, **runtime))
        if plan.family == "softmax":
            q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
            ref = softmax_plan_attention(f.plan, q64, k64, v64, sizes={"QOFF": qo} if qo is not None else None)
            want = torch.autograd.grad(ref, (q64, k64, v64), do.double())
            for g, w in zip(got, want):
                assert rel_err(g, w) < 1e-5, case
    assert kern.prepare_count == 1 and len(kern._calls) == 1
    if case == "na2d_boxes":
        assert not kern.layout(q, k, f.kernel.defaults.from_kwargs(runtime))[0].is_flat


def test_new_shapes_and_offsets_are_prepared_again_and_noncontiguous_dout_shares_the_entry():
    f = einfuse.compile("sliding_window:window=7,head_dim=16,align=offset", decode=False)
    plan = backward_kernel(f).plan
    kern = BackwardKernel(f.kernel, plan, block_m=16, block_n=16)
    for n, m, off in ((13, 40, 20), (21, 33, 5), (13, 40, 3)):
        q, k, v, do = inputs(1, 2, 1, n, m, 16, n + off)
        out, lse = forward(f, plan, q, k, v, q_offset=off)
        same(kern(q, k, v, out, lse, do, q_offset=off), kern.call_unprepared(q, k, v, out, lse, do, q_offset=off))
    assert kern.prepare_count == 3
    # dout as autograd often hands it over (a transposed view): made contiguous, then keyed
    do_t = do.transpose(2, 3).contiguous().transpose(2, 3)
    same(kern(q, k, v, out, lse, do_t, q_offset=off), kern.call_unprepared(q, k, v, out, lse, do, q_offset=off))
    assert kern.prepare_count == 3


def test_misaligned_inputs_take_the_unprepared_path():
    f = einfuse.compile("causal:head_dim=16", decode=False)
    plan = backward_kernel(f).plan
    kern = BackwardKernel(f.kernel, plan, block_m=16, block_n=16)
    q, k, v, do = inputs(1, 2, 2, 20, 20, 16, 3)
    q_odd = torch.empty(q.numel() + 1)[1:].view(q.shape).copy_(q)  # 4 bytes past 16-byte alignment
    out, lse = forward(f, plan, q_odd, k, v)
    same(kern(q_odd, k, v, out, lse, do), kern(q, k, v, out, lse, do))
    assert kern.prepare_count == 1 and len(kern._calls) == 1  # only the aligned call was cached


def test_document_mask_follows_new_ids_between_calls():
    N = 40
    doc_ids = torch.tensor([0] * 13 + [1] * 20 + [2] * 7)
    c = einfuse.attention("docs", mask_mod=lambda b, h, q, kv: (doc_ids[q] == doc_ids[kv]) & (kv <= q), head_dim=16)
    f = einfuse.compile(c, decode=False)
    plan = backward_kernel(f).plan
    kern = BackwardKernel(f.kernel, plan, block_m=16, block_n=16)
    q, k, v, do = inputs(1, 2, 1, N, N, 16, 5)
    other = torch.tensor([0] * 30 + [1] * 10)
    results = []
    for ids in (doc_ids, doc_ids, other, doc_ids):
        out, lse = forward(f, plan, q, k, v, doc_ids=ids)
        got = kern(q, k, v, out, lse, do, doc_ids=ids)
        same(got, kern.call_unprepared(q, k, v, out, lse, do, doc_ids=ids))
        results.append(got)
    assert kern.prepare_count == 2 and len(kern._calls) == 0 and len(kern._capture_calls) == 2
    same(results[0], results[3])
    assert not torch.equal(results[0][1], results[2][1])  # the tables followed the new ids
    other[:5] = 1  # in place: a new version, prepared again
    out, lse = forward(f, plan, q, k, v, doc_ids=other)
    same(kern(q, k, v, out, lse, do, doc_ids=other), kern.call_unprepared(q, k, v, out, lse, do, doc_ids=other))
    assert kern.prepare_count == 3


def test_autograd_backward_reuses_the_prepared_call():
    f = einfuse.compile("causal:head_dim=16", decode=False, backward_options={"block_m": 16, "block_n": 16})
    for seed in (1, 2):
        q, k, v, do = inputs(1, 2, 2, 24, 24, 16, seed)
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        f(q, k, v).backward(do)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        want = torch.autograd.grad(softmax_plan_attention(f.plan, q64, k64, v64), (q64, k64, v64), do.double())
        for g, w in zip((q.grad, k.grad, v.grad), want):
            assert rel_err(g, w) < 1e-5
    assert f._backward_kernel.prepare_count == 1


def test_fast_launch_switch_and_cache_limit(monkeypatch):
    f = einfuse.compile("causal:head_dim=16", decode=False)
    plan = backward_kernel(f).plan
    kern = BackwardKernel(f.kernel, plan, block_m=16, block_n=16)
    monkeypatch.setenv("EINFUSE_FAST_LAUNCH", "0")
    monkeypatch.setattr(launch, "CACHE_LIMIT", 2)
    for n in (16, 17, 18):
        q, k, v, do = inputs(1, 1, 1, n, n, 16, n)
        out, lse = forward(f, plan, q, k, v)
        kern(q, k, v, out, lse, do)
    assert len(kern._calls) == 2 and kern.prepare_count == 3
    assert all(not b._direct_ok for p in kern._calls.values() for b in p.launches if b is not None)


@pytest.mark.parametrize("spec", ["lightning", "linear:normalize=true"])
def test_linear_backward_is_prepared_once_and_equals_the_unprepared_one(spec):
    from _torch_reference import linear_plan_attention

    f = einfuse.compile(spec, chunk=16, block_k=16, block_v=16)
    bwd = backward_kernel(f)
    for seed in (0, 10, 20):  # the third call has new shapes: prepared again
        n = 45 if seed < 20 else 33
        q, k, v, do = inputs(1, 4, 2, n, n, 24, seed)
        q, k, v = q * 0.5, k * 0.5, v
        do = do[..., :24]
        out, saved = bwd.forward(q, k, v)
        got = bwd(q, k, v, out, saved, do)
        if not bwd.plan.forward.normalize:  # the unnormalised kernels alone, bit for bit
            same(bwd.launch(q, k, v, do), bwd.launch_unprepared(q, k, v, do))
        q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
        want = torch.autograd.grad(linear_plan_attention(f.plan, q64, k64, v64), (q64, k64, v64), do.double())
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-5, spec
    assert bwd.prepare_count == 2 and len(bwd._calls) == 2


def test_score_bias_updated_in_place_keeps_its_prepared_call_and_is_read_anew():
    bias = torch.randn(40, dtype=torch.float32)
    c = einfuse.attention("biased", score_mod=lambda s, b, h, q, kv: s + bias[kv],
                          mask_mod=lambda b, h, q, kv: kv <= q, head_dim=16)
    f = einfuse.compile(c, decode=False)
    plan = backward_kernel(f).plan
    kern = BackwardKernel(f.kernel, plan, block_m=16, block_n=16)
    q, k, v, do = inputs(1, 2, 1, 40, 40, 16, 7)
    results = []
    for step in range(3):  # an optimizer step: new values, same tensor
        out, lse = forward(f, plan, q, k, v)
        got = kern(q, k, v, out, lse, do)
        same(got, kern.call_unprepared(q, k, v, out, lse, do))
        results.append(got)
        bias.add_(0.5 + torch.arange(40.0) * 0.1)
    assert kern.prepare_count == 1
    assert not torch.equal(results[0][0], results[2][0])
    ids = torch.arange(40)  # int64 read as float: converted, so keyed by version
    c2 = einfuse.attention("pos", score_mod=lambda s, b, h, q, kv: s + 0.01 * ids[kv], head_dim=16)
    f2 = einfuse.compile(c2, decode=False)
    kern2 = BackwardKernel(f2.kernel, backward_kernel(f2).plan, block_m=16, block_n=16)
    for step in range(2):
        out, lse = forward(f2, kern2.plan, q, k, v)
        same(kern2(q, k, v, out, lse, do), kern2.call_unprepared(q, k, v, out, lse, do))
        ids.mul_(3)
    assert kern2.prepare_count == 2
