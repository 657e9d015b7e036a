"""Prepared backward calls on a real GPU (``pytest -m gpu``): after the first call the kernels are
launched through the compiled kernels' launchers directly; the gradients must equal those of the
unprepared path (Triton's ``kernel[grid](...)``, nothing cached) bit for bit, for the softmax family
(separate and atomic dQ, a document mask with new ids) and the linear family, and a warmed-up
backward can be captured in a CUDA graph and replayed on new inputs."""

import pytest
import torch

import einfuse as ef
from einfuse.codegen.autograd import backward_kernel
from einfuse.codegen.triton.backward import BackwardKernel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def mk(*shape, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16)


def same(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


@pytest.mark.parametrize("spec,layout", [("na2d:shape=48x48,kernel=13,head_dim=64", "separate"),
                                         ("causal:head_dim=128", "separate"), ("causal:head_dim=128", "atomic")])
def test_direct_launches_equal_the_unprepared_path(spec, layout):
    f = ef.compile(spec)
    n = 2304 if spec.startswith("na2d") else 1000
    kern = BackwardKernel(f.kernel, backward_kernel(f).plan, dq_layout=layout)
    d = 64 if "head_dim=64" in spec else 128
    for seed in (1, 2, 3):
        q, k, v, do = (mk(2, 4, n, d, seed=seed * 10 + i) for i in range(4))
        out, lse = f.kernel.forward_with_lse(q, k, v)
        got = kern(q, k, v, out, lse, do)
        if layout == "separate":  # atomics: run-to-run rounding differs
            same(got, kern.call_unprepared(q, k, v, out, lse, do))
    assert kern.prepare_count == 1
    assert all(b is None or b.compiled is not None for p in kern._calls.values() for b in p.launches)


def test_document_mask_ids_change_between_direct_calls():
    N = 2048
    doc_ids = torch.repeat_interleave(torch.arange(3), torch.tensor([500, 1000, 548])).cuda()
    f = ef.compile(ef.attention("docs", mask_mod=lambda b, h, q, kv: (doc_ids[q] == doc_ids[kv]) & (kv <= q),
                                head_dim=64))
    kern = BackwardKernel(f.kernel, backward_kernel(f).plan)
    q, k, v, do = (mk(1, 4, N, 64, seed=s) for s in range(4))
    other = torch.repeat_interleave(torch.arange(2), torch.tensor([1500, 548])).cuda()
    for ids in (doc_ids, doc_ids, other, other):
        out, lse = f.kernel.forward_with_lse(q, k, v, doc_ids=ids)
        same(kern(q, k, v, out, lse, do, doc_ids=ids), kern.call_unprepared(q, k, v, out, lse, do, doc_ids=ids))
    assert kern.prepare_count == 2


def test_linear_backward_direct_launches_equal_the_unprepared_path():
    f = ef.compile("lightning")
    bwd = backward_kernel(f)
    for seed in (1, 2):
        q, k, v, do = (mk(2, 4, 1000, 64, seed=seed * 10 + i) * 0.5 for i in range(4))
        same(bwd.launch(q, k, v, do), bwd.launch_unprepared(q, k, v, do))
    assert bwd.prepare_count == 1


def test_warm_backward_is_captured_in_a_cuda_graph():
    f = ef.compile("causal:head_dim=64")
    kern = BackwardKernel(f.kernel, backward_kernel(f).plan)
    q, k, v, do = (mk(1, 4, 1024, 64, seed=s) for s in range(4))
    out, lse = f.kernel.forward_with_lse(q, k, v)
    kern(q, k, v, out, lse, do)  # warm-up: prepares and compiles
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        grads = kern(q, k, v, out, lse, do)
    for s, t in zip(range(10, 14), (q, k, v, do)):
        t.copy_(mk(*t.shape, seed=s))
    out.copy_(f.kernel.forward_with_lse(q, k, v)[0])
    lse.copy_(f.kernel.forward_with_lse(q, k, v)[1])
    graph.replay()
    torch.cuda.synchronize()
    same(grads, kern.call_unprepared(q, k, v, out, lse, do))
