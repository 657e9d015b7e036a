"""Without ``scale=`` or ``head_dim=``, scores are scaled by 1/sqrt(D) of the inputs at call time, as
SDPA and FlexAttention do; the cascade says so (``idx(1/sqrt(E))``) and explicit scales are kept."""

import pytest
import torch
import torch.nn.functional as F

import einfuse
from einfuse.codegen.reference import run_cascade


def _qkv(nq, nk, d, dv=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 2, nq, d, generator=gen), torch.randn(1, 2, nk, d, generator=gen),
            torch.randn(1, 2, nk, dv or d, generator=gen))


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("spec,causal", [("softmax", False), ("causal", True)])
@pytest.mark.parametrize("nq,d", [(33, 16), (33, 24), (5, 32)])  # main kernel, odd D, decode kernel
def test_builtins_default_to_sdpa_scale(spec, causal, nq, d):
    f = einfuse.compile(spec)
    q, k, v = _qkv(nq, 40, d)
    # built-ins place queries bottom-right (einfuse.ir.positions): SDPA's causal_lower_right
    from torch.nn.attention.bias import causal_lower_right

    want = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(nq, 40) if causal else None)
    assert _rel(f(q, k, v), want) < 1e-5


def test_one_compiled_kernel_follows_each_calls_head_dim():
    f = einfuse.compile("softmax", decode=False)
    for d in (16, 32):
        q, k, v = _qkv(20, 20, d, seed=d)
        assert _rel(f(q, k, v), F.scaled_dot_product_attention(q, k, v)) < 1e-5


def test_explicit_scale_and_head_dim_are_kept():
    q, k, v = _qkv(20, 20, 16)
    unscaled = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    assert _rel(einfuse.compile("softmax:scale=1")(q, k, v), unscaled) < 1e-5
    assert _rel(einfuse.compile("softmax:head_dim=64")(q, k, v),
                F.scaled_dot_product_attention(q, k, v, scale=0.125)) < 1e-5
    assert _rel(einfuse.compile(einfuse.attention(scale=1.0))(q, k, v), unscaled) < 1e-5


def test_cascade_states_the_default_and_the_reference_follows_it():
    c = einfuse.load_spec("causal")
    assert "QK[m,p] = Q[p,e] * K[m,e] * idx(1/sqrt(E))" in einfuse.format_cascade(c)
    assert einfuse.format_cascade(einfuse.parse_cascade(einfuse.format_cascade(c))) == einfuse.format_cascade(c)
    q, k, v = _qkv(9, 9, 12)
    ref = run_cascade(c, {"Q": q.double().numpy(), "K": k.double().numpy(), "V": v.double().numpy()})["O"]
    assert _rel(torch.from_numpy(ref), F.scaled_dot_product_attention(q, k, v, is_causal=True)) < 1e-6
    assert "idx" not in einfuse.format_cascade(einfuse.load_spec("causal:head_dim=12"))


def test_multistage_default_scale_equals_explicit_head_dim():
    q, k, v = _qkv(12, 12, 16)
    ag = torch.randn(1, 2, 4, 16, generator=torch.Generator().manual_seed(3))
    got = einfuse.compile("agent")(q, k, v, AG=ag)
    want = einfuse.compile("agent:head_dim=16")(q, k, v, AG=ag)
    assert _rel(got, want) < 1e-5


def test_generated_source_folds_the_default_scale_at_compile_time():
    src = einfuse.compile("softmax").source
    assert "(HEAD_D ** -0.5)" in src  # a tl.constexpr expression: the fast path, no runtime sqrt


@pytest.mark.parametrize("kwargs", [{"head_dim": 0}, {"head_dim": -4}, {"head_dim": 2.5}, {"scale": 0.0},
                                    {"scale": float("nan")}, {"scale": "1"}])
def test_bad_scale_or_head_dim_is_a_spec_error(kwargs):
    with pytest.raises(einfuse.EinfuseError, match="head_dim|scale"):
        einfuse.attention(**kwargs)
