"""Work of each Einsum, read from the IR: iteration variables, operators per point, operand shapes.

Nothing here knows about designs. The number of operations is counted from the expression tree
(one node, one operator), with two rewrites that any compiler for a MAC array applies:

* a product summed over a rank is a chain of multiply-accumulates (``mul`` + ``add`` -> ``mac``);
* factors of a summed product that do not depend on the summed ranks are applied once per output
  element after the sum (``sum_e Q*K*0.125`` costs one ``mac`` per point and one ``mul`` per output),
  which is just distributivity.

Index-valued terms (an ALiBi bias ``slope*(m-p)``) cost one ``index`` op per point when they depend
on a rank index (they are generated incrementally along the rank); per-head constants are free.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import sympy

from einfuse.errors import SimulatorError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Binary, Const, Empty, Expr, IndexValue, Select, Unary, walk
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, size_symbol
from einfuse.ir.symzero import is_zero

_REDUCE_OP = {"sum": "add", "max": "max", "min": "min"}


@dataclass(frozen=True)
class OperandUse:
    """One tensor read by an Einsum: the iteration variables its indices use.

    ``final`` marks a read of the last element of an iterative rank (``RNV[M1,p,f]``): it happens
    after the recurrence, not inside it. ``carried`` marks a read of the previous iteration's value
    (``RM[m1,p]`` in ``RM[m1+1,p] = ...``)."""

    tensor: str
    vars: frozenset[str]
    final: bool = False
    carried: bool = False


@dataclass(frozen=True)
class EinsumWork:
    index: int
    name: str
    kind: str                        # contraction | reduction | map | init
    ivars: tuple[str, ...]           # iteration index names, output ones first
    out_vars: tuple[str, ...]
    reduced: tuple[str, ...]
    reduce: str | None
    per_point: Mapping[str, int]     # operator -> count per iteration point
    per_output: Mapping[str, int]    # operator -> count per output element (hoisted factors)
    operands: tuple[OperandUse, ...]
    where: sympy.Basic | None

    @property
    def ops(self) -> frozenset[str]:
        return frozenset(self.per_point) | frozenset(self.per_output)

    @property
    def macs_per_point(self) -> int:
        return int(self.per_point.get("mac", 0))


def _vars_of(e: Expr, ivars: set[sympy.Symbol]) -> set[sympy.Symbol]:
    out: set[sympy.Symbol] = set()
    for n in walk(e):
        if isinstance(n, Access):
            for i in n.indices:
                out |= i.free_symbols & ivars
        elif isinstance(n, IndexValue):
            out |= n.expr.free_symbols & ivars
        elif isinstance(n, Select):
            out |= n.cond.free_symbols & ivars
    return out


def _count_ops(e: Expr, ivars: set[sympy.Symbol], counts: Counter) -> None:
    for n in walk(e):
        if isinstance(n, Binary) and n.op == "div" and isinstance(n.right, Const):
            counts["mul"] += 1          # x / c: a multiply by the constant's reciprocal
        elif isinstance(n, (Binary, Unary)):
            counts[n.op] += 1
        elif isinstance(n, Select):
            counts["select"] += 1
        elif isinstance(n, IndexValue) and n.expr.free_symbols & ivars:
            counts["index"] += 1


def _factors(e: Expr) -> list[Expr]:
    if isinstance(e, Binary) and e.op == "mul":
        return _factors(e.left) + _factors(e.right)
    return [e]


def _is_iterative_write(c: Cascade, e: Einsum, ivars: set[sympy.Symbol]) -> bool:
    t = c.tensors[e.output.tensor]
    return any(r in t.iterative and not (i.free_symbols & ivars) for i, r in zip(e.output.indices, t.ranks))


def analyse_einsum(c: Cascade, i: int) -> EinsumWork:
    """Count the operators of Einsum ``i`` per iteration point and per output element."""
    e = c.einsums[i]
    ivars_all = set(c.index_vars())
    ivars = [str(s) for s in c.iteration_vars(e)]
    out_vars = tuple(str(s) for s in c.iteration_vars(e) if s in e.output_symbols())
    reduced = tuple(str(s) for s in c.reduced_vars(e))
    red_syms = set(c.reduced_vars(e))
    if isinstance(e.expr, (Empty, Const)) and _is_iterative_write(c, e, ivars_all):
        return EinsumWork(i, e.name, "init", tuple(ivars), out_vars, reduced, e.reduce,
                          MappingProxyType({}), MappingProxyType({}), (), e.where)
    per_point: Counter = Counter()
    per_output: Counter = Counter()
    kind = "map"
    if e.reduce == "sum" and red_syms:
        factors = _factors(e.expr)
        hoisted = [f for f in factors if not (_vars_of(f, ivars_all) & red_syms)]
        kept = [f for f in factors if f not in hoisted] or factors
        if len(kept) == len(factors):
            hoisted = []
        for f in hoisted:
            _count_ops(f, ivars_all, per_output)
            per_output["mul"] += 1
        for f in kept:
            _count_ops(f, ivars_all, per_point)
        if len(kept) >= 2:
            per_point["mul"] += len(kept) - 2   # one multiply fuses with the accumulate
            per_point["mac"] += 1
            kind = "contraction"
        else:
            per_point["add"] += 1
            kind = "reduction"
    else:
        _count_ops(e.expr, ivars_all, per_point)
        if e.reduce is not None and red_syms:
            per_point[_REDUCE_OP[e.reduce]] += 1
            kind = "reduction"
    operands = []
    for a in e.operands():
        vs = frozenset(str(s) for i_ in a.indices for s in i_.free_symbols if s in ivars_all)
        t = c.tensors[a.tensor]
        final = carried = False
        for idx, rank in zip(a.indices, t.ranks):
            if rank in t.iterative:
                if not idx.free_symbols & ivars_all:
                    final = True
                elif _same_recurrence(c, a):
                    carried = True
        operands.append(OperandUse(a.tensor, vs, final, carried))
    return EinsumWork(i, e.name, kind, tuple(ivars), out_vars, reduced, e.reduce,
                      MappingProxyType({k: v for k, v in per_point.items() if v}),
                      MappingProxyType({k: v for k, v in per_output.items() if v}),
                      tuple(operands), e.where)


def _same_recurrence(c: Cascade, a: Access) -> bool:
    """A read ``X[r]`` of an iterative tensor written at ``r+1`` is the previous iteration's value."""
    for j in c.producers(a.tensor):
        out = c.einsums[j].output
        for wi, ri in zip(out.indices, a.indices):
            if is_zero(wi - ri - 1):
                return True
    return False


