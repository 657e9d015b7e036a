"""User score_mod / mask_mod functions: traced symbolically by ``ef.attention`` they give the same
output as the very same Python functions applied densely to torch index tensors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import einfuse as ef
from einfuse.codegen.reference import run_cascade
from einfuse.errors import SpecError

B, H, P, M, E, F = 2, 4, 29, 37, 24, 20

# the math namespace a mod uses: einfuse's symbolic functions when traced, torch's when dense
SYMBOLIC = SimpleNamespace(tanh=ef.tanh, exp=ef.exp, sigmoid=ef.sigmoid, where=ef.where)
DENSE = SimpleNamespace(tanh=torch.tanh, exp=torch.exp, sigmoid=torch.sigmoid, where=torch.where)

SCORE_MODS = {
    "none": None,
    "relative_bias": lambda ns: lambda s, b, h, q, kv: s + 0.25 * (kv - q),
    "softcap": lambda ns: lambda s, b, h, q, kv: 3.0 * ns.tanh(s / 3.0),
    "per_head_batch": lambda ns: lambda s, b, h, q, kv: s * (1 + 0.5 * h) - 0.1 * b,
    "select": lambda ns: lambda s, b, h, q, kv: ns.where(kv > q, s - 2.0, s * 0.5),
    "gate": lambda ns: lambda s, b, h, q, kv: s * ns.sigmoid(s) + ns.exp(-0.1 * (q - kv) * (q - kv)),
}
MASK_MODS = {
    "none": None,
    "causal": lambda b, h, q, kv: q >= kv,
    "band": lambda b, h, q, kv: (q - kv < 6) & (kv - q < 3),
    "sink_or_causal": lambda b, h, q, kv: (kv <= q) | (kv < 4),
    "per_head": lambda b, h, q, kv: kv >= q + h,
    "empty_rows": lambda b, h, q, kv: kv > 2 * q + 20,  # keys end at 36: queries q >= 8 see none
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
