"""Structural validation of cascades; every error names the Einsum and the rank or tensor at fault."""

from __future__ import annotations

import difflib

import sympy

from einfuse.errors import ValidationError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX
from einfuse.ir.symzero import is_zero


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def validate(c: Cascade) -> Cascade:
    """Raise :class:`ValidationError` if ``c`` is not a well-formed cascade; return it otherwise."""
    if not c.einsums:
        raise ValidationError(f"cascade {c.name} has no Einsums")
    for t in list(c.inputs) + list(c.outputs):
        if t not in c.tensors:
            raise ValidationError(f"cascade {c.name}: declared tensor {t} has no declaration")
    for t in c.tensors.values():
        for r in t.ranks:
            if r not in c.ranks:
                raise ValidationError(
                    f"tensor {t.name}: unknown rank {r}{_suggest(r, list(c.ranks))}")
        for r in t.iterative:
            if r not in t.ranks:
                raise ValidationError(f"tensor {t.name}: iterative rank {r} is not one of its ranks")
    produced = {e.output.tensor for e in c.einsums}
    for t in c.inputs:
        if t in produced:
            raise ValidationError(f"Einsum {t}: writes input tensor {t}")
    for t in c.outputs:
        if t not in produced:
            raise ValidationError(f"cascade {c.name}: output {t} is never computed by an Einsum")
    writes: dict[str, int] = {}
    for e in c.einsums:
        writes[e.name] = writes.get(e.name, 0) + 1
    for t, n in writes.items():  # iterative tensors are written twice: initial value and recurrence
        if n > 1 and t in c.tensors and not c.tensors[t].iterative:
            raise ValidationError(f"Einsum {t}: tensor {t} is computed by {n} Einsums; each tensor is "
                                  "defined once (only tensors with an iterative rank, R+1, have an initial "
                                  "value and a recurrence)")
    ivars = c.index_vars()
    for e in c.einsums:
        _check_einsum(c, e, ivars)
    _check_cycles(c)
    return c


def _check_access(c: Cascade, e: Einsum, a: Access, ivars: dict, is_output: bool) -> None:
    if a.tensor not in c.tensors:
        where = "writes" if is_output else "reads"
        raise ValidationError(
            f"Einsum {e.name}: {where} undefined tensor {a.tensor}{_suggest(a.tensor, list(c.tensors))}")
    t = c.tensors[a.tensor]
    if len(a.indices) != len(t.ranks):
        raise ValidationError(
            f"Einsum {e.name}: {a.tensor} has {len(t.ranks)} ranks [{','.join(t.ranks)}] "
            f"but is indexed with {len(a.indices)} [{','.join(map(str, a.indices))}]")
    for pos, (idx, rank) in enumerate(zip(a.indices, t.ranks)):
        if (isinstance(idx, sympy.Symbol) and idx in ivars and ivars[idx].name != rank
                and not _compatible_rank(c, ivars[idx].name, rank)):
            raise ValidationError(
                f"Einsum {e.name}: rank mismatch in {a.tensor}: position {pos} is rank {rank} "
                f"but is indexed by {idx} (rank {ivars[idx].name})")
        if rank in t.iterative and is_output and not _is_iterative_write(idx, ivars, rank):
            raise ValidationError(
                f"Einsum {e.name}: iterative rank {rank} of {a.tensor} must be written at "
                f"{rank.lower()}+1 or at a constant, not at {idx}")


def _compatible_rank(c: Cascade, used: str, declared: str) -> bool:
    """Two ranks are interchangeable in an index when they have the same extent (e.g. M and P in
    self-attention tensors indexed by either); otherwise the index must name the declared rank."""
    return is_zero(c.ranks[used].extent - c.ranks[declared].extent)


def _is_iterative_write(idx: sympy.Expr, ivars: dict, rank: str) -> bool:
    if not idx.free_symbols & set(ivars):
        return True  # initialisation at a constant
    own = [s for s in idx.free_symbols if s in ivars and ivars[s].name == rank]
    return len(own) == 1 and is_zero(idx - own[0] - 1)


def _check_einsum(c: Cascade, e: Einsum, ivars: dict) -> None:
    _check_access(c, e, e.output, ivars, True)
    for a in e.operands():
        _check_access(c, e, a, ivars, False)
    known_sizes = {s for r in c.ranks.values() for s in r.extent.free_symbols}
    known_sizes |= {sympy.Symbol(n, integer=True, positive=True) for n in c.params}
    known_sizes |= {sympy.Symbol(r, integer=True, positive=True) for r in c.ranks}
    for s in e.all_symbols():
        if s in ivars or s in (BATCH_INDEX, HEAD_INDEX) or s.name in ("B", "H"):
            continue
        if s.name[0].isupper() and (s in known_sizes or s.name in c.params):
            continue
        if s.name[0].isupper():
            raise ValidationError(
                f"Einsum {e.name}: unknown size or parameter {s.name}; declare it as a rank or a param")
        names = [str(v) for v in ivars] + ["b", "h"]
        raise ValidationError(f"Einsum {e.name}: unknown rank index {s.name}{_suggest(s.name, names)}")
    _check_captures(c, e)
    reduced = c.reduced_vars(e)
    if reduced and e.reduce is None:
        raise ValidationError(
            f"Einsum {e.name}: ranks {', '.join(map(str, reduced))} are missing from the output but the "
            "Einsum declares no reduction")


def _check_captures(c: Cascade, e: Einsum) -> None:
    """Reads of captured tensors (einfuse.ir.captures) name declared captures, with their dimensions."""
    from einfuse.ir.captures import validate_reads
    from einfuse.ir.expr import IndexValue, Select, walk

    exprs: list[object] = [e.where] if e.where is not None else []
    for n in walk(e.expr):
        if isinstance(n, IndexValue):
            exprs.append(n.expr)
        elif isinstance(n, Select) and isinstance(n.cond, sympy.Basic):
            exprs.append(n.cond)
        elif isinstance(n, Access):
            exprs.extend(n.indices)
    try:
        validate_reads(c.captures, exprs, f"Einsum {e.name}")
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def _check_cycles(c: Cascade) -> None:
    from einfuse.ir.schedule import schedule

    schedule(c)
