"""Packed variable-length batches (``fn.varlen``, FlashAttention's cu_seqlens convention) in the Triton
interpreter against the float64 reference run on each sequence alone: ragged lengths around the
interpreter's 32-token tiles, empty sequences, fewer queries than keys (bottom-right per sequence),
GQA, odd head dims, masks that read the batch or head index; and the block tables of a batch
against the dense classification of each sequence."""

import numpy as np
import pytest
import torch
from _helpers import rel_err

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.codegen.triton.varlen import VarlenKernel
from einfuse.errors import CodegenError
from einfuse.ir.ranks import BATCH_INDEX, size_symbol
from einfuse.lowering.blocks import EMPTY
from einfuse.lowering.varlen_tables import tile_kinds
from einfuse.passes.block_sparsity import dense_tile_kinds

TILE = 32  # the interpreter's heuristic tiles (autotune.heuristic)
LENS_Q = [1, TILE - 1, 0, TILE + 1, 2 * TILE + 5, 7]
LENS_K = [1, TILE - 1, 0, TILE + 9, 2 * TILE + 5, 40]  # sequences 3 and 5: fewer queries than keys

SPECS = [
    "softmax",
    "causal",
    "sliding_window:window=16",
    "alibi",
    "softcap:cap=5,causal=true",
    "na1d:kernel=7",
    "na1d:kernel=9,causal=true",
    "sigmoid:causal=true,bias=-1",
    "duo:retrieval_heads=1,recent=8,sink=2",
]


def _cu(lens):
    return torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)


def _packed(lens_q, lens_k, H=4, HKV=2, D=24, DV=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    DV = DV or D
    return (torch.randn(sum(lens_q), H, D, generator=g), torch.randn(sum(lens_k), HKV, D, generator=g),
            torch.randn(sum(lens_k), HKV, DV, generator=g))


def _check_per_sequence(c, f, lens_q, lens_k, q, k, v, tol=2e-5, **runtime):
    """Run the packed batch, then every sequence alone through the reference; returns the output."""
    cq, ck = _cu(lens_q), _cu(lens_k)
    out = f.varlen(q, k, v, cq, ck, max(lens_q), max(lens_k), **runtime)
    assert out.shape == (q.shape[0], q.shape[1], v.shape[2])
    sizes = {"QOFF": runtime["q_offset"]} if "q_offset" in runtime else None
    for s, (nq, nk) in enumerate(zip(lens_q, lens_k)):
        got = out[cq[s]:cq[s + 1]]
        if nq == 0:
            continue
        if nk == 0:  # queries without keys: nothing to attend, 0 like a fully masked row
            assert torch.equal(got, torch.zeros_like(got)), f"sequence {s}: no keys, output not 0"
            continue
        one = lambda t, cu: t[cu[s]:cu[s + 1]].transpose(0, 1)[None]  # noqa: E731  (1, H, N, D)
        ref = run_cascade(c, {"Q": one(q, cq), "K": one(k, ck), "V": one(v, ck)}, sizes=sizes)["O"]
        err = rel_err(got.transpose(0, 1)[None], ref)
        assert err < tol, f"{c.name}, sequence {s} ({nq} queries, {nk} keys): rel err {err}"
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_each_sequence_matches_its_own_reference(spec):
    c = einfuse.load_spec(spec)
    f = einfuse.compile(c)
    _check_per_sequence(c, f, LENS_Q, LENS_K, *_packed(LENS_Q, LENS_K))


def test_same_offsets_for_queries_and_keys_with_odd_head_dims_and_mqa():
    """cu_seqlens_q == cu_seqlens_k (self-attention prefill, the SAME_LEN kernel), head dim 13, a
    value head dim of 20, one K/V head for 3 query heads."""
    lens = [TILE + 1, 5, 0, TILE - 1, 1]
    c = einfuse.load_spec("causal")
    _check_per_sequence(c, einfuse.compile(c), lens, lens, *_packed(lens, lens, H=3, HKV=1, D=13, DV=20, seed=1))


def test_more_queries_than_keys_leave_early_rows_empty():
    """Bottom-right per sequence: with 40 queries over 9 keys, queries 0..30 sit before key 0 and get 0."""
    c = einfuse.load_spec("causal")
    f = einfuse.compile(c)
    out = _check_per_sequence(c, f, [40, 3], [9, 3], *_packed([40, 3], [9, 3], seed=2))
    assert torch.equal(out[:31], torch.zeros_like(out[:31]))
    assert out[31:40].abs().sum() > 0


def test_align_offset_takes_one_query_offset_for_every_sequence():
    c = einfuse.load_spec("sliding_window:window=8,align=offset")
    lens_q, lens_k = [5, TILE + 3], [20, 60]
    _check_per_sequence(c, einfuse.compile(c), lens_q, lens_k, *_packed(lens_q, lens_k, seed=3), q_offset=12)


def test_batch_index_in_a_mask_is_the_sequence_index():
    """A mask reading b sees each sequence's index: equal lengths match the (B, H, N, D) reference."""
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: (kv <= q) & (kv < 40 - 7 * b))
    f = einfuse.compile(c)
    B, H, N, D = 3, 2, 45, 16
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(B, H, N, D, generator=g) for _ in range(3))
    packed = [t.transpose(1, 2).reshape(B * N, H, D) for t in (q, k, v)]
    cu = _cu([N] * B)
    out = f.varlen(*packed, cu, cu, N, N).reshape(B, N, H, D).transpose(1, 2)
    ref = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    assert rel_err(out, ref) < 2e-5


