"""The backward plan: the score's derivative by the chain rule over the IR, transposed block tables."""

import sys
from pathlib import Path

import pytest
import sympy
import torch

import einfuse
from einfuse.errors import CodegenError
from einfuse.ir.expr import Access, Const, IndexValue, Select, as_expr, binary, compare, unary
from einfuse.ir.ranks import KEY_INDEX, QUERY_INDEX
from einfuse.lowering.backward import backward_plan, format_backward_plan, score_derivative, transpose_tables
from einfuse.lowering.blocks import FULL, PARTIAL, build_tables
from einfuse.lowering.onepass import DOT
from einfuse.lowering.tile_order import FLAT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _torch_reference import _eval  # noqa: E402

X = Access(DOT, (KEY_INDEX, QUERY_INDEX))
P, M = QUERY_INDEX, KEY_INDEX


def test_plain_scale_and_alibi_bias_differentiate_to_the_scale():
    assert score_derivative(X * 0.125) == Const(0.125)
    alibi = einfuse.plan("alibi:head_dim=24")
    assert backward_plan(alibi).dscore_constant == pytest.approx(24 ** -0.5)


def test_softcap_derivative_is_one_minus_tanh_squared():
    bp = backward_plan(einfuse.plan("softcap:cap=20,causal=true,head_dim=64"))
    x = torch.linspace(-80, 80, 41, dtype=torch.float64)
    want = (1 - torch.tanh(x / 8 / 20) ** 2) / 8  # score = 20 tanh(x * 64^-0.5 / 20)
    got = _eval(bp.dscore, x, {})
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-15)


def _cases():
    bias = IndexValue(sympy.Rational(1, 4) * (M - P))
    return {
        "tanh-cap": 30.0 * unary("tanh", X / 30.0),
        "relu-plus-bias": unary("relu", X) + bias,
        "max-min": binary("min", binary("max", X, X * 0.5), as_expr(4.0)) + X * X * 0.01,
        "sigmoid-exp-log": unary("sigmoid", X) * unary("exp", X * 0.1) + unary("log", unary("square", X) + 1.0),
        "div-sqrt-abs": X / (unary("sqrt", unary("abs", X) + 2.0)) + unary("reciprocal", unary("square", X) + 1.0),
        "elu1": unary("elu1", X * 0.5),
        "select-by-position": Select(sympy.Lt(M, P), X * 2.0, unary("tanh", X)),
        "max-of-dot-and-bias": binary("max", X, bias),
        "sin-cos-tan": unary("sin", X) * unary("cos", X * 0.5) + unary("tan", X * 0.1),
        "select-on-the-score": Select(compare("gt", X, Const(0.5)), X * 3.0, unary("sigmoid", X)),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_derivative_matches_torch_autograd(name):
    score = _cases()[name]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 7, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    env = {P: torch.arange(6, dtype=torch.float64)[:, None], M: torch.arange(7, dtype=torch.float64)[None, :]}
    (want,) = torch.autograd.grad(_eval(score, x, env).sum(), x)
    got = _eval(score_derivative(score), x.detach(), env)
    assert torch.allclose(torch.broadcast_to(got, want.shape), want, rtol=1e-12, atol=1e-12)


def test_linear_plans_get_the_chunked_backward_and_staged_plans_none_yet():
    bp = backward_plan(einfuse.plan("lightning"))
    assert bp.family == "linear" and [k for k, _ in bp.steps] == ["states", "dstates", "dq", "dkdv"]
    with pytest.raises(CodegenError, match="no backward for staged"):
        backward_plan(einfuse.plan("based"))
    assert backward_plan(einfuse.plan("sigmoid:causal=true")).steps[0][0] == "forward"   # sigmoid has one


def test_printed_backward_plan_names_derivative_and_kernels():
    text = format_backward_plan(backward_plan(einfuse.plan("softcap:cap=20,causal=true")))
    assert "ds/dx" in text and "tanh" in text and "p >= m" in text
    for kernel in ("preprocess", "dkdv", "dq"):
        assert kernel in text


@pytest.mark.parametrize("spec", ["causal", "sliding_window:window=20", "na2d:shape=8x8,kernel=3"])
def test_transposed_tables_hold_the_same_tile_pairs(spec):
    plan = einfuse.plan(spec)
    mask = plan.mask
    t = build_tables(plan.cascade, mask, {**{k: int(v) for k, v in plan.cascade.params.items()},
                                          "P": 64, "M": 64, "H": 1, "B": 1},
                     64, 64, 1, 16, 16, FLAT, FLAT, "cpu")
    back = transpose_tables(transpose_tables(t, 4), 4)

    def kinds(tab):
        out = torch.zeros((*tab.full_num.shape, 4), dtype=torch.int8)
        for num, idx, kind in ((tab.full_num, tab.full_idx, FULL), (tab.part_num, tab.part_idx, PARTIAL)):
            for r in range(num.shape[1]):
                out[0, r, idx[0, r, :num[0, r]].long()] = kind
        return out

    assert torch.equal(kinds(t), kinds(back))
    assert int(transpose_tables(t, 4).full_num.sum()) == int(t.full_num.sum())


def test_passes_command_prints_the_backward_plan():
    from click.testing import CliRunner

    from einfuse.cli import cli

    out = CliRunner().invoke(cli, ["passes", "softcap:cap=20,causal=true,scale=1", "--backward"]).output
    assert "backward plan softcap" in out and "ds/dx     1.0 - square(tanh(Q.K / 20.0))" in out
    out = CliRunner().invoke(cli, ["passes", "sigmoid:bias=-2", "--backward"]).output
    assert "backward plan sigmoid: sigmoid" in out and "dS = (dO V^T) * A * (1 - A)" in out
    assert "preprocess" not in out   # no normaliser: no D = rowsum(dO * O)
    out = CliRunner().invoke(cli, ["passes", "based", "--backward"]).output
    assert "backward plan: none" in out and "no backward for staged" in out
