"""Fewer queries than keys in the generated kernels (Triton interpreter, fp32): the bottom-right
default, the top-left option and per-call offsets, on the split-KV decode kernel (<= 16 queries)
and the prefill kernel, against the float64 reference, at ragged sizes with GQA.

Issue 18: one decode step over a KV cache used to see only the first keys (the built-ins counted
query positions from 0); ``test_decode_step_equals_the_last_row_of_full_attention`` reproduces it.
"""

import numpy as np
import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.compile import DECODE_MAX_QUERIES
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError
from einfuse.ir.ranks import size_symbol
from einfuse.passes.block_sparsity import classify_tiles, dense_tile_kinds, score_constraint

B, H, HKV, D, M = 2, 4, 2, 24, 53  # 53 keys: no multiple of any tile

# the softmax/sigmoid-family built-ins whose mask or score compares positions
POSITIONAL = [
    "causal",
    "gqa:causal=true",
    "sliding_window:window=16",
    "sliding_window:window=7,causal=false",
    "alibi",
    "alibi:causal=false",
    "softcap:cap=5,causal=true",
    "sigmoid:causal=true,bias=-1",
    "decode:causal=true",
    "s2attn:stride=3,window=8",
    "duo:retrieval_heads=1,recent=8,sink=2",
    "na1d:kernel=7,causal=true",
    "na1d:kernel=9",
]


def _qkv(n_q, n_kv=M, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, n_q, D, generator=g), torch.randn(B, HKV, n_kv, D, generator=g),
            torch.randn(B, HKV, n_kv, D, generator=g))


def _with(spec, **opts):
    extra = ",".join(f"{k}={v}" for k, v in opts.items())
    return f"{spec}{',' if ':' in spec else ':'}{extra}" if extra else spec


def _check(spec, n_q, decode, q_offset=None, n_kv=M, seed=0):
    c = einfuse.load_spec(spec)
    q, k, v = _qkv(n_q, n_kv, seed)
    f = einfuse.compile(c, decode=decode)
    kw = {} if q_offset is None else {"q_offset": q_offset}
    out = f(q, k, v, **kw)
    sizes = None if q_offset is None else {"QOFF": q_offset}
    ref = run_cascade(c, {"Q": q, "K": k, "V": v}, sizes=sizes)["O"]
    if decode and f.family == "softmax":  # the split-KV decode kernel really ran (no silent fallback)
        assert f._decode_kernel is not None and f.decode_fallback is None, f.decode_fallback
    return rel_err(out, ref), out, ref


@pytest.mark.parametrize("spec", POSITIONAL)
@pytest.mark.parametrize("n_q,decode", [(3, True), (21, False)], ids=["decode-kernel", "prefill-kernel"])
def test_fewer_queries_match_the_bottom_right_reference(spec, n_q, decode):
    err, *_ = _check(spec, n_q, decode)
    assert err < 2e-5, f"{spec}, {n_q} queries: rel err {err}"


@pytest.mark.parametrize("spec", ["causal", "sliding_window:window=16", "alibi", "sigmoid:causal=true"])
@pytest.mark.parametrize("n_q,decode", [(3, True), (21, False)], ids=["decode-kernel", "prefill-kernel"])
def test_top_left_option_matches_its_reference(spec, n_q, decode):
    err, *_ = _check(_with(spec, align="top_left"), n_q, decode, seed=1)
    assert err < 2e-5, f"{spec}, {n_q} queries: rel err {err}"


def test_decode_step_equals_the_last_row_of_full_attention():
    """The bug of issue 18: a decode step (1 query over the cache) must be the last row of causal
    attention over the whole sequence; so must a chunk of 5 new tokens (prefill kernel, decode kernel)."""
    n = 37
    q, k, v = _qkv(n, n, seed=2)
    full = einfuse.compile("causal", decode=False)(q, k, v)
    step = einfuse.compile("causal")
    assert rel_err(step(q[:, :, -1:], k, v), full[:, :, -1:]) < 2e-5
    for decode in (True, False):
        chunk = einfuse.compile("causal", decode=decode)(q[:, :, -5:], k, v)
        assert rel_err(chunk, full[:, :, -5:]) < 2e-5
    # the old convention, now an explicit option: the new token sees only key 0
    old = einfuse.compile("causal:align=top_left")(q[:, :, -1:], k, v)
    assert rel_err(old, full[:, :, -1:]) > 0.1
    assert rel_err(old, full[:, :, :1]) < 2e-5  # it is row 0: only key 0 visible


