"""Triton kernel for the gradients of float captured tensors (learned bias tables, slopes, gates).

One program per (query tile, batch x head) walks every key tile, recomputes the forward's
probabilities from the saved log-sum-exp and the score gradient ``dS = P (dO V^T - D)``, and
scatters ``dS * ds/dr`` into each read's table element with an atomic add (many (query, key) pairs
share one element of a relative-position table). The derivatives ``ds/dr`` come from
:mod:`einfuse.lowering.capture_grad`; the score, mask and reads are printed as in the forward
kernel. A separate pass over the keys keeps the FlashAttention-2 kernels untouched; it visits every
key tile (masked pairs contribute 0), so it costs about one forward pass more.
"""

from __future__ import annotations

import math
from typing import Any

from einfuse.codegen import capture_args
from einfuse.codegen.triton.backward_emit import QUERY_ROW
from einfuse.codegen.triton.emit import _bind_params, _bind_params_expr, head_dim_names, kernel_names
from einfuse.codegen.triton.index_printer import HELPERS as INDEX_HELPERS
from einfuse.codegen.triton.index_printer import IndexPrinter
from einfuse.codegen.triton.loader import load_module
from einfuse.codegen.triton.options import pow2
from einfuse.codegen.triton.score_printer import HELPERS as SCORE_HELPERS
from einfuse.codegen.triton.score_printer import const_code, print_score
from einfuse.ir.ranks import KEY_INDEX as M_IDX
from einfuse.ir.ranks import QUERY_INDEX as P_IDX
from einfuse.lowering.capture_grad import ReadGrad, read_gradients
from einfuse.lowering.onepass import OnePassPlan

LOG2E = math.log2(math.e)
KERNEL = "capture_grad"

_STEP = '''
@triton.jit
def _step(x):
    return tl.where(x > 0, 1.0, 0.0)
'''


def grad_names(grads: tuple[ReadGrad, ...]) -> list[str]:
    return sorted({g.name for g in grads})


def emit_capture_grad(plan: OnePassPlan, sizes: dict[str, int]) -> str:
    """The module of the capture-gradient kernel of a softmax plan."""
    names = kernel_names(plan, sizes)
    idx = IndexPrinter(names, context=f"cascade {plan.name} (captured-tensor gradients)", tensors=(P_IDX, M_IDX))
    score = _bind_params_expr(plan.score, sizes)
    hd = head_dim_names(plan)
    grads = read_gradients(score)
    keep = "qvalid[:, None] & kvalid[None, :]"
    if plan.mask is not None:
        keep = f"({idx.predicate(_bind_params(plan.mask, sizes))}) & {keep}"
    scatter = []
    for g in grads:
        base, codes = idx.capture_indices(g.read)
        off = " + ".join(f"tl.minimum(tl.maximum({c}, 0), {base}_n{k} - 1) * d{base}_s{k}"
                         for k, c in enumerate(codes))
        head = (f"        # d{g.name}[{', '.join(map(str, g.read.args))}] += dS * ({_short(g.dscore)})\n"
                f"        dr = {print_score(g.dscore, idx, constexprs=hd)}\n"
                f"        g = tl.where(keep & (p > 0), ds * dr, 0.0)\n")
        if g.read.free_symbols & {P_IDX, M_IDX}:  # one element per pair: scatter the tile
            scatter.append(head + f"        tl.atomic_add(d{base} + {off} + (qi + ki) * 0, g, mask=keep)\n")
        else:  # one element for the whole tile (per head or batch): sum it first, one atomic
            scatter.append(head + f"        tl.atomic_add(d{base} + {off}, tl.sum(tl.sum(g, 1), 0))\n")
    caps = capture_args.plan_captures(plan.score, plan.mask)
    dparams = "".join(f", d{c.base}" + "".join(f", d{c.base}_s{k}" for k in range(c.ndim))
                      for c in caps if c.name in grad_names(grads))
    return f'''"""einfuse: gradients of the captured tensors of `{plan.name}` (generated; see
einfuse/codegen/triton/capture_grad.py)."""
import triton
import triton.language as tl

{INDEX_HELPERS}
{SCORE_HELPERS}
{_STEP}

@triton.jit
def {KERNEL}(Q, K, V, DO, LSE, DELTA, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
             stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
             N_Q, N_KV, H, B, GROUP, Q_OFF{capture_args.param_text(caps)}{dparams},
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
             HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, FAST_MATH: tl.constexpr,
             DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    qpos = t * BLOCK_M + tl.arange(0, BLOCK_M)
    qvalid = qpos < N_Q
    qi = qpos[:, None]
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
{QUERY_ROW}    for start in range(0, N_KV, BLOCK_N):
        kpos = start + tl.arange(0, BLOCK_N)
        kvalid = kpos < N_KV
        ki = kpos[None, :]
        k = tl.load(K_head + kpos[:, None] * stride_kn + offs_d[None, :],
                    mask=kvalid[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
        v = tl.load(V_head + kpos[:, None] * stride_vn + offs_dv[None, :],
                    mask=kvalid[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        s = {print_score(score, idx, constexprs=hd)}
        keep = {keep}
        # P = exp(s - LSE) (LSE saved by the forward in log2 units); dS = P * (dO V^T - D)
        p = tl.where(keep, tl.math.exp2(s * {const_code(LOG2E)} - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
{"".join(scatter)}'''


