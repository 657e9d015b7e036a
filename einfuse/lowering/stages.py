"""Split a multi-stage cascade (Agent attention, BASED, ...) into stages the one-stage generators take.

The Triton generators read one attention stage per cascade: one ``Q.K`` score product, one
normalisation (softmax, sigmoid or linear), one value input. A cascade with several such stages is
cut here, from the IR alone (no variant names): walking the Einsums in order, each tensor's
*closure* (its producers back to the cascade inputs and the outputs of stages already found) is
renamed to the generators' conventions (``Q[P,E]``, ``K[M,E]``, ``V[M,F]``, output ``O[P,F]``)
and offered to the analysers; the first tensor whose closure one of them accepts ends a stage, and
becomes an input of later stages. So every stage is the smallest sub-cascade a generator accepts.
Einsums left over must be elementwise combinations of stage outputs and inputs (BASED's
``O = LO + WO``); they run as torch ops on the stage outputs (:mod:`einfuse.codegen.stages_run`, which also compiles each stage).

What cannot be split that way is refused with a :class:`CodegenError` naming the Einsums no
generator accepts (BASED's Taylor branch ``T = 1 + s + s^2/2``: the linear generator needs the
weight to be the score times an index-valued factor, and no feature map of the IR expresses the
Taylor kernel, whose feature space has ``1 + E + E^2`` dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import sympy

from einfuse.errors import CodegenError, EinfuseError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import (
    Access,
    Binary,
    Const,
    Expr,
    IndexValue,
    Unary,
    map_accesses,
    substitute,
    walk,
)
from einfuse.ir.printer import format_einsum
from einfuse.ir.ranks import Rank, index_symbol, size_symbol
from einfuse.ir.tensor import Tensor

CONVENTION = {"query": "P", "key": "M", "head": "E", "value": "F"}
"""Rank names the generators read: queries P, keys M, head dim E, value dim F."""


@dataclass(frozen=True)
class Stage:
    """One generator-accepted stage: ``cascade`` (renamed) computes ``output`` of the original.

    ``bind`` gives the original tensors passed as the kernel's q, k, v; ``flip`` says which of them
    are stored the other way round (``K[E,M]``: transposed before the launch); ``transpose`` is set
    when the original output is stored ``[value, query]`` (the kernel returns ``[query, value]``).
    """

    cascade: Cascade
    family: str
    output: str
    bind: tuple[str, str, str]
    einsums: tuple[str, ...]
    transpose: bool = False
    flip: tuple[bool, bool, bool] = (False, False, False)
    rank_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StagePlan:
    """Stages in execution order, then the elementwise Einsums that combine their outputs."""

    cascade: Cascade
    stages: tuple[Stage, ...]
    combine: tuple[Einsum, ...]

    @property
    def extra_inputs(self) -> tuple[str, ...]:
        """Cascade inputs other than the three bound to ``q, k, v`` (passed by name at call time)."""
        return tuple(t for t in self.cascade.inputs if t not in qkv_names(self.cascade))


def qkv_names(c: Cascade) -> tuple[str, ...]:
    """The inputs bound to the positional ``q, k, v``: Q, K, V when declared, else the first three."""
    if all(t in c.inputs for t in ("Q", "K", "V")):
        return ("Q", "K", "V")
    return tuple(c.inputs[:3])


# ---- score products --------------------------------------------------------------------------------

def _plain_product(e: Expr) -> list[Expr] | None:
    if isinstance(e, Binary) and e.op == "mul":
        a, b = _plain_product(e.left), _plain_product(e.right)
        return None if a is None or b is None else a + b
    return [e]


def is_score_product(c: Cascade, e: Einsum) -> bool:
    """``X[.,.] = sum_r A[i,r] * B[j,r] (* constants)``: two accesses, each ending in the one reduced rank."""
    red = c.reduced_vars(e)
    if e.reduce != "sum" or len(red) != 1 or len(e.output.indices) != 2:
        return False
    factors = _plain_product(e.expr) or []
    accs = [f for f in factors if isinstance(f, Access)]
    # constants: numbers, or index values of sizes only (the default scale idx(1/sqrt(E)))
    consts = [f for f in factors if isinstance(f, Const) or (isinstance(f, IndexValue) and all(
        s.name.isupper() for s in f.expr.free_symbols))]
    if len(accs) != 2 or len(accs) + len(consts) != len(factors):
        return False
    return all(len(a.indices) == 2 and a.indices[1] == red[0] and isinstance(a.indices[0], sympy.Symbol)
               for a in accs)


def score_products(c: Cascade) -> list[Einsum]:
    return [e for e in c.einsums if is_score_product(c, e)]


def is_multistage(c: Cascade) -> bool:
    """More than one score product: the one-stage generators cannot take the cascade whole."""
    return len(score_products(c)) > 1


# ---- closures and renaming -------------------------------------------------------------------------

def _closure(c: Cascade, target: str, available: set[str]) -> list[int]:
    """Positions of the Einsums computing ``target`` from ``available`` tensors, in cascade order."""
    seen: set[int] = set()
    todo = [target]
    while todo:
        t = todo.pop()
        if t in available and t != target:
            continue
        for i in c.producers(t):
            if i not in seen:
                seen.add(i)
                todo.extend(x for x in c.einsums[i].operand_tensors() if x != t)
    return sorted(seen)


def _leaves(c: Cascade, idx: list[int]) -> list[str]:
    produced = {c.einsums[i].name for i in idx}
    out: list[str] = []
    for i in idx:
        for t in c.einsums[i].operand_tensors():
            if t not in produced and t not in out:
                out.append(t)
    return out


def _source_leaf(c: Cascade, t: str, leaves: list[str], idx: list[int]) -> str:
    """The one leaf tensor ``t`` is an elementwise function of (itself when it is a leaf)."""
    if t in leaves:
        return t
    prods = [i for i in c.producers(t) if i in idx]
    srcs = {_source_leaf(c, x, leaves, idx) for i in prods for x in c.einsums[i].operand_tensors() if x != t}
    if len(srcs) != 1:
        raise CodegenError(f"score operand {t} is not a function of one input (reads {sorted(srcs)})")
    return srcs.pop()


def _rename_syms(ex: Any, mapping: dict) -> Any:
    """Simultaneous substitution (via dummies) in a sympy expression or an IR value expression."""
    if not mapping or ex is None:
        return ex
    dummies = {k: sympy.Dummy(f"s{i}", integer=True) for i, k in enumerate(mapping)}
    back = {d: mapping[k] for k, d in dummies.items()}
    if isinstance(ex, Expr):
        return substitute(substitute(ex, dummies), back)
    return sympy.sympify(ex).subs(dummies, simultaneous=True).subs(back, simultaneous=True)


def as_stage(c: Cascade, target: str, available: set[str]) -> Stage:
    """The closure of ``target`` renamed to generator conventions, validated and accepted, or raise."""
    from einfuse.ir.validate import validate

    idx = _closure(c, target, available)
    if not idx:
        raise CodegenError(f"tensor {target} has no producer")
    leaves = _leaves(c, idx)
    dots = [c.einsums[i] for i in idx if is_score_product(c, c.einsums[i])]
    if len(dots) != 1:
        raise CodegenError(f"the sub-cascade computing {target} has {len(dots)} score products, not one")
    dot = dots[0]
    out_access = c.einsums[c.producers(target)[0]].output
    out_syms = {s for i in out_access.indices for s in sympy.sympify(i).free_symbols}
    a, b = dot.operands()
    if a.indices[0] in out_syms and b.indices[0] not in out_syms:
        qa, ka = a, b
    elif b.indices[0] in out_syms and a.indices[0] not in out_syms:
        qa, ka = b, a
    else:
        raise CodegenError(f"Einsum {dot.name}: cannot tell the query operand from the key operand")
    q_leaf, k_leaf = (_source_leaf(c, x.tensor, leaves, idx) for x in (qa, ka))
    values = [t for t in leaves if t not in (q_leaf, k_leaf)]
    if len(values) != 1 or q_leaf == k_leaf:
        raise CodegenError(f"the sub-cascade computing {target} needs a query, a key and one value input; "
                           f"it reads {', '.join(leaves)}")
    v_leaf = values[0]
    rank = {s: r.name for r, s in ((r, r.index) for r in c.ranks.values())}
    q_rank, k_rank = rank[qa.indices[0]], rank[ka.indices[0]]
    e_rank = rank[c.reduced_vars(dot)[0]]
    v_ranks = [r for r in c.tensors[v_leaf].ranks if r != k_rank]
    if len(c.tensors[v_leaf].ranks) != 2 or len(v_ranks) != 1:
        raise CodegenError(f"value {v_leaf}[{','.join(c.tensors[v_leaf].ranks)}] must be indexed by the key "
                           f"rank {k_rank} and one value rank")
    roles = {"query": q_rank, "key": k_rank, "head": e_rank, "value": v_ranks[0]}
    rmap = {r: CONVENTION[role] for role, r in roles.items()}
    if len(set(rmap)) != 4:
        raise CodegenError(f"the stage computing {target} uses rank(s) in two roles: {rmap}")
    out_ranks = c.tensors[target].ranks
    if sorted(out_ranks) != sorted((q_rank, v_ranks[0])):
        raise CodegenError(f"stage output {target}[{','.join(out_ranks)}] must be indexed by the query rank "
                           f"{q_rank} and the value rank {v_ranks[0]}")
    convention = {q_leaf: (q_rank, e_rank), k_leaf: (k_rank, e_rank), v_leaf: (k_rank, v_ranks[0]),
                  target: (q_rank, v_ranks[0])}
    flipped = {t for t, want in convention.items() if c.tensors[t].ranks == want[::-1]}
    tensors_used = set(leaves) | {c.einsums[i].name for i in idx}
    used_ranks = {r for t in tensors_used for r in c.tensors[t].ranks}
    for r in used_ranks - set(rmap):
        if r in rmap.values():
            raise CodegenError(f"rank {r} of the stage computing {target} clashes with the generator's {r}")
        rmap[r] = r
    syms = {index_symbol(o): index_symbol(n) for o, n in rmap.items() if o != n}
    syms.update({size_symbol(o): size_symbol(n) for o, n in rmap.items() if o != n})
    tmap = {q_leaf: "Q", k_leaf: "K", v_leaf: "V", target: "O"}
    for t in sorted(tensors_used - set(tmap)):
        new = t
        while new in {"Q", "K", "V", "O"} or new in tmap.values():
            new += "_"
        tmap[t] = new
    order = sorted(used_ranks, key=lambda r: ("PEMF".find(rmap[r]) % 5, list(c.ranks).index(r)))
    ranks = {rmap[r]: Rank(rmap[r], _rename_syms(c.ranks[r].extent, syms)) for r in order}
    tensors = {}
    for t in sorted(tensors_used, key=list(c.tensors).index):
        tt = c.tensors[t]
        rs = tuple(rmap[r] for r in tt.ranks)
        if t in flipped:
            rs = rs[::-1]
        tensors[tmap[t]] = Tensor(tmap[t], rs, tt.dtype, frozenset(rmap[r] for r in tt.iterative))
    einsums = []
    for i in idx:
        e = c.einsums[i]
        oi = tuple(_rename_syms(x, syms) for x in e.output.indices)
        if e.name in flipped:
            oi = oi[::-1]
        expr = map_accesses(_rename_syms(e.expr, syms), lambda a: Access(
            tmap[a.tensor], a.indices[::-1] if a.tensor in flipped else a.indices))
        einsums.append(Einsum(Access(tmap[e.name], oi), expr,
                              e.reduce, _rename_syms(e.where, syms), e.comment))
    attrs = {k: v for k, v in c.attrs.items() if k != "family"}
    sub = Cascade(f"{c.name}_{target}", ranks, tensors, tuple(einsums), ("Q", "K", "V"), ("O",),
                  params=dict(c.params), attrs=attrs)
    try:
        validate(sub)
    except EinfuseError as exc:
        raise CodegenError(f"the stage computing {target} is not a valid cascade once renamed: {exc}") from None
    family = _accepting_family(sub)
    sub = replace(sub, attrs={**attrs, "family": family})
    return Stage(sub, family, target, (q_leaf, k_leaf, v_leaf), tuple(c.einsums[i].name for i in idx),
                 target in flipped, tuple(t in flipped for t in (q_leaf, k_leaf, v_leaf)), rmap)


def _accepting_family(sub: Cascade) -> str:
    """softmax | sigmoid | normsum | linear: the generator whose analyser accepts ``sub``, or raise
    with both reasons."""
    from einfuse.lowering.linear import analyse_linear
    from einfuse.lowering.onepass import analyze

    try:
        return analyze(sub).family
    except CodegenError as exc:
        softmax_reason = str(exc)
    try:
        analyse_linear(replace(sub, attrs={**sub.attrs, "family": "linear"}))
        return "linear"
    except EinfuseError as exc:
        raise CodegenError(f"softmax/sigmoid generator: {softmax_reason}; linear generator: {exc}") from None


# ---- splitting -----------------------------------------------------------------------------------

def _is_elementwise(c: Cascade, e: Einsum) -> bool:
    return not c.reduced_vars(e) and e.where is None and all(
        all(isinstance(i, sympy.Symbol) for i in a.indices) for a in e.operands())


def _offender(c: Cascade, names: tuple[str, ...]) -> str:
    """The first Einsum that is not a plain product, reduction, quotient or exp(x - max) of its operands."""
    for n in names:
        e = c.einsums[c.producers(n)[0]]
        ops = {x.op for x in walk(e.expr) if isinstance(x, (Binary, Unary))}
        if ops - {"mul", "div"} and not (ops == {"exp", "sub"}) and not is_score_product(c, e):
            return n
    return names[-1]


def split_stages(c: Cascade) -> StagePlan:
    """Cut ``c`` into generator-accepted stages plus elementwise combiners, or raise CodegenError."""
    if len(c.outputs) != 1:
        raise CodegenError(f"cascade {c.name}: multi-stage compilation needs one output, got "
                           f"{', '.join(c.outputs) or 'none'}")
    available = set(c.inputs)
    stages: list[Stage] = []
    reasons: dict[str, str] = {}
    for e in c.einsums:
        if e.name in available or c.tensors[e.name].iterative:
            continue
        try:
            st = as_stage(c, e.name, available)
        except CodegenError as exc:
            reasons[e.name] = str(exc)
            continue
        stages.append(st)
        available.add(e.name)
    combine: list[Einsum] = []

    def need(t: str) -> None:
        """Make ``t`` available: elementwise producers run as combiners, anything else is refused."""
        if t in available:
            return
        prods = c.producers(t)
        if len(prods) != 1:
            raise CodegenError(f"cascade {c.name}: tensor {t} has {len(prods)} producing Einsums and no "
                               "stage computes it")
        e = c.einsums[prods[0]]
        if _is_elementwise(c, e):
            for x in e.operand_tensors():
                need(x)
            combine.append(e)
            available.add(t)
            return
        names = tuple(c.einsums[j].name for j in _closure(c, t, available))
        culprit = _offender(c, names)
        raise CodegenError(
            f"cascade {c.name}: no Triton generator accepts Einsum {culprit} "
            f"({format_einsum(c, c.einsums[c.producers(culprit)[0]])}) in the stage computing {t} "
            f"(Einsums {', '.join(names)}): {reasons.get(t, 'not one attention stage')}")

    need(c.outputs[0])
    return StagePlan(c, tuple(stages), tuple(combine))


__all__ = [
    "Stage",
    "StagePlan",
    "as_stage",
    "is_multistage",
    "is_score_product",
    "qkv_names",
    "score_products",
    "split_stages",
]
