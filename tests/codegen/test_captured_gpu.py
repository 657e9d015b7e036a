"""Captured tensors on a real GPU (``pytest -m gpu``): document masking with run-time block tables
and a learned Swin table with gradients, bf16 at realistic sizes, against float64 torch."""

import math

import pytest
import torch
from _helpers import rel_err

import einfuse as ef

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _attend(q, k, v, score_fn=None, keep=None):
    q, k, v = (x.double() for x in (q, k, v))
    k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    P, M = q.shape[2], k.shape[2]
    qi, ki = torch.arange(P, device=q.device).view(P, 1), torch.arange(M, device=q.device).view(1, M)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if score_fn is not None:
        s = score_fn(s, qi, ki)
    if keep is not None:
        s = s.masked_fill(~keep(qi, ki), -math.inf)
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def test_document_mask_at_4k_skips_cross_document_tiles():
    g = torch.Generator(device="cuda").manual_seed(0)
    lengths = torch.tensor([1000, 37, 2048, 700, 311])
    doc_ids = torch.repeat_interleave(torch.arange(5), lengths).cuda()
    f = ef.compile(ef.attention("docs", mask_mod=lambda b, h, q, kv: (doc_ids[q] == doc_ids[kv]) & (q >= kv)))
    q, k, v = (torch.randn(2, h, 4096, 128, device="cuda", generator=g, dtype=torch.bfloat16) for h in (8, 2, 2))
    out = f(q, k, v)
    assert f.kernel.last_tables.visited_fraction < 0.35

    def keep(qi, ki):
        return (doc_ids[qi] == doc_ids[ki]) & (qi >= ki)
    assert rel_err(out, _attend(q, k, v, keep=keep)) < 2e-2


def test_swin_table_gradients_in_bf16():
    g = torch.Generator(device="cuda").manual_seed(1)
    table = torch.nn.Parameter(0.5 * torch.randn(4, 225, device="cuda", generator=g))

    def rel(q, kv):
        return (q // 8 - kv // 8 + 7) * 15 + (q % 8 - kv % 8 + 7)
    f = ef.compile(ef.attention("swin", score_mod=lambda s, b, h, q, kv: s + table[h, rel(q, kv)]))
    q, k, v = (torch.randn(256, 4, 64, 32, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))
    out = f(q, k, v)
    do = torch.randn(out.shape, device="cuda", generator=g, dtype=torch.bfloat16)
    got = torch.autograd.grad(out, (q, k, v, table), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    t64 = table.detach().double().requires_grad_()
    hh = torch.arange(4, device="cuda").view(1, 4, 1, 1)
    ref = _attend(q64, k64, v64, lambda s, qi, ki: s + t64[hh, rel(qi, ki)])
    want = torch.autograd.grad(ref, (q64, k64, v64, t64), do.double())
    assert rel_err(out, ref) < 2e-2
    for name, a, b in zip(("dq", "dk", "dv", "dtable"), got, want):
        assert rel_err(a, b) < 2e-2, name
