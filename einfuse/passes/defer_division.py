"""Deferred division (FlashAttention-2's reassociation; FuseMax Eq. 31-32).

``A = SN / SD;  O = sum_m A * V``  becomes  ``SNV = sum_m SN * V;  O = SNV / SD``.

Valid whenever the divisor does not depend on the summed ranks (it factors out of the sum), the
normalised tensor is read only by that weighted sum, and the sum is a plain product. Presence is
preserved exactly: ``any_m(SN & SD & V) = SD & any_m(SN & V)`` because ``SD`` is constant in ``m``.
It removes one read-after-complete dependency (3 passes -> 2) and replaces ``M x P`` divisions by
``F x P``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Binary, binary, substitute
from einfuse.ir.tensor import Tensor
from einfuse.passes.rewrite import factors, finish, fresh_name, plain_indices, product, taken_names


@dataclass(frozen=True)
class _Site:
    norm: Einsum  # A = N / D
    wsum: Einsum  # W = sum_K A * ...


def _sites(c: Cascade) -> tuple[list[_Site], list[str]]:
    sites, why_not = [], []
    for a in c.einsums:
        ex = a.expr
        if a.reduce is not None or not (isinstance(ex, Binary) and ex.op == "div"):
            continue
        if not (isinstance(ex.left, Access) and isinstance(ex.right, Access)):
            continue
        if not plain_indices(a.output) or a.name in c.outputs or len(c.producers(a.name)) != 1:
            continue
        cons = c.consumers(a.name)
        if len(cons) != 1:
            why_not.append(f"{a.name} is read by {len(cons)} Einsums, not by one weighted sum")
            continue
        w = c.einsums[cons[0]]
        fs = factors(w.expr)
        hits = [f for f in fs if isinstance(f, Access) and f.tensor == a.name]
        if w.reduce != "sum" or len(hits) != 1 or sum(f == hits[0] for f in fs) != 1 or any(
                f is not hits[0] and a.name in _tensors(f) for f in fs):
            why_not.append(f"{w.name} is not a sum of products with one factor {a.name}")
            continue
        # the divisor, seen from W's indices, must not depend on anything W sums over
        mapping = dict(zip(a.output.indices, hits[0].indices))
        den = substitute(ex.right, mapping)
        reduced = set(c.reduced_vars(w))
        if any(reduced & sympy.sympify(i).free_symbols for i in den.indices):
            why_not.append(f"{ex.right.tensor} depends on a rank that {w.name} sums over")
            continue
        sites.append(_Site(a, w))
    return sites, why_not


def _tensors(e) -> set[str]:
    from einfuse.ir.expr import accesses

    return {x.tensor for x in accesses(e)}


def _defer(c: Cascade, site: _Site) -> Cascade:
    a, w = site.norm, site.wsum
    num, den = a.expr.left, a.expr.right
    hit = next(f for f in factors(w.expr) if isinstance(f, Access) and f.tensor == a.name)
    mapping = dict(zip(a.output.indices, hit.indices))
    num_w, den_w = substitute(num, mapping), substitute(den, mapping)
    stem = num.tensor
    first = "SNV" + stem[2:] if stem.startswith("SN") else f"{stem}V"
    name = fresh_name([first, f"{stem}V"], taken_names(c))
    where = w.where
    if a.where is not None:  # points A leaves out must stay out of the sum
        aw = a.where.subs(mapping)
        where = aw if where is None else sympy.And(where, aw)
    new_fs = [num_w if f is hit else f for f in factors(w.expr)]
    snv = Einsum(Access(name, w.output.indices), product(new_fs), "sum", where,
                 comment="deferred division: numerator times values")
    out = Einsum(w.output, binary("div", Access(name, w.output.indices), den_w), None, None,
                 comment=w.comment or "divide once per output element")
    new_t = Tensor(name, c.tensors[w.name].ranks, c.tensors[w.name].dtype)
    tensors = {(name if k == a.name else k): (new_t if k == a.name else v) for k, v in c.tensors.items()}
    einsums: list[Einsum] = []
    for e in c.einsums:
        if e is a:
            continue
        if e is w:
            einsums.extend([snv, out])
        else:
            einsums.append(e)
    return c.replace(einsums=tuple(einsums), tensors=tensors)


def defer_division_all(c: Cascade) -> tuple[Cascade, int]:
    """Apply every deferral the cascade admits; returns the cascade and how many were applied."""
    count = 0
    while True:
        sites, _ = _sites(c)
        if not sites:
            return (finish(c) if count else c), count
        c = _defer(c, sites[0])
        count += 1


def defer_division(c: Cascade) -> Cascade:
    """``A = N / D; O = sum A * V`` -> ``NV = sum N * V; O = NV / D`` wherever valid (2-pass form)."""
    out, count = defer_division_all(c)
    if not count:
        _, why_not = _sites(c)
        detail = "; ".join(why_not) if why_not else "no Einsum divides by a tensor and feeds a weighted sum"
        raise PassError(f"defer_division: nothing to defer in {c.name}: {detail}")
    return out


__all__ = ["defer_division", "defer_division_all"]
