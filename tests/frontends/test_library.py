"""Every built-in's reference output equals an independent dense formula (float64, rel. err < 1e-10).

``CASES`` maps each built-in to one or more (spec, inputs, oracle) cases; a built-in without a case
fails ``test_every_builtin_has_a_case``. Shapes are odd on purpose (N=37, E=24, F=20, H=4, B=2),
with GQA (2 kv heads) and cross-attention (P != M) where the variant allows them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from frontend_oracles import (
    elu1,
    index_grids,
    lightning_decay,
    linear_attention,
    masked_softmax_attention,
    natten_mask,
    sdpa,
    taylor_linear,
)

import einfuse as ef
from einfuse.codegen.reference import run_cascade
from einfuse.errors import SpecError

B, H, N, E, F = 2, 4, 37, 24, 20
SCALE = 1.0 / math.sqrt(E)


@dataclass(frozen=True)
class Case:
    """``oracle(inputs)`` is the expected output; ``masked_rows`` lists the (head, query) pairs whose
    query sees no key at all (same for every batch)."""

    spec: str
    P: int = N
    M: int = N
    kv_heads: int = H
    oracle: Callable[[dict[str, torch.Tensor]], torch.Tensor] = None  # type: ignore[assignment]
    extra: dict[str, tuple[int, ...]] = field(default_factory=dict)
    masked_rows: tuple[tuple[int, int], ...] = ()

    def inputs(self, seed: int, magnitude: float = 1.0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = {
            "Q": torch.randn(B, H, self.P, E, generator=g, dtype=torch.float64) * magnitude,
            "K": torch.randn(B, self.kv_heads, self.M, E, generator=g, dtype=torch.float64) * magnitude,
            "V": torch.randn(B, self.kv_heads, self.M, F, generator=g, dtype=torch.float64),
        }
        for name, shape in self.extra.items():
            x[name] = torch.randn(*shape, generator=g, dtype=torch.float64) * magnitude
        return x


def _every_head(rows) -> tuple[tuple[int, int], ...]:
    return tuple((h, r) for h in range(H) for r in rows)


def _mask(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], P: int, M: int):
    """Dense (H, P, M) mask from ``fn(h, p, m)`` on broadcast index grids."""
    pi, mi = index_grids(P, M)
    return torch.broadcast_to(fn(torch.arange(H).view(H, 1, 1), pi, mi), (H, P, M))


def _soft(mask_fn=None, score_fn=None, scale=SCALE):
    def oracle(x):
        P, M = x["Q"].shape[2], x["K"].shape[2]
        mask = None if mask_fn is None else _mask(mask_fn, P, M)
        return masked_softmax_attention(x["Q"], x["K"], x["V"], scale, mask, score_fn)
    return oracle


def _sdpa(mask_fn=None, is_causal=False, scale=SCALE):
    def oracle(x):
        P, M = x["Q"].shape[2], x["K"].shape[2]
        mask = None if mask_fn is None else _mask(mask_fn, P, M)
        return sdpa(x["Q"], x["K"], x["V"], scale, mask, is_causal)
    return oracle


def _alibi(x):
    P, M = x["Q"].shape[2], x["K"].shape[2]
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], dtype=torch.float64)
    pi, mi = index_grids(P, M)
    bias = slopes.view(H, 1, 1) * (mi - pi).double()
    bias = torch.where(mi <= pi, bias, torch.tensor(-math.inf, dtype=torch.float64))
    return sdpa(x["Q"], x["K"], x["V"], SCALE, bias)


def _sigmoid(bias, causal):
    def oracle(x):
        s = torch.einsum("bhpe,bhme->bhpm", x["Q"], x["K"]) * SCALE
        a = torch.sigmoid(s + bias)
        if causal:
            pi, mi = index_grids(*s.shape[-2:])
            a = a * (mi <= pi)
        return a @ x["V"]
    return oracle


def _natten(shape, kernel, dilation, stride, causal):
    mask = torch.from_numpy(natten_mask(shape, kernel, dilation, stride, causal))
    return lambda x: sdpa(x["Q"], x["K"], x["V"], SCALE, mask)


def _agent(x):
    av1 = sdpa(x["AG"], x["K"], x["V"], SCALE)  # agents attend to the keys (GQA-aware)
    return sdpa(x["Q"], x["AG"], av1, SCALE)  # queries attend to the agents


def _based(window):
    def oracle(x):
        lin = taylor_linear(x["Q"], x["K"], x["V"], SCALE)
        win = _sdpa(lambda h, p, m: (m <= p) & (p - m < window))(x)
        return lin + win
    return oracle


CASES: dict[str, list[Case]] = {
    "softmax": [
        Case("softmax:head_dim=24", oracle=_sdpa()),
        Case("softmax:head_dim=24", P=29, M=N, kv_heads=2, oracle=_sdpa()),
        Case("softmax:head_dim=24,causal=true", oracle=_sdpa(is_causal=True)),
    ],
    "causal": [
        Case("causal:head_dim=24", oracle=_sdpa(is_causal=True)),
        Case("causal:scale=0.2041", kv_heads=2, oracle=_sdpa(is_causal=True, scale=0.2041)),
    ],
    "gqa": [
        Case("gqa:head_dim=24", kv_heads=2, oracle=_sdpa()),
        Case("gqa:head_dim=24", P=23, kv_heads=1, oracle=_sdpa()),
        Case("gqa:head_dim=24,causal=1", kv_heads=2, oracle=_sdpa(is_causal=True)),
    ],
    "sliding_window": [
        Case("sliding_window:window=8,head_dim=24", kv_heads=2,
             oracle=_sdpa(lambda h, p, m: (m <= p) & (p - m < 8))),
        Case("sliding_window:window=5,causal=false,head_dim=24",
             oracle=_sdpa(lambda h, p, m: (p - m).abs() < 5)),
        # more queries than keys, bottom-right: query p sits at p - 17, so queries p < 17 see no key
        Case("sliding_window:window=5,head_dim=24", P=N, M=20,
             oracle=_soft(lambda h, p, m: (m <= p - 17) & (p - 17 - m < 5)), masked_rows=_every_head(range(17))),
        # the same, top-left: queries p >= M + window - 1 see no key at all
        Case("sliding_window:window=5,head_dim=24,align=top_left", P=N, M=20,
             oracle=_soft(lambda h, p, m: (m <= p) & (p - m < 5)), masked_rows=_every_head(range(24, N))),
    ],
    "alibi": [Case("alibi:head_dim=24", oracle=_alibi), Case("alibi:head_dim=24", kv_heads=2, oracle=_alibi)],
    "softcap": [
        Case("softcap:cap=5,head_dim=24", oracle=_soft(score_fn=lambda s: 5.0 * torch.tanh(s / 5.0))),
        Case("softcap:cap=2.5,causal=1,head_dim=24", kv_heads=2,
             oracle=_soft(lambda h, p, m: m <= p, lambda s: 2.5 * torch.tanh(s / 2.5))),
    ],
    "sigmoid": [
        Case("sigmoid:bias=-1.5,head_dim=24", oracle=_sigmoid(-1.5, False)),
        Case("sigmoid:bias=0.5,causal=true,head_dim=24", oracle=_sigmoid(0.5, True)),
    ],
    "linear": [
        Case("linear", oracle=lambda x: linear_attention(x["Q"], x["K"], x["V"], elu1)),
        Case("linear:feature_map=elu1,normalize=true,causal=false", P=29, kv_heads=2,
             oracle=lambda x: linear_attention(x["Q"], x["K"], x["V"], elu1, causal=False, normalize=True)),
        Case("linear:feature_map=identity", oracle=lambda x: linear_attention(x["Q"], x["K"], x["V"])),
    ],
    "lightning": [
        Case("lightning", oracle=lambda x: linear_attention(x["Q"], x["K"], x["V"],
                                                            decay=lightning_decay(H, N, N))),
    ],
    "decode": [
        Case("decode:head_dim=24", P=3, M=N, kv_heads=2, oracle=_sdpa()),
        Case("decode:causal=true,head_dim=24", P=5, M=N, oracle=_sdpa(lambda h, p, m: m <= p + N - 5)),
        # more new tokens than cached ones: the first P - M queries see nothing
        Case("decode:causal=true,head_dim=24", P=8, M=5,
             oracle=_soft(lambda h, p, m: m <= p - 3), masked_rows=_every_head((0, 1, 2))),
    ],
    "s2attn": [
        Case("s2attn:stride=3,window=4,head_dim=24", kv_heads=2,
             oracle=_sdpa(lambda h, p, m: (m <= p) & ((m % 3 == h % 3) | (p - m < 4)))),
        Case("s2attn:stride=3,window=2,causal=false,head_dim=24",
             oracle=_sdpa(lambda h, p, m: (m % 3 == h % 3) | ((p - m).abs() < 2))),
        # no local window: head h's queries before position h mod 3 see no key
        Case("s2attn:stride=3,window=0,head_dim=24",
             oracle=_soft(lambda h, p, m: (m <= p) & (m % 3 == h % 3)), masked_rows=((1, 0), (2, 0), (2, 1))),
    ],
    "duo": [
        Case("duo:retrieval_heads=1,sink=2,recent=5,head_dim=24",
             oracle=_sdpa(lambda h, p, m: (m <= p) & ((h < 1) | (m < 2) | (p - m < 5)))),
        Case("duo:retrieval_fraction=0.5,sink=0,recent=3,head_dim=24", kv_heads=2,
             oracle=_sdpa(lambda h, p, m: (m <= p) & ((h < 2) | (p - m < 3)))),
    ],
    "agent": [
        Case("agent:head_dim=24", extra={"AG": (B, H, 7, E)}, oracle=_agent),
        Case("agent:head_dim=24", P=29, kv_heads=2, extra={"AG": (B, H, 5, E)}, oracle=_agent),
    ],
    "based": [Case("based:window=6,head_dim=24", oracle=_based(6))],
    "na1d": [
        Case("na1d:kernel=7,head_dim=24", oracle=_natten((N,), (7,), (1,), (1,), (False,))),
        Case("na1d:kernel=6,dilation=2,stride=3,head_dim=24", oracle=_natten((N,), (6,), (2,), (3,), (False,))),
        Case("na1d:shape=37,kernel=5,dilation=3,stride=2,causal=true,head_dim=24", kv_heads=2,
             oracle=_natten((N,), (5,), (3,), (2,), (True,))),
    ],
    "na2d": [
        Case("na2d:shape=5x7,kernel=3,head_dim=24", P=35, M=35,
             oracle=_natten((5, 7), (3, 3), (1, 1), (1, 1), (False, False))),
        Case("na2d:shape=6x9,kernel=3x4,dilation=2,stride=1x2,causal=0x1,head_dim=24", P=54, M=54, kv_heads=2,
             oracle=_natten((6, 9), (3, 4), (2, 2), (1, 2), (False, True))),
    ],
    "na3d": [
        Case("na3d:shape=3x4x5,kernel=2x3x3,dilation=1x1x1,head_dim=24", P=60, M=60,
             oracle=_natten((3, 4, 5), (2, 3, 3), (1, 1, 1), (1, 1, 1), (False,) * 3)),
        Case("na3d:shape=4x5x6,kernel=2x2x3,dilation=2x1x2,stride=2x1x3,causal=1x0x0,head_dim=24", P=120, M=120,
             oracle=_natten((4, 5, 6), (2, 2, 3), (2, 1, 2), (2, 1, 3), (True, False, False))),
    ],
}

ALL_CASES = [pytest.param(c, id=f"{name}-{i}") for name, cs in CASES.items() for i, c in enumerate(cs)]


def rel_err(got: np.ndarray, want: torch.Tensor) -> float:
    want_np = want.numpy()
    return float(np.abs(got - want_np).max() / max(np.abs(want_np).max(), 1e-300))


def run(case: Case, x: dict[str, torch.Tensor]) -> np.ndarray:
    out = run_cascade(ef.load_spec(case.spec), x)["O"]
    assert out.shape == (B, H, case.P, F)
    return out


@pytest.mark.parametrize("name", sorted(ef.BUILTINS))
def test_every_builtin_has_a_case(name: str) -> None:
    assert CASES.get(name), f"built-in {name} has no reference case in tests/frontends/test_library.py"
    assert ef.BUILTINS[name].summary, f"built-in {name} has no one-line docstring summary"


@pytest.mark.parametrize("case", ALL_CASES)
def test_builtin_matches_dense_formula(case: Case) -> None:
    x = case.inputs(seed=zlib.crc32(case.spec.encode()) + case.P)
    want = case.oracle(x)
    assert not torch.isnan(want).any()
    assert rel_err(run(case, x), want) < 1e-10


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.values[0].masked_rows])
def test_fully_masked_rows_are_zero(case: Case) -> None:
    out = run(case, case.inputs(seed=3))
    assert np.isfinite(out).all()
    empty = np.zeros((H, case.P), dtype=bool)
    for h, row in case.masked_rows:
        empty[h, row] = True
    assert (out[:, empty, :] == 0).all()
    assert (np.abs(out[:, ~empty, :]).sum(-1) > 0).all()


@pytest.mark.parametrize("name", sorted(CASES))
def test_large_logits_do_not_overflow(name: str) -> None:
    """Q and K scaled so that scores reach ~1e3: the cascade's max subtraction must keep it finite."""
    case = CASES[name][0]
    x = case.inputs(seed=11, magnitude=25.0)
    s = torch.einsum("bhpe,bhme->bhpm", x["Q"][:, :1], x["K"][:, :1]) * SCALE
    assert s.abs().max() > 500
    out = run(case, x)
    assert np.isfinite(out).all()
    assert rel_err(out, case.oracle(x)) < 1e-10


