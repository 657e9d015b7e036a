"""User score_mod / mask_mod functions: traced symbolically by ``ef.attention`` they give the same
output as the very same Python functions applied densely to torch index tensors. Comparisons that
Python would decide at trace time (``==`` of plain sympy expressions, ``if``, ``max``) raise."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import sympy
import torch

import einfuse as ef
from einfuse.codegen.reference import run_cascade
from einfuse.errors import SpecError
from einfuse.ir.ranks import HEAD_INDEX

B, H, P, M, E, F = 2, 4, 29, 37, 24, 20
_PM = (sympy.Symbol("p", integer=True, nonnegative=True), sympy.Symbol("m", integer=True, nonnegative=True))

# the math namespace a mod uses: einfuse's symbolic functions when traced, torch's when dense
SYMBOLIC = SimpleNamespace(tanh=ef.tanh, exp=ef.exp, sigmoid=ef.sigmoid, where=ef.where, sin=ef.sin)
DENSE = SimpleNamespace(tanh=torch.tanh, exp=torch.exp, sigmoid=torch.sigmoid, where=torch.where, sin=torch.sin)

SCORE_MODS = {
    "none": None,
    "relative_bias": lambda ns: lambda s, b, h, q, kv: s + 0.25 * (kv - q),
    "softcap": lambda ns: lambda s, b, h, q, kv: 3.0 * ns.tanh(s / 3.0),
    "per_head_batch": lambda ns: lambda s, b, h, q, kv: s * (1 + 0.5 * h) - 0.1 * b,
    "select": lambda ns: lambda s, b, h, q, kv: ns.where(kv > q, s - 2.0, s * 0.5),
    "gate": lambda ns: lambda s, b, h, q, kv: s * ns.sigmoid(s) + ns.exp(-0.1 * (q - kv) * (q - kv)),
    # == on indices, and conditions on the score value (Python evaluated these at trace time once)
    "parity": lambda ns: lambda s, b, h, q, kv: ns.where(kv % 2 == 0, s + 1, s),
    "score_select": lambda ns: lambda s, b, h, q, kv: ns.where((s > 0.1) & (q != kv), s, 0.5 * s - ns.sin(s)),
}
MASK_MODS = {
    "none": None,
    "causal": lambda b, h, q, kv: q >= kv,
    "band": lambda b, h, q, kv: (q - kv < 6) & (kv - q < 3),
    "sink_or_causal": lambda b, h, q, kv: (kv <= q) | (kv < 4),
    "per_head": lambda b, h, q, kv: kv >= q + h,
    "empty_rows": lambda b, h, q, kv: kv > 2 * q + 20,  # keys end at 36: queries q >= 8 see none
    "not_diagonal": lambda b, h, q, kv: (q >= kv) & (q != kv),
    "sink_or_block": lambda b, h, q, kv: (kv < 4) | (q // 8 == kv // 8),
    "block_diagonal": lambda b, h, q, kv: q // 8 == kv // 8,
}


def dense_attention(score_mod, mask_mod, q, k, v, scale: float, normalization: str) -> torch.Tensor:
    """Apply the user's functions to (B, H, P, M) index tensors, then masked softmax (or sigmoid)."""
    bi = torch.arange(B, dtype=torch.float64).view(B, 1, 1, 1)
    hi = torch.arange(H, dtype=torch.float64).view(1, H, 1, 1)
    qi = torch.arange(P, dtype=torch.float64).view(1, 1, P, 1)
    ki = torch.arange(M, dtype=torch.float64).view(1, 1, 1, M)
    s = torch.einsum("bhpe,bhme->bhpm", q, k) * scale
    if score_mod is not None:
        s = score_mod(s, bi, hi, qi, ki)
    mask = torch.ones_like(s, dtype=torch.bool)
    if mask_mod is not None:
        mask = torch.broadcast_to(mask_mod(bi, hi, qi, ki), s.shape)
    if normalization == "sigmoid":
        return torch.where(mask, torch.sigmoid(s), 0.0) @ v
    s = torch.where(mask, s, -math.inf)
    top = s.amax(-1, keepdim=True)
    e = torch.where(mask, torch.exp(s - torch.where(torch.isfinite(top), top, 0.0)), 0.0)
    den = e.sum(-1, keepdim=True)
    return torch.where(den > 0, e / torch.where(den > 0, den, 1.0), 0.0) @ v