@pytest.mark.parametrize("spec", ["causal", "sliding_window:window=9", "alibi:causal=true"])
@pytest.mark.parametrize("n_q", [4, 20])
def test_chunked_prefill_offset_per_call(spec, n_q):
    """A chunk of queries in the middle of a preallocated key tensor (keys past the chunk are garbage
    a causal mask never reads): align=offset, the chunk's start passed per call. One compiled kernel
    serves every offset; each matches the reference and the rows of attention over the whole sequence."""
    f = einfuse.compile(_with(spec, align="offset"))
    c = einfuse.load_spec(_with(spec, align="offset"))
    q, k, v = _qkv(60, 60, seed=3)
    full = einfuse.compile(spec, decode=False)(q, k, v)
    assert (n_q <= DECODE_MAX_QUERIES) == (n_q == 4)  # 4 queries: the decode kernel; 20: the prefill one
    for start in (0, 17, 60 - n_q):
        chunk = q[:, :, start:start + n_q]
        out = f(chunk, k, v, q_offset=start)
        ref = run_cascade(c, {"Q": chunk, "K": k, "V": v}, sizes={"QOFF": start})["O"]
        assert rel_err(out, ref) < 2e-5, start
        assert rel_err(out, full[:, :, start:start + n_q]) < 2e-5, start


def test_q_offset_needs_an_offset_variant():
    q, k, v = _qkv(3)
    with pytest.raises(CodegenError, match="align='offset'"):
        einfuse.compile("causal")(q, k, v, q_offset=4)


def test_offset_defaults_to_the_cascade_value():
    """QOFF is a cascade param (default 0): without q_offset the kernel uses it, like the reference."""
    err, *_ = _check("causal:align=offset", 21, False)
    assert err < 2e-5
    c = einfuse.load_spec("causal:align=offset")
    q, k, v = _qkv(5, seed=4)
    f = einfuse.compile(c, sizes={"QOFF": 30}, decode=False)
    ref = run_cascade(c, {"Q": q, "K": k, "V": v}, sizes={"QOFF": 30})["O"]
    assert rel_err(f(q, k, v), ref) < 2e-5


@pytest.mark.parametrize("spec,sizes", [
    ("causal", {"P": 21, "M": 53}),
    ("causal", {"P": 53, "M": 21}),                        # more queries than keys: early rows empty
    ("sliding_window:window=16", {"P": 37, "M": 101}),
    ("causal:align=offset", {"P": 20, "M": 90, "QOFF": 33}),
    ("sliding_window:window=7,causal=false,align=offset", {"P": 29, "M": 70, "QOFF": 19}),
    ("na1d:kernel=7,causal=true", {"P": 9, "M": 61}),
])
@pytest.mark.parametrize("tiles", [(16, 16), (32, 16), (16, 64)])
def test_block_sparsity_follows_the_query_positions(spec, sizes, tiles):
    """classify_tiles on the aligned constraint equals the dense classification of the same mask."""
    c = einfuse.load_spec(spec)
    tm = classify_tiles(c, sizes, *tiles)
    pred = score_constraint(c).subs({size_symbol(k): v for k, v in {**c.params, **sizes}.items()})
    want = dense_tile_kinds(pred, sizes["P"], sizes["M"], *tiles)
    assert np.array_equal(tm.kinds, want)


def test_prefill_kernel_skips_tiles_by_the_aligned_mask():
    """The kernel's block tables come from the aligned mask: top-left would skip most key tiles of 16
    queries over 256 keys, bottom-right visits (nearly) all of them, an offset in between."""
    q, k, v = _qkv(24, 256, seed=5)
    visited = {}
    for align, kw in (("bottom_right", {}), ("top_left", {}), ("offset", {"q_offset": 100})):
        f = einfuse.compile(f"causal:align={align}", decode=False)
        f(q, k, v, block_m=16, block_n=16, **kw)
        visited[align] = f.kernel.last_tables.visited_fraction
    assert visited["top_left"] < 0.15 < visited["offset"] < 0.6 < visited["bottom_right"]


def test_same_length_kernels_print_no_offset_arithmetic():
    """With as many queries as keys the kernel takes the SAME_LEN branch: the mask is the plain m <= p."""
    src = einfuse.compile("causal").source
    assert "return (qi >= ki) if SAME_LEN else ((N_KV + qi - N_Q) >= ki)" in src
    assert "SAME_LEN=Nq == Nkv" not in src  # (the launcher passes it; the kernel only branches on it)


def test_sdpa_peer_recognises_both_causal_alignments():
    from einfuse.codegen.peers import causal_alignment
    from einfuse.lowering.onepass import analyze

    got = {s: causal_alignment(analyze(einfuse.load_spec(s)).mask)
           for s in ("causal", "causal:align=top_left", "causal:align=offset", "sliding_window", "softmax")}
    assert got == {"causal": "bottom_right", "causal:align=top_left": "top_left", "causal:align=offset": None,
                   "sliding_window": None, "softmax": None}


@pytest.mark.parametrize("n_q", [3, 21])
def test_multistage_based_follows_the_query_positions(n_q):
    """BASED (Taylor normalised sum + window softmax, two kernels): both stages read the aligned mask."""
    c = einfuse.load_spec("based:window=6")
    q, k, v = (x * s for x, s in zip(_qkv(n_q, seed=6), (0.3, 0.3, 1.0)))
    out = einfuse.compile(c)(q, k, v)
    assert rel_err(out, run_cascade(c, {"Q": q, "K": k, "V": v})["O"]) < 2e-5
