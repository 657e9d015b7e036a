"""Where queries sit among the keys when there are fewer of them (einfuse.ir.positions), in the
float64 reference executor: bottom-right by default, top-left and a per-call offset as options.

The variant-independent oracle: query ``p`` of a short query block at position ``s + p`` must get
exactly row ``s + p`` of the same variant run over the whole sequence (as many queries as keys, the
case ``test_library`` checks against dense formulas). Bottom-right is ``s = M - P`` (the newest
tokens, as over a KV cache), top-left ``s = 0``, ``align=offset`` any ``s`` given per call (QOFF).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch
from frontend_oracles import masked_softmax_attention

import einfuse as ef
from einfuse.codegen.reference import run_cascade
from einfuse.errors import SpecError
from einfuse.ir.positions import Q_OFFSET

B, H, HKV, E = 2, 4, 2, 8

# every built-in whose mask or score compares positions, with the key length of its full run
POSITIONAL = {
    "causal": 37,
    "softmax:causal=true": 37,
    "gqa:causal=true": 37,
    "sliding_window:window=5": 37,
    "sliding_window:window=4,causal=false": 37,
    "alibi": 37,
    "alibi:causal=false": 37,
    "softcap:cap=5,causal=true": 37,
    "sigmoid:causal=true,bias=-1": 37,
    "decode:causal=true": 37,
    "s2attn:stride=3,window=4": 37,
    "s2attn:stride=3,window=2,causal=false": 37,
    "duo:retrieval_heads=1,sink=2,recent=5": 37,
    "based:window=6": 37,
    "linear": 37,
    "linear:feature_map=identity,normalize=true": 37,
    "lightning": 37,
    "na1d:kernel=7": 37,
    "na1d:kernel=5,dilation=2,causal=true": 37,
    "na2d:shape=5x7,kernel=3,causal=1x0": 35,
    "na3d:shape=3x4x5,kernel=2x3x3,causal=1x0x0": 60,
}


def _spec(spec: str, align: str | None) -> str:
    if align is None:
        return spec
    return f"{spec}{',' if ':' in spec else ':'}align={align}"


def _inputs(M: int, seed: int) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {"Q": g.standard_normal((B, H, M, E)), "K": g.standard_normal((B, HKV, M, E)),
            "V": g.standard_normal((B, HKV, M, E))}


def _rows(spec: str, align: str | None, x: dict, start: int, n: int, **sizes: int) -> np.ndarray:
    c = ef.load_spec(_spec(spec, align))
    q = x["Q"][:, :, start:start + n]
    return run_cascade(c, {**x, "Q": q}, sizes=sizes or None)["O"]


@pytest.mark.parametrize("spec", sorted(POSITIONAL))
def test_fewer_queries_are_the_last_rows_by_default(spec: str) -> None:
    M = POSITIONAL[spec]
    x = _inputs(M, seed=len(spec))
    full = run_cascade(ef.load_spec(spec), x)["O"]
    for P in (1, 5, 16):
        got = _rows(spec, None, x, M - P, P)
        np.testing.assert_allclose(got, full[:, :, M - P:], rtol=1e-12, atol=1e-12, err_msg=f"P={P}")


@pytest.mark.parametrize("spec", sorted(POSITIONAL))
def test_top_left_option_keeps_the_first_rows(spec: str) -> None:
    M = POSITIONAL[spec]
    x = _inputs(M, seed=len(spec) + 1)
    full = run_cascade(ef.load_spec(_spec(spec, "top_left")), x)["O"]
    np.testing.assert_allclose(full, run_cascade(ef.load_spec(spec), x)["O"], rtol=1e-12, atol=1e-12)
    for P in (1, 6):
        got = _rows(spec, "top_left", x, 0, P)
        np.testing.assert_allclose(got, full[:, :, :P], rtol=1e-12, atol=1e-12, err_msg=f"P={P}")


@pytest.mark.parametrize("spec", sorted(POSITIONAL))
def test_offset_option_places_a_chunk_in_the_middle(spec: str) -> None:
    """Chunked prefill over a longer (preallocated) key tensor: the chunk's queries at QOFF + p."""
    M = POSITIONAL[spec]
    x = _inputs(M, seed=len(spec) + 2)
    full = run_cascade(ef.load_spec(spec), x)["O"]
    c = ef.load_spec(_spec(spec, "offset"))
    assert c.params[Q_OFFSET] == 0
    for start, P in ((0, 4), (9, 7), (M - 3, 3)):
        got = _rows(spec, "offset", x, start, P, QOFF=start)
        np.testing.assert_allclose(got, full[:, :, start:start + P], rtol=1e-12, atol=1e-12,
                                   err_msg=f"offset {start}, P={P}")