def analyse(c: Cascade) -> list[EinsumWork]:
    return [analyse_einsum(c, i) for i in range(len(c.einsums))]


# ---- sizes ---------------------------------------------------------------------------------------

def resolve_sizes(c: Cascade, given: Mapping[str, int]) -> dict[str, int]:
    """Integer value of every size symbol and rank extent the cascade uses (params as defaults)."""
    sizes: dict[str, int] = {k: int(v) for k, v in c.params.items() if float(v).is_integer()}
    sizes.update({k: int(v) for k, v in given.items()})
    subs = {size_symbol(k): v for k, v in sizes.items()}
    for r in c.ranks.values():
        if r.name in sizes and r.is_default_extent:
            continue
        val = r.extent.subs(subs)
        if val.free_symbols:
            missing = sorted(str(s) for s in val.free_symbols)
            raise SimulatorError(f"cascade {c.name}: extent of rank {r.name} needs size(s) "
                                 f"{', '.join(missing)}; give them with --size {missing[0]}=... (in Python: workload(..., "
                                 f"sizes={{'{missing[0]}': ...}}))")
        sizes[r.name] = int(val)
    return sizes


def extent(c: Cascade, var: str, sizes: Mapping[str, int]) -> int:
    """Extent of the rank whose index variable is ``var``."""
    r = c.rank_of_index(sympy.Symbol(var, integer=True, nonnegative=True))
    if r is None:
        raise SimulatorError(f"cascade {c.name}: {var} is not a rank index")
    return sizes[r.name]


# ---- the cascade's own MAC count (independent of any mapping) -------------------------------------