@pytest.mark.parametrize("spec", ["causal", "sliding_window:window=40", "na1d:kernel=9",
                                  "duo:retrieval_heads=1,recent=8,sink=2", "s2attn:stride=3,window=8"])
@pytest.mark.parametrize("tiles", [(32, 32), (64, 16)])
def test_batch_tables_equal_each_sequences_dense_classification(spec, tiles):
    """One vectorised classification of the whole batch gives, item by item, the kinds of a dense
    check of that sequence alone (a ragged last key tile PARTIAL, tiles past its keys EMPTY)."""
    bm, bn = tiles
    lens_q = np.array([1, 31, 33, 100, 0, 70, 17])
    lens_k = np.array([1, 31, 40, 100, 5, 150, 0])
    heads = 4
    f = einfuse.compile(spec)
    mask = VarlenKernel(f.kernel)._mask(heads, len(lens_q), 0)
    items, kinds = tile_kinds(mask, lens_q, lens_k, bm, bn, heads)
    assert [tuple(x) for x in items] == [(s, t) for s, n in enumerate(lens_q) for t in range(-(-n // bm))]
    for s, (nq, nk) in enumerate(zip(lens_q, lens_k)):
        rows = kinds[:, items[:, 0] == s]
        nkt = -(-nk // bn)
        assert (rows[..., nkt:] == EMPTY).all(), f"sequence {s}: a key tile outside it is visited"
        if nq == 0 or nk == 0:
            continue
        bound = mask.subs({size_symbol("P"): int(nq), size_symbol("M"): int(nk),
                           BATCH_INDEX: s})
        want = dense_tile_kinds(bound, int(nq), int(nk), bm, bn, heads=rows.shape[0])
        if nk % bn:
            last = want[..., -1]
            want[..., -1] = np.where(last == 2, 1, last)
        np.testing.assert_array_equal(rows[..., :nkt], want, err_msg=f"{spec}, sequence {s}")


def test_work_list_is_heaviest_first_and_cached():
    lens = [10, 200, 3, 90]
    c = einfuse.load_spec("causal")
    f = einfuse.compile(c)
    q, k, v = _packed(lens, lens, H=2, HKV=2, D=16, seed=5)
    cu = _cu(lens)
    f.varlen(q, k, v, cu, cu, 200, 200)
    t = f._varlen_kernel.last_tables
    work = (t.full_num + 1.25 * t.part_num).reshape(-1).tolist()
    assert work == sorted(work, reverse=True)
    assert t.n_items == sum(-(-n // TILE) for n in lens)
    f.varlen(q, k, v, cu.clone(), cu.clone(), 200, 200)
    assert f._varlen_kernel.last_tables is t  # same layout: the tables are reused, not rebuilt


def test_all_sequences_empty_gives_an_empty_output():
    f = einfuse.compile("causal")
    q, k, v = torch.zeros(0, 2, 16), torch.zeros(0, 2, 16), torch.zeros(0, 2, 16)
    cu = torch.zeros(3, dtype=torch.int32)
    assert f.varlen(q, k, v, cu, cu, 0, 0).shape == (0, 2, 16)


@pytest.mark.parametrize("case,match", [
    ("four_d", "packed as"),
    ("cu_start", "must start at 0"),
    ("cu_end", "end at the packed length"),
    ("cu_dtype", "1-D int32 tensor"),
    ("cu_count", "num_seqs \\+ 1"),
    ("max_seqlen", "max_seqlen_q"),
    ("grad", "forward-only"),
    ("option", "autotune and tile_order"),
    ("q_offset", "does not use a query offset"),
    ("heads", "must divide query heads"),
])
def test_bad_varlen_input_says_what_to_change(case, match):
    f = einfuse.compile("causal")
    lens = [3, 5]
    q, k, v = _packed(lens, lens, H=2, HKV=2, D=16)
    cu = _cu(lens)
    args = [q, k, v, cu, cu, 5, 5]
    kw = {}
    if case == "four_d":
        args[0] = q[None]
    elif case == "cu_start":
        args[3] = torch.tensor([1, 3, 8], dtype=torch.int32)
    elif case == "cu_end":
        args[3] = torch.tensor([0, 3, 7], dtype=torch.int32)
    elif case == "cu_dtype":
        args[3] = cu.float()
    elif case == "cu_count":
        args[4] = torch.tensor([0, 8], dtype=torch.int32)
    elif case == "max_seqlen":
        args[5] = 4
    elif case == "grad":
        args[0] = q.requires_grad_()
    elif case == "option":
        kw = {"autotune": True}
    elif case == "q_offset":
        kw = {"q_offset": 3}
    elif case == "heads":
        args[1], args[2] = k[:, :1].expand(8, 3, 16).contiguous(), v[:, :1].expand(8, 3, 16).contiguous()
    with pytest.raises(CodegenError, match=match):
        f.varlen(*args, **kw)


def test_a_grid_variant_takes_whole_grids_only():
    f = einfuse.compile("na2d:shape=4x4,kernel=3")
    lens = [16, 15]
    q, k, v = _packed(lens, lens, H=2, HKV=2, D=16)
    with pytest.raises(CodegenError, match="token grid holds 16 tokens"):
        f.varlen(q, k, v, _cu(lens), _cu(lens), 16, 16)


def test_na2d_on_whole_grids_matches_the_reference():
    c = einfuse.load_spec("na2d:shape=6x5,kernel=3")
    lens = [30, 0, 30]
    _check_per_sequence(c, einfuse.compile(c), lens, lens, *_packed(lens, lens, H=2, HKV=1, D=16, seed=6))


def test_linear_attention_is_refused_by_name():
    f = einfuse.compile("linear")
    lens = [3]
    q, k, v = _packed(lens, lens, H=2, HKV=2, D=16)
    with pytest.raises(CodegenError, match="one-pass Triton kernel"):
        f.varlen(q, k, v, _cu(lens), _cu(lens), 3, 3)


def test_bf16_inputs_match_the_reference():
    c = einfuse.load_spec("sliding_window:window=16")
    q, k, v = (t.bfloat16() for t in _packed(LENS_Q, LENS_K, seed=7))
    out = _check_per_sequence(c, einfuse.compile(c), LENS_Q, LENS_K, q, k, v, tol=2e-2)
    assert out.dtype == torch.bfloat16


def test_target_auto_runs_varlen_on_its_triton_kernel():
    c = einfuse.load_spec("causal")
    f = einfuse.compile(c, target="auto")
    _check_per_sequence(c, f, LENS_Q[:3], LENS_K[:3], *_packed(LENS_Q[:3], LENS_K[:3], seed=8))
