"""Multi-stage built-ins written with :class:`~einfuse.frontends.dsl.CascadeBuilder`: Agent attention
(two chained softmax attentions) and BASED (Taylor linear attention plus sliding-window softmax).

Both reuse :func:`softmax_stage`, the naive 3-pass softmax of the FuseMax paper over any pair of
(key, query) ranks, with a name suffix so that several stages live in one cascade.
"""

from __future__ import annotations

import sympy

from einfuse.errors import SpecError
from einfuse.frontends.dsl import CascadeBuilder, default_scale, m, scale_factor
from einfuse.frontends.library import _scale, builtin
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import Access, Const, Expr, binary, unary
from einfuse.ir.positions import offset_params, query_position


def scaled_product(a: Access, b: Access, scale: float | None) -> Expr:
    """``a * b * scale``; ``scale=None`` is the default ``1/sqrt(E)`` of the head dimension."""
    factor = scale_factor(default_scale() if scale is None else scale)
    prod = binary("mul", a, b)
    return prod if factor is None else binary("mul", prod, factor)


def softmax_stage(cb: CascadeBuilder, suffix: str, score: Access, key_rank: str, query_rank: str,
                  value: Access, out: str, out_ranks: tuple[str, ...], output: bool = False) -> Access:
    """``out = softmax_over_keys(score) @ value``: Einsums ``GM, SN, SD, A`` + suffix, then ``out``.

    ``score`` is indexed ``[key, query]``; ``value`` by the key rank and the output's value rank.
    """
    gm = cb.einsum(f"GM{suffix}", (query_rank,), score, reduce="max", comment="pass 1: global max")
    sn = cb.einsum(f"SN{suffix}", (key_rank, query_rank), unary("exp", binary("sub", score, gm)),
                   reduce=None, comment="pass 2: numerator")
    sd = cb.einsum(f"SD{suffix}", (query_rank,), sn, comment="denominator")
    a = cb.einsum(f"A{suffix}", (key_rank, query_rank), binary("div", sn, sd), reduce=None,
                  comment="pass 3: normalise")
    return cb.einsum(out, out_ranks, binary("mul", a, value), output=output)


@builtin("agent")
def agent(head_dim: int = 0, scale: float = 0.0) -> Cascade:
    """Agent attention: N agent tokens AG attend to K/V, then the queries attend to the agents.

    Stage 1 (agent aggregation): ``AV1 = softmax(AG K^T * scale) V`` (``[N,F]``); stage 2 (agent
    broadcast): ``O = softmax(Q AG^T * scale) AV1``. ``AG[N,E]`` is an input (in the paper, pooled
    queries); the paper's position biases and depth-wise convolution are not part of this cascade.
    Cost is linear in the sequence length for a fixed number of agents N.
    """
    sc = _scale(head_dim, scale)
    cb = CascadeBuilder("agent")
    cb.attrs["family"] = "agent"
    q, k = cb.input("Q", "P", "E"), cb.input("K", "M", "E")
    v = cb.input("V", "M", "F")
    ag = cb.input("AG", "N", "E")
    s1 = cb.einsum("QK1", ("M", "N"), scaled_product(ag, k, sc), comment="stage 1: agents x keys")
    av1 = softmax_stage(cb, "1", s1, "M", "N", v, "AV1", ("N", "F"))
    s2 = cb.einsum("QK2", ("N", "P"), scaled_product(q, ag, sc), comment="stage 2: queries x agents")
    softmax_stage(cb, "2", s2, "N", "P", av1, "O", ("P", "F"), output=True)
    return cb.build()


@builtin("based")
def based(window: int = 64, head_dim: int = 0, scale: float = 0.0, align: str = "bottom_right") -> Cascade:
    """BASED: causal normalised Taylor linear attention (1 + s + s^2/2) plus sliding-window softmax.

    With ``s = q.k * scale`` the linear branch is ``LO = sum_{m<=p} T V / sum_{m<=p} T`` with
    ``T = 1 + s + s^2/2`` (the 2nd-order Taylor kernel of exp, always > 0), written quadratically
    here. The window branch is causal softmax attention over ``p - window < m <= p``. The output is
    the **sum** of the two branches, ``O = LO + WO`` (BASED stacks the two as separate layers; one
    cascade with both lets passes fuse them). Both branches read the same Q and K. ``p`` is the
    query's position (``align``, einfuse.ir.positions).
    """
    if window < 1:
        raise SpecError(f"option window must be >= 1, got {window}")
    sc = _scale(head_dim, scale)
    cb = CascadeBuilder("based")
    cb.params.update(offset_params(align))
    cb.attrs["family"] = "based"
    qpos = query_position(align)
    q, k = cb.input("Q", "P", "E"), cb.input("K", "M", "E")
    v = cb.input("V", "M", "F")
    causal = m <= qpos
    s = cb.einsum("LQK", ("M", "P"), scaled_product(q, k, sc), where=causal, comment="linear branch scores")
    # the constraint is repeated on T: `1 + s` would otherwise make masked points present (union rule)
    taylor = binary("add", binary("add", Const(1.0), s), binary("mul", binary("mul", s, s), Const(0.5)))
    t = cb.einsum("T", ("M", "P"), taylor, reduce=None, where=causal, comment="Taylor kernel 1 + s + s^2/2")
    lsd = cb.einsum("LSD", ("P",), t, comment="normaliser")
    lnv = cb.einsum("LNV", ("P", "F"), binary("mul", t, v))
    lo = cb.einsum("LO", ("P", "F"), binary("div", lnv, lsd), reduce=None)
    w = cb.einsum("QK", ("M", "P"), scaled_product(q, k, sc),
                  where=causal & (qpos - m < sympy.Integer(window)),
                  comment="window branch scores")
    wo = softmax_stage(cb, "", w, "M", "P", v, "WO", ("P", "F"))
    cb.einsum("O", ("P", "F"), binary("add", lo, wo), reduce=None, output=True, comment="sum of branches")
    return cb.build()


__all__ = ["agent", "based", "scaled_product", "softmax_stage"]
