"""FlexAttention-style score_mod / mask_mod functions, ported to ``einfuse.attention``, against a
float64 reference computed here with plain torch (not through einfuse).

Each port is written once against a small namespace ``ns`` of math functions: with ``EF`` it is
traced by einfuse (indices are symbolic), with ``TORCH`` it runs as FlexAttention runs a mod, on
broadcast int64 index tensors and a float64 score tensor. The mods follow PyTorch's FlexAttention
tests and attention-gym (relative bias, ALiBi, soft-capping, trig, prefix LM, sliding/dilated/global
windows, sinks, block-diagonal and Sparse-Transformer patterns, 2-D neighbourhoods by index
arithmetic and by Morton order) plus the cases issue 17 found silently wrong (``==``/``!=`` on
indices, conditions on the score value, rows sent to -inf, SiLU), and mods that close over tensors
(relative-bias and Swin tables, per-head and per-batch parameters, document ids, lengths, index
permutations: captured tensors). ``NOT_EXPRESSIBLE`` lists the two that einfuse refuses, and why.

Every mod runs as a Triton kernel (interpreter) at ragged sizes with GQA and fewer queries than keys,
and on the split-KV decode path (5 queries).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _helpers import rel_err

import einfuse as ef
from einfuse.codegen.reference import run_cascade

NUM_HEADS = 4
INF = math.inf


def _t(x):
    return x if isinstance(x, torch.Tensor) else torch.tensor(x)


EF = SimpleNamespace(where=ef.where, abs=ef.abs, maximum=ef.maximum, minimum=ef.minimum, clamp=ef.clamp,
                     tanh=ef.tanh, sigmoid=ef.sigmoid, exp=ef.exp, log=ef.log, sqrt=ef.sqrt, sin=ef.sin,
                     cos=ef.cos, tan=ef.tan)
TORCH = SimpleNamespace(
    where=lambda c, a, b: torch.where(c, _t(a), _t(b)), abs=lambda x: _t(x).abs(),
    maximum=lambda a, b: torch.maximum(_t(a), _t(b)), minimum=lambda a, b: torch.minimum(_t(a), _t(b)),
    clamp=lambda x, lo, hi: torch.clamp(_t(x), lo, hi), tanh=torch.tanh, sigmoid=torch.sigmoid, exp=torch.exp,
    log=lambda x: torch.log(_t(x)), sqrt=lambda x: torch.sqrt(_t(x)), sin=lambda x: torch.sin(_t(x)),
    cos=lambda x: torch.cos(_t(x)), tan=lambda x: torch.tan(_t(x)))


def morton_xy(ns, t):
    """De-interleave a 6-bit Morton (Z-order) index into (x, y) on an 8x8 grid."""
    x = (t & 1) | ((t >> 1) & 2) | ((t >> 2) & 4)
    y = ((t >> 1) & 1) | ((t >> 2) & 2) | ((t >> 3) & 4)
    return x, y


def morton_neighbours(ns, q, kv):
    (xq, yq), (xk, yk) = morton_xy(ns, q), morton_xy(ns, kv)
    return (ns.abs(xq - xk) <= 1) & (ns.abs(yq - yk) <= 1)


# ---- captured tensors: module globals the mods close over, as FlexAttention users write them; einfuse
# traces each as a captured input bound to this tensor (einfuse.frontends.captured). Indices stay in
# range for every test shape (positions < 64), since torch's indexing wraps negative indices. Float
# tables are float64 so that the torch reference is exact (the kernels read them as float32).
_g = torch.Generator().manual_seed(17)
rel_table = torch.randn(128, generator=_g, dtype=torch.float64)                       # T5-style relative bias, offset 64
bias_bhqk = torch.randn(2, NUM_HEADS, 64, 64, generator=_g, dtype=torch.float64)      # a full (B, H, Q, KV) bias
dist_table = torch.randn(64, generator=_g, dtype=torch.float64)                       # bias by |q - kv|
head_offset = torch.randn(NUM_HEADS, generator=_g, dtype=torch.float64)
slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / NUM_HEADS) for i in range(NUM_HEADS)], dtype=torch.float64)  # ALiBi, as a tensor
head_scale = torch.rand(NUM_HEADS, generator=_g, dtype=torch.float64) + 0.5           # learnable per-head temperature
gate = torch.randn(NUM_HEADS, generator=_g, dtype=torch.float64)                      # learnable per-head gate
batch_bias = torch.randn(2, generator=_g, dtype=torch.float64)
doc_ids = torch.sort(torch.randint(0, 5, (64,), generator=_g)).values          # packed documents
doc_ids_b = torch.sort(torch.randint(0, 4, (2, 64), generator=_g), dim=1).values  # per batch
lengths = torch.tensor([37, 20])                                 # valid keys per batch (padding)
prefix_len = torch.tensor([9, 17])                               # prefix-LM prefix per batch
perm = torch.randperm(64, generator=_g)                          # a token order
swin_table = torch.randn(NUM_HEADS, 15 * 15, generator=_g, dtype=torch.float64)       # Swin: (2*8-1)^2 offsets on an 8x8 window


def swin_index(q, kv):
    """Swin's relative position index of two tokens of an 8x8 window (row-major)."""
    return (q // 8 - kv // 8 + 7) * 15 + (q % 8 - kv % 8 + 7)


# name -> ns -> (score_mod or None, mask_mod or None)
Port = Callable[[SimpleNamespace], tuple]
PORTS: dict[str, Port] = {
    # ---- score_mods (FlexAttention's tests) ----
    "identity": lambda ns: (lambda s, b, h, q, kv: s, None),
    "times_two": lambda ns: (lambda s, b, h, q, kv: s * 2, None),
    "squared": lambda ns: (lambda s, b, h, q, kv: s * s, None),
    "rel_bias": lambda ns: (lambda s, b, h, q, kv: s + (q - kv) * 0.1, None),
    "alibi": lambda ns: (lambda s, b, h, q, kv: s + (kv - q) * 2.0 ** (-(h + 1) * 8.0 / NUM_HEADS), None),
    "softcap": lambda ns: (lambda s, b, h, q, kv: 1.5 * ns.tanh(s / 1.5), None),
    "causal_score": lambda ns: (lambda s, b, h, q, kv: ns.where(q >= kv, s, -INF), None),
    "inverse_causal_score": lambda ns: (lambda s, b, h, q, kv: ns.where(q <= kv, s, -INF), None),
    "windowed_offset": lambda ns: (lambda s, b, h, q, kv: ns.where(q + 5 >= kv, s, -INF), None),
    "rel_causal": lambda ns: (lambda s, b, h, q, kv: ns.where(q >= kv, s + (q - kv) * 0.05, -INF), None),
    "trig": lambda ns: (lambda s, b, h, q, kv: ns.sin(ns.cos(s)) + ns.tan(b * 0.5), None),
    "trig2": lambda ns: (lambda s, b, h, q, kv: ns.cos(s) * ns.sin(s) + ns.tan(h * 0.25), None),
    "head_temperature": lambda ns: (lambda s, b, h, q, kv: s * (h + 1) * 0.5, None),
    "batch_head_bias": lambda ns: (lambda s, b, h, q, kv: s + b * 0.3 - h * 0.2, None),
    "distance_decay": lambda ns: (lambda s, b, h, q, kv: s - 0.05 * ns.abs(q - kv), None),
    "log_distance": lambda ns: (lambda s, b, h, q, kv: s - 0.3 * ns.log(1.0 + ns.abs(q - kv)), None),
    "gaussian_bias": lambda ns: (lambda s, b, h, q, kv: s + ns.exp(-0.01 * (q - kv) * (q - kv)), None),
    "sqrt_position": lambda ns: (lambda s, b, h, q, kv: s + ns.sqrt(kv + 1.0) * 0.1, None),
    "bucketed_distance": lambda ns: (lambda s, b, h, q, kv: s - 0.1 * ns.minimum(ns.abs(q - kv) // 4, 5), None),
    "xor_bias": lambda ns: (lambda s, b, h, q, kv: s + ((q ^ kv) & 3) * 0.25, None),
    "shift_bias": lambda ns: (lambda s, b, h, q, kv: s + (kv << 1) * 0.01 - (q >> 2) * 0.02, None),
    # ---- issue 17: ==, != and conditions on the score value ----
    "parity_bonus": lambda ns: (lambda s, b, h, q, kv: ns.where(kv % 2 == 0, s + 1, s), None),
    "diagonal_bonus": lambda ns: (lambda s, b, h, q, kv: ns.where(q == kv, s + 2.0, s), None),
    "silu": lambda ns: (lambda s, b, h, q, kv: s * ns.sigmoid(s), None),
    "score_relu": lambda ns: (lambda s, b, h, q, kv: ns.where(s > 0, s, 0.0), None),
    "leaky_score": lambda ns: (lambda s, b, h, q, kv: ns.where(s > 0, s, 0.1 * s), None),
    "score_clamp": lambda ns: (lambda s, b, h, q, kv: ns.clamp(s, -0.5, 0.5), None),
    "score_threshold": lambda ns: (lambda s, b, h, q, kv: ns.where(s > -0.2, s, -INF), None),
    "score_and_index": lambda ns: (lambda s, b, h, q, kv: ns.where((s > 0) & (q >= kv), s, s * 0.5), None),
    "rows_to_minus_inf": lambda ns: (lambda s, b, h, q, kv: ns.where(q < 4, s, -INF), None),
    # ---- mask_mods (attention-gym) ----
    "noop": lambda ns: (None, lambda b, h, q, kv: q >= 0),
    "causal": lambda ns: (None, lambda b, h, q, kv: q >= kv),
    "causal_offset": lambda ns: (None, lambda b, h, q, kv: q + 3 >= kv),
    "block_causal": lambda ns: (None, lambda b, h, q, kv: q // 8 >= kv // 8),
    "chunked_causal": lambda ns: (None, lambda b, h, q, kv: (q // 16 == kv // 16) & (q >= kv)),
    "inverse_causal": lambda ns: (None, lambda b, h, q, kv: q <= kv),
    "sliding_window": lambda ns: (None, lambda b, h, q, kv: (q >= kv) & (q - kv < 8)),
    "bidirectional_window": lambda ns: (None, lambda b, h, q, kv: ns.abs(q - kv) <= 6),
    "band": lambda ns: (None, lambda b, h, q, kv: (kv >= q - 3) & (kv <= q + 10)),
    "prefix_lm": lambda ns: (None, lambda b, h, q, kv: (kv <= 9) | (q >= kv)),
    "causal_no_diagonal": lambda ns: (None, lambda b, h, q, kv: (q >= kv) & (q != kv)),
    "not_diagonal": lambda ns: (None, lambda b, h, q, kv: q != kv),
    "block_diagonal": lambda ns: (None, lambda b, h, q, kv: q // 16 == kv // 16),
    "sink_or_block": lambda ns: (None, lambda b, h, q, kv: (kv < 4) | (q // 16 == kv // 16)),
    "sink_and_window": lambda ns: (None, lambda b, h, q, kv: (kv < 4) | ((q >= kv) & (q - kv < 8))),
    "dilated_window": lambda ns: (None, lambda b, h, q, kv: (ns.abs(q - kv) < 12) & ((q - kv) % 3 == 0)),
    "global_tokens": lambda ns: (None, lambda b, h, q, kv: (q < 3) | (kv < 3) | (ns.abs(q - kv) < 4)),
    "strided": lambda ns: (None, lambda b, h, q, kv: (kv % 4 == q % 4) & (q >= kv)),
    "fixed_pattern": lambda ns: (None, lambda b, h, q, kv: ((q // 8 == kv // 8) | (kv % 8 == 7)) & (q >= kv)),
    "even_keys": lambda ns: (None, lambda b, h, q, kv: kv % 2 == 0),
    "checkerboard": lambda ns: (None, lambda b, h, q, kv: (q + kv) % 2 == 0),
    "grid_neighbourhood": lambda ns: (None, lambda b, h, q, kv: (ns.abs(q // 8 - kv // 8) <= 1)
                                      & (ns.abs(q % 8 - kv % 8) <= 1)),
    "morton_neighbourhood": lambda ns: (None, lambda b, h, q, kv: morton_neighbours(ns, q, kv)),
    "per_head_window": lambda ns: (None, lambda b, h, q, kv: (q >= kv) & (q - kv <= h * 4)),
    "per_batch_length": lambda ns: (None, lambda b, h, q, kv: kv < 40 - b * 7),
    "clamped_window": lambda ns: (None, lambda b, h, q, kv: ns.abs(ns.clamp(q, 8, 30) - kv) < 5),
    "max_window": lambda ns: (None, lambda b, h, q, kv: kv <= ns.maximum(q, 12)),
    # ---- both ----
    "alibi_causal": lambda ns: (PORTS["alibi"](ns)[0], lambda b, h, q, kv: q >= kv),
    "softcap_window": lambda ns: (PORTS["softcap"](ns)[0], lambda b, h, q, kv: ns.abs(q - kv) < 10),
    "rel_bias_prefix_lm": lambda ns: (PORTS["rel_bias"](ns)[0], PORTS["prefix_lm"](ns)[1]),
    "silu_causal": lambda ns: (PORTS["silu"](ns)[0], lambda b, h, q, kv: q >= kv),
    "threshold_block_diagonal": lambda ns: (PORTS["score_threshold"](ns)[0], PORTS["block_diagonal"](ns)[1]),
    "parity_not_diagonal": lambda ns: (PORTS["parity_bonus"](ns)[0], PORTS["not_diagonal"](ns)[1]),
    # ---- captured tensors (FlexAttention's captured-buffer tests, attention-gym) ----
    "rel_bias_table": lambda ns: (lambda s, b, h, q, kv: s + rel_table[q - kv + 64], None),
    "bias_bhqk": lambda ns: (lambda s, b, h, q, kv: s + bias_bhqk[b, h, q, kv], None),
    "abs_distance_table": lambda ns: (lambda s, b, h, q, kv: s + dist_table[ns.abs(q - kv)], None),
    "head_offset": lambda ns: (lambda s, b, h, q, kv: s + head_offset[h], None),
    "alibi_slopes_tensor": lambda ns: (lambda s, b, h, q, kv: s + slopes[h] * (kv - q), None),
    "head_temperature_tensor": lambda ns: (lambda s, b, h, q, kv: s * head_scale[h], None),
    "head_gate": lambda ns: (lambda s, b, h, q, kv: s * ns.sigmoid(gate[h]), None),
    "batch_bias_tensor": lambda ns: (lambda s, b, h, q, kv: s + batch_bias[b], None),
    "swin_rel_pos": lambda ns: (lambda s, b, h, q, kv: s + swin_table[h, swin_index(q, kv)], None),
    "nested_gather": lambda ns: (lambda s, b, h, q, kv: s + dist_table[ns.abs(perm[q] - perm[kv])], None),
    "document_mask": lambda ns: (None, lambda b, h, q, kv: doc_ids[q] == doc_ids[kv]),
    "document_causal": lambda ns: (None, lambda b, h, q, kv: (doc_ids[q] == doc_ids[kv]) & (q >= kv)),
    "document_window": lambda ns: (None, lambda b, h, q, kv: (doc_ids[q] == doc_ids[kv]) & (ns.abs(q - kv) < 6)),
    "document_per_batch": lambda ns: (None, lambda b, h, q, kv: doc_ids_b[b, q] == doc_ids_b[b, kv]),
    "lengths_mask": lambda ns: (None, lambda b, h, q, kv: kv < lengths[b]),
    "prefix_lm_tensor": lambda ns: (None, lambda b, h, q, kv: (kv < prefix_len[b]) | (q >= kv)),
    "permuted_causal": lambda ns: (None, lambda b, h, q, kv: perm[q] >= perm[kv]),
    "document_rel_bias": lambda ns: (PORTS["rel_bias_table"](ns)[0], PORTS["document_causal"](ns)[1]),
}

CAPTURED = [n for n in PORTS if PORTS[n] is not None and n in (
    "rel_bias_table", "bias_bhqk", "abs_distance_table", "head_offset", "alibi_slopes_tensor",
    "head_temperature_tensor", "head_gate", "batch_bias_tensor", "swin_rel_pos", "nested_gather",
    "document_mask", "document_causal", "document_window", "document_per_batch", "lengths_mask",
    "prefix_lm_tensor", "permuted_causal", "document_rel_bias")]

# FlexAttention mods einfuse cannot express, and why (README "Writing score_mod and mask_mod")
NOT_EXPRESSIBLE: dict[str, tuple[str, Port]] = {
    "score_indexed_table": ("a tensor indexed by the score value (a lookup table of quantised scores); "
                            "indices must be functions of b, h, q_idx, kv_idx",
                            lambda ns: (lambda s, b, h, q, kv: s + dist_table[s], None)),
    "searchsorted_offsets": ("torch functions other than indexing on index tensors (torch.searchsorted over "
                             "jagged offsets); give document ids per token instead",
                             lambda ns: (None, lambda b, h, q, kv: torch.searchsorted(lengths, q) == 0)),
}


def flex_reference(q, k, v, scale: float, score_mod=None, mask_mod=None) -> torch.Tensor:
    """FlexAttention's semantics in float64: scores ``q.k * scale``, then ``score_mod`` on broadcast
    int64 index tensors, masked softmax, and 0 for a query with no finite score (fully masked)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # python floats times int64 indices: float64, as in the math
    try:
        q, k, v = (x.double() for x in (q, k, v))
        B, H, P, _ = q.shape
        M = k.shape[2]
        k, v = (x.repeat_interleave(H // x.shape[1], dim=1) for x in (k, v))
        s = torch.einsum("bhpe,bhme->bhpm", q, k) * scale
        b = torch.arange(B).view(B, 1, 1, 1)
        h = torch.arange(H).view(1, H, 1, 1)
        qi = torch.arange(P).view(1, 1, P, 1)
        ki = torch.arange(M).view(1, 1, 1, M)
        if score_mod is not None:
            s = torch.broadcast_to(score_mod(s, b, h, qi, ki), s.shape)
        if mask_mod is not None:
            s = torch.where(torch.broadcast_to(mask_mod(b, h, qi, ki), s.shape), s, -INF)
        top = s.amax(-1, keepdim=True)
        live = torch.isfinite(top)
        w = torch.where(live, torch.exp(s - torch.where(live, top, 0.0)), 0.0)
        den = w.sum(-1, keepdim=True)
        return torch.where(den > 0, w / torch.where(den > 0, den, 1.0), 0.0) @ v
    finally:
        torch.set_default_dtype(prev)


def _inputs(B, H, Hkv, N, M, D, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, N, D, generator=g), torch.randn(B, Hkv, M, D, generator=g),
            torch.randn(B, Hkv, M, D, generator=g))


D = 16
SHAPES = {"ragged_gqa": dict(B=2, H=NUM_HEADS, Hkv=2, N=45, M=53), "decode": dict(B=2, H=2, Hkv=1, N=5, M=53)}


def _compile(name: str):
    score_mod, mask_mod = PORTS[name](EF)
    return ef.attention(name, score_mod=score_mod, mask_mod=mask_mod, head_dim=D)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(PORTS))
def test_port_matches_flex_reference_in_the_kernel(name, shape):
    c = _compile(name)
    dims = SHAPES[shape]
    q, k, v = _inputs(**dims, D=D, seed=len(name))
    want = flex_reference(q, k, v, 1 / math.sqrt(D), *PORTS[name](TORCH))
    assert float(want.abs().sum()) > 0
    f = ef.compile(c, torch_op=False)
    if shape == "decode":
        assert f.decode_kernel() is not None, f.decode_fallback  # the split-KV kernel, not a fallback
    got = f(q, k, v)
    assert torch.isfinite(got).all()
    assert rel_err(got, want) < 3e-5, name


@pytest.mark.parametrize("name", sorted(PORTS))
def test_port_matches_flex_reference_in_the_float64_executor(name):
    q, k, v = _inputs(B=2, H=NUM_HEADS, Hkv=2, N=29, M=37, D=D, seed=7)
    got = run_cascade(_compile(name), {"Q": q, "K": k, "V": v})["O"]
    want = flex_reference(q, k, v, 1 / math.sqrt(D), *PORTS[name](TORCH))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(NOT_EXPRESSIBLE))
def test_mods_not_expressible_are_refused_with_a_reason(name):
    score_mod, mask_mod = NOT_EXPRESSIBLE[name][1](EF)
    with pytest.raises(ef.EinfuseError):
        ef.attention(name, score_mod=score_mod, mask_mod=mask_mod, head_dim=D)


def test_the_suite_covers_what_issue_17_asks_for():
    assert len(PORTS) >= 64 and len(PORTS) / (len(PORTS) + len(NOT_EXPRESSIBLE)) >= 64 / 66
    assert len(CAPTURED) == 18
    for name in CAPTURED:  # each really reads a captured tensor (not a closed form)
        assert _compile(name).captures, name
    # masks with == / != and score conditions, that Python used to decide while tracing
    for name in ("causal_no_diagonal", "sink_or_block", "block_diagonal", "parity_bonus", "score_relu"):
        text = ef.format_cascade(_compile(name))
        assert "Eq(" in text or "Ne(" in text or "QK[m,p] > 0.0" in text, name
