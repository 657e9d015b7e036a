"""The benchmark's sliced float64 torch reference agrees with the reference executor.

Every GPU benchmark row is judged against benchmarks/bench_reference.py; this pins that module to
the golden NumPy executor on small shapes, for every family and mask kind the suite uses.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from bench_reference import reference, visible_pairs

import einfuse
from einfuse.codegen.reference import run_cascade

SPECS = [
    ("softmax", 1), ("causal", 1), ("sliding_window:window=5", 1), ("gqa:causal=true", 2),
    ("alibi", 1), ("softcap:cap=3,causal=true", 1), ("sigmoid:causal=true,bias=-1", 1),
    ("sigmoid", 1), ("lightning", 1), ("linear:normalize=true", 1),
    ("na1d:kernel=5", 1), ("na2d:shape=5x6,kernel=3", 1), ("na3d:shape=3x4x3,kernel=3", 1),
    ("decode:causal=true", 2),
]


@pytest.mark.parametrize("spec,group", SPECS)
def test_sliced_reference_matches_executor(spec: str, group: int) -> None:
    c = einfuse.load_spec(spec)
    gen = torch.Generator().manual_seed(len(spec))
    H, N = 4, 36
    nq = 7 if spec.startswith("decode") else N
    q = torch.randn(2, H, nq, 16, generator=gen)
    k = torch.randn(2, H // group, N, 16, generator=gen)
    v = torch.randn(2, H // group, N, 8, generator=gen)
    full = run_cascade(c, {"Q": q, "K": k, "V": v})["O"]
    heads, qidx = torch.tensor([1, 3]), torch.tensor([0, 2, nq - 1])
    got = reference(c, q, k, v, 1, heads, qidx).numpy()
    want = full[1][heads.numpy()][:, qidx.numpy()]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_visible_pairs_counts_the_mask() -> None:
    assert visible_pairs(einfuse.load_spec("causal"), 10, 10, device="cpu", rows=3) == 55
    assert visible_pairs(einfuse.load_spec("softmax"), 10, 12, device="cpu") == 120
    sw = visible_pairs(einfuse.load_spec("sliding_window:window=4"), 20, 20, device="cpu", rows=7)
    assert sw == sum(min(p + 1, 4) for p in range(20))
    assert visible_pairs(einfuse.load_spec("na2d:shape=6x6,kernel=3"), 36, 36, device="cpu") == 36 * 9
