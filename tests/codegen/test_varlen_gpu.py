"""Packed variable-length batches on a real GPU (``pytest -m gpu``): bf16, real tiles (128x64 at D128),
GQA, ragged lengths around them, against a float32 torch formula per sequence (the float64 reference
is too slow at these lengths) and SDPA per sequence."""

import itertools
import math

import pytest
import torch

import einfuse

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LENS_Q = [1, 127, 129, 0, 2000, 63, 3001, 640]
LENS_K = [1, 127, 300, 7, 2000, 64, 3001, 1000]  # some sequences: fewer queries than keys


def _cu(lens):
    return torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)


def _packed(lens_q, lens_k, H=16, HKV=4, D=128, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda n, h: torch.randn(n, h, D, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
    return mk(sum(lens_q), H), mk(sum(lens_k), HKV), mk(sum(lens_k), HKV)


def _torch_ref(q, k, v, keep, bias=None):
    """(n_q, H, D) float32 attention of one sequence under a boolean (n_q, n_k) mask."""
    group = q.shape[1] // k.shape[1]
    qf, kf, vf = (t.float().transpose(0, 1) for t in (q, k, v))
    kf, vf = kf.repeat_interleave(group, 0), vf.repeat_interleave(group, 0)
    s = qf @ kf.transpose(1, 2) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
    return (p @ vf).transpose(0, 1)


@pytest.mark.parametrize("spec,causal,window", [("causal", True, None), ("sliding_window:window=256", True, 256),
                                                ("softmax", False, None)])
def test_varlen_matches_each_sequence(spec, causal, window):
    f = einfuse.compile(spec)
    q, k, v = _packed(LENS_Q, LENS_K)
    cq, ck = _cu(LENS_Q), _cu(LENS_K)
    out = f.varlen(q, k, v, cq, ck, max(LENS_Q), max(LENS_K))
    torch.cuda.synchronize()
    for s, (nq, nk) in enumerate(zip(LENS_Q, LENS_K)):
        if nq == 0:
            continue
        got = out[cq[s]:cq[s + 1]].float()
        if nk == 0:
            assert (got == 0).all()
            continue
        qpos = torch.arange(nq, device="cuda")[:, None] + nk - nq  # bottom-right
        kpos = torch.arange(nk, device="cuda")[None, :]
        keep = (kpos <= qpos) if causal else torch.ones(nq, nk, dtype=torch.bool, device="cuda")
        if window is not None:
            keep = keep & (qpos - kpos < window)
        ref = _torch_ref(q[cq[s]:cq[s + 1]], k[ck[s]:ck[s + 1]], v[ck[s]:ck[s + 1]], keep)
        err = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
        assert torch.isfinite(got).all() and err < 2e-2, f"{spec}, sequence {s} ({nq}/{nk}): rel err {err}"


def test_varlen_equals_sdpa_run_per_sequence():
    lens = [100, 4000, 777, 8000, 129]
    f = einfuse.compile("causal:head_dim=128")
    q, k, v = _packed(lens, lens, H=16, HKV=16)
    cu = _cu(lens)
    out = f.varlen(q, k, v, cu, cu, max(lens), max(lens))
    for s in range(len(lens)):
        view = lambda t: t[cu[s]:cu[s + 1]].transpose(0, 1)[None]  # noqa: E731
        want = torch.nn.functional.scaled_dot_product_attention(view(q), view(k), view(v), is_causal=True)
        got = out[cu[s]:cu[s + 1]].transpose(0, 1)[None]
        err = float((got.float() - want.float()).norm() / want.float().norm())
        assert err < 2e-2, f"sequence {s}: rel err {err} against SDPA"


def test_varlen_with_cpu_offsets_is_captured_and_replayed_in_a_cuda_graph():
    """With CPU cu_seqlens and the batch's tables already built (one call first), a call launches the
    kernel only: no sync, no copy, so a CUDA graph captures it."""
    lens = [300, 5, 1200]
    f = einfuse.compile("causal:head_dim=128")
    q, k, v = _packed(lens, lens)
    cu = _cu(lens)
    want = f.varlen(q, k, v, cu, cu, max(lens), max(lens))  # builds and caches the tables
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = f.varlen(q, k, v, cu, cu, max(lens), max(lens))
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    fresh = f.varlen(q, k, v, cu, cu, max(lens), max(lens))
    assert not torch.equal(fresh, want)
    assert torch.equal(out, fresh)
