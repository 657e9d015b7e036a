"""The split-KV cascade the decode kernels follow: ``split_kv`` (einfuse.passes.offload), read by role.

``split_kv(c, n)`` rewrites the softmax into per-split partials (``PM`` max, ``PL`` sum, ``PO``
normalised output) and a combine (``GM`` global max, ``CW = PL exp(PM - GM)``, ``SD``, ``SNV``,
``O = SNV / SD``). The kernels implement exactly those Einsums: ``decode_partial`` the per-split
ones, ``decode_combine`` the rest, each under its Einsum as a comment. The split count is a run-time
choice of the kernel (it depends on the batch, the KV heads and the GPU), so the cascade is lowered
with a representative count; the Einsums do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from einfuse.errors import CodegenError, EinfuseError
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import Binary, Unary, walk
from einfuse.ir.printer import format_einsum
from einfuse.ir.ranks import index_symbol
from einfuse.lowering.decode import DecodePlan

ROLES = ("partial_max", "partial_num", "partial_sum", "partial_out", "partial_norm", "global_max", "weight",
         "denominator", "weighted", "output")


@dataclass(frozen=True)
class SplitKV:
    """The lowered cascade (None when the pass is unavailable or refused) and its Einsum lines by
    role; ``how`` says which."""

    cascade: Cascade | None
    lines: dict[str, str]
    how: str

    def comment(self, role: str, indent: int = 4) -> str:
        line = self.lines.get(role)
        return f"{' ' * indent}# {line}\n" if line else ""


def _roles(low: Cascade) -> dict[str, str]:
    """Classify the split/combine Einsums by shape: what is reduced, what is written."""
    parts = {p.parent: p for p in low.partitions}
    if "M" not in parts:
        raise CodegenError(f"{low.name}: split_kv result has no partition of M")
    s_idx, ms_idx = index_symbol(parts["M"].outer), index_symbol(parts["M"].inner)
    out: dict[str, str] = {}
    for ev in low.einsums:
        red = low.reduced_vars(ev)
        outs = ev.output.indices
        has_exp = any(isinstance(n, Unary) and n.op == "exp" for n in walk(ev.expr))
        is_div = isinstance(ev.expr, Binary) and ev.expr.op == "div"
        role = None
        if red == [ms_idx] and ev.reduce == "max":
            role = "partial_max"
        elif red == [ms_idx] and ev.reduce == "sum":
            role = "partial_out" if len(outs) == 3 else "partial_sum"
        elif not red and is_div and s_idx in outs:
            role = "partial_norm"
        elif red == [s_idx] and ev.reduce == "max":
            role = "global_max"
        elif not red and has_exp and outs and outs[0] == s_idx:
            role = "weight" if len(outs) == 2 else "partial_num"
        elif red == [s_idx] and ev.reduce == "sum":
            role = "weighted" if len(outs) == 2 else "denominator"
        elif ev.output.tensor in low.outputs:
            role = "output"
        if role and role not in out:
            out[role] = format_einsum(low, ev)
    return out


def lower_decode(c: Cascade, splits: int) -> SplitKV:
    """``split_kv(c, splits)`` and its roles, or a note saying why the kernel follows ``c`` itself."""
    try:
        from einfuse.passes.offload import split_kv
    except ImportError:
        return SplitKV(None, {}, "split_kv unavailable: kernels follow the cascade as written")
    try:
        low = split_kv(c, splits)
    except EinfuseError as exc:
        return SplitKV(None, {}, f"split_kv refused ({exc}); kernels follow the cascade as written")
    lines = _roles(low)
    missing = [r for r in ROLES if r not in lines and r != "partial_out"]
    if missing:
        raise CodegenError(f"{c.name}: the split_kv cascade has no {', '.join(missing)} Einsum; "
                           "the decode kernels implement exactly those roles")
    return SplitKV(low, lines, "lowered by split_kv")


@dataclass(frozen=True)
class DecodeDetail:
    """What the decode kernels print from: the logit/mask plan and the split/combine Einsum lines."""

    plan: DecodePlan
    split: SplitKV
