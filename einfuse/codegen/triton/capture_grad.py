"""Triton kernel for the gradients of float captured tensors (learned bias tables, slopes, gates).

One program per (query tile, batch x head) walks the key tiles of the forward's block tables, the
very tables the dQ kernel reads (same tile sizes, tile orders and cache entry: FULL tiles without
mask code, PARTIAL tiles with it, EMPTY tiles never; for a mask over captured index tensors, e.g.
``doc_ids[q] == doc_ids[kv]``, the tables built from their values at run time). Per pair it
recomputes the forward's probabilities from the saved log-sum-exp and the score gradient
``dS = P (dO V^T - D)``, and scatters ``dS * ds/dr`` into each read's table element with an atomic
add (many (query, key) pairs share one element of a relative-position table). The derivatives
``ds/dr`` come from :mod:`einfuse.lowering.capture_grad`; the score, mask and reads are printed as
in the forward kernel. A separate pass keeps the FlashAttention-2 kernels untouched; it costs about
one forward pass over the visited tiles, plus the atomics.
"""

from __future__ import annotations

import math
from typing import Any

from einfuse.codegen import capture_args
from einfuse.codegen.triton.backward_emit import KEY_TILE, QUERY_ROW
from einfuse.codegen.triton.emit import (
    TABLE_ROW,
    _bind_params,
    _bind_params_expr,
    head_dim_names,
    kernel_names,
)
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
from einfuse.lowering.tile_order import FLAT, TileOrder

LOG2E = math.log2(math.e)
KERNEL = "capture_grad"

_STEP = '''
@triton.jit
def _step(x):
    return tl.where(x > 0, 1.0, 0.0)
'''


def grad_names(grads: tuple[ReadGrad, ...]) -> list[str]:
    return sorted({g.name for g in grads})


def _scatter(grads: tuple[ReadGrad, ...], idx: IndexPrinter, hd: dict) -> str:
    """The tile's lines adding ``dS * ds/dr`` into each read's element (indices clamped as read)."""
    out = []
    for g in grads:
        base, codes = idx.capture_indices(g.read)
        off = " + ".join(f"tl.minimum(tl.maximum({c}, 0), {base}_n{k} - 1) * d{base}_s{k}"
                         for k, c in enumerate(codes))
        head = (f"    # d{g.name}[{', '.join(map(str, g.read.args))}] += dS * ({_short(g.dscore)})\n"
                f"    dr = {print_score(g.dscore, idx, constexprs=hd)}\n"
                f"    g = tl.where(keep & (p > 0), ds * dr, 0.0)\n")
        if g.read.free_symbols & {P_IDX, M_IDX}:  # one element per pair: scatter the tile
            out.append(head + f"    tl.atomic_add(d{base} + {off} + (qi + ki) * 0, g, mask=keep)\n")
        else:  # one element for the whole tile (per head or batch): sum it first, one atomic
            out.append(head + f"    tl.atomic_add(d{base} + {off}, tl.sum(tl.sum(g, 1), 0))\n")
    return "".join(out)


