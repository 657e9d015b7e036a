"""Lightning split (Lightning Attention-2): causal linear attention as intra-block + inter-block parts.

For a weighted sum over keys ``W[p,w] = sum_m S[m,p] * Val[m,w]`` whose score is linear-attention
shaped,

    S[m,p] = sum_c Qf[p,c] * Kf[m,c] * exp(-s (p - m))   restricted to  m <= p,

(feature maps, scale and a per-head decay rate ``s`` allowed; no decay is ``s = 0``), queries and keys
are cut into blocks of ``B`` (``p = p1*B + p0``, ``m = p1*B + m0`` on the diagonal block):

* intra-block, quadratic and masked: ``WI[p1,p0,w] = sum_m0 S(p1*B+p0, p1*B+m0) Val[p1*B+m0,w] : m0 <= p0``;
* a running state over blocks: ``KV[p1+1,c,w] = exp(-s B) KV[p1,c,w] + sum_m0 Kf Val exp(-s (B - m0))``,
  starting empty;
* inter-block, linear: ``WX[p1,p0,w] = sum_c Qf[p1*B+p0,c] KV[p1,c,w] exp(-s p0)``;
* ``W[p1*B+p0, w] = WI + WX``.

The factors are read off the IR (which operand depends on ``p`` only, on ``m`` only, which index term
depends on both), and the decay is checked symbolically to be ``exp(-s (p - m))``; anything else is
refused with the reason. The partition ``M -> P1, M0`` is recorded because the key blocks are
traversed by the query block index (``M0`` has the extent ``P0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Empty, Expr, IndexValue, as_expr, binary, index_symbols, substitute
from einfuse.ir.positions import equal_length_cascade
from einfuse.ir.ranks import Partition, Rank, index_symbol, size_symbol
from einfuse.ir.tensor import Tensor
from einfuse.passes.rewrite import (
    PassOptionError,
    factors,
    finish,
    fresh_name,
    plain_indices,
    product,
    taken_names,
)


@dataclass(frozen=True)
class _Score:
    """A score ``sum_c prod(q) * prod(k) * decay`` with the causal constraint."""

    q: tuple[Expr, ...]
    k: tuple[Expr, ...]
    contraction: tuple[sympy.Symbol, ...]
    rate: sympy.Expr  # s in exp(-s (p - m)); 0 without decay


def _is_causal(w: sympy.Basic, p: sympy.Symbol, m: sympy.Symbol) -> bool:
    """``w`` is ``m <= p`` (in any of its spellings)."""
    if not isinstance(w, sympy.core.relational.Relational):
        return False
    if isinstance(w, (sympy.LessThan, sympy.StrictLessThan)):
        diff = w.rhs - w.lhs
    elif isinstance(w, (sympy.GreaterThan, sympy.StrictGreaterThan)):
        diff = w.lhs - w.rhs
    else:
        return False
    strict = isinstance(w, (sympy.StrictLessThan, sympy.StrictGreaterThan))
    return sympy.expand(diff - (p - m) + (1 if strict else 0)) == 0  # diff > -1 <=> diff >= 0


def _decay_rate(d: sympy.Expr, p: sympy.Symbol, m: sympy.Symbol) -> tuple[sympy.Expr, sympy.Expr] | None:
    """``d = c * exp(-s (p - m))`` with ``c, s`` free of ``p, m``: returns ``(c, s)``, else None."""
    log_d = sympy.expand_log(sympy.log(d), force=True)
    s = sympy.simplify(-sympy.diff(log_d, p))
    if {p, m} & s.free_symbols or sympy.simplify(sympy.diff(log_d, m) - s) != 0:
        return None
    c = sympy.simplify(d.subs(m, p))
    if {p, m} & c.free_symbols or sympy.simplify(d - c * sympy.exp(-s * (p - m))) != 0:
        return None
    return c, s


def _expand_score(c: Cascade, a: Access, p: sympy.Symbol, m: sympy.Symbol) -> _Score:
    """Read the linear-attention factors of the score ``a`` off its chain of Einsums."""
    q: list[Expr] = []
    k: list[Expr] = []
    decay: list[sympy.Expr] = []
    contraction: list[sympy.Symbol] = []
    causal = False

    def visit(acc: Access) -> None:
        nonlocal causal
        prods = c.producers(acc.tensor)
        if acc.tensor in c.inputs or len(prods) != 1:
            raise PassError(f"lightning: score {acc.tensor} must be computed by one Einsum")
        e = c.einsums[prods[0]]
        if not plain_indices(e.output) or e.output != acc:
            raise PassError(f"lightning: Einsum {e.name} must be read at its own indices [m,p]")
        if e.where is not None:
            if not _is_causal(e.where, p, m):
                raise PassError(f"lightning: Einsum {e.name} has constraint {e.where}; the split needs "
                                "exactly the causal constraint m <= p")
            causal = True
        red = c.reduced_vars(e)
        if red:
            if e.reduce != "sum" or contraction:
                raise PassError(f"lightning: Einsum {e.name} must be one sum of a product over the feature "
                                "ranks (q . k)")
            contraction.extend(red)
        for f in factors(e.expr):
            syms = index_symbols(f)
            if {p, m} <= syms:
                if isinstance(f, Access) and not red:
                    visit(f)
                elif isinstance(f, IndexValue):
                    decay.append(f.expr)
                else:
                    raise PassError(f"lightning: factor {_fmt(f)} of {e.name} depends on both p and m and "
                                    "is neither a score nor an exp(-s (p - m)) decay")
            elif m in syms:
                k.append(f)
            else:
                q.append(f)

    visit(a)
    if not contraction:
        raise PassError(f"lightning: score {a.tensor} has no q . k contraction")
    if not causal:
        raise PassError(f"lightning: score {a.tensor} is not causal (no m <= p constraint); the split "
                        "is for causal linear attention")
    rate = sympy.Integer(0)
    if decay:
        fit = _decay_rate(sympy.Mul(*decay), p, m)
        if fit is None:
            raise PassError(f"lightning: decay {sympy.Mul(*decay)} is not of the form c * exp(-s (p - m))")
        const, rate = fit
        if const != 1:
            q.append(as_expr(const))
    return _Score(tuple(q), tuple(k), tuple(contraction), rate)


def _fmt(e: Expr) -> str:
    from einfuse.ir.printer import format_expr

    return format_expr(e)


def _weighted_sums(c: Cascade, p: sympy.Symbol, m: sympy.Symbol) -> list[tuple[Einsum, Access, list[Expr]]]:
    out = []
    for e in c.einsums:
        if e.reduce != "sum" or set(c.reduced_vars(e)) != {m} or p not in e.output_symbols():
            continue
        fs = factors(e.expr)
        scores = [f for f in fs if isinstance(f, Access) and {p, m} <= index_symbols(f)]
        if len(scores) != 1 or any(p in index_symbols(f) for f in fs if f is not scores[0]):
            raise PassError(f"lightning: Einsum {e.name} sums over m but is not score * values")
        if e.where is not None and not _is_causal(e.where, p, m):
            raise PassError(f"lightning: Einsum {e.name} has constraint {e.where}")
        out.append((e, scores[0], [f for f in fs if f is not scores[0]]))
    return out


def split_lightning(c: Cascade, block: int = 64) -> Cascade:
    """Rewrite causal linear attention into intra-block and inter-block (running KV state) parts."""
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise PassOptionError(f"lightning: block must be a positive integer, got {block!r}")
    if "P" not in c.ranks or "M" not in c.ranks:
        raise PassError(f"lightning: {c.name} needs query rank P and key rank M")
    same = equal_length_cascade(c)
    if same is not c:
        # the queries' positions depend on both lengths (bottom-right, einfuse.ir.positions): the
        # blocks below walk keys with the query block index, exact for such positions only over one
        # sequence, so the lowered cascade has M = P (a run with other lengths is refused, not wrong)
        c = same.replace(ranks={**same.ranks, "M": Rank("M", size_symbol("P"))})
    p, m = index_symbol("P"), index_symbol("M")
    sums = _weighted_sums(c, p, m)
    if not sums:
        raise PassError(f"lightning: {c.name} has no sum over keys m of score * values")
    taken = taken_names(c)
    outer, p_in, m_in = (fresh_name([n], taken) for n in ("P1", "P0", "M0"))
    p1, p0, m0 = index_symbol(outer), index_symbol(p_in), index_symbol(m_in)
    B = size_symbol(p_in)
    qmap, kmap = {p: p1 * B + p0}, {m: p1 * B + m0}
    ranks = dict(c.ranks)
    ranks.update({outer: Rank(outer, sympy.ceiling(c.ranks["P"].extent / B)), p_in: Rank(p_in, B),
                  m_in: Rank(m_in, B)})
    tensors = dict(c.tensors)
    new: list[Einsum] = []
    removed: set[int] = set()
    score_names: dict[str, tuple[str, _Score]] = {}
    single = len(sums) == 1

    def tname(base: str) -> str:
        return fresh_name([base], set(tensors) | set(ranks))

    for w, score_acc, vals in sums:
        if score_acc.tensor not in score_names:
            sc = _expand_score(c, score_acc, p, m)
            qk = product([substitute(f, qmap) for f in sc.q] + [substitute(f, kmap) for f in sc.k])
            bqk = tname("BQK")
            c_ranks = tuple(c.rank_of_index(v).name for v in sc.contraction)
            tensors[bqk] = Tensor(bqk, (outer, p_in, m_in))
            new.append(Einsum(Access(bqk, (p1, p0, m0)), qk, "sum", m0 <= p0, comment="intra-block scores"))
            score = Access(bqk, (p1, p0, m0))
            if sc.rate != 0:
                ba = tname("BA")
                tensors[ba] = Tensor(ba, (outer, p_in, m_in))
                new.append(Einsum(Access(ba, (p1, p0, m0)), binary("mul", score, IndexValue(
                    sympy.exp(-sc.rate * (p0 - m0)))), None, comment="decay within the block"))
                score = Access(ba, (p1, p0, m0))
            score_names[score_acc.tensor] = (score, sc, c_ranks)
        score, sc, c_ranks = score_names[score_acc.tensor]
        rest = [i for i in w.output.indices if i != p]
        if not plain_indices(w.output):
            raise PassError(f"lightning: Einsum {w.name} must be written at plain indices")
        w_ranks = tuple(c.rank_of_index(i).name for i in rest)
        tag = "" if single else f"_{w.name}"
        intra, inter = tname(f"{w.name}I"), tname(f"{w.name}X")
        kv, kb = tname(f"KV{tag}"), tname(f"KB{tag}")
        tensors[intra] = Tensor(intra, (outer, p_in) + w_ranks)
        tensors[inter] = Tensor(inter, (outer, p_in) + w_ranks)
        tensors[kb] = Tensor(kb, (outer,) + c_ranks + w_ranks)
        tensors[kv] = Tensor(kv, (outer,) + c_ranks + w_ranks, iterative=frozenset({outer}))
        vals_k = [substitute(f, kmap) for f in vals]
        keys_k = [substitute(f, kmap) for f in sc.k]
        queries = [substitute(f, qmap) for f in sc.q]
        st = tuple(sc.contraction) + tuple(rest)  # state indices
        blk = (p1, p0, *rest)

        def decay(e: sympy.Expr, rate: sympy.Expr = sc.rate) -> list[Expr]:
            return [IndexValue(e)] if rate != 0 else []  # no decay: no factor

        state_in = product([Access(kv, (p1,) + st)] + decay(sympy.exp(-sc.rate * B)))
        new.extend([
            Einsum(Access(intra, blk), product([score] + vals_k), "sum", None,
                   comment="intra-block: masked, quadratic in the block"),
            Einsum(Access(kv, (0,) + st), Empty(), None, comment="KV state starts empty"),
            Einsum(Access(kb, (p1,) + st), product(keys_k + vals_k + decay(sympy.exp(-sc.rate * (B - m0)))),
                   "sum", None, comment="this block's keys x values"),
            Einsum(Access(kv, (p1 + 1,) + st), binary("add", state_in, Access(kb, (p1,) + st)), None,
                   comment="running KV state"),
            Einsum(Access(inter, blk), product(queries + [Access(kv, (p1,) + st)] + decay(
                sympy.exp(-sc.rate * p0))), "sum", None, comment="inter-block: queries x KV state"),
            Einsum(Access(w.name, tuple(p1 * B + p0 if i == p else i for i in w.output.indices)),
                   binary("add", Access(intra, blk), Access(inter, blk)), None,
                   comment=w.comment or "intra + inter"),
        ])
        removed.add(id(w))
    first = min(i for i, e in enumerate(c.einsums) if id(e) in removed)
    einsums = [e for e in c.einsums[:first]] + new + [e for e in c.einsums[first:] if id(e) not in removed]
    out = c.replace(ranks=ranks, tensors=tensors, einsums=tuple(einsums),
                    partitions=c.partitions + (Partition("P", outer, p_in), Partition("M", outer, m_in)),
                    params={**c.params, p_in: float(block)},
                    attrs={**c.attrs, "lowered": "lightning"})
    return finish(out)


__all__ = ["split_lightning"]