def cascade_macs(c: Cascade, sizes: Mapping[str, int], limit: int = 1 << 24) -> int:
    """MACs the cascade performs for one batch element, over all ``H`` heads (``sizes["H"]``,
    default 1): points of every contraction's iteration space.

    Constraints, the presence they imply downstream, and reads past a rank's end (ragged tiles)
    remove points, exactly as in the reference executor; constrained spaces are enumerated per head
    (masks may depend on the head), so keep them under ``limit`` points.
    """
    sizes = resolve_sizes(c, sizes)
    total = 0
    memo: dict[str, sympy.Basic | None] = {}
    for w in analyse(c):
        if w.kind != "contraction":
            continue
        e = c.einsums[w.index]
        where = _and(e.where, _presence(c, e.expr, memo))
        heads = int(sizes.get("H", 1))
        if where is not None and HEAD_INDEX in where.free_symbols:
            total += w.macs_per_point * sum(_count_points(c, e, sizes, limit, where, h) for h in range(heads))
        else:
            total += w.macs_per_point * heads * _count_points(c, e, sizes, limit, where)
    return total


def _and(a: sympy.Basic | None, b: sympy.Basic | None) -> sympy.Basic | None:
    if a is None:
        return b
    return a if b is None else sympy.And(a, b)


def _presence(c: Cascade, e: Expr, memo: dict) -> sympy.Basic | None:
    """Where an expression is present (None: everywhere), following the reference executor's
    fibertree rules: ``* / -`` intersect, ``+ max min`` unite, unary operators pass presence on. A
    read inherits its producer's constraint when it uses the producer's own indices."""
    if isinstance(e, Access):
        prods = c.producers(e.tensor)
        if len(prods) != 1:
            return None
        p = c.einsums[prods[0]]
        if tuple(p.output.indices) != tuple(e.indices):
            return None
        if e.tensor not in memo:
            memo[e.tensor] = None            # cycles (recurrences) contribute nothing
            cond = _and(p.where, _presence(c, p.expr, memo))
            # a reduction's output is present where its condition holds only if the condition
            # does not depend on the reduced ranks (otherwise: where any reduced point is present)
            if cond is not None and cond.free_symbols & set(c.reduced_vars(p)):
                cond = None
            memo[e.tensor] = cond
        return memo[e.tensor]
    if isinstance(e, Binary):
        a, b = _presence(c, e.left, memo), _presence(c, e.right, memo)
        if e.op in ("mul", "div", "sub"):
            return _and(a, b)
        return None if a is None or b is None else sympy.Or(a, b)
    if isinstance(e, Unary):
        return _presence(c, e.arg, memo)
    return None


def _count_points(c: Cascade, e: Einsum, sizes: Mapping[str, int], limit: int,
                  where: sympy.Basic | None = None, head: int = 0) -> int:
    syms = c.iteration_vars(e)
    exts = [extent(c, str(s), sizes) for s in syms]
    dense = int(np.prod(exts, dtype=object)) if exts else 1
    bounds = _bound_checks(c, e)
    if where is None and not bounds:
        return dense
    if dense > limit:
        raise SimulatorError(f"Einsum {e.name}: {dense} constrained points is too many to enumerate")
    from einfuse.ir.symeval import evaluate

    grids = np.meshgrid(*[np.arange(n) for n in exts], indexing="ij", sparse=True)
    env: dict = {s: g for s, g in zip(syms, grids)}
    env.update({size_symbol(k): v for k, v in sizes.items()})
    env.update({BATCH_INDEX: 0, HEAD_INDEX: head})
    mask = np.ones(exts, dtype=bool)
    if where is not None:
        mask &= np.broadcast_to(evaluate(where, env), exts)
    for idx, ext_ in bounds:
        mask &= np.broadcast_to(evaluate(idx, env) < ext_(sizes), exts)
    return int(mask.sum())


def _bound_checks(c: Cascade, e: Einsum) -> list:
    """Composite input indices (``K[m1*M0+m0,e]``) that may run past the rank's end."""
    out = []
    ivars = set(c.index_vars())
    for a in e.operands():
        t = c.tensors[a.tensor]
        for idx, rank in zip(a.indices, t.ranks):
            if len(idx.free_symbols & ivars) > 1:
                out.append((idx, lambda s, r=rank: s[r]))
    return out