def emit_capture_grad(plan: OnePassPlan, sizes: dict[str, int], q_order: TileOrder = FLAT,
                      k_order: TileOrder = FLAT) -> str:
    """The module of the capture-gradient kernel of a softmax plan, for the forward's tile orders."""
    names = kernel_names(plan, sizes)
    idx = IndexPrinter(names, context=f"cascade {plan.name} (captured-tensor gradients)", tensors=(P_IDX, M_IDX))
    score = _bind_params_expr(plan.score, sizes)
    hd = head_dim_names(plan)
    grads = read_gradients(score)
    mask = "True" if plan.mask is None else idx.predicate(_bind_params(plan.mask, sizes))
    caps = capture_args.plan_captures(plan.score, plan.mask)
    dparams = "".join(f", d{c.base}" + "".join(f", d{c.base}_s{k}" for k in range(c.ndim))
                      for c in caps if c.name in grad_names(grads))
    tile_args = ("q, do, lse, delta, qpos, qvalid, K_head, V_head, j, h, b, stride_kn, stride_vn, "
                 f"N_Q, N_KV, H, Q_OFF{dparams}, {{masked}}, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, "
                 "BK0, BK1, BK2, FAST_MATH, DOT_PRECISION, UPCAST")
    text = f'''"""einfuse: gradients of the captured tensors of `{plan.name}` (generated; see
einfuse/codegen/triton/capture_grad.py). Query tiles: {q_order.describe()}; key tiles:
{k_order.describe()}, visited from the forward's block tables (EMPTY tiles never)."""
import triton
import triton.language as tl

{INDEX_HELPERS}
{SCORE_HELPERS}
{_STEP}
{q_order.triton_function("_q_tile", "BLOCK_M")}

{k_order.triton_function("_k_tile", "BLOCK_N")}

@triton.jit
def _capture_grad_tile(q, do, lse, delta, qpos, qvalid, K_head, V_head, j, h, b, stride_kn, stride_vn,
                       N_Q, N_KV, H, Q_OFF{dparams}, MASKED: tl.constexpr, BLOCK_N: tl.constexpr,
                       HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr,
                       BLOCK_DV: tl.constexpr, BK0: tl.constexpr, BK1: tl.constexpr, BK2: tl.constexpr,
                       FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Key tile j's contribution to the captured tensors' gradients; MASKED (PARTIAL) tiles
    evaluate the mask, FULL tiles keep every pair."""
{KEY_TILE}    qi = qpos[:, None]
    ki = kpos[None, :]
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    s = {print_score(score, idx, constexprs=hd)}
    keep = qvalid[:, None] & kvalid[None, :]
    if MASKED:
        keep = ({mask}) & keep
    # P = exp(s - LSE) (LSE saved by the forward in log2 units); dS = P * (dO V^T - D)
    p = tl.where(keep, tl.math.exp2(s * {const_code(LOG2E)} - lse[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
{_scatter(grads, idx, hd)}

@triton.jit
def {KERNEL}(Q, K, V, DO, LSE, DELTA, stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
             stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
             FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, stride_nh, stride_fh, stride_fq, stride_ph, stride_pq,
             N_Q, N_KV, H, B, GROUP, N_FULL_DENSE, N_K_TILES, Q_OFF{dparams},
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
             HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, TABLES: tl.constexpr,
             FULL_CONTIG: tl.constexpr, PART_CONTIG: tl.constexpr, BQ0: tl.constexpr, BQ1: tl.constexpr,
             BQ2: tl.constexpr, BK0: tl.constexpr, BK1: tl.constexpr, BK2: tl.constexpr,
             FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One program per (query tile t, batch x head): the FULL, then PARTIAL key tiles of t's row of
    the block tables (the dQ kernel's loop)."""
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    qpos, qvalid = _q_tile(t, offs_m, N_Q, BLOCK_M, BQ0, BQ1, BQ2)
{QUERY_ROW}{TABLE_ROW}    for i in range(0, n_full):
        if TABLES and not FULL_CONTIG:
            j = tl.load(FULL_IDX + row + i)
        else:
            j = j_full + i
        _capture_grad_tile({tile_args.format(masked="False")})
    for i in range(0, n_part):
        if TABLES and not PART_CONTIG:
            j = tl.load(PART_IDX + prow + i)
        else:
            j = j_part + i
        _capture_grad_tile({tile_args.format(masked="True")})
'''
    # captured tensors: pointers, extents, strides after Q_OFF in the tile function and the kernel
    return capture_args.add_params(text, caps)


def _short(e: Any) -> str:
    from einfuse.ir.printer import format_expr
    from einfuse.lowering.onepass import DOT

    return format_expr(e).replace(f"{DOT}[m,p]", "x").replace('"', "'")