def _short(e: Any) -> str:
    from einfuse.ir.printer import format_expr
    from einfuse.lowering.onepass import DOT

    return format_expr(e).replace(f"{DOT}[m,p]", "x").replace('"', "'")


def capture_grads(fwd: Any, q: Any, k: Any, v: Any, out: Any, dout: Any, lse: Any, runtime: dict[str, Any],
                  names: tuple[str, ...]) -> list[Any]:
    """Gradients of the captured tensors ``names`` (zeros for one the score does not read
    differentiably, e.g. one read by the mask only), in that order; ``fwd`` is the forward
    :class:`~einfuse.codegen.triton.runtime.AttentionKernel`, ``lse`` its saved log-sum-exp."""
    import torch

    plan: OnePassPlan = fwd.plan
    tensors, _ = fwd.call_captures(dict(runtime), q) or ({}, ())
    declared = fwd.cascade.captures
    originals = {n: runtime.get(n, declared[n].value if n in declared else None) for n in names}
    grads = read_gradients(_bind_params_expr(plan.score, fwd.sizes))
    want = [n for n in grad_names(grads) if n in names]
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    dbufs = {n: torch.zeros(tuple(originals[n].shape), dtype=acc_dtype, device=q.device) for n in names}
    if want:
        mod = fwd.__dict__.get("_capture_grad_module")
        if mod is None:
            mod = load_module(emit_capture_grad(plan, fwd.sizes), f"{plan.name}_capgrad")
            fwd.__dict__["_capture_grad_module"] = mod
        caps = capture_args.plan_captures(plan.score, plan.mask)
        dargs = []
        for c in caps:
            if c.name in want:
                dargs += [dbufs[c.name], *dbufs[c.name].stride()]
        q, k, v, dout = (t.contiguous() for t in (q, k, v, dout))
        B, H, Nq, D = q.shape
        Hkv, Nkv, Dv = k.shape[1], k.shape[2], v.shape[3]
        delta = (dout.to(acc_dtype) * out.to(acc_dtype)).sum(-1).contiguous()
        interp = q.device.type != "cuda"
        bm, bn = (32, 32) if interp else (64, 64)
        getattr(mod, KERNEL)[(-(-Nq // bm), B * H)](
            q, k, v, dout, lse.contiguous(), delta, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *dout.stride()[:3], Nq, Nkv, H, B, H // Hkv, int(runtime.get("q_offset") or 0),
            *capture_args.launch_args(caps, tensors), *dargs,
            BLOCK_M=bm, BLOCK_N=bn, HEAD_D=D, BLOCK_D=pow2(D), HEAD_DV=Dv, BLOCK_DV=pow2(Dv),
            FAST_MATH=False, DOT_PRECISION="ieee" if q.dtype in (torch.float32, torch.float64) else "tf32",
            UPCAST=interp and q.dtype == torch.bfloat16)
    return [dbufs[n].to(originals[n].dtype) for n in names]


__all__ = ["capture_grads", "emit_capture_grad"]
