"""Float64 reference outputs for benchmark rows, computed on the GPU from the cascade itself.

The reference executor (:mod:`einfuse.codegen.reference`) is exact but runs on the CPU over the whole
(query, key) grid, too slow at N = 16K. Here the same semantics are evaluated with torch in float64
for a *slice* of queries and heads (true head and query indices kept, so ALiBi slopes, decays and
causal masks are those of the full problem), over all keys. The logit, mask, decay and feature maps
are read from the cascade (the same analyses the Triton back ends use, but evaluated by the
independent torch code below), so every system in a row is checked against the variant's definition.
tests/benchmarks/test_bench_reference.py checks this module against the reference executor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import sympy
import torch
from sympy.core.relational import Relational

from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import Access, Binary, Const, Expr, IndexValue, Select, Unary
from einfuse.ir.positions import equal_length_cascade
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, size_symbol
from einfuse.lowering.decode import analyse_decode
from einfuse.lowering.linear import (
    DIST,
    M_IDX,
    P_IDX,
    analyse_linear,
    inline_elementwise,
    product_factors,
)

_REL = {
    sympy.StrictLessThan: torch.lt, sympy.LessThan: torch.le, sympy.StrictGreaterThan: torch.gt,
    sympy.GreaterThan: torch.ge, sympy.Equality: torch.eq, sympy.Unequality: torch.ne,
}


def sym_eval(e: sympy.Basic, env: Mapping[sympy.Symbol, Any]) -> Any:
    """A sympy index expression or predicate on float64 torch tensors (exact for integers < 2**53)."""
    if isinstance(e, sympy.Symbol):
        return env[e]
    if e is sympy.true or e is sympy.false:
        return bool(e)
    if isinstance(e, sympy.Integer):
        return float(int(e))
    if isinstance(e, sympy.Rational):
        return float(e.p) / float(e.q)
    if e.is_Number:
        return float(e)
    args = [sym_eval(a, env) for a in e.args] if not isinstance(e, Relational) else None
    if isinstance(e, sympy.Add):
        return functools.reduce(lambda a, b: a + b, args)
    if isinstance(e, sympy.Mul):
        coeff, rest = e.as_coeff_Mul()
        if isinstance(coeff, sympy.Rational) and not isinstance(coeff, sympy.Integer):
            return (float(coeff.p) * sym_eval(rest, env)) / float(coeff.q)
        return functools.reduce(lambda a, b: a * b, args)
    if isinstance(e, sympy.Pow):
        base, ex = args
        return torch.pow(torch.as_tensor(base, dtype=torch.float64), ex)
    if isinstance(e, sympy.floor):
        return torch.floor(torch.as_tensor(args[0], dtype=torch.float64))
    if isinstance(e, sympy.ceiling):
        return torch.ceil(torch.as_tensor(args[0], dtype=torch.float64))
    if isinstance(e, sympy.Mod):
        a, b = args
        return a - b * torch.floor(torch.as_tensor(a / b, dtype=torch.float64))
    if isinstance(e, sympy.Abs):
        return torch.abs(torch.as_tensor(args[0]))
    if isinstance(e, sympy.Max):
        return functools.reduce(lambda a, b: torch.maximum(torch.as_tensor(a), torch.as_tensor(b)), args)
    if isinstance(e, sympy.Min):
        return functools.reduce(lambda a, b: torch.minimum(torch.as_tensor(a), torch.as_tensor(b)), args)
    if isinstance(e, sympy.exp):
        return torch.exp(torch.as_tensor(args[0], dtype=torch.float64))
    if isinstance(e, sympy.log):
        return torch.log(torch.as_tensor(args[0], dtype=torch.float64))
    if isinstance(e, Relational):
        return _REL[type(e)](torch.as_tensor(sym_eval(e.lhs, env)), torch.as_tensor(sym_eval(e.rhs, env)))
    if isinstance(e, sympy.And):
        return functools.reduce(torch.logical_and, (torch.as_tensor(a) for a in args))
    if isinstance(e, sympy.Or):
        return functools.reduce(torch.logical_or, (torch.as_tensor(a) for a in args))
    if isinstance(e, sympy.Not):
        return torch.logical_not(torch.as_tensor(args[0]))
    raise TypeError(f"cannot evaluate {e} ({type(e).__name__})")


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp, "log": torch.log, "neg": torch.neg, "sigmoid": torch.sigmoid, "relu": torch.relu,
    "reciprocal": torch.reciprocal, "tanh": torch.tanh, "sqrt": torch.sqrt, "abs": torch.abs,
    "elu1": lambda x: torch.where(x > 0, x + 1.0, torch.exp(torch.clamp(x, max=0.0))), "square": torch.square,
}
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "max": torch.maximum, "min": torch.minimum,
}


def expr_eval(e: Expr, leaf: Callable[[Access], torch.Tensor], env: Mapping[sympy.Symbol, Any]) -> Any:
    """A value expression on torch tensors; ``leaf`` gives each access's tensor."""
    if isinstance(e, Access):
        return leaf(e)
    if isinstance(e, Const):
        return e.value
    if isinstance(e, IndexValue):
        return torch.as_tensor(sym_eval(e.expr, env), dtype=torch.float64)
    if isinstance(e, Unary):
        return _UNARY[e.op](torch.as_tensor(expr_eval(e.arg, leaf, env), dtype=torch.float64))
    if isinstance(e, Binary):
        a, b = expr_eval(e.left, leaf, env), expr_eval(e.right, leaf, env)
        return _BINARY[e.op](torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    if isinstance(e, Select):
        return torch.where(torch.as_tensor(sym_eval(e.cond, env)), expr_eval(e.then, leaf, env),
                           expr_eval(e.otherwise, leaf, env))
    raise TypeError(f"cannot evaluate {e!r}")


def _env(c: Cascade, heads: torch.Tensor, qidx: torch.Tensor, nk: int, sizes: Mapping[str, int],
         b: int) -> dict:
    dev = qidx.device
    env: dict = {size_symbol(k): float(v) for k, v in {**c.params, **sizes}.items()}
    env[HEAD_INDEX] = heads.to(torch.float64).view(-1, 1, 1)
    env[P_IDX] = qidx.to(torch.float64).view(1, -1, 1)
    env[M_IDX] = torch.arange(nk, device=dev, dtype=torch.float64).view(1, 1, -1)
    env[BATCH_INDEX] = float(b)
    return env


def _slices(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: int, heads: torch.Tensor,
            qidx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    H, Hkv = q.shape[1], k.shape[1]
    kvh = heads // (H // Hkv)
    qs = q[b][heads][:, qidx].double()
    return qs, k[b][kvh].double(), v[b][kvh].double()


def reference(c: Cascade, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: int,
              heads: torch.Tensor, qidx: torch.Tensor, **sizes: int) -> torch.Tensor:
    """Float64 output ``O[b, heads, qidx, :]`` of cascade ``c`` on ``(B, H, N, D)`` inputs."""
    B, H, NQ, D = q.shape
    NK, DV = k.shape[2], v.shape[3]
    allsizes = {"B": B, "H": H, "P": NQ, "M": NK, "E": D, "F": DV, **sizes}
    env = _env(c, heads, qidx, NK, allsizes, b)
    qs, ks, vs = _slices(q, k, v, b, heads, qidx)
    family = c.attrs.get("family")
    if family == "softmax":
        plan = analyse_decode(c)
        scale = float(sym_eval(sympy.sympify(plan.scale), env))  # a number, or 1/sqrt(E) by default
        qk = torch.einsum("hpe,hme->hpm", qs, ks) * scale
        logit = torch.as_tensor(expr_eval(plan.logit, lambda a: qk, env), dtype=torch.float64)
        logit = torch.broadcast_to(logit, qk.shape)
        if plan.mask is not None:
            keep = torch.broadcast_to(torch.as_tensor(sym_eval(plan.mask, env)), qk.shape)
            logit = torch.where(keep, logit, float("-inf"))
        mx = logit.amax(-1, keepdim=True)
        w = torch.exp(logit - torch.where(torch.isfinite(mx), mx, 0.0))
        den = w.sum(-1, keepdim=True)
        return torch.einsum("hpm,hmf->hpf", w, vs) / torch.where(den > 0, den, 1.0)
    if family == "linear":
        plan = analyse_linear(equal_length_cascade(c))  # as build_linear reads it: one sequence, N_q = N_kv
        fq = qs if plan.q_map is None else expr_eval(plan.q_map, lambda a: qs, env)
        fk = ks if plan.k_map is None else expr_eval(plan.k_map, lambda a: ks, env)
        w = torch.einsum("hpe,hme->hpm", fq, fk) * plan.scale
        if plan.decay is not None:
            denv = {**env, DIST: torch.clamp(env[P_IDX] - env[M_IDX], min=0)}
            w = w * torch.as_tensor(sym_eval(plan.decay, denv))
        if plan.mask is not None:
            w = torch.where(torch.broadcast_to(torch.as_tensor(sym_eval(plan.mask, env)), w.shape), w, 0.0)
        out = torch.einsum("hpm,hmf->hpf", w, vs)
        return out / w.sum(-1, keepdim=True) if plan.normalize else out
    if family == "sigmoid":
        return _weighted(c, qs, ks, vs, env)
    raise ValueError(f"no benchmark reference for family {family!r}")


def _weighted(c: Cascade, qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor, env: dict) -> torch.Tensor:
    """``O = sum_m W(score) V`` over present points: sigmoid attention and kin."""
    score = next(e for e in c.einsums if e.reduce == "sum" and set(e.output.indices) == {P_IDX, M_IDX})
    scale = 1.0
    for f in product_factors(score.expr):
        if isinstance(f, Const):
            scale *= f.value
        elif isinstance(f, IndexValue):  # the default scale 1/sqrt(E): sizes only
            scale *= float(sym_eval(f.expr, env))
    out = c.einsums[c.producers(c.outputs[0])[0]]
    wheres = [score.where] if score.where is not None else []
    weight_expr = inline_elementwise(c, out.expr, {score.name}, wheres)
    facs = product_factors(weight_expr)
    vfac = [f for f in facs if isinstance(f, Access) and f.tensor in c.inputs]
    rest = [f for f in facs if f not in vfac]
    qk = torch.einsum("hpe,hme->hpm", qs, ks) * scale
    w = torch.ones_like(qk)
    for f in rest:
        w = w * torch.as_tensor(expr_eval(f, lambda a: qk, env), dtype=torch.float64)
    for wh in wheres:
        w = torch.where(torch.broadcast_to(torch.as_tensor(sym_eval(wh, env)), w.shape), w, 0.0)
    return torch.einsum("hpm,hmf->hpf", w, vs)


def visible_pairs(c: Cascade, nq: int, nk: int, device: str = "cuda", rows: int = 1024,
                  **sizes: int) -> int:
    """How many (query, key) pairs the score constraint keeps (head 0), for useful-FLOP counts."""
    score = next(e for e in c.einsums if e.reduce == "sum" and set(e.output.indices) == {P_IDX, M_IDX})
    wheres = [score.where] if score.where is not None else []
    if c.attrs.get("family") == "softmax":
        mask = analyse_decode(c).mask
        wheres = [mask] if mask is not None else []
    if not wheres:
        return nq * nk
    total = 0
    for start in range(0, nq, rows):
        qidx = torch.arange(start, min(start + rows, nq), device=device)
        env = _env(c, torch.zeros(1, device=device, dtype=torch.long), qidx, nk,
                   {"P": nq, "M": nk, "H": 1, **sizes}, 0)
        keep = torch.ones((1, len(qidx), nk), dtype=torch.bool, device=device)
        for wh in wheres:
            keep &= torch.broadcast_to(torch.as_tensor(sym_eval(wh, env), device=device), keep.shape)
        total += int(keep.sum())
    return total
