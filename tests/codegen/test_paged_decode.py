"""Decode over a paged KV cache and over per-sequence lengths, against the float64 reference.

Each sequence ``b`` of length ``L_b`` must equal the reference executor run on its first ``L_b`` keys
(the whole batch is passed, so masks and scores that read the batch index see the right ``b``; row
``b`` is kept). Pages are shuffled, shared between sequences, and of sizes that are and are not
powers of two or multiples of the key block; lengths are ragged, some 0, some shorter than the
number of queries (fully masked rows under a bottom-right causal mask). In the Triton interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.codegen.triton.decode import build_decode
from einfuse.errors import CodegenError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-5 if DEVICE == "cpu" else 3e-3


def _data(B: int, H: int, Hkv: int, NQ: int, n_max: int, D: int, DV: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, NQ, D, generator=g) * 1.5
    k = torch.randn(B, Hkv, n_max, D, generator=g)
    v = torch.randn(B, Hkv, n_max, DV, generator=g)
    return q, k, v


def _reference(spec: str, q, k, v, lens: list[int]) -> np.ndarray:
    """Row b of the reference over the first lens[b] keys (0 for an empty sequence)."""
    c = einfuse.load_spec(spec)
    B, H, NQ, _ = q.shape
    out = np.zeros((B, H, NQ, v.shape[-1]))
    for b, n in enumerate(lens):
        if n:
            out[b] = run_cascade(c, {"Q": q, "K": k[:, :, :n], "V": v[:, :, :n]})["O"][b]
    return out


def _pages(k, v, lens: list[int], page_size: int, seed: int, share: tuple[int, int, int] | None = None):
    """(k_cache, v_cache, page_table) holding k, v's first lens[b] keys, pages in shuffled order.

    ``share=(a, b, n)``: sequence b's first n pages are sequence a's (the caller made their keys
    equal), as a prefix cache shares them; the spare pages are left unused."""
    B, Hkv, _, D = k.shape
    per_seq = [-(-n // page_size) for n in lens]
    max_pages = max(max(per_seq), 1)
    total = sum(per_seq) + 3  # a few pages no sequence uses
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    k_cache = torch.full((total, page_size, Hkv, D), float("nan"), dtype=k.dtype)  # unread slots: NaN
    v_cache = torch.full((total, page_size, Hkv, v.shape[-1]), float("nan"), dtype=v.dtype)
    table = torch.full((B, max_pages), -1, dtype=torch.int32)  # entries past the end are never read
    nxt = 0
    for b, n in enumerate(lens):
        for j in range(per_seq[b]):
            if share and b == share[1] and j < share[2]:
                table[b, j] = table[share[0], j]
                continue
            page = order[nxt]
            nxt += 1
            table[b, j] = page
            lo, hi = j * page_size, min((j + 1) * page_size, n)
            k_cache[page, : hi - lo] = k[b, :, lo:hi].transpose(0, 1)
            v_cache[page, : hi - lo] = v[b, :, lo:hi].transpose(0, 1)
    return k_cache, v_cache, table


def _check(out, ref) -> None:
    out = out.double().cpu().numpy()
    assert out.shape == ref.shape and np.isfinite(out).all()
    err = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
    assert err < TOL, err


def _lens(lens: list[int]):
    return torch.tensor(lens, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("spec,H,Hkv,NQ,D,page_size,lens", [
    ("decode", 8, 1, 1, 17, 16, [37, 0, 70, 16]),                  # GQA 8:1, odd D, an empty sequence
    ("decode", 8, 2, 1, 24, 5, [23, 41, 1]),                       # GQA 4:1, page size 5 < block
    ("decode:causal=true", 4, 1, 3, 24, 48, [50, 2, 0, 97]),       # page 48: not a power of two, > block
    ("alibi:causal=true", 4, 4, 2, 16, 16, [33, 64, 1]),           # positions in the score and the mask
    ("sliding_window:window=9,causal=true", 4, 2, 4, 16, 7, [40, 3, 25]),
])
def test_paged_decode_matches_reference(spec: str, H: int, Hkv: int, NQ: int, D: int, page_size: int,
                                        lens: list[int]) -> None:
    q, k, v = _data(len(lens), H, Hkv, NQ, max(lens), D, D + 3, seed=page_size + sum(lens))
    kc, vc, table = _pages(k, v, lens, page_size, seed=len(lens))
    fn = build_decode(einfuse.load_spec(spec), block_n=16)
    out = fn(q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), page_table=table.to(DEVICE), seq_lens=_lens(lens),
             splits=3)
    _check(out, _reference(spec, q, k, v, lens))


def test_shared_pages_and_pages_out_of_order() -> None:
    lens, page_size = [45, 60, 30], 16
    q, k, v = _data(3, 4, 2, 1, 60, 16, 16, seed=11)
    k[1, :, :32], v[1, :, :32] = k[0, :, :32], v[0, :, :32]   # a common two-page prefix
    kc, vc, table = _pages(k, v, lens, page_size, seed=5, share=(0, 1, 2))
    assert table[1, 0] == table[0, 0] and table[1, 1] == table[0, 1]
    assert (table[0, 1:3] != table[0, :2] + 1).any()           # not laid out in order
    fn = build_decode(einfuse.load_spec("decode"), block_n=16)
    out = fn(q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), page_table=table.to(DEVICE), seq_lens=_lens(lens))
    _check(out, _reference("decode", q, k, v, lens))


@pytest.mark.parametrize("spec,NQ", [("decode", 1), ("decode:causal=true", 3), ("alibi:causal=true", 2)])
def test_contiguous_cache_with_per_sequence_lengths(spec: str, NQ: int) -> None:
    lens = [29, 0, 50, 2]
    q, k, v = _data(4, 4, 2, NQ, 50, 24, 24, seed=NQ)
    k_pad, v_pad = k.clone(), v.clone()
    for b, n in enumerate(lens):   # padding past each length must not be read
        k_pad[b, :, n:], v_pad[b, :, n:] = float("nan"), float("nan")
    fn = build_decode(einfuse.load_spec(spec), block_n=16)
    out = fn(q.to(DEVICE), k_pad.to(DEVICE), v_pad.to(DEVICE), seq_lens=_lens(lens), splits=4)
    _check(out, _reference(spec, q, k, v, lens))


def test_empty_sequences_give_zero_and_minus_inf_lse() -> None:
    lens = [0, 19, 0]
    q, k, v = _data(3, 2, 1, 1, 19, 16, 16, seed=4)
    kc, vc, table = _pages(k, v, lens, 16, seed=2)
    fn = build_decode(einfuse.load_spec("decode"), block_n=16)
    out, lse = fn(q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), page_table=table.to(DEVICE),
                  seq_lens=_lens(lens), return_lse=True)
    assert torch.all(out[0] == 0) and torch.all(out[2] == 0) and torch.isfinite(out).all()
    assert torch.all(lse[0] == float("-inf")) and torch.isfinite(lse[1]).all()
    _check(out, _reference("decode", q, k, v, lens))


def test_bf16_paged_decode() -> None:
    lens = [40, 21]
    q, k, v = _data(2, 8, 1, 1, 40, 32, 32, seed=9)
    q, k, v = (t.bfloat16() for t in (q, k, v))
    kc, vc, table = _pages(k, v, lens, 16, seed=1)
    fn = build_decode(einfuse.load_spec("decode"), block_n=16)
    out = fn(q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), page_table=table.to(DEVICE), seq_lens=_lens(lens))
    ref = _reference("decode", q.double(), k.double(), v.double(), lens)
    got = out.double().cpu().numpy()
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-2


def test_compiled_call_takes_page_table_and_seq_lens() -> None:
    lens = [30, 7]
    q, k, v = _data(2, 4, 2, 2, 30, 16, 16, seed=3)
    kc, vc, table = _pages(k, v, lens, 16, seed=3)
    fn = einfuse.compile("decode:causal=true", decode_options={"block_n": 16})
    out = fn(q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), page_table=table.to(DEVICE), seq_lens=_lens(lens))
    _check(out, _reference("decode:causal=true", q, k, v, lens))
    with pytest.raises(CodegenError, match="at most 16 queries"):
        fn(torch.zeros(2, 4, 17, 16, device=DEVICE), kc.to(DEVICE), vc.to(DEVICE), page_table=table.to(DEVICE),
           seq_lens=_lens(lens))
    off = einfuse.compile("decode", decode=False)
    with pytest.raises(CodegenError, match="decode=False"):
        off(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), seq_lens=_lens(lens))


def test_bad_cache_arguments_name_what_to_change() -> None:
    lens = [20, 9]
    q, k, v = _data(2, 4, 2, 1, 20, 16, 16, seed=8)
    kc, vc, table = _pages(k, v, lens, 16, seed=8)
    fn = build_decode(einfuse.load_spec("decode"), block_n=16)
    q, kc, vc, table = q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), table.to(DEVICE)
    with pytest.raises(CodegenError, match="needs seq_lens"):
        fn(q, kc, vc, page_table=table)
    with pytest.raises(CodegenError, match="page_table must be a .* torch.int32"):
        fn(q, kc, vc, page_table=table.long(), seq_lens=_lens(lens))
    with pytest.raises(CodegenError, match="seq_lens must be a"):
        fn(q, kc, vc, page_table=table, seq_lens=_lens(lens).long())
    with pytest.raises(CodegenError, match="rows for a batch of 2"):
        fn(q, kc, vc, page_table=table[:1], seq_lens=_lens(lens))
    with pytest.raises(CodegenError, match="do not divide"):
        fn(q[:, :3].contiguous(), kc, vc, page_table=table, seq_lens=_lens(lens))
    with pytest.raises(CodegenError, match="batch sizes differ"):
        fn(q, kc, vc, seq_lens=_lens(lens))   # pages without a page table
    fn(q, kc, vc, page_table=table, seq_lens=_lens(lens))  # this signature's prepared call now exists
    if DEVICE == "cpu":  # values are checked where reading them costs no synchronisation (every call)
        with pytest.raises(CodegenError, match=r"seq_lens\[1\] = 33 is outside 0..32"):
            fn(q, kc, vc, page_table=table, seq_lens=_lens([20, 33]))
        bad = table.clone()
        bad[0, 1] = kc.shape[0]
        with pytest.raises(CodegenError, match="page_table.0. names page"):
            fn(q, kc, vc, page_table=bad, seq_lens=_lens(lens))


@pytest.mark.parametrize("ragged", [False, True])
def test_many_splits_are_combined_in_chunks(ragged: bool) -> None:
    lens = [350, 140] if ragged else [350, 350]
    q, k, v = _data(2, 2, 1, 1, 350, 16, 16, seed=12)
    fn = build_decode(einfuse.load_spec("decode"), block_n=16)
    kw = {"seq_lens": _lens(lens)} if ragged else {}
    out = fn(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), splits=22, **kw)   # 22 splits > the combine's chunk
    assert fn.split_plan(2, 1, 1, 350, torch.device("cpu"), 22)[0] == 22
    _check(out, _reference("decode", q, k, v, lens))


def test_automatic_split_count_is_capped() -> None:
    fn = build_decode(einfuse.load_spec("decode"), programs_per_sm=1000, max_splits=96)
    n, length = fn.split_plan(1, 1, 1, 1 << 20, torch.device("cpu"))
    assert n <= 96 and n * length >= 1 << 20
    assert fn.split_plan(1, 1, 1, 1 << 20, torch.device("cpu"), splits=200)[0] == 200  # asked for: kept


def test_vllm_views_of_one_kv_tensor_and_token_major_queries() -> None:
    lens, NQ = [26, 13], 2
    q, k, v = _data(2, 4, 2, NQ, 26, 16, 16, seed=21)
    kc, vc, table = _pages(k, v, lens, 16, seed=4)
    kv_cache = torch.stack([kc, vc]).to(DEVICE)            # vLLM: (2, num_blocks, block_size, H_kv, D)
    tokens = q.transpose(1, 2).reshape(2 * NQ, 4, 16)      # (tokens, H, D), sequence-major
    q_view = tokens.to(DEVICE).view(2, NQ, 4, 16).transpose(1, 2)
    assert not q_view.is_contiguous()
    fn = build_decode(einfuse.load_spec("decode:causal=true"), block_n=16)
    out = fn(q_view, kv_cache[0], kv_cache[1], page_table=table.to(DEVICE), seq_lens=_lens(lens))
    _check(out, _reference("decode:causal=true", q, k, v, lens))


def test_paged_calls_are_prepared_once_and_read_new_pages_and_lengths() -> None:
    """A serving loop calls with the same shapes and new contents: one prepared call (checks, plan,
    bound kernels) serves them all, and each call reads its own page table and lengths."""
    fn = einfuse.compile("decode:causal=true", decode_options={"block_n": 16})
    for lens, seed in (([30, 7], 3), ([12, 31], 4)):  # 6 pages, 2 per sequence at most, both times
        q, k, v = _data(2, 4, 2, 2, 32, 16, 16, seed=seed)
        kc, vc, table = _pages(k, v, lens, 16, seed=seed)
        args = (q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE))
        out = fn(*args, page_table=table.to(DEVICE), seq_lens=_lens(lens))
        _check(out, _reference("decode:causal=true", q, k, v, lens))
    assert len(fn._calls) == 1 and type(next(iter(fn._calls.values()))).__name__ == "PreparedDecode"
    shifted = _lens([0, *lens])[1:]  # 4 bytes past an allocation: Triton specialises on alignment
    assert shifted.data_ptr() % 16
    _check(fn(*args, page_table=table.to(DEVICE), seq_lens=shifted), _reference("decode:causal=true", q, k, v, lens))
    assert len(fn._calls) == 1  # not cached: such calls take the full path every time
    out, lse = fn(*args, page_table=table.to(DEVICE), seq_lens=_lens(lens), return_lse=True)
    _check(out, _reference("decode:causal=true", q, k, v, lens))
    assert lse.shape == (2, 4, 2) and len(fn._calls) == 2
    dec = build_decode(einfuse.load_spec("decode"), block_n=16)  # direct kernel calls are prepared too
    for lens in ([30, 7], [16, 17]):  # 3 pages each
        kc, vc, table = _pages(k, v, lens, 16, seed=sum(lens))
        _check(dec(q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), page_table=table.to(DEVICE), seq_lens=_lens(lens),
                   splits=2), _reference("decode", q, k, v, lens))
    assert len(dec._prepared) == 1


@pytest.mark.parametrize("spec,H,Hkv,NQ,lens,paged,splits,rows", [
    ("decode", 8, 1, 1, [37, 0, 70, 16], True, 3, 64),            # GQA 8:1, an empty sequence
    ("decode", 8, 2, 1, [23, 41, 1], False, 5, 64),              # GQA 4:1, contiguous with lengths
    ("decode:causal=true", 8, 1, 3, [50, 2, 0, 97], True, 4, 16),  # 24 rows: two row blocks per KV head
    ("decode", 4, 2, 1, [350, 140], True, 22, 64),               # many splits, past some sequences' end
])
def test_fused_combine_matches_reference(spec: str, H: int, Hkv: int, NQ: int, lens: list[int], paged: bool,
                                         splits: int, rows: int) -> None:
    """The last split program of each (batch, KV head, row block) merges the splits (ticket counter):
    each call must see the counters at zero again, so the same prepared call runs twice on new data."""
    fn = build_decode(einfuse.load_spec(spec), block_n=16, block_rows=rows, fuse_combine=True)
    for seed in (1, 2):
        q, k, v = _data(len(lens), H, Hkv, NQ, max(lens), 16, 24, seed=seed)
        if paged:
            kc, vc, table = _pages(k, v, lens, 16, seed=seed)
            kw = {"page_table": table.to(DEVICE)}
        else:
            kc, vc, kw = k, v, {}
        out, lse = fn(q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), seq_lens=_lens(lens), splits=splits,
                      return_lse=True, **kw)
        _check(out, _reference(spec, q, k, v, lens))
        ref, ref_lse = build_decode(einfuse.load_spec(spec), block_n=16)(
            q.to(DEVICE), kc.to(DEVICE), vc.to(DEVICE), seq_lens=_lens(lens), splits=splits, return_lse=True, **kw)
        torch.testing.assert_close(lse, ref_lse)
    prepared = next(iter(fn._prepared.values()))
    assert prepared.combine is None and len(fn._prepared) == 1
    assert all(int(c.abs().sum()) == 0 for c in prepared.counters.by_stream.values())  # left at zero
