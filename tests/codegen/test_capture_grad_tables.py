"""Gradients of float captured tensors walk the forward's block tables, not every tile pair.

The capture-gradient kernel (einfuse/codegen/triton/capture_grad.py) visits the key tiles the dQ
kernel visits (same tables, same cache entry): document masks from index tensors skip tiles across
documents, box tile orders walk boxes. Every check compares the table's gradient (and q, k, v's)
with float64 torch autograd written here from the definition, on fresh random inputs at ragged
sizes, with grouped-query heads and rows whose every key is masked.
"""

from __future__ import annotations

import math

import torch
from _helpers import rel_err

import einfuse as ef

D = 16


def _qkv(B, H, Hkv, N, M, seed, dtype=torch.float64, d=D):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, n, d, generator=g, dtype=dtype).requires_grad_()
                 for h, n in ((H, N), (Hkv, M), (Hkv, M)))


def _attend(q, k, v, score_fn, keep, q_shift=0):
    """float64 masked softmax (rows without a kept key give 0); ``score_fn(s, qi, ki, hh)`` and
    ``keep(qi, ki, hh)`` on broadcast indices (query positions shifted by ``q_shift``)."""
    H = q.shape[1]
    k, v = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (k, v))
    P, M = q.shape[2], k.shape[2]
    qi, ki = torch.arange(P).view(1, 1, P, 1) + q_shift, torch.arange(M).view(1, 1, 1, M)
    hh = torch.arange(H).view(1, H, 1, 1)
    s = score_fn(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), qi, ki, hh)
    s = s.masked_fill(~keep(qi, ki, hh), -math.inf)
    top = s.amax(-1, keepdim=True)
    w = torch.exp(s - torch.where(torch.isfinite(top), top, 0.0))
    den = w.sum(-1, keepdim=True)
    return torch.where(den > 0, w / torch.where(den > 0, den, 1.0), 0.0) @ v


def _grads(f, q, k, v, table, dout, **kw):
    out = f(q, k, v, **kw)
    return torch.autograd.grad(out, (q, k, v, table), dout)


def _check(got, want, tol=1e-6):
    for name, a, b in zip(("dq", "dk", "dv", "dtable"), got, want):
        assert rel_err(a, b) < tol, name


