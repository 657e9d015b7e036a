"""The same variant through other implementations, for ``einfuse bench``: FlexAttention, SDPA/cuDNN.

FlexAttention gets its ``score_mod`` and ``mask_mod`` from the cascade itself (the analysed score
expression and mask predicate evaluated with torch ops), so every softmax-family variant has a
Flex peer without writing it twice. SDPA (flash/cuDNN back ends) takes only unmasked or causal
attention. Also here: the exact count of kept (query, key) pairs, from which FLOP rates are
reported (4 * D * pairs per head for Q.K and P.V, the convention of the targets: causal counts half,
windowed variants count window pairs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy

from einfuse.errors import CodegenError
from einfuse.ir.expr import Access, Binary, Compare, Const, Expr, IndexValue, Select, Unary, walk
from einfuse.ir.positions import query_position
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, size_symbol
from einfuse.ir.ranks import KEY_INDEX as M_IDX
from einfuse.ir.ranks import QUERY_INDEX as P_IDX
from einfuse.lowering import torch_eval
from einfuse.lowering.onepass import DOT, OnePassPlan


def _bind(e: sympy.Basic, sizes: dict[str, int]) -> sympy.Basic:
    return sympy.sympify(e).subs({size_symbol(k): v for k, v in sizes.items()})


def mask_fn(plan: OnePassPlan, sizes: dict[str, int]) -> Callable[..., Any] | None:
    """``mask_mod(b, h, q_idx, kv_idx)`` for FlexAttention (None: no mask)."""
    if plan.mask is None:
        return None
    pred = torch_eval.compile_expr(_bind(plan.mask, sizes))

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        env = {P_IDX: q_idx.double(), M_IDX: kv_idx.double(), HEAD_INDEX: h.double(), BATCH_INDEX: b.double()}
        return pred(env)

    return mask_mod


def score_fn(plan: OnePassPlan, sizes: dict[str, int]) -> Callable[..., Any] | None:
    """``score_mod(score, b, h, q_idx, kv_idx)`` for FlexAttention, the score scale included."""
    import torch

    from einfuse.lowering.onepass import plain_scale

    expr = plan.score
    if plain_scale(expr) is not None:
        return None  # a plain scale goes to flex_attention(scale=...)
    compiled: dict[int, Any] = {}  # sympy parts compiled once, outside the traced score_mod
    for node in walk(expr):
        if isinstance(node, IndexValue):
            compiled[id(node)] = torch_eval.compile_expr(_bind(node.expr, sizes))
        elif isinstance(node, Select) and not isinstance(node.cond, Compare):
            compiled[id(node)] = torch_eval.compile_expr(_bind(node.cond, sizes))

    def ev(e: Expr, score: Any, env: dict) -> Any:
        if isinstance(e, Access) and e.tensor == DOT:
            return score
        if isinstance(e, Const):
            return e.value
        if isinstance(e, IndexValue):
            return torch_eval._t(compiled[id(e)](env)).to(score.dtype)
        if isinstance(e, Unary):
            x = ev(e.arg, score, env)
            fns = {"exp": torch.exp, "log": torch.log, "neg": torch.neg, "sigmoid": torch.sigmoid,
                   "tanh": torch.tanh, "relu": torch.relu, "sqrt": torch.sqrt, "abs": torch.abs,
                   "reciprocal": torch.reciprocal, "square": torch.square, "sin": torch.sin,
                   "cos": torch.cos, "tan": torch.tan}
            if e.op not in fns:
                raise CodegenError(f"no torch form of {e.op} for the FlexAttention peer")
            return fns[e.op](x)
        if isinstance(e, Binary):
            a, b = ev(e.left, score, env), ev(e.right, score, env)
            if e.op in ("max", "min"):
                return (torch.maximum if e.op == "max" else torch.minimum)(torch.as_tensor(a), torch.as_tensor(b))
            return {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "div": lambda: a / b}[e.op]()
        if isinstance(e, Compare):
            a, b = torch.as_tensor(ev(e.left, score, env)), torch.as_tensor(ev(e.right, score, env))
            return {"lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "eq": torch.eq,
                    "ne": torch.ne}[e.op](a, b)
        if isinstance(e, Select):
            cond = ev(e.cond, score, env) if isinstance(e.cond, Compare) else compiled[id(e)](env)
            return torch.where(cond, ev(e.then, score, env), ev(e.otherwise, score, env))
        raise CodegenError(f"no torch form of {e!r} for the FlexAttention peer")

    def score_mod(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        env = {P_IDX: q_idx.double(), M_IDX: kv_idx.double(), HEAD_INDEX: h.double(), BATCH_INDEX: b.double()}
        return ev(expr, score, env)

    return score_mod


def with_head_dims(plan: OnePassPlan, q: Any, v: Any) -> OnePassPlan:
    """The plan with its head dims bound to those of q and v (the default scale reads them)."""
    import dataclasses

    from einfuse.ir.expr import substitute

    dims = {size_symbol(plan.head_rank): int(q.shape[3]), size_symbol(plan.value_rank): int(v.shape[3])}
    return dataclasses.replace(plan, score=substitute(plan.score, dims))


def flex_runner(plan: OnePassPlan, sizes: dict[str, int], q: Any, k: Any, v: Any) -> Callable[[], Any]:
    """A compiled FlexAttention call of the same variant (block mask built once, outside timing)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    plan = with_head_dims(plan, q, v)

    if plan.family != "softmax":
        raise CodegenError("FlexAttention computes softmax attention only")
    B, H, Nq, _ = q.shape
    Nkv = k.shape[2]
    sizes = {**sizes, "P": Nq, "M": Nkv, "H": H, "B": B}
    mm = mask_fn(plan, sizes)
    block_mask = None
    if mm is not None:
        heads = H if plan.mask_uses(HEAD_INDEX) else None
        block_mask = create_block_mask(mm, B=None, H=heads, Q_LEN=Nq, KV_LEN=Nkv, device=q.device)
    sm = score_fn(plan, sizes)
    from einfuse.lowering.onepass import plain_scale

    scale = plain_scale(plan.score) if sm is None else 1.0
    fn = torch.compile(flex_attention, dynamic=False)
    gqa = k.shape[1] != H
    return lambda: fn(q, k, v, score_mod=sm, block_mask=block_mask, scale=scale, enable_gqa=gqa)


