"""The lightning (linear attention with decay) case of the training benchmark (benchmarks/backward.py).

Its float64 reference is Lightning Attention's formula written out, independent of einfuse's plan:
``O = ((Q K^T) * exp(-s_h (p - m)) [m <= p]) V`` with the per-head rate ``s_h = 2^(-8 (h + 1) / H)``
(Lightning Attention-2's slopes, which the built-in ``lightning`` spec uses), no score scale. The
peers (fla ``chunk_simple_gla``, ``lightning_attn2``) get the same rates. FLOP counts of the quadratic
form would overstate chunked linear attention, so its rows report tokens per second (Mtok/s,
B * N / time) as the forward benchmark does.
"""

from __future__ import annotations

import torch

PEERS = ("fla", "lightning_attn2")
"""Linear-attention peers with a backward (their rows fail with the reason when not installed)."""


def rates(H: int, device: str) -> torch.Tensor:
    """Lightning's per-head decay rates ``s_h`` (g(d) = exp(-s_h d)), float32 as the peers take them."""
    h = torch.arange(H, dtype=torch.float64)
    return (2.0 ** (-8.0 * (h + 1) / H)).to(device=device, dtype=torch.float32)


def ref_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, H: int) -> torch.Tensor:
    """Output of one query head (``(N, D)`` float64 tensors) by the quadratic formula."""
    n = q.shape[0]
    pos = torch.arange(n, device=q.device, dtype=torch.float64)
    d = pos[:, None] - pos[None, :]
    s = 2.0 ** (-8.0 * (h + 1) / H)
    w = torch.where(d >= 0, torch.exp(-s * d.clamp(min=0.0)), 0.0)
    return ((q @ k.T) * w) @ v


def mtok_s(B: int, N: int, ms: float) -> float:
    return B * N / (ms * 1e-3) / 1e6
