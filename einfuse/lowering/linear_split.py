"""The four decay factors of the chunked kernel, read off the lightning-split cascade.

``split_lightning(c, block=B)`` (einfuse.passes.lightning) rewrites causal linear attention into

* ``BA[p1,p0,m0] = BQK[p1,p0,m0] * idx(intra(p0, m0))``        decay within a block,
* ``KB[p1,e,f] = K * V * idx(key(m0))``                          a block's keys decayed to its end,
* ``KV[p1+1,e,f] = KV[p1,e,f] * idx(state) + KB[p1,e,f]``          the running state,
* ``OX[p1,p0,f] = Q * KV[p1,e,f] * idx(query(p0))``              queries reading the state.

The kernel prints exactly these index values (in block-relative positions ``p0``, ``m0`` and the
block size ``P0``). When the pass refuses a cascade that the chunked schedule still runs exactly
(a multiplicative decay not written as ``exp(-s (p - m))``, or no mask at all), the same four factors
are derived from the cascade's own decay ``g(p - m)`` instead; either way they are cross-checked
against ``g`` numerically, so a disagreement between the pass and the analysis is an error, not a
silently different kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from einfuse.errors import CodegenError, EinfuseError
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import Access, IndexValue
from einfuse.ir.printer import format_einsum
from einfuse.ir.ranks import HEAD_EXTENT, HEAD_INDEX, index_symbol, size_symbol
from einfuse.ir.symeval import evaluate
from einfuse.lowering.linear import DIST, LinearPlan, product_factors

# canonical block-relative symbols the printed decay functions take
P0, M0 = index_symbol("P0"), index_symbol("M0")
BLOCK = size_symbol("P0")


@dataclass(frozen=True)
class DecayParts:
    """Decay factors over ``p0``/``m0`` (block-relative) and ``P0`` (block size); ``source`` says
    where they came from; ``einsums`` are the lines they were read from (for source comments)."""

    intra: sympy.Expr
    key: sympy.Expr
    state: sympy.Expr
    query: sympy.Expr
    source: str
    einsums: tuple[str, ...]


def _index_factor(c: Cascade, i: int) -> sympy.Expr:
    """Product of the IndexValue factors of Einsum i's expression (1 when it has none)."""
    e = c.einsums[i].expr
    terms = [e]
    if e.__class__.__name__ == "Binary" and getattr(e, "op", "") == "add":
        terms = [t for t in (e.left, e.right) if not isinstance(t, Access)]  # state_in + KB
    out = sympy.Integer(1)
    for t in terms:
        for f in product_factors(t):
            if isinstance(f, IndexValue):
                out = out * f.expr
    return out


def _from_lowered(low: Cascade) -> DecayParts:
    """Read the four factors of a ``split_lightning`` result (first weighted sum; others are equal)."""
    parts = {pp.parent: pp for pp in low.partitions}
    if "P" not in parts or "M" not in parts:
        raise CodegenError(f"{low.name}: lowered cascade lacks the P and M block partitions")
    p1, p0, m0 = (index_symbol(n) for n in (parts["P"].outer, parts["P"].inner, parts["M"].inner))
    block = size_symbol(parts["P"].inner)
    iterative = {t for t, d in low.tensors.items() if d.iterative}
    found: dict[str, int] = {}
    for i, ev in enumerate(low.einsums):
        idx = ev.output.indices
        if ev.output.tensor in iterative and idx and idx[0] == p1 + 1:
            found.setdefault("state", i)
        elif ev.output.tensor in iterative:
            continue
        elif ev.reduce is None and idx == (p1, p0, m0) and any(isinstance(f, IndexValue)
                                                              for f in product_factors(ev.expr)):
            found.setdefault("intra", i)
        elif any(a.tensor in iterative for a in ev.operands()) and idx[:2] == (p1, p0):
            found.setdefault("query", i)
        elif idx and idx[0] == p1 and m0 in {s for s in low.reduced_vars(ev)} and \
                any(k for k in low.einsums if k.output.tensor in iterative and ev.output.tensor in k.operand_tensors()):
            found.setdefault("key", i)
    missing = {"state", "query", "key"} - set(found)
    if missing:
        raise CodegenError(f"{low.name}: lowered cascade has no {', '.join(sorted(missing))} Einsum")
    ren = {p0: P0, m0: M0, block: BLOCK}
    get = lambda k: sympy.sympify(_index_factor(low, found[k]) if k in found else 1).subs(ren)
    lines = tuple(format_einsum(low, low.einsums[found[k]]) for k in ("intra", "key", "state", "query")
                  if k in found)
    return DecayParts(get("intra"), get("key"), get("state"), get("query"), "split_lightning", lines)


def _from_decay(plan: LinearPlan) -> DecayParts:
    g = plan.decay if plan.decay is not None else sympy.Integer(1)
    at = lambda d: sympy.sympify(g).subs(DIST, d)
    return DecayParts(at(P0 - M0), at(BLOCK - M0), at(BLOCK), at(P0), "cascade decay g(p - m)", ())


def _check(plan: LinearPlan, parts: DecayParts, block: int) -> None:
    """Each factor equals g at the matching distance, for every head of a few head counts."""
    g = plan.decay if plan.decay is not None else sympy.Integer(1)
    for H in (1, 4, 16):
        env = {HEAD_INDEX: np.arange(H, dtype=np.float64), HEAD_EXTENT: np.float64(H),
               BLOCK: np.float64(block)}
        for p0, m0 in ((0, 0), (5, 2), (block - 1, 0), (block - 1, block - 1)):
            e = {**env, P0: np.float64(p0), M0: np.float64(m0)}
            want = {"intra": p0 - m0, "key": block - m0, "state": block, "query": p0}
            for name, d in want.items():
                got = evaluate(getattr(parts, name), e) * np.ones(H)
                ref = evaluate(g, {**env, DIST: np.float64(d)}) * np.ones(H)
                if not np.allclose(got, ref, rtol=1e-9, atol=1e-300):
                    raise CodegenError(f"{plan.name}: {parts.source} gives {name} decay "
                                       f"{getattr(parts, name)}, which disagrees with the cascade's "
                                       f"decay {g} at distance {d}")


def lower_linear(c: Cascade, plan: LinearPlan, block: int) -> tuple[Cascade | None, DecayParts, str]:
    """(lowered cascade or None, decay factors, why) for a state block of ``block`` positions."""
    lowered, why = None, ""
    if plan.causal:
        try:
            from einfuse.passes.lightning import split_lightning

            lowered = split_lightning(c, block=block)
        except ImportError:
            why = "split_lightning unavailable"
        except EinfuseError as exc:
            why = f"split_lightning refused: {exc}"
    else:
        why = "no mask: one state for the whole sequence, nothing to split"
    parts = _from_lowered(lowered) if lowered is not None else _from_decay(plan)
    _check(plan, parts, block)
    return lowered, parts, why or "lowered by split_lightning"


@dataclass(frozen=True)
class LinearDetail:
    """What the linear kernels print from: the plan read from the cascade, the decay factors of its
    lowering, and the state block they were derived for."""

    plan: LinearPlan
    parts: DecayParts
    state_block: int