def capture_grads(bwd: Any, q: Any, k: Any, v: Any, out: Any, dout: Any, lse: Any, runtime: dict[str, Any],
                  names: tuple[str, ...]) -> list[Any]:
    """Gradients of the captured tensors ``names`` (zeros for one the score does not read
    differentiably, e.g. one read by the mask only), in that order. ``bwd`` is the
    :class:`~einfuse.codegen.triton.backward.BackwardKernel` of the call (its forward kernel, tile
    orders and dQ tile sizes, hence the dQ kernel's cached block tables), ``lse`` the forward's
    saved log-sum-exp, ``runtime`` the call's keyword arguments (captures, q_offset, options)."""
    import torch

    from einfuse.codegen.triton.runtime import LaunchOptions, _non_default

    fwd = bwd.forward
    plan: OnePassPlan = fwd.plan
    options = dict(runtime)
    q_offset = options.pop("q_offset", None)
    declared = fwd.cascade.captures
    originals = {n: options.get(n, declared[n].value if n in declared else None) for n in names}
    caps_call = fwd.call_captures(options, q)  # pops the captures: what is left are launch options
    tensors = caps_call[0] if caps_call else {}
    grads = read_gradients(_bind_params_expr(plan.score, fwd.sizes))
    want = [n for n in grad_names(grads) if n in names]
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    dbufs = {n: torch.zeros(tuple(originals[n].shape), dtype=acc_dtype, device=q.device) for n in names}
    if want:
        opts = LaunchOptions.from_kwargs({**_non_default(fwd.defaults), **options})
        q, k, v, dout = (t.contiguous() for t in (q, k, v, dout))
        B, H, Nq, D = q.shape
        Hkv, Nkv, Dv = k.shape[1], k.shape[2], v.shape[3]
        layout = bwd.layout(q, k, opts)
        order, k_order = layout
        cfg = bwd.dq_config(q)  # the dQ kernel's tiles: its block tables are cached already
        q_off = fwd._q_offset(q_offset)
        tables = fwd.tables(Nq, Nkv, H, B, cfg, layout, q.device, q_off, captures=caps_call)
        bwd.last_capture_tables = tables
        modules = bwd.__dict__.setdefault("_capture_grad_modules", {})
        if layout not in modules:
            modules[layout] = load_module(emit_capture_grad(plan, fwd.sizes, order, k_order), f"{plan.name}_capgrad")
        mod = modules[layout]
        caps = capture_args.plan_captures(plan.score, plan.mask)
        dargs = []
        for c in caps:
            if c.name in want:
                dargs += [dbufs[c.name], *dbufs[c.name].stride()]
        delta = (dout.to(acc_dtype) * out.to(acc_dtype)).sum(-1).contiguous()
        interp = q.device.type != "cuda"
        precision = opts.precision or ("ieee" if q.dtype in (torch.float32, torch.float64) else "tf32")
        bq, bk = order.box(cfg.block_m), k_order.box(cfg.block_n)
        dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
        getattr(mod, KERNEL)[(order.num_tiles(Nq, cfg.block_m), B * H)](
            q, k, v, dout, lse.contiguous(), delta, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *dout.stride()[:3], *tables.kernel_args(dummy), Nq, Nkv, H, B, H // Hkv, tables.n_full,
            tables.n_k_tiles, q_off, *capture_args.launch_args(caps, tensors), *dargs,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_D=D, BLOCK_D=pow2(D), HEAD_DV=Dv,
            BLOCK_DV=pow2(Dv), TABLES=not tables.dense, FULL_CONTIG=tables.full_contig,
            PART_CONTIG=tables.part_contig, BQ0=bq[0], BQ1=bq[1], BQ2=bq[2], BK0=bk[0], BK1=bk[1], BK2=bk[2],
            FAST_MATH=False, DOT_PRECISION=precision, UPCAST=interp and q.dtype == torch.bfloat16,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return [dbufs[n].to(originals[n].dtype) for n in names]


__all__ = ["capture_grads", "emit_capture_grad"]
