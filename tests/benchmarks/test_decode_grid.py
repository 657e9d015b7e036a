"""benchmarks/decode_grid.py builds what it says: pages where its page table points, ragged lengths
with the context as the longest, a report that flags missed targets, and (in the interpreter, at
tiny sizes) a point whose einfuse outputs agree with SDPA's."""

from __future__ import annotations

import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import decode_grid as grid  # noqa: E402


def test_paginate_puts_every_key_where_the_page_table_says() -> None:
    B, Hkv, N, D, page = 2, 3, 48, 4, 16
    k = torch.randn(B, Hkv, N, D)
    perm = torch.randperm(B * N // page)
    pages = grid.paginate(k, page, perm)
    table = perm.view(B, N // page)
    for b in range(B):
        for m in range(N):
            assert torch.equal(pages[table[b, m // page], m % page], k[b, :, m])


def test_ragged_lengths_span_an_eighth_to_the_context() -> None:
    lens = grid.lengths(64, 8192, ragged=True, seed=3)
    assert lens[0] == 8192 and min(lens) >= 1024 and max(lens) == 8192 and len(set(lens)) > 32
    assert grid.lengths(4, 100, ragged=False, seed=0) == [100] * 4


def test_report_flags_points_below_the_target() -> None:
    row = {"set": "grid", "gqa": "8:1", "B": 1, "context": 1024, "splits": 8, "sdpa_ms": 0.01,
           "sdpa_backend": "sdpa-flash", "einfuse_ms": 0.02, "einfuse_tb_s": 0.1, "einfuse_vs_sdpa": 0.5,
           "einfuse_target_met": False, "einfuse-paged_ms": 0.01, "einfuse-paged_tb_s": 0.2,
           "einfuse-paged_vs_sdpa": 1.0, "einfuse-paged_target_met": True}
    info = {"device": "x", "dtype": "bf16", "torch": "", "triton": "", "date": "", "einfuse_commit": ""}
    text = grid.markdown(info, [row], [], [])
    assert "0.50x **MISSED**" in text and "1.00x met" in text and "1/2" in text


def test_a_tiny_point_agrees_with_sdpa_in_the_interpreter(monkeypatch) -> None:
    import einfuse

    for name, value in (("H", 8), ("D", 32), ("PAGE", 16), ("DTYPE", torch.float32)):
        monkeypatch.setattr(grid, name, value)
    attn = einfuse.compile("decode", decode_options={"block_n": 16})
    with open(os.devnull, "w") as log:
        row = grid.run_point(attn, 4, 2, 48, True, "cpu", grid.timer("cpu", 1, 1), log)
    assert "einfuse_error" not in row and "einfuse-paged_error" not in row, row
    assert row["einfuse_rel_err"] < 1e-5 and row["einfuse-paged_rel_err"] < 1e-5
