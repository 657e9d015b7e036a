"""Captured-tensor gradients on a real GPU (``pytest -m gpu``): a learned relative-position table
under a document mask at 4K tokens, bf16, against float32 autograd; the capture-gradient kernel
walks the dQ kernel's run-time tables (most tile pairs are across documents and skipped)."""

import math

import pytest
import torch
from _helpers import rel_err

import einfuse as ef

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_document_mask_relative_table_gradients_at_4k():
    g = torch.Generator(device="cuda").manual_seed(2)
    N, H = 4096, 4
    doc_ids = torch.repeat_interleave(torch.arange(6), torch.tensor([900, 37, 1500, 611, 700, 348])).cuda()
    rel = torch.nn.Parameter(0.3 * torch.randn(H, 2 * N - 1, device="cuda", generator=g))
    f = ef.compile(ef.attention("docs_rel", score_mod=lambda s, b, h, q, kv: s + rel[h, q - kv + N - 1],
                                mask_mod=lambda b, h, q, kv: (doc_ids[q] == doc_ids[kv]) & (q >= kv)))
    q, k, v = (torch.randn(1, h, N, 64, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
               for h in (H, 2, 2))
    out = f(q, k, v)
    do = torch.randn(out.shape, device="cuda", generator=g, dtype=torch.bfloat16)
    got = torch.autograd.grad(out, (q, k, v, rel), do)
    tables = f._backward_kernel.last_capture_tables
    assert not tables.dense and tables.visited_fraction < 0.35

    x = [t.detach().float().requires_grad_() for t in (q, k, v)]
    r = rel.detach().float().requires_grad_()
    kk, vv = (t.repeat_interleave(2, dim=1) for t in x[1:])
    qi, ki = torch.arange(N, device="cuda").view(N, 1), torch.arange(N, device="cuda").view(1, N)
    s = x[0] @ kk.transpose(-1, -2) / math.sqrt(64) + r[:, qi - ki + N - 1].unsqueeze(0)
    s = s.masked_fill(~((doc_ids[qi] == doc_ids[ki]) & (qi >= ki)), -math.inf)
    want = torch.autograd.grad(torch.softmax(s, -1) @ vv, (*x, r), do.float())
    for name, a, b in zip(("dq", "dk", "dv", "drel"), got, want):
        assert rel_err(a, b) < 2e-2, name
