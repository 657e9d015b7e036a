"""Conditions on values (``where(S[m,p] > 0, ...)``): how they are built, printed, parsed back and
evaluated by the reference executor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy

import einfuse as ef
from einfuse.codegen.reference import run_cascade
from einfuse.ir import format_cascade, parse_cascade
from einfuse.ir.expr import Access, Compare, Const, IndexValue, Select, compare, select, walk, where

p, m = sympy.symbols("p m", integer=True, nonnegative=True)
S = Access("S", (m, p))


def test_comparisons_of_index_values_are_sympy_predicates():
    assert compare("lt", IndexValue(p), Const(3)) == (p < 3)
    assert compare("eq", IndexValue(p), IndexValue(m)) == sympy.Eq(p, m)
    assert compare("ge", Const(2.5), Const(1)) is sympy.true
    assert isinstance(compare("gt", S, 0), Compare) and isinstance(S > 0, Compare) and isinstance(0 < S, Compare)
    assert (0 < S) == (S > 0)


def test_logical_combinations_expand_into_nested_selects():
    a, b = S > 0, p >= m
    assert select(a & b, S, -S) == Select(a, Select(b, S, -S), -S)
    assert select(a | b, S, -S) == Select(a, S, Select(b, S, -S))
    assert select(~a, S, -S) == Select(a, -S, S)


def test_a_comparison_has_no_truth_value_and_is_not_a_value():
    with pytest.raises(TypeError, match="no truth value"):
        bool(S > 0)
    with pytest.raises(TypeError, match="not a value"):
        _ = (S > 0) * 2.0


def test_walk_reaches_the_operands_of_a_condition():
    e = select(Access("QK", (m, p)) > IndexValue(p), S, Const(0))
    assert Access("QK", (m, p)) in list(walk(e)) and p in e.cond.free_symbols


def _cascade():
    return ef.attention(score_mod=lambda s, b, h, q, kv: where((s > 0.25) & (q >= kv), s, 0.1 * s)
                        + where(compare("eq", s, 0.0), 1.0, 0.0) + where(-s <= kv * 0.01, 0.5, 0.0),
                        mask_mod=lambda b, h, q, kv: kv <= q + 3, scale=1)


def test_text_form_round_trips():
    c = _cascade()
    text = format_cascade(c)
    assert "QK[m,p] > 0.25" in text and "QK[m,p] == 0.0" in text
    back = parse_cascade(text)
    assert back.einsums == c.einsums and format_cascade(back) == text


def test_reference_evaluates_value_conditions():
    rng = np.random.default_rng(0)
    B, H, P, M, E = 1, 2, 9, 12, 4
    q, k, v = rng.standard_normal((B, H, P, E)), rng.standard_normal((B, H, M, E)), rng.standard_normal((B, H, M, 3))
    got = run_cascade(_cascade(), {"Q": q, "K": k, "V": v})["O"]
    s = np.einsum("bhpe,bhme->bhpm", q, k)
    qi, ki = np.arange(P).reshape(-1, 1), np.arange(M).reshape(1, -1)
    mod = np.where((s > 0.25) & (qi >= ki), s, 0.1 * s) + np.where(s == 0.0, 1.0, 0.0) + np.where(-s <= ki * 0.01, 0.5, 0.0)
    mod = np.where(ki <= qi + 3, mod, -math.inf)
    w = np.exp(mod - mod.max(-1, keepdims=True))
    np.testing.assert_allclose(got, (w / w.sum(-1, keepdims=True)) @ v, rtol=1e-12, atol=1e-12)
