"""Multi-stage cascades (einfuse.lowering.stages): split into generator-accepted stages, each stage's
Triton kernel run in the interpreter, against the float64 reference executor on the whole cascade."""

import numpy as np
import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.codegen.stages_run import MultiStageAttention
from einfuse.errors import CodegenError
from einfuse.ir import parse_cascade
from einfuse.lowering.stages import is_multistage, split_stages

TWO_BRANCH = """cascade two_branch
ranks P, E, M, F
input Q[P,E]
input K[M,E]
input V[M,F]
output O[P,F]
tensor QK[M,P]
tensor GM[P]
tensor SN[M,P]
tensor SD[P]
tensor A[M,P]
tensor WO[P,F]
tensor SQK[M,P]
tensor SA[M,P]
tensor SO[P,F]
tensor G[P,F]
QK[m,p] = Q[p,e] * K[m,e] * 0.25 : (m <= p) & (p - m < 5) & (p >= 3)
GM[p] = max(m) QK[m,p]
SN[m,p] = exp(QK[m,p] - GM[p])
SD[p] = SN[m,p]
A[m,p] = SN[m,p] / SD[p]
WO[p,f] = A[m,p] * V[m,f]
SQK[m,p] = Q[p,e] * K[m,e]
SA[m,p] = sigmoid(SQK[m,p] - 2.0)
SO[p,f] = SA[m,p] * V[m,f]
G[p,f] = tanh(SO[p,f]) * 0.5
O[p,f] = WO[p,f] + G[p,f]
"""


def inputs(B=2, H=4, Hkv=2, N=45, M=53, D=24, agents=7, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=gen) * scale
    k = torch.randn(B, Hkv, M, D, generator=gen) * scale
    v = torch.randn(B, Hkv, M, D, generator=gen)
    ag = torch.randn(B, H, agents, D, generator=gen) * scale
    return q, k, v, ag


def test_agent_split_is_two_softmax_stages():
    c = einfuse.load_spec("agent")
    assert is_multistage(c)
    plan = split_stages(c)
    assert [(s.output, s.family, s.bind) for s in plan.stages] == [
        ("AV1", "softmax", ("AG", "K", "V")), ("O", "softmax", ("Q", "AG", "AV1"))]
    assert plan.combine == () and plan.extra_inputs == ("AG",)
    for s in plan.stages:  # renamed to the generators' conventions
        assert s.cascade.inputs == ("Q", "K", "V") and s.cascade.outputs == ("O",)
        assert s.cascade.tensors["V"].ranks == ("M", "F") and s.cascade.tensors["O"].ranks == ("P", "F")


@pytest.mark.parametrize("spec,decode,scale", [
    ("agent:head_dim=24", True, 1.0),    # 7 agent queries in stage 1: the split-KV decode kernel
    ("agent:head_dim=24", False, 1.0),   # the main kernel for both stages
    ("agent", False, 4.0),               # unscaled, large logits (|s| ~ 16 * 24)
])
def test_agent_matches_reference(spec, decode, scale):
    c = einfuse.load_spec(spec)
    q, k, v, ag = inputs(scale=scale)
    f = einfuse.compile(c, decode=decode)
    assert isinstance(f, MultiStageAttention) and f.cascade is c
    out = f(q, k, v, AG=ag)
    assert out.shape == (2, 4, 45, 24) and out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = run_cascade(c, {"Q": q, "K": k, "V": v, "AG": ag})["O"]
    assert rel_err(out.numpy().astype(np.float64), ref) < 1e-3
    assert f.source.count("einfuse kernel for cascade") == 2 and len(f.lowered) == 2


def test_agent_call_errors_name_the_missing_input():
    f = einfuse.compile("agent")
    q, k, v, ag = inputs(B=1, H=1, Hkv=1, N=5, M=5, D=8)
    with pytest.raises(CodegenError, match="missing AG"):
        f(q, k, v)
    with pytest.raises(CodegenError, match="unknown X"):
        f(q, k, v, AG=ag, X=ag)


def test_combined_branches_with_fully_masked_rows():
    # softmax window branch (rows p < 3 fully masked) + sigmoid branch, combined elementwise in torch
    c = parse_cascade(TWO_BRANCH)
    plan = split_stages(c)
    assert [(s.output, s.family) for s in plan.stages] == [("WO", "softmax"), ("SO", "sigmoid")]
    assert [e.name for e in plan.combine] == ["G", "O"]
    q, k, v, _ = inputs(N=45, M=45)
    out = einfuse.compile(c, decode=False)(q, k, v)
    ref = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(out.numpy().astype(np.float64), ref) < 1e-3
    # the masked rows hold only the sigmoid branch (absent window output counts as 0)
    assert np.abs(ref[:, :, :3]).max() > 0


def test_based_splits_into_a_normalised_sum_stage_and_a_window_stage():
    # the Taylor branch LO = (sum_m T*V) / (sum_m T) is one normalised-weighted-sum stage; the
    # unnormalised LNV alone is still refused (no generator takes a bare sum of Taylor weights)
    c = einfuse.load_spec("based")
    plan = split_stages(c)
    assert [(s.output, s.family) for s in plan.stages] == [("LO", "normsum"), ("WO", "softmax")]
    assert [e.name for e in plan.combine] == ["O"]
    with pytest.raises(CodegenError, match=r"Einsum T"):
        split_stages(parse_cascade(str(c).replace("O[p,f] = LO[p,f] + WO[p,f]", "O[p,f] = LNV[p,f] + WO[p,f]")))


@pytest.mark.parametrize("name", sorted(einfuse.BUILTINS))
def test_every_builtin_compiles_or_names_an_einsum(name):
    try:
        f = einfuse.compile(name, torch_op=False)
    except CodegenError as exc:
        assert "Einsum " in str(exc), str(exc)
        return
    assert callable(f) and f.cascade.name


def test_agent_with_transposed_value_and_stage_output():
    # V stored [F,M] and AV1 stored [F,N]: stages see V[M,F] (transposed before launch) and the
    # stage-1 output is transposed back to AV1's layout before stage 2 reads it as its value
    text = (str(einfuse.load_spec("agent")).replace("tensor AV1[N,F]", "tensor AV1[F,N]")
            .replace("AV1[n,f]", "AV1[f,n]").replace("input V[M,F]", "input V[F,M]").replace("V[m,f]", "V[f,m]"))
    c = parse_cascade(text)
    plan = split_stages(c)
    assert [(s.flip, s.transpose) for s in plan.stages] == [((False, False, True), True),
                                                             ((False, False, True), False)]
    q, k, _, ag = inputs()
    v = torch.randn(2, 2, 20, 53, generator=torch.Generator().manual_seed(1))  # (B, Hkv, F, M)
    out = einfuse.compile(c, decode=False)(q, k, v, AG=ag)
    ref = run_cascade(c, {"Q": q, "K": k, "V": v, "AG": ag})["O"]
    assert out.shape == (2, 4, 45, 20)
    assert rel_err(out.numpy().astype(np.float64), ref) < 1e-3
