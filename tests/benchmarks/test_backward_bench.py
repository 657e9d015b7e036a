"""benchmarks/backward.py and tune_backward.py run end to end on the CPU (``--dry-run``: tiny shapes,
Triton interpreter, einfuse only), so the GPU run's plumbing (reference gradients, checks, reports)
is exercised before a GPU is booked."""

from __future__ import annotations

import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import backward  # noqa: E402


def test_dry_run_checks_gradients_and_writes_reports(tmp_path):
    assert backward.main(["--dry-run", "--only", "gqa,lightning", "--results-dir", str(tmp_path)]) == 0
    (js,) = (tmp_path / "backward").glob("*-backward.json")
    data = json.loads(js.read_text())
    rows = {r["variant"]: r for r in data["rows"] if r["system"] == "einfuse-triton"}
    gqa = rows["gqa"]
    assert "error" not in gqa and set(gqa["rel_err"]) == {"out", "dq", "dk", "dv"}
    assert max(gqa["rel_err"].values()) < 2e-2   # bf16 kernels vs float64 autograd of the Flex mods
    assert gqa["fwdbwd_ms"] > 0 and gqa["fwdbwd_tflops"] > 0
    atomic = next(r for r in data["rows"] if r["system"] == backward.ATOMIC)   # the other dQ layout, checked too
    assert "error" not in atomic and max(atomic["rel_err"].values()) < 2e-2
    light = rows["lightning"]   # the chunked linear backward, against Lightning's formula in float64
    assert "error" not in light and max(light["rel_err"].values()) < 2e-2 and light["fwdbwd_mtok_s"] > 0
    md = js.with_suffix(".md").read_text()
    assert "| gqa |" in md and "fwd+bwd TFLOP/s" in md


def test_reference_gradients_sum_over_the_query_group():
    case = next(c for c in backward.dry_cases() if c.variant == "gqa")
    gen = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, h, 48, 16, generator=gen) for h in (4, 2, 2, 4))
    ref = backward.reference_grads(case, q, k, v, do, 0, 1)
    assert ref["heads"] == [2, 3]
    k64, v64 = k[0, 1].double().requires_grad_(), v[0, 1].double().requires_grad_()
    total = sum((backward._ref_head(case, q[0, h].double(), k64, v64, 0, h) * do[0, h].double()).sum() for h in (2, 3))
    dk, dv = torch.autograd.grad(total, (k64, v64))
    assert torch.allclose(ref["dk"], dk) and torch.allclose(ref["dv"], dv)
