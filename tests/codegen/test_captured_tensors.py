"""Captured tensors (bias tables, document ids, per-head parameters) from the DSL to the kernels.

Every check compares with torch written here from the definition (gathers with clamped indices,
masked softmax, 0 for rows without a key) or with the float64 reference executor, on fresh random
inputs at ragged sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import rel_err

import einfuse as ef
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError, ExecutionError, ParseError, SpecError, ValidationError

D = 16


def _qkv(B, H, Hkv, N, M, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, N, D, generator=g, dtype=dtype), torch.randn(B, Hkv, M, D, generator=g, dtype=dtype),
            torch.randn(B, Hkv, M, D, generator=g, dtype=dtype))


def _attend(q, k, v, score_fn=None, keep=None):
    """float64 masked softmax; ``score_fn(s, qi, ki)`` and ``keep(qi, ki)`` on broadcast indices."""
    q, k, v = (x.double() for x in (q, k, v))
    H = q.shape[1]
    k, v = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (k, v))
    P, M = q.shape[2], k.shape[2]
    qi, ki = torch.arange(P).view(P, 1), torch.arange(M).view(1, M)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    if score_fn is not None:
        s = score_fn(s, qi, ki)
    if keep is not None:
        s = s.masked_fill(~keep(qi, ki), -math.inf)
    top = s.amax(-1, keepdim=True)
    w = torch.where(torch.isfinite(top), torch.exp(s - torch.where(torch.isfinite(top), top, 0.0)), 0.0)
    den = w.sum(-1, keepdim=True)
    return torch.where(den > 0, w / torch.where(den > 0, den, 1.0), 0.0) @ v


# ---- the IR: declaration, text form, validation ----------------------------------------------------

def test_a_closure_tensor_becomes_a_declared_capture_and_the_text_form_round_trips():
    rel = torch.randn(64)
    docs = torch.tensor([0, 0, 1, 1, 1, 2])
    c = ef.attention("c", score_mod=lambda s, b, h, q, kv: s + rel[q - kv + 32],
                     mask_mod=lambda b, h, q, kv: docs[q] == docs[kv])
    text = ef.format_cascade(c)
    assert "capture rel[_] float" in text and "capture docs[_] int" in text
    assert "idx(rel(-m + p + 32))" in text and "Eq(docs(p), docs(m))" in text
    back = ef.parse_cascade(text)
    assert ef.format_cascade(back) == text
    assert c.captures["rel"].value is rel and back.captures["rel"].value is None  # values are not text


def test_undeclared_or_misshapen_reads_are_validation_errors():
    base = ef.format_cascade(ef.attention("c", score_mod=lambda s, b, h, q, kv: s + ef.tensor("tab", 1)[q]))
    with pytest.raises(ParseError, match="tab.*not declared"):
        ef.parse_cascade(base.replace("capture tab[_] float\n", ""))
    with pytest.raises(ValidationError, match="2 dimension"):
        ef.parse_cascade(base.replace("capture tab[_] float", "capture tab[_,_] float"))
    with pytest.raises(ParseError, match="capture NAME"):
        ef.parse_cascade(base.replace("capture tab[_] float", "capture tab[3] float"))


@pytest.mark.parametrize("make, match", [
    (lambda t: (lambda s, b, h, q, kv: s + t[q]), "2 dimension"),
    (lambda t: (lambda s, b, h, q, kv: s + t[q / 2, kv]), "not an integer"),
    (lambda t: (lambda s, b, h, q, kv: s + t[s, kv]), "scores cannot index"),
    (lambda t: (lambda s, b, h, q, kv: s + t[q, :]), "integer expression"),
])
def test_bad_indexing_names_the_tensor_and_the_fix(make, match):
    t = ef.tensor("tab", ndim=2)
    with pytest.raises(SpecError, match=match):
        ef.attention("c", score_mod=make(t))


def test_a_tensor_reached_through_an_attribute_names_the_fix():
    from types import SimpleNamespace

    holder = SimpleNamespace(bias=torch.randn(8))
    with pytest.raises(SpecError, match="closure variables or module globals"):
        ef.attention("c", score_mod=lambda s, b, h, q, kv: s + holder.bias[kv])


def test_bad_names_and_scalars_are_refused():
    with pytest.raises(SpecError, match="name"):
        ef.tensor("B", ndim=1)
    x = torch.tensor(2.0)
    with pytest.raises(SpecError, match="0-dimensional"):
        ef.attention("c", score_mod=lambda s, b, h, q, kv: s * x)


# ---- the reference executor ------------------------------------------------------------------------

def test_reference_gathers_with_clamped_indices():
    tab = torch.randn(10, dtype=torch.float64)
    c = ef.attention("c", score_mod=lambda s, b, h, q, kv: s + tab[q - kv + 3], head_dim=D)
    q, k, v = _qkv(1, 2, 2, 13, 11, dtype=torch.float64)
    got = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]

    def score(s, qi, ki):  # out-of-range reads take the nearest element
        return s + tab[(qi - ki + 3).clamp(0, 9)]
    np.testing.assert_allclose(got, _attend(q, k, v, score).numpy(), rtol=1e-10, atol=1e-12)


def test_reference_takes_placeholders_from_inputs_and_names_missing_ones():
    off = ef.tensor("offs", ndim=1)
    c = ef.attention("c", score_mod=lambda s, b, h, q, kv: s + off[h], head_dim=D)
    q, k, v = _qkv(2, 3, 3, 5, 7, dtype=torch.float64)
    with pytest.raises(ExecutionError, match="offs"):
        run_cascade(c, {"Q": q, "K": k, "V": v})
    o = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    got = run_cascade(c, {"Q": q, "K": k, "V": v, "offs": o})["O"]
    np.testing.assert_allclose(got, _attend(q, k, v).numpy(), rtol=1e-10, atol=1e-12)  # per-row constant


# ---- the kernels -----------------------------------------------------------------------------------

def test_kernel_clamps_out_of_range_reads_like_the_reference():
    tab = torch.randn(2, 9)
    c = ef.attention("c", score_mod=lambda s, b, h, q, kv: s + 2 * tab[b, kv - q], head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = _qkv(3, 2, 1, 29, 37, seed=3)  # batch 2 and up read row 1; kv - q runs far outside 0..8
    want = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(f(q, k, v), want) < 3e-5


def test_call_time_tensors_override_bound_ones_and_placeholders_must_be_given():
    bias = torch.zeros(8)
    slope = ef.tensor("slope", ndim=1)
    c = ef.attention("c", score_mod=lambda s, b, h, q, kv: s + bias[h] + slope[h] * (kv - q), head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = _qkv(2, 4, 2, 21, 21, seed=4)
    with pytest.raises(CodegenError, match="slope has no value; pass it as slope="):
        f(q, k, v)
    with pytest.raises(CodegenError, match="1-d"):
        f(q, k, v, slope=torch.ones(2, 2))
    sl, bb = torch.rand(4), torch.randn(4)
    got = f(q, k, v, slope=sl, bias=bb)
    want = _attend(q, k, v, lambda s, qi, ki: s + bb.view(1, 4, 1, 1) + sl.view(1, 4, 1, 1) * (ki - qi))
    assert rel_err(got, want) < 3e-5
    assert rel_err(f(q, k, v, slope=sl), _attend(q, k, v, lambda s, qi, ki: s + sl.view(1, 4, 1, 1) * (ki - qi))) < 3e-5


def test_document_mask_skips_tiles_across_documents_and_follows_the_ids():
    N = 160
    docs = torch.repeat_interleave(torch.arange(5), torch.tensor([40, 8, 56, 33, 23]))
    c = ef.attention("docs", mask_mod=lambda b, h, q, kv: (docs[q] == docs[kv]) & (q >= kv), head_dim=D)
    f = ef.compile(c, torch_op=False, block_m=16, block_n=16)
    q, k, v = _qkv(2, 2, 2, N, N, seed=5)
    got = f(q, k, v)
    t = f.kernel.last_tables
    assert not t.dense and t.method == "dense-check" and t.visited_fraction < 0.3  # create_block_mask-style

    def keep(qi, ki):
        return (docs[qi] == docs[ki]) & (qi >= ki)
    assert rel_err(got, _attend(q, k, v, keep=keep)) < 3e-5
    docs[:] = torch.repeat_interleave(torch.arange(2), torch.tensor([100, 60]))  # in place: tables follow
    assert rel_err(f(q, k, v), _attend(q, k, v, keep=keep)) < 3e-5
    other = torch.zeros(N, dtype=torch.long)  # one document: causal
    assert rel_err(f(q, k, v, docs=other), _attend(q, k, v, keep=lambda qi, ki: qi >= ki)) < 3e-5
    for n_docs in range(2, 14):  # new id tensors (often at a freed tensor's address): never stale tables
        ids = torch.arange(N) * n_docs // N
        want = _attend(q, k, v, keep=lambda qi, ki, ids=ids: (ids[qi] == ids[ki]) & (qi >= ki))
        assert rel_err(f(q, k, v, docs=ids), want) < 3e-5
        del ids
    assert sum(1 for key in f.kernel._tables if key[-1]) <= 8  # a few recent tables, not one per call


def test_batch_dependent_document_mask_is_correct_without_skipping():
    docs = torch.sort(torch.randint(0, 3, (2, 40), generator=torch.Generator().manual_seed(1)), dim=1).values
    c = ef.attention("c", mask_mod=lambda b, h, q, kv: docs[b, q] == docs[b, kv], head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = _qkv(2, 2, 1, 40, 40, seed=6)
    want = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(f(q, k, v), want) < 3e-5


def test_q_k_v_gradients_flow_through_variants_that_read_captured_tensors():
    rel = torch.randn(80, dtype=torch.float64)
    docs = torch.repeat_interleave(torch.arange(3), torch.tensor([11, 20, 6]))
    c = ef.attention("c", score_mod=lambda s, b, h, q, kv: s + rel[q - kv + 40],
                     mask_mod=lambda b, h, q, kv: docs[q] == docs[kv], head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = (x.requires_grad_() for x in _qkv(2, 4, 2, 37, 37, seed=7, dtype=torch.float64))
    f(q, k, v).pow(2).sum().backward()
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    _attend(q2, k2, v2, lambda s, qi, ki: s + rel[qi - ki + 40], lambda qi, ki: docs[qi] == docs[ki]).pow(2).sum().backward()
    for a, b in ((q.grad, q2.grad), (k.grad, k2.grad), (v.grad, v2.grad)):
        assert rel_err(a, b) < 1e-6


def test_gradients_of_learned_tables_match_torch_autograd():
    """Swin-style (heads, 15*15) relative-position table on an 8x8 window, per-head temperatures
    inside a soft-cap, under a document mask: every float captured tensor gets its gradient."""
    g = torch.Generator().manual_seed(11)
    table = torch.nn.Parameter(torch.randn(4, 225, generator=g, dtype=torch.float64))
    temp = torch.nn.Parameter(torch.rand(4, generator=g, dtype=torch.float64) + 0.5)
    docs = torch.repeat_interleave(torch.arange(2), torch.tensor([40, 24]))

    def rel(q, kv):
        return (q // 8 - kv // 8 + 7) * 15 + (q % 8 - kv % 8 + 7)
    c = ef.attention("swin", score_mod=lambda s, b, h, q, kv: 4 * ef.tanh((s * temp[h] + table[h, rel(q, kv)]) / 4),
                     mask_mod=lambda b, h, q, kv: docs[q] == docs[kv], head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = (x.requires_grad_() for x in _qkv(2, 4, 2, 64, 64, seed=12, dtype=torch.float64))
    f(q, k, v).pow(2).sum().backward()
    got = [x.grad.clone() for x in (q, k, v, table, temp)]
    for x in (q, k, v, table, temp):
        x.grad = None
    hh = torch.arange(4).view(1, 4, 1, 1)
    _attend(q, k, v, lambda s, qi, ki: 4 * torch.tanh((s * temp.view(1, 4, 1, 1) + table[hh, rel(qi, ki)]) / 4),
            lambda qi, ki: docs[qi] == docs[ki]).pow(2).sum().backward()
    for a, x in zip(got, (q, k, v, table, temp)):
        assert rel_err(a, x.grad) < 1e-6


def test_only_the_table_requires_grad_and_inference_needs_no_grad():
    table = torch.nn.Parameter(torch.randn(50))
    c = ef.attention("c", score_mod=lambda s, b, h, q, kv: s + table[q - kv + 25], head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = _qkv(1, 2, 2, 9, 9)
    f(q, k, v).sum().backward()  # q, k, v need no grad: the table still gets one
    assert table.grad is not None and table.grad.abs().sum() > 0
    with torch.no_grad():
        want = _attend(q, k, v, lambda s, qi, ki: s + table.detach()[qi - ki + 25])
        assert rel_err(f(q, k, v), want) < 3e-5


def test_a_table_that_requires_grad_in_a_variant_without_backward_is_a_clear_error():
    table = torch.nn.Parameter(torch.randn(50))
    c = ef.attention("sig", score_mod=lambda s, b, h, q, kv: s + table[q - kv + 25], normalization="sigmoid",
                     head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, k, v = _qkv(1, 2, 2, 9, 9)
    with pytest.raises(ef.EinfuseError, match="backward"):
        f(q, k, v)


# ---- FlexAttention call conventions -------------------------------------------------------------------

@pytest.mark.parametrize("n_q", [23, 4])  # main kernel, decode kernel
def test_kv_batch_broadcast_and_return_lse(n_q):
    c = ef.attention("c", mask_mod=lambda b, h, q, kv: (kv <= q + 20) & (q < 20), head_dim=D)
    f = ef.compile(c, torch_op=False)
    q, _, _ = _qkv(3, 4, 2, n_q, 31, seed=8)
    _, k, v = _qkv(1, 4, 2, n_q, 31, seed=9)
    out, lse = f(q, k, v, return_lse=True)

    def keep(qi, ki):
        return (ki <= qi + 20) & (qi < 20)
    kk, vv = (x.expand(3, -1, -1, -1) for x in (k, v))
    assert rel_err(out, _attend(q, kk, vv, keep=keep)) < 3e-5
    s = (q.double() @ kk.double().repeat_interleave(2, 1).transpose(-1, -2)) / math.sqrt(D)
    want = torch.logsumexp(s.masked_fill(~keep(torch.arange(n_q).view(-1, 1), torch.arange(31).view(1, -1)),
                                         -math.inf), -1)
    assert lse.shape == (3, 4, n_q) and lse.dtype == torch.float32
    assert torch.equal(torch.isinf(lse), torch.isinf(want))
    live = torch.isfinite(want)
    assert (lse[live].double() - want[live]).abs().max() < 1e-4


def test_closure_cells_of_factories_and_bound_placeholders_are_captured():
    def with_bias(table):  # a mod built by a factory: the tensor lives in a closure cell
        return lambda s, b, h, q, kv: s + table[kv]
    t = torch.randn(40, dtype=torch.float64)
    c1 = ef.attention("c1", score_mod=with_bias(t), head_dim=D)
    bound = ef.tensor("tab", value=t)
    c2 = ef.attention("c2", score_mod=lambda s, b, h, q, kv: s + bound[kv], head_dim=D)
    assert c1.captures["table"].value is t and c2.captures["tab"].value is t
    q, k, v = _qkv(1, 2, 2, 7, 40, seed=13, dtype=torch.float64)
    want = _attend(q, k, v, lambda s, qi, ki: s + t[ki]).numpy()
    for c in (c1, c2):
        np.testing.assert_allclose(run_cascade(c, {"Q": q, "K": k, "V": v})["O"], want, rtol=1e-10, atol=1e-12)
