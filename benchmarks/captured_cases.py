"""Cases of benchmarks/captured.py: document masking and a Swin relative-position bias, written once.

Both systems (einfuse, FlexAttention) get the same mods, as FlexAttention users write them: closures
over a ``doc_ids`` tensor and over a learned ``(heads, (2w-1)^2)`` bias table. The references are
float32 torch on the same (bf16) inputs: the output on a sample of query rows, and for the backward
the gradients of q, k, v (on a slice of heads for document masks, whose heads are independent) and
of the table (whole problem: every batch and head adds into it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Case:
    name: str
    B: int
    H: int
    N: int
    D: int
    kind: str  # "docs" | "swin"
    extra: dict[str, Any] = field(default_factory=dict)


FAST_CASES = [  # the default set: one of each example, sizes where Flex compiles in well under a minute
    Case("docs_causal_8k", 1, 16, 8192, 128, "docs", {"causal": True, "docs": 8}),
    Case("swin_w8", 1024, 8, 64, 32, "swin", {"window": 8}),
]
FULL_CASES = FAST_CASES + [
    Case("docs_full_8k", 1, 16, 8192, 128, "docs", {"causal": False, "docs": 8}),
    Case("docs_causal_16k", 1, 16, 16384, 128, "docs", {"causal": True, "docs": 12}),
    Case("docs_full_16k", 1, 16, 16384, 128, "docs", {"causal": False, "docs": 12}),
    Case("docs_causal_32k_d64", 1, 32, 32768, 64, "docs", {"causal": True, "docs": 24}),
    Case("swin_w8_b2048", 2048, 8, 64, 32, "swin", {"window": 8}),
    Case("swin_w16", 512, 8, 256, 32, "swin", {"window": 16}),
]
DRY_CASES = [  # CPU, Triton interpreter: ragged against the tiles, a few documents
    Case("docs_causal_tiny", 1, 2, 150, 32, "docs", {"causal": True, "docs": 4}),
    Case("swin_w4_tiny", 6, 2, 16, 16, "swin", {"window": 4}),
]
SETS = {"fast": FAST_CASES, "full": FULL_CASES, "dry": DRY_CASES}


def find(names: list[str], default: list[Case]) -> list[Case]:
    """The cases named (from every set), or ``default``; an unknown name raises ValueError."""
    if not names:
        return list(default)
    known = {c.name: c for s in SETS.values() for c in s}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown case {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return [known[n] for n in names]


def doc_ids_for(case: Case, device: str) -> torch.Tensor:
    """Packed documents of random lengths (fixed seed), ids 0..docs-1 in order."""
    g = torch.Generator().manual_seed(1234)
    cuts = torch.sort(torch.randperm(case.N - 1, generator=g)[: case.extra["docs"] - 1] + 1).values
    lengths = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([case.N])]))
    return torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(device)


def swin_index(q: Any, kv: Any, w: int) -> Any:
    """Relative-position index of two tokens of a w x w window (row-major): Swin's table layout."""
    return (q // w - kv // w + w - 1) * (2 * w - 1) + (q % w - kv % w + w - 1)


def mods(case: Case, device: str) -> tuple[Callable | None, Callable | None, dict[str, torch.Tensor]]:
    """(score_mod, mask_mod, captured tensors): one definition for Flex and einfuse. The Swin table
    is a leaf that requires grad (it is learned); forward timings run under ``torch.no_grad()``."""
    if case.kind == "docs":
        doc_ids = doc_ids_for(case, device)
        if case.extra["causal"]:
            def mask_mod(b, h, q, kv):
                return (doc_ids[q] == doc_ids[kv]) & (q >= kv)
        else:
            def mask_mod(b, h, q, kv):
                return doc_ids[q] == doc_ids[kv]
        return None, mask_mod, {"doc_ids": doc_ids}
    w = case.extra["window"]
    g = torch.Generator().manual_seed(99)
    table = (0.5 * torch.randn(case.H, (2 * w - 1) ** 2, generator=g)).to(device).requires_grad_()

    def score_mod(s, b, h, q, kv):
        return s + table[h, swin_index(q, kv, w)]
    return score_mod, None, {"table": table}


def _attend(case: Case, q, k, v, caps: dict[str, torch.Tensor], rows: torch.Tensor, table=None) -> torch.Tensor:
    """float32 attention of query ``rows`` (``table``: the Swin table to differentiate)."""
    s = q[:, :, rows] @ k.transpose(-1, -2) / math.sqrt(case.D)
    qi, ki = rows.view(-1, 1), torch.arange(case.N, device=q.device).view(1, -1)
    if case.kind == "docs":
        d = caps["doc_ids"]
        keep = d[qi] == d[ki]
        if case.extra["causal"]:
            keep = keep & (qi >= ki)
        s = s.masked_fill(~keep, -math.inf)
    else:
        t = caps["table"] if table is None else table
        s = s + t[:, swin_index(qi, ki, case.extra["window"])].unsqueeze(0)
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def reference(case: Case, q, k, v, caps: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """float32 output of query ``rows`` (all batches and heads of the slices given)."""
    with torch.no_grad():
        return _attend(case, q.float(), k.float(), v.float(), caps, rows)


def grad_slice(case: Case) -> tuple[slice, slice]:
    """(batches, heads) whose q/k/v gradients are checked: a few heads of the document masks (heads
    are independent), everything for Swin (small windows)."""
    if case.kind == "docs":
        return slice(0, 1), slice(0, 1 if case.N > 8192 else 2)
    return slice(0, case.B), slice(0, case.H)


def reference_grads(case: Case, q, k, v, dout, caps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 gradients: dq, dk, dv on :func:`grad_slice`, and (Swin) the table's on everything."""
    bs, hs = grad_slice(case)
    rows = torch.arange(case.N, device=q.device)
    x = [t[bs, hs].detach().float().requires_grad_() for t in (q, k, v)]
    out = {}
    with torch.enable_grad():
        if case.kind == "swin":
            t = caps["table"].detach().float().requires_grad_()
            full = [a.detach().float().requires_grad_() for a in (q, k, v)]
            o = _attend(case, *full, caps, rows, table=t)
            grads = torch.autograd.grad(o, (*full, t), dout.float())
            out.update(dq=grads[0][bs, hs], dk=grads[1][bs, hs], dv=grads[2][bs, hs], dtable=grads[3])
        else:
            o = _attend(case, *x, caps, rows)
            out.update(zip(("dq", "dk", "dv"), torch.autograd.grad(o, x, dout[bs, hs].float())))
    return out


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))