def _inputs(seed: int, magnitude: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, P, E, generator=g, dtype=torch.float64) * magnitude
    k = torch.randn(B, H, M, E, generator=g, dtype=torch.float64) * magnitude
    v = torch.randn(B, H, M, F, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("mask_name", sorted(MASK_MODS))
@pytest.mark.parametrize("score_name", sorted(SCORE_MODS))
def test_traced_mods_match_dense_application(score_name: str, mask_name: str) -> None:
    make, mask_mod = SCORE_MODS[score_name], MASK_MODS[mask_name]
    c = ef.attention(score_mod=make and make(SYMBOLIC), mask_mod=mask_mod, head_dim=E)
    q, k, v = _inputs(seed=len(score_name) * 31 + len(mask_name))
    got = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    want = dense_attention(make and make(DENSE), mask_mod, q, k, v, 1 / math.sqrt(E), "softmax").numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-10
    if mask_name == "empty_rows":
        assert (got[:, :, 8:, :] == 0).all() and (np.abs(got[:, :, :8, :]).sum(-1) > 0).all()


@pytest.mark.parametrize("mask_name", ["causal", "per_head", "empty_rows"])
def test_traced_mods_with_sigmoid_normalization(mask_name: str) -> None:
    make, mask_mod = SCORE_MODS["relative_bias"], MASK_MODS[mask_name]
    c = ef.attention(score_mod=make(SYMBOLIC), mask_mod=mask_mod, head_dim=E, normalization="sigmoid")
    q, k, v = _inputs(seed=5)
    got = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    want = dense_attention(make(DENSE), mask_mod, q, k, v, 1 / math.sqrt(E), "sigmoid").numpy()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-10


def test_large_logits_with_user_mods() -> None:
    make, mask_mod = SCORE_MODS["per_head_batch"], MASK_MODS["band"]
    c = ef.attention(score_mod=make(SYMBOLIC), mask_mod=mask_mod, head_dim=E)
    q, k, v = _inputs(seed=9, magnitude=25.0)
    got = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    want = dense_attention(make(DENSE), mask_mod, q, k, v, 1 / math.sqrt(E), "softmax").numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-10


def test_equality_on_indices_builds_predicates():
    """``==`` and ``!=`` trace to sympy Eq/Ne instead of Python's structural bool."""
    where = {name: ef.attention(mask_mod=MASK_MODS[name]).einsums[0].where
             for name in ("not_diagonal", "sink_or_block", "block_diagonal")}
    assert str(where["not_diagonal"]) == "(p >= m) & Ne(p, m)"
    assert str(where["sink_or_block"]) == "(m < 4) | Eq(floor(p/8), floor(m/8))"
    assert str(where["block_diagonal"]) == "Eq(floor(p/8), floor(m/8))"


def test_index_helpers_give_indices_and_operators_match_flex():
    """ef.abs/maximum/minimum/clamp/where of indices stay indices (usable in a mask); Python's
    operators on indices mean what they mean on FlexAttention's integer tensors."""
    qi = torch.arange(70).view(-1, 1)
    ki = torch.arange(50).view(1, -1)
    mods = [
        (lambda q, kv: ef.abs(q - kv) <= ef.maximum(q // 10, 3), lambda q, kv: (q - kv).abs() <= torch.clamp(q // 10, min=3)),
        (lambda q, kv: ef.clamp(q - kv, 0, 12) == ef.minimum(kv, 12), lambda q, kv: (q - kv).clamp(0, 12) == kv.clamp(max=12)),
        (lambda q, kv: ef.where(q > kv, q - kv, kv - q) < 5, lambda q, kv: torch.where(q > kv, q - kv, kv - q) < 5),
        (lambda q, kv: ((q ^ kv) & 6) != ((q >> 1) | (kv << 2)) % 7, lambda q, kv: ((q ^ kv) & 6) != ((q >> 1) | (kv << 2)) % 7),
        (lambda q, kv: ~((q - kv) % 5 == 0) ^ (kv > q), lambda q, kv: ~((q - kv) % 5 == 0) ^ (kv > q)),
        (lambda q, kv: ef.ne(q, kv) & ef.eq(q % 3, kv % 3), lambda q, kv: (q != kv) & (q % 3 == kv % 3)),
    ]
    for traced, dense in mods:
        c = ef.attention(mask_mod=lambda b, h, q, kv: traced(q, kv))
        env = {ef_sym: arr.double() for ef_sym, arr in zip(_PM, (qi, ki))}
        from einfuse.lowering import torch_eval

        got = torch_eval.evaluate(c.einsums[0].where, env)
        assert torch.equal(torch.broadcast_to(got, (70, 50)), dense(qi, ki)), str(c.einsums[0].where)


@pytest.mark.parametrize(("mask_mod", "message"), [
    (lambda b, h, q, kv: sympy.floor(q / 32) == sympy.floor(kv / 32), "decided by Python"),
    (lambda b, h, q, kv: sympy.floor(q / 32) != sympy.floor(kv / 32), "decided by Python"),
    (lambda b, h, q, kv: (kv < 4) | (sympy.floor(q / 32) == sympy.floor(kv / 32)), "Python bool"),
    (lambda b, h, q, kv: q >= kv if q > 3 else q < kv, "no truth value"),
    (lambda b, h, q, kv: max(q, kv) < 9, "ef.maximum"),
    (lambda b, h, q, kv: (q >= kv) and (q < kv + 4), "instead of and/or/not"),
])
def test_comparisons_python_would_decide_raise_with_the_fix(mask_mod, message):
    with pytest.raises(SpecError, match=message):
        ef.attention(mask_mod=mask_mod)


def test_score_conditions_decided_by_python_raise():
    with pytest.raises(SpecError, match="Python bool"):
        ef.attention(score_mod=lambda s, b, h, q, kv: ef.where(sympy.Mod(kv, 2) == 0, s + 1, s))
    with pytest.raises(SpecError, match="no truth value"):
        ef.attention(score_mod=lambda s, b, h, q, kv: s if s > 0 else -s)
    with pytest.raises(SpecError, match="must not depend on the score"):
        ef.attention(mask_mod=lambda b, h, q, kv: ef.eq(ef.exp(q), 1.0))


def test_constant_masks_and_sympy_functions_still_trace():
    assert ef.attention(mask_mod=lambda b, h, q, kv: True).einsums[0].where is None
    assert ef.attention(mask_mod=lambda b, h, q, kv: q >= 0).einsums[0].where is None
    c = ef.attention(mask_mod=lambda b, h, q, kv: sympy.Eq(sympy.floor(q / 32), sympy.floor(kv / 32)))
    assert str(c.einsums[0].where) == "Eq(floor(p/32), floor(m/32))"
    c = ef.attention(score_mod=lambda s, b, h, q, kv: s + sympy.Integer(2) ** (-h) * sympy.Abs(q - kv))
    assert c.einsums[1].expr.right.expr == sympy.Abs(_PM[1] - _PM[0]) / 2**HEAD_INDEX


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mask_mod": lambda q, kv: q >= kv}, "mask_mod must take 4 arguments"),
    ({"score_mod": lambda s, q, kv: s}, "score_mod must take 5 arguments"),
    ({"mask_mod": lambda b, h, q, kv: False}, "masks every element"),
    ({"score_mod": lambda s, b, h, q, kv: torch.tanh(s)}, "could not be traced symbolically"),
    ({"normalization": "relu"}, "normalization 'relu' is not one of"),
])
def test_bad_user_functions_raise_spec_error(kwargs, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ef.attention(**kwargs)
