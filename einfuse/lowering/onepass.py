"""Read a softmax/sigmoid-family cascade into the few facts a one-pass attention kernel needs.

The generator does not pattern-match variant names: it walks the cascade. Starting from the
normalisation (the ``exp(X - Y)`` whose ``Y`` is a running or global max, a ``sigmoid(X)``, or the
weights ``W`` of a normalised weighted sum ``(sum_m W*V) / (sum_m W)``, family "normsum"), it
inlines ``X``'s producers Einsum by Einsum until it reaches the one Einsum that reduces over the head
dimension with ``Q`` and ``K`` operands (the ``Q.K`` product). What remains is the *score
expression*: a value expression over the dot product (the leaf :data:`DOT`) and index values of
``p``, ``m``, ``h``, ``b``. The ``where`` constraints met on the way make up the *mask predicate*.

Tiled and fused cascades (``fuse_online_softmax``: ``BQK[m1,m0,p] = Q[p,e] * K[m1*M0+m0,e]``)
read the same way: partitioned indices are folded back (``m1*M0 + m0`` -> ``m``) so the kernel
sees the logical query and key positions, whatever tile the pass chose.

Every Einsum also gets a *role* (score, max, numerator, correction, sum, pv, activation, final) so
the emitted kernel can print each Einsum as a comment above the code that implements it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import (
    Access,
    Binary,
    Const,
    Expr,
    IndexValue,
    Select,
    Unary,
    binary,
    map_accesses,
    substitute,
    walk,
)
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, KEY_INDEX, QUERY_INDEX, index_symbol, size_symbol
from einfuse.ir.symzero import is_zero

DOT = "__dot__"
"""Leaf tensor name standing for ``sum_e Q[p,e] * K[m,e]`` in a score expression."""

P_SYM, M_SYM = QUERY_INDEX, KEY_INDEX


@dataclass(frozen=True)
class OnePassPlan:
    """What the one-pass kernel skeleton needs to know about a softmax/sigmoid cascade.

    ``score`` is over ``Access(DOT, (m, p))`` and index values of ``p`` (query position), ``m`` (key
    position), ``h``, ``b`` and size symbols; ``mask`` is the conjunction of the constraints met
    between the ``Q.K`` product and the normalisation (None when every point is kept).
    """

    name: str
    family: str
    score: Expr
    mask: sympy.Basic | None
    q: str
    k: str
    v: str
    output: str
    head_rank: str
    value_rank: str
    params: dict[str, float]
    roles: tuple[tuple[str, str], ...] = field(default=())
    """(role, formatted Einsum line) in cascade order, for comments in the generated code."""

    @property
    def plain_scale(self) -> float | None:
        """``c`` when the score is just ``c * dot`` (the fast path folds ``c * log2 e`` once)."""
        return plain_scale(self.score)

    def mask_uses(self, sym: sympy.Symbol) -> bool:
        return self.mask is not None and sym in self.mask.free_symbols


def plain_scale(score: Expr) -> float | None:
    if isinstance(score, Access) and score.tensor == DOT:
        return 1.0
    if isinstance(score, Binary) and score.op == "mul":
        for a, b in ((score.left, score.right), (score.right, score.left)):
            if isinstance(a, Access) and a.tensor == DOT and isinstance(b, Const):
                return b.value
    return None


def analyze(c: Cascade) -> OnePassPlan:
    """The :class:`OnePassPlan` of a softmax or sigmoid attention cascade (naive, tiled or fused)."""
    if len(c.outputs) != 1:
        raise CodegenError(f"cascade {c.name}: the Triton generator needs exactly one output, got "
                           f"{', '.join(c.outputs) or 'none'}")
    tracer = _ScoreTracer(c)
    family, score_access, norm_idx = _find_normalisation(c, tracer)
    score = tracer.inline(score_access)
    if tracer.dot is None:
        raise CodegenError(f"cascade {c.name}: the normalised score does not come from a Q.K product")
    q, k, e_rank, q_idx, k_idx = tracer.dot
    # fold partitioned indices back into logical positions, then name them p and m
    folding = _unpartition(c, {q_idx: P_SYM, k_idx: M_SYM})
    score = _subst(score, folding)
    masks = [w.subs(folding, simultaneous=True) for w in tracer.wheres]
    mask = _drop_bounds(sympy.And(*masks)) if masks else None
    if mask is sympy.true:
        mask = None
    if mask is sympy.false:
        raise CodegenError(f"cascade {c.name}: the mask removes every (query, key) pair")
    v, f_rank = _value_input(c, q, k, folding)
    _check_symbols(c, score, mask, (e_rank, f_rank))
    roles = _roles(c, tracer.chain, norm_idx)
    return OnePassPlan(c.name, family, score, mask, q, k, v, c.outputs[0], e_rank, f_rank,
                         dict(c.params), roles)


# ---- normalisation -------------------------------------------------------------------------------

def _find_normalisation(c: Cascade, tracer: _ScoreTracer) -> tuple[str, Access, int]:
    """(family, the access of the normalised score, index of the normalising Einsum)."""
    found = _find_normalised_sum(c, tracer)
    if found is not None:
        return found
    maxish = {e.output.tensor for e in c.einsums if e.reduce == "max"
              or (isinstance(e.expr, Binary) and e.expr.op == "max")}
    for i, e in enumerate(c.einsums):
        for node in walk(e.expr):
            if isinstance(node, Unary) and node.op == "exp" and isinstance(node.arg, Binary) \
                    and node.arg.op == "sub" and isinstance(node.arg.left, Access) \
                    and isinstance(node.arg.right, Access) and node.arg.right.tensor in maxish \
                    and tracer.reaches_dot(node.arg.left):
                if not any(isinstance(x.expr, Binary) and x.expr.op == "div" for x in c.einsums):
                    raise CodegenError(f"Einsum {e.name}: exp(score - max) is never divided by its sum; "
                                       "the kernel supports normalised softmax only")
                return "softmax", node.arg.left, i
    # sigmoid attention only when no softmax normalises the score (a sigmoid inside a score_mod,
    # SiLU s * sigmoid(s), is part of the score): the last sigmoid of the chain, outermost first
    for i, e in reversed(list(enumerate(c.einsums))):
        for node in walk(e.expr):
            if isinstance(node, Unary) and node.op == "sigmoid":
                arg = node.arg
                if tracer.reaches_dot_expr(arg):
                    # sigmoid(expr): make the argument a virtual score tensor for the tracer
                    return "sigmoid", tracer.virtual(e, arg), i
    fam = c.attrs.get("family", "?")
    raise CodegenError(f"cascade {c.name} (family {fam}): no softmax (exp(score - max) with a max "
                       "reduction) or sigmoid normalisation of a Q.K score found; linear-family cascades "
                       "go through einfuse.codegen.triton.linear")


def _sum_over_one(c: Cascade, t: str) -> Einsum | None:
    """The Einsum producing ``t`` when it is the only one, a sum over one rank, with no constraint."""
    prods = c.producers(t)
    if len(prods) != 1 or c.tensors[t].iterative:
        return None
    e = c.einsums[prods[0]]
    if e.reduce != "sum" or len(c.reduced_vars(e)) != 1 or e.where is not None:
        return None
    return e


def _find_normalised_sum(c: Cascade, tracer: _ScoreTracer) -> tuple[str, Access, int] | None:
    """The "normalised weighted sum" ``O = (sum_m W*V) / (sum_m W)`` with ``W`` an elementwise function
    of the Q.K score (Based's Taylor branch): weights need no max, so the kernel keeps a running sum
    of ``W`` next to the ``W.V`` accumulator and divides once at the end."""
    for e in c.einsums:
        x = e.expr
        if not (isinstance(x, Binary) and x.op == "div" and isinstance(x.left, Access)
                and isinstance(x.right, Access)) or c.reduced_vars(e):
            continue
        num, den = _sum_over_one(c, x.left.tensor), _sum_over_one(c, x.right.tensor)
        if num is None or den is None or not isinstance(den.expr, Access):
            continue
        w = den.expr
        factors = _product_factors(num.expr)
        if factors is None or len(factors) != 2 or w not in factors:
            continue
        other = factors[1] if factors[0] == w else factors[0]
        if not (isinstance(other, Access) and other.tensor in c.inputs):
            continue
        if c.reduced_vars(num) != c.reduced_vars(den) or w.tensor in c.inputs:
            continue
        prods = c.producers(w.tensor)
        if len(prods) != 1:
            continue
        w_e = c.einsums[prods[0]]
        if w.indices != w_e.output.indices or not tracer.reaches_dot(w):
            continue
        return "normsum", w, prods[0]
    return None


class _ScoreTracer:
    """Inlines elementwise producers of the score down to the Q.K product."""

    def __init__(self, c: Cascade) -> None:
        self.c = c
        self.wheres: list[sympy.Basic] = []
        self.chain: set[int] = set()
        self.dot: tuple[str, str, str, sympy.Expr, sympy.Expr] | None = None
        self._virtual: dict[str, tuple[Einsum, Expr]] = {}

    def virtual(self, e: Einsum, arg: Expr) -> Access:
        name = f"__arg_{e.name}"
        self._virtual[name] = (e, arg)
        return Access(name, e.output.indices)

    def reaches_dot(self, a: Access) -> bool:
        probe = _ScoreTracer(self.c)
        try:
            probe.inline(a)
        except CodegenError:
            return False
        return probe.dot is not None

    def reaches_dot_expr(self, expr: Expr) -> bool:
        return any(isinstance(n, Access) and self.reaches_dot(n) for n in walk(expr))

    def inline(self, a: Access) -> Expr:
        c = self.c
        if a.tensor in self._virtual:
            e, arg = self._virtual[a.tensor]
            self.chain.add(c.einsums.index(e))
            if e.where is not None:
                self.wheres.append(e.where)
            return map_accesses(arg, self.inline)
        if a.tensor in c.inputs:
            raise CodegenError(f"input {a.tensor} is used in the score outside the Q.K product; "
                               "the Triton generator supports Q, K, V inputs only")
        prods = c.producers(a.tensor)
        if len(prods) != 1:
            raise CodegenError(f"tensor {a.tensor}: the score must be computed by one Einsum "
                               f"(found {len(prods)})")
        e = c.einsums[prods[0]]
        if c.tensors[a.tensor].iterative:
            raise CodegenError(f"tensor {a.tensor}: a running (iterative) tensor is not a score")
        mapping = {}
        for oi, ai in zip(e.output.indices, a.indices):
            if not isinstance(oi, sympy.Symbol):
                raise CodegenError(f"Einsum {e.name}: output index {oi} must be a plain index")
            mapping[oi] = ai
        self.chain.add(prods[0])
        if c.reduced_vars(e):
            return self._dot(e, mapping)
        if e.where is not None:
            self.wheres.append(_subst_sym(e.where, mapping))
        return map_accesses(_subst(e.expr, mapping), self.inline)

    def _dot(self, e: Einsum, mapping: dict) -> Expr:
        c = self.c
        red = c.reduced_vars(e)
        if e.reduce != "sum" or len(red) != 1:
            raise CodegenError(f"Einsum {e.name}: expected the score product sum_e Q[p,e]*K[m,e]; it "
                               f"reduces {e.reduce} over {', '.join(map(str, red))}")
        (evar,) = red
        factors = _product_factors(e.expr)
        if factors is None:
            raise CodegenError(f"Einsum {e.name}: the score product must be a product of Q, K and "
                               "constants")
        accs = [f for f in factors if isinstance(f, Access)]
        others = [f for f in factors if not isinstance(f, Access)]
        if len(accs) != 2 or any(a.tensor not in c.inputs for a in accs):
            raise CodegenError(f"Einsum {e.name}: the score product needs exactly two input operands "
                               f"(Q and K), got {', '.join(a.tensor for a in accs)}")
        q = k = None
        for a in accs:
            if len(a.indices) != 2 or a.indices[1] != evar:
                raise CodegenError(f"Einsum {e.name}: operand {a.tensor} must be indexed [position, "
                                   f"{evar}]")
            pos_syms = {s for s in a.indices[0].free_symbols if s in c.index_vars()}
            out_syms = e.output_symbols()
            if not pos_syms <= out_syms:
                raise CodegenError(f"Einsum {e.name}: operand {a.tensor} index {a.indices[0]}")
        # the query operand is the one whose position is the output's last index (QK[m,p])
        out_last = e.output.indices[-1].free_symbols
        for a in accs:
            if {s for s in a.indices[0].free_symbols if s in c.index_vars()} <= out_last and q is None:
                q = a
            else:
                k = a
        if q is None or k is None:
            raise CodegenError(f"Einsum {e.name}: cannot tell the query from the key operand")
        for o in others:
            if evar in _expr_symbols(o):
                raise CodegenError(f"Einsum {e.name}: factor {o} depends on the head dimension {evar}")
        if e.where is not None:
            self.wheres.append(_subst_sym(e.where, mapping))
        q_idx = _subst_sym(q.indices[0], mapping)
        k_idx = _subst_sym(k.indices[0], mapping)
        if self.dot is not None and (self.dot[3], self.dot[4]) != (q_idx, k_idx):
            raise CodegenError(f"Einsum {e.name}: the score reads the Q.K product at two positions")
        e_rank = c.rank_of_index(evar).name
        self.dot = (q.tensor, k.tensor, e_rank, q_idx, k_idx)
        out: Expr = Access(DOT, (k_idx, q_idx))
        for o in others:
            out = binary("mul", out, _subst(o, mapping))
        return out


def _product_factors(e: Expr) -> list[Expr] | None:
    if isinstance(e, Binary) and e.op == "mul":
        a, b = _product_factors(e.left), _product_factors(e.right)
        return None if a is None or b is None else a + b
    if isinstance(e, (Access, Const, IndexValue)):
        return [e]
    return None


def _expr_symbols(e: Expr) -> set:
    return e.expr.free_symbols if isinstance(e, IndexValue) else set()


def _drop_bounds(mask: sympy.Basic) -> sympy.Basic:
    """Remove conjuncts every in-range position satisfies (``m < M``, ``p >= 0``): the kernel checks
    sequence bounds itself, and a tile is no less FULL for them."""
    P, M = size_symbol("P"), size_symbol("M")
    implied = {sympy.Lt(M_SYM, M), sympy.Gt(M, M_SYM), sympy.Lt(P_SYM, P), sympy.Gt(P, P_SYM),
               sympy.Ge(M_SYM, 0), sympy.Ge(P_SYM, 0), sympy.Le(0, M_SYM), sympy.Le(0, P_SYM)}
    args = mask.args if isinstance(mask, sympy.And) else (mask,)
    kept = [a for a in args if a not in implied]
    return sympy.And(*kept) if kept else sympy.true


# ---- index folding -------------------------------------------------------------------------------

def _unpartition(c: Cascade, targets: dict[sympy.Expr, sympy.Symbol]) -> dict:
    """Substitution mapping tile indices to logical positions (``m0 -> m - m1*M0``, ``m -> m``)."""
    folding: dict = {}
    for idx, logical in targets.items():
        idx = sympy.sympify(idx)
        if isinstance(idx, sympy.Symbol):
            if idx != logical:
                folding[idx] = logical
            continue
        for part in c.partitions:
            tile = c.ranks[part.inner].extent
            if is_zero(idx - part.index_map(tile)):
                folding[index_symbol(part.inner)] = logical - index_symbol(part.outer) * tile
                break
        else:
            raise CodegenError(f"cascade {c.name}: position index {idx} is not a rank or a partition "
                               "of one")
    return folding


def _subst_sym(e: sympy.Basic, mapping: dict) -> sympy.Basic:
    return sympy.sympify(e).subs(mapping, simultaneous=True) if mapping else e


def _subst(e: Expr, mapping: dict) -> Expr:
    """Simultaneous substitution in a value expression (via fresh dummies, since IR subs is sequential)."""
    if not mapping:
        return e
    dummies = {k: sympy.Dummy(f"t{i}", integer=True) for i, k in enumerate(mapping)}
    e = substitute(e, dummies)
    e = substitute(e, {d: mapping[k] for k, d in dummies.items()})
    return e


def _value_input(c: Cascade, q: str, k: str, folding: dict) -> tuple[str, str]:
    others = [t for t in c.inputs if t not in (q, k)]
    if len(others) != 1:
        raise CodegenError(f"cascade {c.name}: expected inputs Q, K and one value tensor; got "
                           f"{', '.join(c.inputs)}")
    v = others[0]
    for e in c.einsums:
        for a in e.operands():
            if a.tensor == v:
                pos = a.indices[0].subs(folding, simultaneous=True)
                if pos != M_SYM or len(a.indices) != 2:
                    raise CodegenError(f"Einsum {e.name}: value {v} must be read at the key position "
                                       f"[m, f]; it is read at [{', '.join(map(str, a.indices))}]")
                return v, c.tensors[v].ranks[1]
    raise CodegenError(f"cascade {c.name}: value input {v} is never read")


_ALLOWED = {P_SYM, M_SYM, BATCH_INDEX, HEAD_INDEX}


def _check_symbols(c: Cascade, score: Expr, mask: sympy.Basic | None, head_ranks: tuple[str, ...] = ()) -> None:
    syms: set = set(mask.free_symbols) if mask is not None else set()
    for n in walk(score):
        if isinstance(n, IndexValue):
            syms |= n.expr.free_symbols
        elif isinstance(n, Select):
            syms |= n.cond.free_symbols
    # the head dims are known too (HEAD_D, HEAD_DV): the default scale is idx(1/sqrt(E))
    sizes = {size_symbol(n) for n in ("P", "M", "H", "B", *head_ranks)} | {size_symbol(k) for k in c.params}
    bad = sorted(str(s) for s in syms - _ALLOWED - sizes)
    if bad:
        raise CodegenError(f"cascade {c.name}: the score or mask uses {', '.join(bad)}, which is neither a "
                           "query/key position, b, h, nor a size the kernel knows (P, M, H, B, head dims, params)")


# ---- roles (for comments) ------------------------------------------------------------------------

def _roles(c: Cascade, chain: set[int], norm: int) -> tuple[tuple[str, str], ...]:
    """Label each Einsum with the part of the kernel that implements it."""
    from einfuse.ir.printer import format_einsum

    v_like = {t for t in c.inputs if t not in _score_inputs(c, chain)}
    pv_tensors: set[str] = set()
    roles: list[str] = [""] * len(c.einsums)
    for _ in range(2):  # recurrences read tensors written later in the list: two sweeps suffice
        for i, e in enumerate(c.einsums):
            ops = set(e.operand_tensors()) - {e.name}
            if not e.operands():
                r = "init"
            elif i == norm:
                r = "activation" if _has_op(e.expr, "sigmoid") else "numerator"
            elif i in chain:
                r = "score"
            elif e.name in c.outputs and not ops & v_like:
                r = "final"
            elif ops & (v_like | pv_tensors):
                r = "pv"
            elif e.reduce == "max" or (isinstance(e.expr, Binary) and e.expr.op == "max"):
                r = "max"
            elif _has_op(e.expr, "exp"):
                r = "correction"
            elif isinstance(e.expr, Binary) and e.expr.op == "div":
                r = "normalise"
            else:
                r = "sum"
            roles[i] = r
            if r == "pv":
                pv_tensors.add(e.name)
    return tuple((r, format_einsum(c, e)) for r, e in zip(roles, c.einsums))


def _has_op(e: Expr, op: str) -> bool:
    return any(isinstance(n, Unary) and n.op == op for n in walk(e))


def _score_inputs(c: Cascade, chain: set[int]) -> set[str]:
    names: set[str] = set()
    for i in chain:
        names |= {t for t in c.einsums[i].operand_tensors() if t in c.inputs}
    return names
