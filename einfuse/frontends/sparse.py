"""Built-ins that are the softmax cascade with a structured mask: decoding, S2-Attention, DuoAttention.

Each is one ``dsl.attention`` call; the whole variant lives in the mask predicate over ``p`` (query),
``m`` (key) and ``h`` (query head), so passes see its sparsity (per-head when it mentions ``h``).
"""

from __future__ import annotations

import math

import sympy

from einfuse.errors import SpecError
from einfuse.frontends import dsl
from einfuse.frontends.library import _align, _scale, builtin
from einfuse.ir.cascade import Cascade
from einfuse.ir.ranks import HEAD_EXTENT


@builtin("decode")
def decode(causal: bool = False, head_dim: int = 0, scale: float = 0.0,
           align: str = "bottom_right") -> Cascade:
    """Decoding over a KV cache (few queries, long KV): softmax with attrs decode=True.

    With ``causal`` the P queries are the *last* P positions of the M cached tokens, so query ``p``
    sees keys ``m <= p + M - P`` (bottom-right alignment, as in speculative/chunked decoding; ``align``
    chooses another, einfuse.ir.positions); a query with no visible key (P > M) gets 0. The
    ``decode`` attribute tells back ends to split the KV length across workers (flash-decoding)
    rather than tile the queries.
    """
    mask = (lambda b_, h_, q, kv: kv <= q) if causal else None
    c = dsl.attention("decode", mask_mod=mask, scale=_scale(head_dim, scale), align=_align(align, causal))
    return c.replace(attrs={**c.attrs, "decode": True})


@builtin("s2attn")
def s2attn(stride: int = 4, window: int = 128, causal: bool = True, head_dim: int = 0,
           scale: float = 0.0, align: str = "bottom_right") -> Cascade:
    """S2-Attention: head h sees keys with m mod stride == h mod stride, plus a local window.

    The strided shard differs per head, so the heads together cover the whole context while each
    reads 1/stride of it; the local window (``p - m < window``, ``|p - m| < window`` when not causal)
    keeps the dense short-range context. ``window=0`` leaves only the shard. With ``causal`` both
    parts are restricted to ``m <= p``. ``p`` is the query's position (``align``); the shard
    depends on the key alone.
    """
    if stride < 1:
        raise SpecError(f"option stride must be >= 1, got {stride}")
    if window < 0:
        raise SpecError(f"option window must be >= 0 (0 = no local window), got {window}")
    def mask(b_, h_, q, kv):
        shard = sympy.Eq(sympy.Mod(kv, stride), sympy.Mod(h_, stride))
        if causal:
            local = (q - kv < window) if window else sympy.false
            return (kv <= q) & (shard | local)
        local = (sympy.Abs(q - kv) < window) if window else sympy.false
        return shard | local
    return dsl.attention("s2attn", mask_mod=mask, scale=_scale(head_dim, scale), align=align)


@builtin("duo")
def duo(retrieval_heads: int = -1, retrieval_fraction: float = 0.5, sink: int = 4, recent: int = 256,
        head_dim: int = 0, scale: float = 0.0, align: str = "bottom_right") -> Cascade:
    """DuoAttention: retrieval heads attend causally to all; streaming heads to sink + recent tokens.

    Heads ``h < R`` are retrieval heads, with ``R = retrieval_heads`` when given (>= 0), else
    ``floor(retrieval_fraction * H)``. Streaming heads see, causally, the first ``sink`` tokens
    (attention sinks) and the last ``recent`` tokens up to the query (``p - m < recent``), ``p``
    being the query's position (``align``).
    """
    if retrieval_heads < -1:
        raise SpecError(f"option retrieval_heads must be >= 0 (or -1 to use retrieval_fraction), "
                        f"got {retrieval_heads}")
    if not (math.isfinite(retrieval_fraction) and 0.0 <= retrieval_fraction <= 1.0):
        raise SpecError(f"option retrieval_fraction must be in [0, 1], got {retrieval_fraction}")
    if sink < 0:
        raise SpecError(f"option sink must be >= 0, got {sink}")
    if recent < 1:
        raise SpecError(f"option recent must be >= 1, got {recent}")
    if retrieval_heads >= 0:
        n_retrieval: sympy.Expr = sympy.Integer(retrieval_heads)
    else:
        n_retrieval = sympy.floor(sympy.Rational(str(retrieval_fraction)) * HEAD_EXTENT)
    def mask(b_, h, p, m):
        return (m <= p) & ((h < n_retrieval) | (m < sink) | (p - m < recent))
    return dsl.attention("duo", mask_mod=mask, scale=_scale(head_dim, scale), align=align)


__all__ = ["decode", "duo", "s2attn"]