def causal_alignment(mask: sympy.Basic | None) -> str | None:
    """'top_left' for ``m <= p``, 'bottom_right' for ``m <= p + M - P`` (einfuse.ir.positions), else None."""
    if mask is None:
        return None
    for align in ("top_left", "bottom_right"):
        qpos = query_position(align)
        if mask in (sympy.Le(M_IDX, qpos), sympy.Ge(qpos, M_IDX)):
            return align
    return None


def sdpa_runner(plan: OnePassPlan, backend: str, q: Any, k: Any, v: Any) -> Callable[[], Any]:
    """torch SDPA with one back end ('flash' or 'cudnn'); unmasked or causal (either alignment:
    ``is_causal`` when the lengths are equal, torch's ``causal_upper_left``/``causal_lower_right``
    bias otherwise)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right, causal_upper_left

    from einfuse.lowering.onepass import plain_scale

    plan = with_head_dims(plan, q, v)
    align = causal_alignment(plan.mask)
    scale = plain_scale(plan.score)
    if plan.family != "softmax" or scale is None or (plan.mask is not None and align is None):
        raise CodegenError("SDPA runs plain softmax attention, unmasked or causal, only")
    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    gqa = k.shape[1] != q.shape[1]
    n_q, n_kv = q.shape[2], k.shape[2]
    bias = None
    if align is not None and n_q != n_kv:
        bias = (causal_lower_right if align == "bottom_right" else causal_upper_left)(n_q, n_kv)

    def run() -> Any:
        with sdpa_kernel([be]):
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, is_causal=align is not None and bias is None, scale=scale,
                enable_gqa=gqa)
    return run


def kept_pairs(plan: OnePassPlan, sizes: dict[str, int], n_q: int, n_kv: int, heads: int,
               device: Any = "cpu") -> int:
    """Number of (head, query, key) pairs the mask keeps, summed over heads (exact, chunked)."""
    import torch

    if plan.mask is None:
        return heads * n_q * n_kv
    pred = _bind(plan.mask, {**sizes, "P": n_q, "M": n_kv, "H": heads})
    kv = torch.arange(n_kv, device=device, dtype=torch.float64)[None, :]
    step = max(1, (1 << 24) // max(n_kv, 1))
    total = 0
    head_range = range(heads) if HEAD_INDEX in pred.free_symbols else [0]
    for h in head_range:
        for s in range(0, n_q, step):
            qi = torch.arange(s, min(n_q, s + step), device=device, dtype=torch.float64)[:, None]
            keep = torch_eval.evaluate(pred, {P_IDX: qi, M_IDX: kv, HEAD_INDEX: float(h), BATCH_INDEX: 0.0})
            total += int(torch.broadcast_to(torch.as_tensor(keep, device=device), (qi.shape[0], n_kv)).sum())
    if len(head_range) == 1:
        total *= heads
    return total


def attention_flops(pairs_per_batch: int, batch: int, head_dim: int, value_dim: int) -> float:
    """2 FLOPs per multiply-add in Q.K (head_dim) and P.V (value_dim) for each kept pair."""
    return 2.0 * batch * pairs_per_batch * (head_dim + value_dim)


__all__ = ["attention_flops", "causal_alignment", "flex_runner", "kept_pairs", "mask_fn", "score_fn", "sdpa_runner"]