def _docs(lengths):
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def test_document_mask_table_gradients_skip_tiles_across_documents():
    """A learned relative-position table under a causal document mask read from ``doc_ids`` (tables
    built from the ids at run time), ragged N = 150 (tiles of 32), GQA 4:2, and rows masked whole
    (q % 37 == 5); then new ids: the kernel follows their tables and stays right."""
    N, B, H, Hkv = 150, 2, 4, 2
    g = torch.Generator().manual_seed(3)
    rel = torch.nn.Parameter(torch.randn(H, 2 * N - 1, generator=g, dtype=torch.float64))
    doc_ids = _docs([41, 7, 60, 42])
    c = ef.attention("docs_rel", score_mod=lambda s, b, h, q, kv: s + rel[h, q - kv + N - 1],
                     mask_mod=lambda b, h, q, kv: (doc_ids[q] == doc_ids[kv]) & (q >= kv) & (q % 37 != 5),
                     head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = _qkv(B, H, Hkv, N, N, seed=4)
    dout = torch.randn(B, H, N, D, generator=g, dtype=torch.float64)

    def want(ids):
        return _attend(q, k, v, lambda s, qi, ki, hh: s + rel[hh, qi - ki + N - 1],
                       lambda qi, ki, hh: (ids[qi] == ids[ki]) & (qi >= ki) & (qi % 37 != 5))

    got = _grads(f, q, k, v, rel, dout)
    _check(got, torch.autograd.grad(want(doc_ids), (q, k, v, rel), dout))
    bwd = f._backward_kernel
    tables = bwd.last_capture_tables
    assert not tables.dense and tables.method == "dense-check"
    assert tables.visited_fraction < 0.5  # 4 documents, causal: most tile pairs are EMPTY
    assert any(t is tables for t in f.kernel._tables.values())  # the dQ kernel's cache entry, not a copy

    other = _docs([20, 90, 40])  # new ids at call time: new tables, still right
    got = _grads(f, q, k, v, rel, dout, doc_ids=other)
    _check(got, torch.autograd.grad(want(other), (q, k, v, rel), dout))
    assert bwd.last_capture_tables is not tables and not bwd.last_capture_tables.dense


def test_head_dependent_window_and_per_head_gate_gradients():
    """A per-head window read from an integer tensor (tables per head) and a per-head float gate on
    the score (one atomic per tile), at ragged N = 75 with GQA 4:1 and K/V longer than Q (bottom-right
    query positions)."""
    P, M, B, H = 45, 75, 1, 4
    win = torch.tensor([3, 20, 75, 1])
    g = torch.Generator().manual_seed(8)
    gate = torch.nn.Parameter(torch.rand(H, generator=g, dtype=torch.float64) + 0.5)
    c = ef.attention("win_gate", score_mod=lambda s, b, h, q, kv: s * gate[h],
                     mask_mod=lambda b, h, q, kv: (kv <= q) & (q - kv < win[h]), head_dim=D,
                     align="bottom_right")
    f = ef.compile(c, torch_op=False)
    q, k, v = _qkv(B, H, 1, P, M, seed=9)
    dout = torch.randn(B, H, P, D, generator=g, dtype=torch.float64)
    got = _grads(f, q, k, v, gate, dout)
    ref = _attend(q, k, v, lambda s, qi, ki, hh: s * gate[hh],
                  lambda qi, ki, hh: (ki <= qi) & (qi - ki < win[hh]), q_shift=M - P)
    _check(got, torch.autograd.grad(ref, (q, k, v, gate), dout))
    tables = f._backward_kernel.last_capture_tables
    assert not tables.dense and tables.head_dependent and tables.visited_fraction < 1.0


def test_neighbourhood_boxes_with_a_learned_relative_position_table():
    """NATTEN-style 2-D neighbourhood (7x7 on a 10x12 grid, ragged against the tiles) with a learned
    relative-position bias, walked in box tile order: the capture-gradient kernel takes the forward's
    boxes and tables."""
    X0, X1, K = 10, 12, 7
    g = torch.Generator().manual_seed(13)
    rpb = torch.nn.Parameter(torch.randn(2, (2 * X0 - 1) * (2 * X1 - 1), generator=g, dtype=torch.float64))

    def rel(q, kv):
        return (q // X1 - kv // X1 + X0 - 1) * (2 * X1 - 1) + (q % X1 - kv % X1 + X1 - 1)

    def near(q, kv):
        return ((q // X1 - kv // X1) <= K // 2) & ((kv // X1 - q // X1) <= K // 2) & \
            ((q % X1 - kv % X1) <= K // 2) & ((kv % X1 - q % X1) <= K // 2)
    c = ef.attention("na_rpb", score_mod=lambda s, b, h, q, kv: s + rpb[h, rel(q, kv)],
                     mask_mod=lambda b, h, q, kv: near(q, kv), head_dim=D)
    c = c.replace(attrs={**c.attrs, "neighborhood": {"shape": [X0, X1]}})  # the token grid: box tiles
    f = ef.compile(c, torch_op=False, tile_order="box")
    q, k, v = _qkv(1, 2, 2, X0 * X1, X0 * X1, seed=14)
    dout = torch.randn(1, 2, X0 * X1, D, generator=g, dtype=torch.float64)
    got = _grads(f, q, k, v, rpb, dout)
    ref = _attend(q, k, v, lambda s, qi, ki, hh: s + rpb[hh, rel(qi, ki)], lambda qi, ki, hh: near(qi, ki))
    _check(got, torch.autograd.grad(ref, (q, k, v, rpb), dout))
    bwd = f._backward_kernel
    assert not bwd.layout(q, k, _opts(f))[0].is_flat  # box tiles of the 10x12 grid
    assert not bwd.last_capture_tables.dense and bwd.last_capture_tables.visited_fraction < 1.0


def _opts(f):
    from einfuse.codegen.triton.runtime import LaunchOptions, _non_default

    return LaunchOptions.from_kwargs(_non_default(f.kernel.defaults))


def test_unmasked_table_gradient_in_float32_with_an_odd_head_dim():
    """No mask (dense tables: every tile FULL but the ragged last), fp32 inputs, ragged N = 37,
    head dim 20 (padded to 32 in the kernel), the default scale 1/sqrt(20)."""
    N, d, dtype = 37, 20, torch.float32
    g = torch.Generator().manual_seed(21)
    rel = torch.nn.Parameter(torch.randn(2 * N - 1, generator=g, dtype=dtype))
    f = ef.compile(ef.attention("rel", score_mod=lambda s, b, h, q, kv: s + rel[q - kv + N - 1]), torch_op=False)
    q, k, v = _qkv(2, 2, 2, N, N, seed=22, dtype=dtype, d=d)
    dout = torch.randn(2, 2, N, d, generator=g, dtype=dtype)
    got = _grads(f, q, k, v, rel, dout)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    r64 = rel.detach().double().requires_grad_()
    ref = _attend(q64, k64, v64, lambda s, qi, ki, hh: s + r64[qi - ki + N - 1],
                  lambda qi, ki, hh: torch.ones_like(qi - ki, dtype=torch.bool))
    _check(got, torch.autograd.grad(ref, (q64, k64, v64, r64), dout.double()), tol=1e-4)
    assert f._backward_kernel.last_capture_tables.dense


def test_batch_dependent_document_mask_walks_every_tile_masked_and_stays_right():
    """``doc_ids[b, q]``: the tables cannot skip (one per batch is not built), so every tile is
    PARTIAL and the mask is evaluated everywhere; gradients still match."""
    N, B = 70, 2
    g = torch.Generator().manual_seed(31)
    rel = torch.nn.Parameter(torch.randn(2 * N - 1, generator=g, dtype=torch.float64))
    docs = torch.stack([_docs([30, 40]), _docs([5, 50, 15])])
    c = ef.attention("bdocs", score_mod=lambda s, b, h, q, kv: s + rel[q - kv + N - 1],
                     mask_mod=lambda b, h, q, kv: docs[b, q] == docs[b, kv], head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = _qkv(B, 2, 1, N, N, seed=32)
    dout = torch.randn(B, 2, N, D, generator=g, dtype=torch.float64)
    got = _grads(f, q, k, v, rel, dout)
    bb = torch.arange(B).view(B, 1, 1, 1)
    ref = _attend(q, k, v, lambda s, qi, ki, hh: s + rel[qi - ki + N - 1],
                  lambda qi, ki, hh: docs[bb, qi] == docs[bb, ki])
    _check(got, torch.autograd.grad(ref, (q, k, v, rel), dout))
    t = f._backward_kernel.last_capture_tables
    assert t.dense and t.n_full == 0  # all partial: nothing skipped, nothing unmasked