def test_causal_over_a_cache_matches_the_dense_bottom_right_mask() -> None:
    """An independent dense check: P = 5 queries over M = 23 keys see m <= p + 18."""
    P, M = 5, 23
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, P, E, generator=g, dtype=torch.float64)
    k = torch.randn(B, HKV, M, E, generator=g, dtype=torch.float64)
    v = torch.randn(B, HKV, M, E, generator=g, dtype=torch.float64)
    pi, mi = torch.arange(P).view(P, 1), torch.arange(M).view(1, M)
    scale = 1 / math.sqrt(E)
    for spec, mask in (("causal", mi <= pi + M - P), ("causal:align=top_left", mi <= pi),
                       ("sliding_window:window=3", (mi <= pi + M - P) & (pi + M - P - mi < 3))):
        c = ef.load_spec(f"{spec}{',' if ':' in spec else ':'}head_dim={E}")
        got = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
        want = masked_softmax_attention(q, k, v, scale, mask).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=spec)


def test_the_alignment_is_written_in_the_cascade() -> None:
    P, M, QOFF = (sympy.Symbol(n, integer=True, positive=True) for n in ("P", "M", "QOFF"))
    p, m = (sympy.Symbol(n, integer=True, nonnegative=True) for n in "pm")
    where = {a: ef.load_spec(f"causal:align={a}").einsums[0].where for a in ("bottom_right", "top_left", "offset")}
    assert where["bottom_right"] == sympy.Ge(p + M - P, m)
    assert where["top_left"] == sympy.Ge(p, m)
    assert where["offset"] == sympy.Ge(p + QOFF, m)
    text = ef.format_cascade(ef.load_spec("causal:align=offset"))
    assert "params QOFF = 0" in text and ef.format_cascade(ef.parse_cascade(text)) == text


def test_user_mods_keep_raw_indices_unless_asked() -> None:
    """FlexAttention's meaning by default (q_idx is the raw query index); align= opts in."""
    mask = lambda b, h, q, kv: q >= kv
    score = lambda s, b, h, q, kv: s + 0.5 * (kv - q)
    x = _inputs(29, seed=5)
    short = {**x, "Q": x["Q"][:, :, -4:]}
    raw = ef.attention(mask_mod=mask, score_mod=score)
    aligned = ef.attention(mask_mod=mask, score_mod=score, align="bottom_right")
    assert raw.einsums[0].where == sympy.Ge(sympy.Symbol("p", integer=True, nonnegative=True),
                                            sympy.Symbol("m", integer=True, nonnegative=True))
    full = run_cascade(raw, x)["O"]
    np.testing.assert_allclose(run_cascade(aligned, short)["O"], full[:, :, -4:], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(run_cascade(raw, {**x, "Q": x["Q"][:, :, :4]})["O"], full[:, :, :4],
                               rtol=1e-12, atol=1e-12)
    lin = ef.linear_attention(mask_mod=mask, align="offset")
    assert Q_OFFSET in lin.params


@pytest.mark.parametrize("bad", ["causal:align=diagonal", "na2d:align=upper_left", "sliding_window:align=1"])
def test_unknown_alignment_is_refused_with_the_choices(bad: str) -> None:
    with pytest.raises(SpecError, match="bottom_right, top_left, offset"):
        ef.load_spec(bad)
    with pytest.raises(SpecError, match="bottom_right"):
        ef.attention(mask_mod=lambda b, h, q, kv: q >= kv, align="lower_right")


def test_variants_without_positions_do_not_change() -> None:
    """A non-causal softmax has nothing to align: its cascade is the same under every option."""
    for spec in ("softmax", "softcap:cap=5", "sigmoid", "decode"):
        base = ef.format_cascade(ef.load_spec(spec))
        assert "M - P" not in base
        assert ef.format_cascade(ef.load_spec(_spec(spec, "top_left"))) == base
