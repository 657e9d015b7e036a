"""The backward plan of a chunked linear-attention plan (linear, lightning, DSL ``linear_attention``).

Forward, per (batch, query head ``h``; K/V head ``h // G`` under GQA)::

    fq[p,e] = phi_q(Q[p,e]) * scale      fk[m,e] = phi_k(K[m,e])
    A[m,p]  = fq[p,:].fk[m,:] * g(p - m)   where mask(p, m), else 0
    O[p,f]  = sum_m A[m,p] V[m,f]                       (normalised: / SD[p] = sum_m A[m,p])

Backward (the chain rule through the three lines; ``g`` multiplicative, so it splits at a chunk
boundary ``c0`` exactly as the forward's running state does: ``g(p - m) = g(p - c0) g(c0 - m)``)::

    dA[m,p]  = dO[p,:].V[m,:]                      (masked and decayed like A)
    dV[m,f]  = sum_p A[m,p] dO[p,f]
    dfq[p,e] = sum_m dA[m,p] g(p - m) fk[m,e]      dQ = dfq * scale * phi_q'(Q)
    dfk[m,e] = sum_p dA[m,p] g(p - m) fq[p,e]      dK = dfk * phi_k'(K)

Chunked (Lightning Attention-2's backward): the intra-chunk parts are the masked, decayed quadratic
products above restricted to one chunk; the inter-chunk parts read two running states,

* ``S[c]  = sum_{m < c0} g(c0 - m) fk[m] V[m]^T`` (the forward's state, recomputed by the forward's
  own states kernel), for ``dfq[p] += g(p - c0) dO[p] S[c]^T``;
* ``dS[c] = sum_{p >= c1} g(p - c1) fq[p] dO[p]^T`` (``c1`` the end of chunk ``c``), the reverse
  recurrence ``dS[c-1] = g(CHUNK) dS[c] + sum_{p in c} g(p - c0) fq[p] dO[p]^T`` carried from the
  last chunk backward, for ``dV[m] += g(c1 - m) fk[m] dS[c]`` and ``dfk[m] += g(c1 - m) V[m] dS[c]^T``.

The four decay factors are the forward's (intra ``g(p0 - m0)``, key ``g(P0 - m0)``, state
``g(P0)``, query ``g(p0)``), read from ``split_lightning``'s lowering at the backward's chunk;
the reverse state uses the query factor where the forward state uses the key factor. ``phi'`` is
the chain rule over the feature map's expression (:func:`einfuse.lowering.backward.score_derivative`).
Without a mask there is one state for the whole sequence and no decay. A normalised plan is the
unnormalised one with ``V`` widened by a column of ones (which yields ``SD``) and
``dO`` by ``-D[p] = -sum_f dO[p,f] O[p,f]`` after dividing both by ``SD[p]``; ``O`` and ``SD`` are
recomputed in float32 by the unnormalised forward kernels (``dO.V - D`` cancels). With GQA the K/V gradients sum over the query heads of the group.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from einfuse.errors import CodegenError
from einfuse.ir.expr import Access, Const, Expr, map_accesses
from einfuse.ir.ranks import KEY_INDEX, QUERY_INDEX
from einfuse.lowering.linear import LinearPlan
from einfuse.lowering.linear_split import DecayParts
from einfuse.lowering.plan import KernelPlan

DEFAULT_CHUNK = 64
"""Positions per chunk of the backward kernels (fla's chunk kernels use 64 too)."""


@dataclass(frozen=True)
class LinearBackwardPlan:
    """What the linear backward kernels are printed from: the forward's linear plan read at the
    backward's chunk, its decay factors, and the feature maps' derivatives."""

    name: str
    family: str
    forward: LinearPlan
    parts: DecayParts
    chunk: int
    dq_map: Expr | None
    """``phi_q'(x)`` over ``Access(x)`` (None: the identity map, derivative 1)."""
    dk_map: Expr | None
    steps: tuple[tuple[str, str], ...]

    @property
    def unnormalized(self) -> LinearPlan:
        """The forward plan without its normaliser (the kernels' plan; the normaliser is an extra
        value column, see the module docstring)."""
        return replace(self.forward, normalize=False)


def _map_derivative(fm: Expr | None) -> Expr | None:
    """``d phi(x) / dx`` of a feature map over one input access; None when it is the identity."""
    if fm is None:
        return None
    from einfuse.lowering.backward import score_derivative
    from einfuse.lowering.onepass import DOT

    leaf = Access(DOT, (KEY_INDEX, QUERY_INDEX))
    d = score_derivative(map_accesses(fm, lambda a: leaf))
    return None if isinstance(d, Const) and d.value == 1.0 else d


def linear_backward_plan(plan: KernelPlan, chunk: int = DEFAULT_CHUNK) -> LinearBackwardPlan:
    """The backward plan of a linear :class:`KernelPlan`; its decay factors are re-read from the
    forward cascade lowered at ``chunk`` positions per block (``split_lightning``, checked against
    the cascade's decay there)."""
    from einfuse.lowering.linear_split import LinearDetail
    from einfuse.lowering.lower import kernel_plan

    if plan.family != "linear" or not isinstance(plan.detail, LinearDetail):
        raise CodegenError(f"{plan.name}: linear_backward_plan takes a linear plan, not {plan.family}")
    if chunk < 16 or chunk & (chunk - 1):
        raise CodegenError(f"{plan.name}: backward chunk={chunk} must be a power of two >= 16")
    detail = plan.detail if plan.detail.state_block == chunk else kernel_plan(plan.source, state_block=chunk).detail
    lin = detail.plan
    causal = lin.causal
    steps: list[tuple[str, str]] = []
    if causal:
        steps += [
            ("states", "S[c] = state(P0) S[c-1] + sum_m0 key(m0) fk[m]^T V[m]: the forward's states kernel, "
                       "recomputed at the backward chunk"),
            ("dstates", "dS[c] = state(P0) dS[c+1] + sum_p0 query(p0) fq[p]^T dO[p], from the last chunk "
                        "backward (one per query head)"),
            ("dq", "per query chunk: dfq = ((dO V^T) * intra(p0, m0) masked) fk + query(p0) dO S[c]^T; "
                   "dQ = dfq * scale * phi_q'(Q)"),
            ("dkdv", "per key chunk and K/V head, over the query heads of the group: dV = (A^T dO) + "
                     "key(m0) fk dS[c], dfk = ((V dO^T) * intra masked) fq + key(m0) V dS[c]^T; "
                     "dK = dfk * phi_k'(K)"),
        ]
    else:
        steps += [
            ("states", "S = sum_m fk[m]^T V[m] over the whole sequence (the forward's states kernel)"),
            ("dstates", "dS = sum_p fq[p]^T dO[p] over the whole sequence"),
            ("dq", "dQ = (dO S^T) * scale * phi_q'(Q)"),
            ("dkdv", "dV = fk dS, dK = (V dS^T) * phi_k'(K), summed over the query heads of the group"),
        ]
    if lin.normalize:
        steps.insert(0, ("preprocess", "the unnormalised kernels on V' = [V, 1] in float32 recompute NV and "
                                       "SD[p], O = NV / SD; dO' = [dO / SD, -sum_f dO O / SD] (0 on rows with "
                                       "no visible key); the steps below run on V', dO' and dV = dV'[:, :F]"))
    if lin.decay is None:  # no decay: the factors are 1, leave them out of the text
        for f in ("state(P0) ", "key(m0) ", "query(p0) ", " * intra(p0, m0)", " * intra"):
            steps = [(k, w.replace(f, "")) for k, w in steps]
    return LinearBackwardPlan(plan.name, "linear", lin, detail.parts, chunk, _map_derivative(lin.q_map),
                              _map_derivative(lin.k_map), tuple(steps))


def format_linear_backward(bp: LinearBackwardPlan, indent: str = "") -> str:
    """The linear backward plan in readable text (``einfuse passes SPEC --backward``)."""
    from einfuse.ir.printer import format_expr
    from einfuse.lowering.onepass import DOT

    def fm(e: Expr | None, name: str) -> str:
        return name if e is None else format_expr(map_accesses(e, lambda a: Access(name, a.indices)))

    def dfm(e: Expr | None) -> str:
        return "1" if e is None else format_expr(e).replace(f"{DOT}[m,p]", "x")

    lin, parts = bp.forward, bp.parts
    lines = [f"{indent}backward plan {bp.name}: linear (chunked, reverse state recurrence), chunk {bp.chunk}",
             f"{indent}  weight    A[m,p] = fq[p].fk[m]{' * g(p - m)' if lin.decay is not None else ''}{' : ' + str(lin.mask) if lin.mask is not None else ''}"
             f"{', normalised by SD[p] = sum_m A[m,p]' if lin.normalize else ''}",
             f"{indent}  maps      fq = {fm(lin.q_map, 'Q')}{'' if lin.scale == 1 else f' * {lin.scale:g}'}, "
             f"fk = {fm(lin.k_map, 'K')};  "
             f"phi_q'(x) = {dfm(bp.dq_map)}, phi_k'(x) = {dfm(bp.dk_map)}",
             f"{indent}  decay     {'g = ' + str(lin.decay) if lin.decay is not None else 'none'}"]
    if lin.decay is not None:
        lines += [f"{indent}            intra(p0, m0) = {parts.intra}   key(m0) = {parts.key}",
                  f"{indent}            state = {parts.state}   query(p0) = {parts.query}   ({parts.source})"]
    for kernel, what in bp.steps:
        lines.append(f"{indent}  {kernel:<9} {what}")
    return "\n".join(lines)


__all__ = ["DEFAULT_CHUNK", "LinearBackwardPlan", "format_linear_backward", "linear_backward_plan"]
