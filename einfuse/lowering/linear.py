"""Read a linear-attention cascade into the facts its chunked (Lightning Attention-2) kernel needs.

The cascade is the quadratic form the DSL writes (``QK[m,p] = phi(Q)[p,e] * phi(K)[m,e] : m <= p``,
optional ``A[m,p] = QK[m,p] * idx(decay(p, m, h))``, ``O[p,f] = A[m,p] * V[m,f]``, optionally divided
by the normaliser ``SD[p] = sum_m A[m,p]``). Nothing here knows the Lightning formula: the decay is
whatever index-valued factor the cascade multiplies the score by. The chunked schedule is exact only
when that factor ``g(p, m)`` depends on ``d = p - m`` alone and is multiplicative,
``g(d1 + d2) = g(d1) g(d2)`` with ``g(0) = 1`` (then a running state decays by ``g(chunk)`` per chunk);
both facts are checked here, symbolically for the shift and numerically for the product, and a
cascade that breaks them is refused with a :class:`CodegenError` rather than miscompiled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy

from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Binary, Const, Expr, IndexValue, map_accesses, substitute
from einfuse.ir.printer import format_einsum
from einfuse.ir.ranks import HEAD_EXTENT, HEAD_INDEX, KEY_INDEX, QUERY_INDEX
from einfuse.ir.symeval import evaluate

P_IDX, M_IDX = QUERY_INDEX, KEY_INDEX
DIST = sympy.Symbol("d", integer=True)
SCORE_LEAF = "__score__"
_KERNEL_SYMBOLS = {DIST, HEAD_INDEX, HEAD_EXTENT}


@dataclass(frozen=True)
class LinearPlan:
    """What the linear kernels are generated from.

    ``q_map``/``k_map`` are feature maps as expressions over ``Access(q, ...)``/``Access(k, ...)``
    (None for identity); ``decay`` is ``g(d)`` over ``d``, ``h`` and ``H`` (None: no decay);
    ``mask`` is the score constraint over ``p``, ``m`` (None: every key visible).
    """

    name: str
    q: str
    k: str
    v: str
    q_map: Expr | None
    k_map: Expr | None
    scale: float
    decay: sympy.Expr | None
    mask: sympy.Basic | None
    causal: bool
    normalize: bool
    einsums: tuple[str, ...]


def product_factors(e: Expr) -> list[Expr]:
    """The factors of a product tree (a non-product is its own single factor)."""
    if isinstance(e, Binary) and e.op == "mul":
        return product_factors(e.left) + product_factors(e.right)
    return [e]


def inline_elementwise(c: Cascade, e: Expr, stop: set[str],
                       wheres: list[sympy.Basic] | None = None) -> Expr:
    """Replace reads of intermediates produced by non-reducing Einsums with their definitions.

    Reads of tensors in ``stop`` (and of inputs or reducing Einsums' outputs) are left in place.
    An inlined Einsum's constraint removes points; it is appended to ``wheres`` (the caller ANDs it
    into the mask), or refused when the caller passes no list.
    """
    def repl(a: Access) -> Expr:
        if a.tensor in stop or a.tensor in c.inputs:
            return a
        prods = c.producers(a.tensor)
        if len(prods) != 1:
            return a
        ev = c.einsums[prods[0]]
        if c.reduced_vars(ev):
            return a
        mapping = {o: i for o, i in zip(ev.output.indices, a.indices)}
        if ev.where is not None:
            if wheres is None:
                raise CodegenError(f"Einsum {ev.name} has a constraint; only the score Einsum may carry one")
            wheres.append(ev.where.subs(mapping))
        return inline_elementwise(c, substitute(ev.expr, mapping), stop, wheres)
    return map_accesses(e, repl)


def _find_score(c: Cascade) -> Einsum:
    """The Einsum that contracts queries with keys: output over (m, p), a sum over one rank."""
    found = [ev for ev in c.einsums if ev.reduce == "sum" and len(c.reduced_vars(ev)) == 1
             and set(ev.output.indices) == {P_IDX, M_IDX}]
    if len(found) != 1:
        raise CodegenError(f"{c.name}: expected one score Einsum X[m,p] = Q[p,e] * K[m,e]; found "
                           f"{len(found)}")
    return found[0]


def _operand(c: Cascade, a: Access, pos: sympy.Symbol, red: sympy.Symbol, what: str) -> tuple[str, Expr | None]:
    """The input behind a score operand and its feature map (an expression over that input)."""
    if a.indices != (pos, red):
        raise CodegenError(f"score operand {a.tensor} must be read as {a.tensor}[{pos},{red}]")
    if a.tensor in c.inputs:
        return a.tensor, None
    fm = inline_elementwise(c, a, set())
    leaves = {x.tensor for x in _accesses(fm)}
    if len(leaves) != 1 or next(iter(leaves)) not in c.inputs:
        raise CodegenError(f"{what} feature map {a.tensor} must be an elementwise function of one input")
    for x in _accesses(fm):
        if x.indices != (pos, red):
            raise CodegenError(f"{what} feature map {a.tensor} must read its input at [{pos},{red}]")
    return next(iter(leaves)), fm


def _accesses(e: Expr) -> list[Access]:
    from einfuse.ir.expr import accesses

    return accesses(e)


def _split_weight(c: Cascade, e: Expr, score: str) -> sympy.Expr:
    """Write ``e`` as ``score * g(indices)``; returns g (1 when there is no factor)."""
    g: sympy.Expr = sympy.Integer(1)
    seen = 0
    for f in product_factors(e):
        if isinstance(f, Access) and f.tensor == score and f.indices == (M_IDX, P_IDX):
            seen += 1
        elif isinstance(f, IndexValue):
            g = g * f.expr
        elif isinstance(f, Const) and math.isfinite(f.value):
            g = g * sympy.nsimplify(f.value) if float(f.value).is_integer() else g * sympy.Float(f.value)
        else:
            raise CodegenError(f"{c.name}: the attention weight must be the score times an index-valued "
                               f"factor (a decay); found a factor {f!r}")
    if seen != 1:
        raise CodegenError(f"{c.name}: the attention weight must use the score exactly once")
    return g


def _weight_and_value(c: Cascade, ev: Einsum, score: str) -> tuple[sympy.Expr, str]:
    """For ``X[p,f] = sum_m W[m,p] * V[m,f]``: (g of the weight, V's name)."""
    if ev.reduce != "sum" or c.reduced_vars(ev) != [M_IDX]:
        raise CodegenError(f"{c.name}: Einsum {ev.name} must sum over m")
    facs = product_factors(inline_elementwise(c, ev.expr, {score}))
    vals = [f for f in facs if isinstance(f, Access) and f.tensor in c.inputs]
    if len(vals) != 1 or vals[0].indices[0] != M_IDX:
        raise CodegenError(f"{c.name}: Einsum {ev.name} must multiply the weight by one value input V[m,f]")
    rest = [f for f in facs if f is not vals[0]]
    weight: Expr = rest[0]
    for f in rest[1:]:
        weight = Binary("mul", weight, f)
    return _split_weight(c, weight, score), vals[0].tensor


def _decay_of(c: Cascade, g: sympy.Expr) -> tuple[float, sympy.Expr | None]:
    """Split the weight factor into a constant scale and a decay g(d) with g(0) = 1."""
    g = sympy.sympify(g).subs({sympy.Symbol(k, integer=True, positive=True): v for k, v in c.params.items()})
    if not g.free_symbols & {P_IDX, M_IDX}:
        if g.free_symbols:
            raise CodegenError(f"{c.name}: a weight factor {g} that depends on {g.free_symbols} but not on "
                               "p - m is not supported by the linear kernels")
        return float(g), None
    gd = sympy.simplify(g.subs(P_IDX, M_IDX + DIST))
    if M_IDX in gd.free_symbols:
        raise CodegenError(f"{c.name}: decay {g} is not a function of p - m; the chunked linear kernel "
                           "needs a shift-invariant decay")
    extra = gd.free_symbols - _KERNEL_SYMBOLS
    if extra:
        raise CodegenError(f"{c.name}: decay {g} uses {', '.join(map(str, extra))}; only p - m, h and H "
                           "are available to the kernel")
    _check_multiplicative(c, gd)
    return 1.0, gd


def _check_multiplicative(c: Cascade, gd: sympy.Expr) -> None:
    """g(0) = 1 and g(a + b) = g(a) g(b) at sample points: what makes a chunked state exact."""
    def at(d: int, H: int) -> np.ndarray:
        hs = np.arange(H, dtype=np.float64)
        return evaluate(gd, {HEAD_INDEX: hs, HEAD_EXTENT: np.float64(H), DIST: np.float64(d)}) * np.ones(H)

    for H in (1, 2, 3, 8, 16):
        if not np.allclose(at(0, H), 1.0, rtol=1e-12, atol=0):
            raise CodegenError(f"{c.name}: decay {gd} is not 1 at p = m")
        for a, b in ((1, 2), (3, 5), (7, 64), (64, 64)):
            if not np.allclose(at(a + b, H), at(a, H) * at(b, H), rtol=1e-9, atol=1e-300):
                raise CodegenError(f"{c.name}: decay {gd} is not multiplicative in p - m "
                                   "(g(a+b) != g(a) g(b)); the chunked state cannot carry it")


def _classify_mask(c: Cascade, where: sympy.Basic | None) -> tuple[sympy.Basic | None, bool]:
    """(mask, causal): causal masks keep every past key and no future key; None keeps all."""
    if where is None:
        return None, False
    extra = where.free_symbols - {P_IDX, M_IDX}
    if extra:
        raise CodegenError(f"{c.name}: score constraint {where} depends on {', '.join(map(str, extra))}; "
                           "linear kernels support no mask, m <= p or m < p")
    n = np.arange(0, 130, dtype=np.float64)
    pp, mm = n[:, None], n[None, :]
    keep = np.broadcast_to(evaluate(where, {P_IDX: pp, M_IDX: mm}).astype(bool), (n.size, n.size))
    if keep.all():
        return None, False
    if keep[mm < pp].all() and not keep[mm > pp].any():
        return where, True
    raise CodegenError(f"{c.name}: score constraint {where} is neither causal nor empty; the chunked "
                       "linear kernel needs every earlier key visible and no later one")


def analyse_linear(c: Cascade) -> LinearPlan:
    """The :class:`LinearPlan` of a linear-attention cascade, or a CodegenError saying why not."""
    if c.attrs.get("family") != "linear":
        raise CodegenError(f"{c.name}: build_linear needs a linear-attention cascade "
                           f"(attrs family = linear), got family {c.attrs.get('family')!r}")
    if len(c.outputs) != 1:
        raise CodegenError(f"{c.name}: expected one output, got {len(c.outputs)}")
    score = _find_score(c)
    (mv,) = c.reduced_vars(score)
    facs = product_factors(score.expr)
    qa = [f for f in facs if isinstance(f, Access) and f.indices and f.indices[0] == P_IDX]
    ka = [f for f in facs if isinstance(f, Access) and f.indices and f.indices[0] == M_IDX]
    consts = [f for f in facs if isinstance(f, Const)]
    if len(qa) != 1 or len(ka) != 1 or len(qa) + len(ka) + len(consts) != len(facs):
        raise CodegenError(f"{c.name}: score Einsum {score.name} must be Q[p,e] * K[m,e] (times constants)")
    q, q_map = _operand(c, qa[0], P_IDX, mv, "query")
    k, k_map = _operand(c, ka[0], M_IDX, mv, "key")
    scale = float(np.prod([f.value for f in consts])) if consts else 1.0

    out = c.einsums[c.producers(c.outputs[0])[0]]
    normalize = False
    if out.reduce is None and isinstance(out.expr, Binary) and out.expr.op == "div":
        num, den = out.expr.left, out.expr.right
        if not (isinstance(num, Access) and isinstance(den, Access)):
            raise CodegenError(f"{c.name}: normalised output must be NV[p,f] / SD[p]")
        g_num, v = _weight_and_value(c, c.einsums[c.producers(num.tensor)[0]], score.name)
        sd = c.einsums[c.producers(den.tensor)[0]]
        if sd.reduce != "sum" or c.reduced_vars(sd) != [M_IDX]:
            raise CodegenError(f"{c.name}: normaliser {sd.name} must sum the weight over m")
        g_den = _split_weight(c, inline_elementwise(c, sd.expr, {score.name}), score.name)
        if sympy.simplify(g_num - g_den) != 0:
            raise CodegenError(f"{c.name}: numerator and normaliser use different weights")
        g, normalize = g_num, True
    else:
        g, v = _weight_and_value(c, out, score.name)
    wscale, decay = _decay_of(c, g)
    mask, causal = _classify_mask(c, score.where)
    if decay is not None and not causal:
        raise CodegenError(f"{c.name}: a decay needs a causal mask (m <= p) in the linear kernels")
    return LinearPlan(c.name, q, k, v, q_map, k_map, scale * wscale, decay, mask, causal, normalize,
                      tuple(format_einsum(c, ev) for ev in c.einsums))
