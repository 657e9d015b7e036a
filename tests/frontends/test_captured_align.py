"""Mods built with ``align="bottom_right"`` or ``"offset"`` read captured tensors like top-left ones.

The alignment wraps the user's function; the capture pass must still see the tensors the user's
function closes over (it once saw only the wrapper and refused them with a SpecError)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import einfuse as ef
from einfuse.codegen.reference import run_cascade


@pytest.mark.parametrize("align", ["top_left", "bottom_right", "offset"])
def test_aligned_mods_capture_the_tensors_they_close_over(align):
    win = torch.tensor([2, 5])
    bias = torch.randn(2, 8)
    c = ef.attention("a", score_mod=lambda s, b, h, q, kv: s + bias[h, ef.abs(q - kv)],
                     mask_mod=lambda b, h, q, kv: (kv <= q) & (q - kv < win[h]), head_dim=4, align=align)
    assert sorted(c.captures) == ["bias", "win"]


def test_bottom_right_reference_reads_the_tensor_at_the_query_position():
    P, M, D = 3, 7, 4
    win = torch.tensor([2, 5])
    c = ef.attention("a", mask_mod=lambda b, h, q, kv: (kv <= q) & (q - kv < win[h]), head_dim=D,
                     align="bottom_right")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, D, generator=g, dtype=torch.float64) for n in (P, M, M))
    got = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    pos = torch.arange(P).view(P, 1) + M - P
    ki = torch.arange(M).view(1, M)
    keep = (ki <= pos) & (pos - ki < win.view(2, 1, 1))
    s = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~keep, -math.inf)
    np.testing.assert_allclose(got, (torch.softmax(s, -1) @ v).numpy(), rtol=1e-10, atol=1e-12)
