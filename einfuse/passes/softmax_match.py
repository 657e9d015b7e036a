"""Find softmax normalisations in a cascade from its reductions and their consumers.

A *softmax stage* over key indices ``K`` (one rank, or both halves of a partitioned one) is

* ``GM = max_K X``            a max-reduction of some score expression ``X``;
* ``SN = exp(X - GM)``        the only Einsum that reads ``GM`` inside the key loop;
* ``SD = sum_K SN``           the denominator;
* ``W_j = sum_K SN * ...``    zero or more weighted sums, linear in ``SN`` (the attention output
  after :func:`~einfuse.passes.defer_division.defer_division`);

and nothing else reads ``SN``, nor reads ``GM``, ``SD`` or a ``W_j`` while iterating over ``K``. Those
are exactly the conditions under which a running max, sum and weighted sum with correction factors
give the same values (``RD[K1] = SD`` and ``RNV[K1] = W`` because ``RM[K1] = GM``), so both the online
fusion and the split-KV pass rewrite what this module finds, whatever the variant. Every refusal says
which Einsum breaks which condition.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.einsum import Einsum
from einfuse.ir.expr import Access, Binary, Unary
from einfuse.passes.rewrite import descendants, factors, plain_indices, reads


@dataclass(frozen=True)
class SoftmaxStage:
    """One matched softmax normalisation (Einsums of the cascade it was matched in)."""

    gmax: Einsum
    num: Einsum
    den: Einsum
    wsums: tuple[Einsum, ...]
    key_vars: frozenset[sympy.Symbol]

    @property
    def score(self):
        return self.gmax.expr

    def numerator_access(self) -> Access:
        return self.num.output

    def einsums(self) -> tuple[Einsum, ...]:
        return (self.gmax, self.num, self.den) + self.wsums


def _fmt(vs) -> str:
    return ",".join(sorted(map(str, vs)))


def _is_numerator(g: Einsum, n: Einsum) -> bool:
    e = n.expr
    return (n.reduce is None and isinstance(e, Unary) and e.op == "exp" and isinstance(e.arg, Binary)
            and e.arg.op == "sub" and e.arg.left == g.expr and e.arg.right == g.output)


def match_stage(c: Cascade, g: Einsum) -> SoftmaxStage:
    """Match the softmax stage whose max-reduction is ``g``; PassError says why it is not one."""
    if g.reduce != "max":
        raise PassError(f"Einsum {g.name} is not a max-reduction")
    keys = frozenset(c.reduced_vars(g))
    if not keys:
        raise PassError(f"Einsum {g.name} reduces over nothing")
    if not plain_indices(g.output):
        raise PassError(f"Einsum {g.name}: output indices must be plain rank indices")
    cons = [c.einsums[i] for i in c.consumers(g.name)]
    nums = [e for e in cons if _is_numerator(g, e)]
    if not nums:
        raise PassError(f"Einsum {g.name} max-reduces over {_fmt(keys)} but no Einsum computes "
                        f"exp(score - {g.name}) from it, so it is not a softmax normalisation")
    n = nums[0]
    if n.name in c.outputs:
        raise PassError(f"Einsum {n.name}: the numerator is a cascade output; the online form never "
                        "materialises it")
    if len(c.producers(n.name)) != 1 or len(c.producers(g.name)) != 1:
        raise PassError(f"Einsum {g.name}: the max and the numerator must each have one producer")
    nvars = set(n.output_symbols())
    if not plain_indices(n.output) or nvars != keys | g.output_symbols():
        raise PassError(f"Einsum {n.name}: must be indexed by the key ranks ({_fmt(keys)}) and the "
                        f"ranks of {g.name} ({_fmt(g.output_symbols())}) exactly")
    if g.where is not None and g.where != n.where:
        raise PassError(f"Einsums {g.name} and {n.name} have different constraints ({g.where} vs "
                        f"{n.where}); the running max must cover every point of the numerator")
    for e in cons:
        if e is not n and keys & set(c.iteration_vars(e)):
            raise PassError(f"Einsum {e.name} reads {g.name} inside the loop over {_fmt(keys)}; only "
                            f"exp(score - {g.name}) may")
    after_g = descendants(c, [g.name])
    if reads(g.expr, after_g):
        raise PassError(f"Einsum {g.name}: its score reads its own result")
    den, wsums = None, []
    for i in c.consumers(n.name):
        e = c.einsums[i]
        sums_keys = e.reduce == "sum" and set(c.reduced_vars(e)) == keys
        if sums_keys and den is None and e.expr == n.output:
            den = e
            continue
        fs = factors(e.expr)
        hits = [f for f in fs if f == n.output]
        others = [f for f in fs if f != n.output]
        if (sums_keys and len(hits) == 1 and plain_indices(e.output)
                and not any(reads(f, after_g) for f in others)):
            wsums.append(e)
            continue
        hint = (f"; it divides {n.name} before the sum over {_fmt(keys)} (defer_division fixes that "
                "when the division feeds one weighted sum)") if isinstance(e.expr, Binary) and \
            e.expr.op == "div" else ""
        raise PassError(f"Einsum {e.name} reads {n.name} but is neither its sum over {_fmt(keys)} nor a "
                        f"weighted sum over {_fmt(keys)} linear in {n.name}{hint}")
    if den is None:
        raise PassError(f"no Einsum sums {n.name} over {_fmt(keys)} (the softmax denominator)")
    for t in [den] + wsums:
        for i in c.consumers(t.name):
            e = c.einsums[i]
            if keys & set(c.iteration_vars(e)):
                raise PassError(f"Einsum {e.name} reads {t.name} inside the loop over {_fmt(keys)}; the "
                                f"online form knows {t.name} only after the last key tile")
        if len(c.producers(t.name)) != 1:
            raise PassError(f"tensor {t.name} has several producers")
    return SoftmaxStage(g, n, den, tuple(wsums), keys)


def softmax_stages(c: Cascade) -> tuple[list[SoftmaxStage], list[str]]:
    """Every softmax stage of ``c`` in cascade order, and why each other max-reduction is not one."""
    stages, rejected = [], []
    for g in c.einsums:
        if g.reduce != "max" or not c.reduced_vars(g):
            continue
        try:
            stages.append(match_stage(c, g))
        except PassError as exc:
            rejected.append(str(exc))
    return stages, rejected


def find_gmax(c: Cascade, name: str) -> Einsum:
    """The max-reduction that writes tensor ``name``."""
    for i in c.producers(name):
        if c.einsums[i].reduce == "max":
            return c.einsums[i]
    raise PassError(f"no max-reduction writes {name}")  # pragma: no cover - internal


__all__ = ["SoftmaxStage", "find_gmax", "match_stage", "softmax_stages"]
