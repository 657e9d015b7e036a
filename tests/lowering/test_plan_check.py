"""The generator refuses cascades it would only partly compute, and accepts every built-in it reads."""

import math

import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError
from einfuse.ir import format_cascade, parse_cascade
from einfuse.ir.printer import format_expr
from einfuse.lowering.onepass import analyze
from einfuse.lowering.plan_check import check_plan


def with_extra_output_einsum(spec: str, rhs: str):
    text = format_cascade(einfuse.load_spec(spec))
    text = text.replace("output O[P,F]", "output O2[P,F]\ntensor O[P,F]") + f"O2[p,f] = {rhs}\n"
    return parse_cascade(text)


@pytest.mark.parametrize("rhs", ["O[p,f] * 2.0 + 1.0", "O[p,f] + O[p,f] * O[p,f]", "exp(O[p,f])"])
def test_einsums_off_the_attention_chain_are_refused(rhs):
    c = with_extra_output_einsum("causal", rhs)
    with pytest.raises(CodegenError, match="computes something else"):
        check_plan(c, analyze(c))
    with pytest.raises(CodegenError, match="computes something else"):
        einfuse.compile(c, torch_op=False)


def test_every_single_stage_builtin_plan_matches_its_cascade():
    checked = 0
    for name in einfuse.BUILTINS:
        c = einfuse.load_spec(name)
        try:
            plan = analyze(c)
        except CodegenError:
            continue  # linear or multi-stage: other generators
        if c.attrs.get("family") in ("based", "agent"):
            continue  # multi-stage cascades go to the stage splitter before this check
        check_plan(c, plan)
        checked += 1
    assert checked >= 12


@pytest.mark.parametrize("limit", [4, 11, 38])
def test_score_mods_emptying_whole_rows_are_accepted_whatever_the_constant(limit):
    # the check runs at P=11: limit 4 leaves rows without a finite score, 38 leaves none
    c = einfuse.attention(score_mod=lambda s, b, h, q, kv: einfuse.where(q < limit, s, -math.inf))
    check_plan(c, analyze(c))


@pytest.mark.parametrize("normalization", ["softmax", "sigmoid"])
def test_a_sigmoid_inside_the_score_mod_is_part_of_the_score(normalization):
    c = einfuse.attention(score_mod=lambda s, b, h, q, kv: s * einfuse.sigmoid(s), normalization=normalization,
                          scale=1)
    plan = analyze(c)
    assert plan.family == normalization and format_expr(plan.score) == "__dot__[m,p] * sigmoid(__dot__[m,p])"
    check_plan(c, plan)
    # and the kernel computes it (Triton interpreter, ragged sizes, GQA)
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, 21, 16, generator=g), torch.randn(1, 2, 27, 16, generator=g), \
        torch.randn(1, 2, 27, 16, generator=g)
    out = einfuse.compile(c, torch_op=False, decode=False)(q, k, v)
    assert rel_err(out, run_cascade(c, {"Q": q, "K": k, "V": v})["O"]) < 2e-5
