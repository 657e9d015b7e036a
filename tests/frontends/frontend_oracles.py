"""Independent dense formulas for the built-in variants (float64 torch), written from the definitions.

Nothing here imports einfuse: masks are built by plain loops or broadcasting, softmax goes through
``torch.nn.functional.scaled_dot_product_attention`` where it applies, and a hand-written masked
softmax (0 for a query that sees no key) elsewhere.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F


def expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """GQA: query head h reads kv head h // (H // Hkv)."""
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def masked_softmax_attention(q, k, v, scale: float, mask=None, score_fn=None) -> torch.Tensor:
    """softmax(score_fn(q k^T * scale) masked) v; rows with no visible key give 0.

    ``mask`` broadcasts to (B, H, P, M) (True = visible); ``score_fn(s)`` sees scores (B, H, P, M).
    """
    H = q.shape[1]
    k, v = expand_kv(k, H), expand_kv(v, H)
    s = torch.einsum("bhpe,bhme->bhpm", q, k) * scale
    if score_fn is not None:
        s = score_fn(s)
    if mask is None:
        mask = torch.ones(s.shape, dtype=torch.bool)
    mask = torch.broadcast_to(torch.as_tensor(mask), s.shape)
    s = torch.where(mask, s, torch.tensor(-math.inf, dtype=s.dtype))
    rowmax = s.amax(dim=-1, keepdim=True)
    rowmax = torch.where(torch.isfinite(rowmax), rowmax, torch.zeros_like(rowmax))
    e = torch.where(mask, torch.exp(s - rowmax), torch.zeros_like(s))
    den = e.sum(dim=-1, keepdim=True)
    a = torch.where(den > 0, e / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(e))
    return a @ v


def sdpa(q, k, v, scale: float, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """PyTorch's own attention in float64 (GQA through enable_gqa)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


def index_grids(P: int, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(P).view(P, 1), torch.arange(M).view(1, M)


# ---- neighbourhood attention: a per-query loop over NATTEN's definition -------------------------

def natten_axis_keys(c: int, L: int, kernel: int, dilation: int, stride: int, causal: bool) -> list[int]:
    """Key coordinates a query at coordinate ``c`` sees on one axis (NATTEN reference semantics)."""
    group = c % dilation
    x = c // dilation
    group_len = len(range(group, L, dilation))
    if causal:
        leader = min((x // stride) * stride + stride - 1, group_len - 1)
        lo, hi = max(leader - kernel + 1, 0), x
    else:
        leader = min((x // stride) * stride + stride // 2, group_len - 1)
        left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
        lo = max(leader - left, 0)
        if leader + right >= group_len:  # past the end: shift the window back (NATTEN's start formula)
            lo += group_len - right - leader - 1
        hi = lo + kernel - 1
    return [group + dilation * j for j in range(lo, hi + 1)]


def natten_keys(shape, kernel, dilation, stride, causal, query: int) -> list[int]:
    """Flat indices of the keys that flat query ``query`` sees on the row-major flattened grid."""
    n = len(shape)
    strides = [math.prod(shape[i + 1:]) for i in range(n)]
    qc = [(query // strides[i]) % shape[i] for i in range(n)]
    per_axis = [natten_axis_keys(qc[i], shape[i], kernel[i], dilation[i], stride[i], causal[i])
                for i in range(n)]
    return [sum(c * s for c, s in zip(kc, strides)) for kc in itertools.product(*per_axis)]


def natten_mask(shape, kernel, dilation, stride, causal) -> np.ndarray:
    """Dense (N, N) visibility of the row-major flattened grid, one query at a time."""
    N = math.prod(shape)
    mask = np.zeros((N, N), dtype=bool)
    for q in range(N):
        mask[q, natten_keys(shape, kernel, dilation, stride, causal, q)] = True
    return mask


# ---- linear-attention family ------------------------------------------------------------------

def elu1(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def linear_attention(q, k, v, feature=None, causal=True, normalize=False, decay=None) -> torch.Tensor:
    """(phi(q) phi(k)^T [* decay] [causal]) v [/ row sums]; ``decay`` is (H, P, M) or None."""
    H = q.shape[1]
    k, v = expand_kv(k, H), expand_kv(v, H)
    if feature is not None:
        q, k = feature(q), feature(k)
    a = torch.einsum("bhpe,bhme->bhpm", q, k)
    P, M = a.shape[-2:]
    if decay is not None:
        a = a * decay
    if causal:
        pi, mi = index_grids(P, M)
        a = a * (mi <= pi)
    out = a @ v
    return out / a.sum(-1, keepdim=True) if normalize else out


def lightning_decay(H: int, P: int, M: int) -> torch.Tensor:
    rates = torch.tensor([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], dtype=torch.float64)
    pi, mi = index_grids(P, M)
    return torch.exp(-rates.view(H, 1, 1) * (pi - mi).double())


def taylor_linear(q, k, v, scale: float) -> torch.Tensor:
    """Causal normalised linear attention with the kernel 1 + s + s^2/2 of s = q.k * scale."""
    s = torch.einsum("bhpe,bhme->bhpm", q, k) * scale
    t = 1.0 + s + 0.5 * s * s
    pi, mi = index_grids(*s.shape[-2:])
    t = t * (mi <= pi)
    return (t @ v) / t.sum(-1, keepdim=True)


__all__ = [
    "elu1", "expand_kv", "index_grids", "lightning_decay", "linear_attention", "masked_softmax_attention",
    "natten_axis_keys", "natten_keys", "natten_mask", "sdpa", "taylor_linear",
]
