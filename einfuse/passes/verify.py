"""Check a rewrite against the reference executor: same outputs on fresh random inputs (float64).

Every pass test uses this, and ``einfuse passes --verify`` runs it after each pass of a pipeline, so a
user lowering their own variant sees at once if a pass changed what it computes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import sympy

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.ranks import size_symbol


def rank_sizes(c: Cascade, sizes: Mapping[str, int]) -> dict[str, int]:
    """Bind every rank extent of ``c`` that ``sizes`` (plus the cascade's params) determines."""
    env = {size_symbol(k): v for k, v in c.params.items()}
    env.update({size_symbol(k): v for k, v in sizes.items()})
    out = dict(sizes)
    for r in c.ranks.values():
        ext = r.extent.subs(env)
        if not ext.free_symbols:
            out.setdefault(r.name, int(ext))
    return out


def tied_sizes(c: Cascade, sizes: Mapping[str, int]) -> dict[str, int]:
    """``sizes`` with every rank that ``c`` ties to another rank's size (``M = P``: a Lightning split
    of bottom-right positions, which holds over one sequence) set to that size, so a check runs the
    cascades where the rewrite is defined."""
    out = dict(sizes)
    for r in c.ranks.values():
        if isinstance(r.extent, sympy.Symbol) and r.extent != size_symbol(r.name) and r.extent.name in out:
            out[r.name] = out[r.extent.name]
    return out


def random_inputs(c: Cascade, sizes: Mapping[str, int], batch: int = 1, heads: int = 2,
                  kv_heads: int | None = None, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Standard-normal inputs ``(B, H, *ranks)`` for ``c``; tensors over the key rank ``M`` other than
    the queries get ``kv_heads`` heads (GQA). ``scale`` multiplies them (large logits)."""
    rng = np.random.default_rng(seed)
    known = rank_sizes(c, sizes)
    env = {size_symbol(k): v for k, v in {**{k: int(v) for k, v in c.params.items()}, **known}.items()}
    out = {}
    for name in c.inputs:
        shape = []
        for r in c.tensors[name].ranks:
            ext = sympy.sympify(c.ranks[r].extent).subs(env)
            if ext.free_symbols:
                raise PassError(f"input {name}: size of rank {r} unknown; give it in sizes")
            shape.append(int(ext))
        h = kv_heads if (kv_heads and "M" in c.tensors[name].ranks and name != "Q") else heads
        out[name] = rng.standard_normal((batch, h, *shape)) * scale
    return out


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """``|a - b| / |b|`` (Frobenius), 0 when both are 0."""
    den = float(np.linalg.norm(b))
    num = float(np.linalg.norm(a - b))
    return num / den if den else num


def compare(before: Cascade, after: Cascade, inputs: Mapping[str, np.ndarray],
            sizes: Mapping[str, int] | None = None) -> float:
    """Largest relative error over the outputs of ``before`` between the two cascades."""
    from einfuse.codegen.reference import run_cascade

    if set(before.outputs) != set(after.outputs) or set(before.inputs) != set(after.inputs):
        raise PassError(f"{after.name}: the rewrite changed the cascade's inputs or outputs")
    ref = run_cascade(before, inputs, sizes)
    got = run_cascade(after, inputs, sizes)
    worst = 0.0
    for k, v in ref.items():
        if not np.isfinite(got[k]).all():
            return float("inf")
        worst = max(worst, rel_error(got[k], v))
    return worst


def check_equivalent(before: Cascade, after: Cascade, sizes: Mapping[str, int], seeds=(0, 1),
                     tol: float = 1e-10, **input_options) -> float:
    """Raise PassError unless ``after`` computes ``before``'s outputs (rel. error < ``tol``) on fresh
    random inputs for every seed; returns the worst error."""
    sizes = tied_sizes(after, sizes)
    worst = 0.0
    for seed in seeds:
        inputs = random_inputs(before, sizes, seed=seed, **input_options)
        err = compare(before, after, inputs, sizes)
        if not err < tol:
            raise PassError(f"{after.name}: rewrite changed the result (relative error {err:.3g} with "
                            f"sizes {dict(sizes)}, seed {seed})")
        worst = max(worst, err)
    return worst




def default_sizes(c: Cascade, queries: int = 13, keys: int = 11, dim: int = 5,
                  other: int = 6) -> dict[str, int]:
    """Small sizes for every free rank of ``c`` (``P`` queries, ``M`` keys, ``E``/``F`` head dims,
    anything else ``other``), chosen so that default tiles are ragged."""
    sizes = {}
    for r in c.ranks.values():
        if r.is_default_extent and r.name not in c.params:
            sizes[r.name] = {"P": queries, "M": keys, "E": dim, "F": dim}.get(r.name, other)
    return sizes


__all__ = ["check_equivalent", "compare", "default_sizes", "random_inputs", "rank_sizes", "rel_error",
           "tied_sizes"]
