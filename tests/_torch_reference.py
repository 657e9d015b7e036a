"""A differentiable float64 torch reference of one-pass softmax plans, for gradient checks.

It evaluates the plan's own score expression and mask (IR value expressions and sympy predicates)
densely with torch, so autograd of it is the oracle the generated backward kernels are compared
with; its forward is checked against the golden reference executor (``run_cascade``) in the tests.
"""

from __future__ import annotations

import torch

from einfuse.ir.expr import Access, Binary, Compare, Const, Expr, IndexValue, Select, Unary
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, KEY_INDEX, QUERY_INDEX, size_symbol
from einfuse.lowering import torch_eval

_UNARY = {
    "exp": torch.exp, "log": torch.log, "neg": torch.neg, "sigmoid": torch.sigmoid, "relu": torch.relu,
    "reciprocal": torch.reciprocal, "tanh": torch.tanh, "sqrt": torch.sqrt, "abs": torch.abs,
    "square": torch.square, "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "step": lambda x: (x > 0).to(torch.float64), "elu1": lambda x: torch.where(x > 0, x + 1.0, torch.exp(torch.clamp(x, max=0.0))),
}
_CMP = {"lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "eq": torch.eq, "ne": torch.ne}
_BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "max": torch.maximum,
           "min": torch.minimum}


def _eval(e: Expr, x: torch.Tensor, env: dict) -> torch.Tensor:
    if isinstance(e, Access):
        return x
    if isinstance(e, Const):
        return torch.tensor(e.value, dtype=torch.float64)
    if isinstance(e, IndexValue):
        return torch.as_tensor(torch_eval.evaluate(e.expr, env), dtype=torch.float64)
    if isinstance(e, Unary):
        return _UNARY[e.op](_eval(e.arg, x, env))
    if isinstance(e, Binary):
        return _BINARY[e.op](_eval(e.left, x, env), _eval(e.right, x, env))
    if isinstance(e, Select):
        if isinstance(e.cond, Compare):  # a condition on values (the score), not on positions
            cond = _CMP[e.cond.op](_eval(e.cond.left, x, env), _eval(e.cond.right, x, env))
        else:
            cond = torch.as_tensor(torch_eval.evaluate(e.cond, env), dtype=torch.bool)
        return torch.where(cond, _eval(e.then, x, env), _eval(e.otherwise, x, env))
    raise TypeError(f"cannot evaluate {e!r}")