# ---- options and errors ---------------------------------------------------------------------------

BAD_SPECS = [
    ("softmax:foo=1", "softmax: unknown option 'foo'; valid options: head_dim, scale, causal"),
    ("softmax:head_dim=abc", "head_dim='abc' is not a valid int"),
    ("softmax:head_dim=-1", "head_dim must be >= 0"),
    ("causal:scale=-2", "scale must be a finite number > 0"),
    ("softmax:causal", "needs a value"),
    ("decode:causal=2", "causal='2' is not a valid bool"),
    ("sliding_window:window=0", "sliding_window: option window must be >= 1"),
    ("softcap:cap=0", "option cap must be a finite number > 0"),
    ("sigmoid:bias=inf", "option bias must be finite"),
    ("linear:feature_map=tanh", "feature_map 'tanh' is not one of"),
    ("lightning:feature_map=gelu", "feature_map 'gelu' is not one of"),
    ("s2attn:stride=0", "option stride must be >= 1"),
    ("s2attn:window=-1", "option window must be >= 0"),
    ("duo:retrieval_fraction=1.5", "option retrieval_fraction must be in [0, 1]"),
    ("duo:recent=0", "option recent must be >= 1"),
    ("duo:sink=-1", "option sink must be >= 0"),
    ("based:window=0", "based: option window must be >= 1"),
    ("agent:head_dim=x", "head_dim='x' is not a valid int"),
    ("na2d:shape=8x8,kernel=5,dilation=2",
     "kernel*dilation must be <= shape on every axis; axis 0 has kernel 5 * dilation 2 = 10 > shape 8"),
    ("na2d:kernel=7,stride=8", "stride must be <= kernel"),
    ("na2d:kernel=3x3x3", "option kernel has 3 values but the layout has 2 axes"),
    ("na3d:shape=8x8", "option shape has 2 values but the layout has 3 axes"),
    ("na1d:kernel=1", "option kernel must be >= 2"),
    ("na1d:dilation=0", "option dilation must be >= 1"),
    ("na2d:causal=maybe", "option causal='maybe' is not a valid per-axis tuple"),
    ("na2d:kernel=3.5", "option kernel='3.5' is not a valid per-axis tuple"),
    ("nosuch", "unknown built-in variant 'nosuch'"),
    ("softmax:causal=true,causal=false", "softmax: option 'causal' is given twice"),
    ("na2d:kernel=3,kernel=5", "option 'kernel' is given twice"),
    ("sofmax", "did you mean softmax?"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS, ids=[s for s, _ in BAD_SPECS])
def test_bad_options_raise_spec_error(spec: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        ef.load_spec(spec)
    assert message in str(info.value)


def test_python_api_takes_plain_values() -> None:
    from einfuse.frontends.neighborhood import na2d

    c = na2d(shape=(6, 9), kernel=3, dilation=(1, 2), causal=(True, False))
    info = c.attrs["neighborhood"]
    assert info["kernel"] == [3, 3] and info["dilation"] == [1, 2] and info["causal"] == [True, False]
    assert c.params == {"X0": 6.0, "X1": 9.0}


def test_every_builtin_round_trips_through_the_text_form() -> None:
    for name in ef.BUILTINS:
        c = ef.load_spec(name)
        text = ef.format_cascade(c)
        assert ef.format_cascade(ef.parse_cascade(text)) == text, name