def softmax_plan_attention(plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           sizes: dict | None = None) -> torch.Tensor:
    """``softmax(score(Q.K) masked) V`` of a one-pass plan (``plan.detail``), rows with no kept key 0;
    K/V heads repeated over their query group (GQA)."""
    det = plan.detail
    B, H, Nq, _ = q.shape
    Hkv, Nkv = k.shape[1], k.shape[2]
    kk, vv = (t.repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    x = q @ kk.transpose(-1, -2)
    bound = {size_symbol(n): val for n, val in {**plan.cascade.params, **(sizes or {})}.items()}
    bound.update({size_symbol("P"): Nq, size_symbol("M"): Nkv, size_symbol("H"): H, size_symbol("B"): B,
                  size_symbol(det.head_rank): q.shape[3], size_symbol(det.value_rank): v.shape[3]})
    dev = q.device  # the GPU tests evaluate the mask beside the kernel's inputs
    env = {QUERY_INDEX: torch.arange(Nq, dtype=torch.float64, device=dev)[:, None],
           KEY_INDEX: torch.arange(Nkv, dtype=torch.float64, device=dev)[None, :],
           HEAD_INDEX: torch.arange(H, dtype=torch.float64, device=dev)[:, None, None],
           BATCH_INDEX: torch.arange(B, dtype=torch.float64, device=dev)[:, None, None, None]}
    from einfuse.ir.expr import substitute

    s = _eval(substitute(det.score, bound), x, env)
    if det.mask is None:
        keep = torch.ones_like(x, dtype=torch.bool)
    else:
        keep = torch.as_tensor(torch_eval.evaluate(det.mask.subs(bound), env), dtype=torch.bool)
        keep = torch.broadcast_to(keep, x.shape)
    s = torch.where(keep, s, float("-inf"))
    mx = s.amax(-1, keepdim=True).detach()
    mx = torch.where(torch.isfinite(mx), mx, 0.0)
    e = torch.where(keep, torch.exp(s - mx), 0.0)
    den = e.sum(-1, keepdim=True)
    return (e / torch.where(den == 0, 1.0, den)) @ vv


def sigmoid_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: float, causal: bool = False,
                      mask=None) -> torch.Tensor:
    """Sigmoid attention (FlashSigmoid) written out: ``sigmoid(q.k / sqrt(D) + bias) V``, masked pairs
    0 (``causal`` bottom-right; ``mask(qi, ki)`` an extra predicate), K/V heads repeated over GQA groups."""
    H, Hkv = q.shape[1], k.shape[1]
    kk, vv = (t.repeat_interleave(H // Hkv, dim=1) for t in (k, v))
    w = torch.sigmoid(q @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5 + bias)
    qi = torch.arange(q.shape[2], device=q.device)[:, None]
    ki = torch.arange(k.shape[2], device=q.device)[None, :]
    keep = (ki <= qi + k.shape[2] - q.shape[2]) if causal else torch.ones_like(w, dtype=torch.bool)
    if mask is not None:
        keep = keep & mask(qi, ki)
    return torch.where(keep, w, 0.0) @ vv


def linear_plan_attention(plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          heads: list[int] | None = None, n_heads: int | None = None) -> torch.Tensor:
    """Linear attention of a linear plan (``plan.detail.plan``) written out quadratically:
    ``A[p,m] = phi_q(q).phi_k(k) * scale * g(p - m)`` where the mask keeps (p, m), ``A V``, divided
    by ``sum_m A`` when the plan normalises (rows with no kept key 0); K/V heads repeated over GQA groups.
    ``heads``/``n_heads``: q holds only these query heads of ``n_heads`` (the decay depends on h and H),
    so the GPU tests check a few heads of a large problem."""
    from einfuse.ir.ranks import HEAD_EXTENT
    from einfuse.lowering.linear import DIST

    lin = plan.detail.plan
    B, H, N, _ = q.shape
    kk, vv = (t.repeat_interleave(H // k.shape[1], dim=1) for t in (k, v))
    fq = q if lin.q_map is None else _eval(lin.q_map, q, {})
    fk = kk if lin.k_map is None else _eval(lin.k_map, kk, {})
    a = (fq @ fk.transpose(-1, -2)) * lin.scale
    pos = torch.arange(N, dtype=torch.float64, device=q.device)
    p, m = pos[:, None], pos[None, :]
    if lin.decay is not None:
        hs = torch.tensor(heads if heads is not None else range(H), dtype=torch.float64, device=q.device)
        g = torch_eval.evaluate(lin.decay, {DIST: torch.clamp(p - m, min=0.0), HEAD_INDEX: hs[:, None, None],
                                            HEAD_EXTENT: n_heads or H})
        a = a * torch.as_tensor(g, dtype=torch.float64, device=q.device)
    keep = torch.ones(N, N, dtype=torch.bool, device=q.device) if lin.mask is None else \
        torch.broadcast_to(torch.as_tensor(torch_eval.evaluate(lin.mask, {QUERY_INDEX: p, KEY_INDEX: m}),
                                           dtype=torch.bool, device=q.device), (N, N))
    a = torch.where(keep, a, 0.0)
    out = a @ vv
    if lin.normalize:
        den = a.sum(-1, keepdim=True)
        rows = keep.any(-1)[:, None]
        out = torch.where(rows, out / torch.where(rows, den, 1.0), 0.0)
    return out
