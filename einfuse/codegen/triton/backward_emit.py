"""Print the Triton backward module of a :class:`~einfuse.lowering.backward.BackwardPlan`.

Three kernels, FlashAttention-2's schedule (the forward saved each query row's log-sum-exp):

* ``attn_bwd_preprocess``: ``D[p] = sum_f dO[p,f] O[p,f]``, one program per query tile;
* ``attn_bwd_dkdv``: one program per (key tile, batch x K/V head); it walks the query tiles of the
  *transposed* block tables (FULL without mask code, PARTIAL with it, EMPTY never) for every query
  head of its group, recomputes ``P = exp2(s - LSE)`` and accumulates ``dV += P^T dO`` and
  ``dK += dX^T Q`` on chip, so grouped-query gradients are summed without atomics;
* ``attn_bwd_dq``: one program per (query tile, batch x head), the forward's loop and tables,
  ``dQ += dX K`` (the "separate" dQ layout; with ``ATOMIC_DQ`` the dK/dV kernel adds each tile pair's
  ``dX K`` into an fp32 dQ buffer atomically instead, FlashAttention-2's CUDA layout, and this kernel
  is not launched).

Sigmoid attention (no normalisation, nothing saved) recomputes ``A = sigmoid(s)`` instead of ``P``, has
``dS = dA * A * (1 - A)`` and skips the preprocess (``D`` is unused).

What is variant-specific is printed from the plan: ``_score2`` (the score, in log2 units for softmax), ``_dscore``
(its derivative with respect to the dot product, derived from the IR by the chain rule), ``_keep``
(the mask, on partial tiles only) and the tile orders. Both gradient kernels share ``_bwd_tile``,
which reads like the math: dot, score, mask, P, dP, dS, dX.
"""

from __future__ import annotations

import math
import textwrap

from einfuse.codegen import capture_args
from einfuse.codegen.triton.emit import (
    TABLE_ROW,
    _bind_params,
    _bind_params_expr,
    _same_length_variant,
    head_dim_names,
    kernel_names,
)
from einfuse.codegen.triton.index_printer import HELPERS as INDEX_HELPERS
from einfuse.codegen.triton.index_printer import IndexPrinter
from einfuse.codegen.triton.score_printer import HELPERS as SCORE_HELPERS
from einfuse.codegen.triton.score_printer import const_code, may_be_minus_inf, print_score
from einfuse.ir.expr import Expr, substitute
from einfuse.ir.positions import equal_lengths
from einfuse.ir.ranks import KEY_INDEX as M_IDX
from einfuse.ir.ranks import QUERY_INDEX as P_IDX
from einfuse.ir.ranks import size_symbol
from einfuse.lowering.backward import BackwardPlan, format_backward_plan
from einfuse.lowering.tile_order import TileOrder

LOG2E = math.log2(math.e)
PREPROCESS, DKDV, DQ = "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq"


def emit_backward_module(bp: BackwardPlan, sizes: dict[str, int], q_order: TileOrder,
                         k_order: TileOrder) -> str:
    """The complete Python source of the backward module (three kernels, no launcher)."""
    fwd = bp.forward
    names = kernel_names(fwd, sizes)
    idx = IndexPrinter(names, context=f"cascade {bp.name} (backward)", tensors=(P_IDX, M_IDX))
    score = _bind_params_expr(bp.score, sizes)
    dscore = _bind_params_expr(bp.dscore, sizes)
    scale = fwd.plain_scale
    hd = head_dim_names(fwd)  # the default scale 1/sqrt(E) folds at compile time, as in the forward
    def value(e: Expr) -> str:  # bottom-right positions cost nothing when N_Q == N_KV (SAME_LEN)
        same = substitute(e, {size_symbol("M"): size_symbol("P")})
        return _same_length_variant(print_score(e, idx, constexprs=hd), print_score(same, idx, constexprs=hd))

    softmax = bp.family == "softmax"  # softmax scores in log2 units (exp2); sigmoid's as they are
    unit = LOG2E if softmax else 1.0
    if scale is not None:
        score_body = f"    return qk * {const_code(scale * unit)}\n"
    elif softmax:
        score_body = f"    s = {value(score)}\n    return s * {const_code(LOG2E)}\n"
    else:
        score_body = f"    return {value(score)}\n"
    dscore_body = f"    return {value(dscore)}\n"
    mask_code = "True"
    if bp.mask is not None:
        mask = _bind_params(bp.mask, sizes)
        mask_code = _same_length_variant(idx.predicate(mask), idx.predicate(equal_lengths(mask)))
    # P == 0 makes dS == 0 exactly; where ds/dx can be inf (masked pairs, padding), keep dX at 0 too
    guard = may_be_minus_inf(dscore) or may_be_minus_inf(score)
    dx_line = "    dx = ds * _dscore(qk, qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN, HEAD_D, HEAD_DV, FAST_MATH)\n"
    if bp.dscore_constant is not None:
        dx_line = f"    dx = ds * {const_code(bp.dscore_constant)}\n"
    if guard:
        dx_line += "    dx = tl.where(p == 0.0, 0.0, dx)\n"
    header = textwrap.indent(format_backward_plan(bp), "    ")
    parts = [f'"""einfuse backward kernels for cascade `{bp.name}` (generated; edit the spec).\n\n'
             f'{header}\n"""\n', "import triton", "import triton.language as tl", "",
             INDEX_HELPERS, SCORE_HELPERS, _STEP_HELPER,
             q_order.triton_function("_q_tile", "BLOCK_M"), "\n" + k_order.triton_function("_k_tile", "BLOCK_N"),
             f'''

@triton.jit
def _score2(qk, qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, FAST_MATH: tl.constexpr):
    """The forward's score of each (query qi, key ki) pair{' in log2 units' if softmax else ''}: s = {_short(bp.score)}."""
{score_body}

@triton.jit
def _dscore(qk, qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr, HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, FAST_MATH: tl.constexpr):
    """ds/dx, the score's derivative with respect to the dot product x = qk: {_short(bp.dscore)}."""
{dscore_body}

@triton.jit
def _keep(qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr):
    """The forward's mask predicate; evaluated on partial tiles only."""
    return {mask_code}
''', _BWD_TILE.replace("{weights}", _SOFTMAX_WEIGHTS if softmax else _SIGMOID_WEIGHTS).replace("{dx_line}", dx_line), _KERNELS.replace("{TABLE_ROW}", TABLE_ROW).replace("{QUERY_ROW}", QUERY_ROW).replace("{KEY_TILE}", KEY_TILE)]
    # captured tensors the score or mask reads: their pointers, extents and strides follow H
    return capture_args.add_params("\n".join(parts), capture_args.plan_captures(fwd.score, fwd.mask),
                                   capture_args.BACKWARD_SITES)


def _short(e: Expr) -> str:
    from einfuse.ir.printer import format_expr
    from einfuse.lowering.onepass import DOT

    return format_expr(e).replace(f"{DOT}[m,p]", "x").replace('"', "'")


KEY_TILE = '''    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    kpos, kvalid = _k_tile(j, offs_n, N_KV, BLOCK_N, BK0, BK1, BK2)
    k = tl.load(K_head + kpos[:, None] * stride_kn + offs_d[None, :],
                mask=kvalid[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    v = tl.load(V_head + kpos[:, None] * stride_vn + offs_dv[None, :],
                mask=kvalid[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
'''
"""Key tile ``j``'s positions, K and V rows (upcast in the interpreter): the dQ step's lines, shared
with the captured-tensor gradient kernel."""

QUERY_ROW = '''    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + qpos[:, None] * stride_qn
                + offs_d[None, :], mask=qvalid[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh + qpos[:, None] * stride_don
                 + offs_dv[None, :], mask=qvalid[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + bh.to(tl.int64) * N_Q + qpos, mask=qvalid, other=float('inf'))
    delta = tl.load(DELTA + bh.to(tl.int64) * N_Q + qpos, mask=qvalid, other=0.0)
    K_head = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    V_head = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
'''
"""Kernel lines loading one query tile's Q, dO, LSE and D rows and its K/V head pointers: shared by
the dQ kernel and the captured-tensor gradient kernel (codegen/triton/capture_grad.py)."""


_STEP_HELPER = '''
@triton.jit
def _step(x):
    """1 where x > 0, else 0 (derivative of relu; selects the larger operand of max)."""
    return tl.where(x > 0, 1.0, 0.0)
'''

_BWD_TILE = '''

@triton.jit
def _bwd_tile(q, k, v, do, lse, delta, qi, ki, kvalid, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr, HEAD_D: tl.constexpr,
              HEAD_DV: tl.constexpr, MASKED: tl.constexpr,
              EVEN_KV: tl.constexpr, FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One (query tile, key tile) pair: recompute the weights P, return them with dX = dS * ds/dx."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    s = _score2(qk, qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN, HEAD_D, HEAD_DV, FAST_MATH)
    if MASKED:
        keep = _keep(qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN)
        if not EVEN_KV:
            keep = keep & kvalid[None, :]
        s = tl.where(keep, s, float('-inf'))
{weights}    # dX = dS * ds/dx: the chain rule through the score
{dx_line}    return p, dx
'''

_SOFTMAX_WEIGHTS = '''    # P = exp(s - LSE): the forward's probabilities (LSE = +inf on rows with no key: P = 0)
    p = tl.math.exp2(s - lse[:, None])
    # dP = dO V^T;  dS = P * (dP - D)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
'''

_SIGMOID_WEIGHTS = '''    # A = sigmoid(s), no normalisation (masked pairs: sigmoid(-inf) = 0; lse and delta unused)
    p = _sigmoid(s, FAST_MATH)
    # dA = dO V^T;  dS = dA * A * (1 - A), the sigmoid's derivative
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = dp * p * (1.0 - p)
'''

_KERNELS = '''

@triton.jit
def attn_bwd_preprocess(O, DO, DELTA, stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don,
                        N_Q, H, BLOCK_M: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr):
    """D[p] = sum_f dO[p,f] * O[p,f] for one query tile (contiguous rows)."""
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = t * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    ok = (offs_m[:, None] < N_Q) & (offs_dv[None, :] < HEAD_DV)
    o = tl.load(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_on
                + offs_dv[None, :], mask=ok, other=0.0).to(DELTA.dtype.element_ty)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
                 + offs_m[:, None] * stride_don + offs_dv[None, :], mask=ok, other=0.0).to(DELTA.dtype.element_ty)
    tl.store(DELTA + bh.to(tl.int64) * N_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < N_Q)


@triton.jit
def _dkdv_tile(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, DQ_head, t, kpos, kvalid, h, b, stride_qn,
               stride_don, stride_dqn, N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr, MASKED: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_D: tl.constexpr,
               BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, BQ0: tl.constexpr,
               BQ1: tl.constexpr, BQ2: tl.constexpr, FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr,
               UPCAST: tl.constexpr, EVEN_KV: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    """Query tile t's contribution to one key tile's dK and dV (and, with ATOMIC_DQ, to t's dQ)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    qpos, qvalid = _q_tile(t, offs_m, N_Q, BLOCK_M, BQ0, BQ1, BQ2)
    q = tl.load(Q_head + qpos[:, None] * stride_qn + offs_d[None, :],
                mask=qvalid[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    do = tl.load(DO_head + qpos[:, None] * stride_don + offs_dv[None, :],
                 mask=qvalid[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE_row + qpos, mask=qvalid, other=float('inf'))
    delta = tl.load(DELTA_row + qpos, mask=qvalid, other=0.0)
    p, dx = _bwd_tile(q, k, v, do, lse, delta, qpos[:, None], kpos[None, :], kvalid, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN, HEAD_D, HEAD_DV,
                      MASKED, EVEN_KV, FAST_MATH, DOT_PRECISION)
    # dV[m,f] += sum_p P[m,p] dO[p,f];  dK[m,e] += sum_p dX[m,p] Q[p,e]
    dv = tl.dot(tl.trans(p).to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dk = tl.dot(tl.trans(dx).to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    if ATOMIC_DQ:
        # dQ[p,e] += sum_m dX[m,p] K[m,e], added into an fp32 buffer by every key tile (no dQ kernel)
        dq = tl.dot(dx.to(k.dtype), k, input_precision=DOT_PRECISION)
        tl.atomic_add(DQ_head + qpos[:, None] * stride_dqn + offs_d[None, :], dq,
                      mask=qvalid[:, None] & (offs_d[None, :] < HEAD_D))
    return dk, dv


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQ,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_dqb, stride_dqh, stride_dqn,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, stride_nh, stride_fh, stride_fq, stride_ph, stride_pq,
    N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr, GROUP, N_FULL_DENSE, N_Q_TILES,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, TABLES: tl.constexpr,
    FULL_CONTIG: tl.constexpr, PART_CONTIG: tl.constexpr, BQ0: tl.constexpr, BQ1: tl.constexpr,
    BQ2: tl.constexpr, BK0: tl.constexpr, BK1: tl.constexpr, BK2: tl.constexpr,
    FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, EVEN_KV: tl.constexpr, ACC: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """One program per (key tile j, batch x K/V head): dK, dV summed over the group's query heads and
    the query tiles of the transposed tables (FULL, then PARTIAL); with ATOMIC_DQ also dQ, added
    atomically into an fp32 buffer (FlashAttention-2's CUDA layout) instead of a second kernel."""
    j = tl.program_id(0)
    bhk = tl.program_id(1)
    HKV = H // GROUP
    b = bhk // HKV
    hk = bhk % HKV
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    kpos, kvalid = _k_tile(j, offs_n, N_KV, BLOCK_N, BK0, BK1, BK2)
    k = tl.load(K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh + kpos[:, None] * stride_kn
                + offs_d[None, :], mask=kvalid[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh + kpos[:, None] * stride_vn
                + offs_dv[None, :], mask=kvalid[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=ACC)
    for g in range(0, GROUP):  # grouped-query attention: the group's query heads share this K/V head
        h = hk * GROUP + g
        Q_head = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        DO_head = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        LSE_row = LSE + (b * H + h).to(tl.int64) * N_Q
        DELTA_row = DELTA + (b * H + h).to(tl.int64) * N_Q
        DQ_head = DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh
        if TABLES:
            # transposed block tables (mask heads x key tiles): counts, padded lists of query tiles
            n_full = tl.load(FULL_NUM + h * stride_nh + j)
            n_part = tl.load(PART_NUM + h * stride_nh + j)
            row = h * stride_fh + j * stride_fq
            prow = h * stride_ph + j * stride_pq
            t_full = tl.load(FULL_IDX + row)
            t_part = tl.load(PART_IDX + prow)
        else:  # no tables: key tiles below N_FULL_DENSE are full for every query tile, the rest partial
            n_full = tl.where(j < N_FULL_DENSE, N_Q_TILES, 0)
            n_part = N_Q_TILES - n_full
            row = 0
            prow = 0
            t_full = 0
            t_part = 0
        for i in range(0, n_full):
            if TABLES and not FULL_CONTIG:
                t = tl.load(FULL_IDX + row + i)
            else:
                t = t_full + i
            dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, DQ_head, t, kpos, kvalid, h, b,
                                stride_qn, stride_don, stride_dqn, N_Q, N_KV, H, Q_OFF, SAME_LEN, False, BLOCK_M, HEAD_D, BLOCK_D,
                                HEAD_DV, BLOCK_DV, BQ0, BQ1, BQ2, FAST_MATH, DOT_PRECISION, UPCAST, EVEN_KV,
                                ATOMIC_DQ)
        for i in range(0, n_part):
            if TABLES and not PART_CONTIG:
                t = tl.load(PART_IDX + prow + i)
            else:
                t = t_part + i
            dk, dv = _dkdv_tile(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, DQ_head, t, kpos, kvalid, h, b,
                                stride_qn, stride_don, stride_dqn, N_Q, N_KV, H, Q_OFF, SAME_LEN, True, BLOCK_M, HEAD_D, BLOCK_D,
                                HEAD_DV, BLOCK_DV, BQ0, BQ1, BQ2, FAST_MATH, DOT_PRECISION, UPCAST, EVEN_KV,
                                ATOMIC_DQ)
    tl.store(DK + b.to(tl.int64) * stride_dkb + hk.to(tl.int64) * stride_dkh + kpos[:, None] * stride_dkn
             + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kvalid[:, None] & (offs_d[None, :] < HEAD_D))
    tl.store(DV + b.to(tl.int64) * stride_dvb + hk.to(tl.int64) * stride_dvh + kpos[:, None] * stride_dvn
             + offs_dv[None, :], dv.to(DV.dtype.element_ty),
             mask=kvalid[:, None] & (offs_dv[None, :] < HEAD_DV))


@triton.jit
def _dq_tile(dq, q, do, lse, delta, qi, K_head, V_head, j, h, b, stride_kn, stride_vn, N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr,
             MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
             HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, BK0: tl.constexpr, BK1: tl.constexpr,
             BK2: tl.constexpr, FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr,
             UPCAST: tl.constexpr, EVEN_KV: tl.constexpr):
    """Key tile j's contribution to one query tile's dQ."""
{KEY_TILE}    p, dx = _bwd_tile(q, k, v, do, lse, delta, qi, kpos[None, :], kvalid, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN, HEAD_D, HEAD_DV,
                      MASKED, EVEN_KV, FAST_MATH, DOT_PRECISION)
    # dQ[p,e] += sum_m dX[m,p] K[m,e]
    return tl.dot(dx.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.jit
def attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, stride_nh, stride_fh, stride_fq, stride_ph, stride_pq,
    N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr, GROUP, N_FULL_DENSE, N_K_TILES,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, TABLES: tl.constexpr,
    FULL_CONTIG: tl.constexpr, PART_CONTIG: tl.constexpr, BQ0: tl.constexpr, BQ1: tl.constexpr,
    BQ2: tl.constexpr, BK0: tl.constexpr, BK1: tl.constexpr, BK2: tl.constexpr,
    FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, EVEN_KV: tl.constexpr, ACC: tl.constexpr,
):
    """One program per (query tile t, batch x head): dQ over the forward's key tiles (FULL, PARTIAL)."""
    t = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    qpos, qvalid = _q_tile(t, offs_m, N_Q, BLOCK_M, BQ0, BQ1, BQ2)
    qi = qpos[:, None]
{QUERY_ROW}    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
{TABLE_ROW}    for i in range(0, n_full):
        if TABLES and not FULL_CONTIG:
            j = tl.load(FULL_IDX + row + i)
        else:
            j = j_full + i
        dq = _dq_tile(dq, q, do, lse, delta, qi, K_head, V_head, j, h, b, stride_kn, stride_vn, N_Q, N_KV, H, Q_OFF, SAME_LEN,
                      False, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, BK0, BK1, BK2, FAST_MATH,
                      DOT_PRECISION, UPCAST, EVEN_KV)
    for i in range(0, n_part):
        if TABLES and not PART_CONTIG:
            j = tl.load(PART_IDX + prow + i)
        else:
            j = j_part + i
        dq = _dq_tile(dq, q, do, lse, delta, qi, K_head, V_head, j, h, b, stride_kn, stride_vn, N_Q, N_KV, H, Q_OFF, SAME_LEN,
                      True, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, BK0, BK1, BK2, FAST_MATH,
                      DOT_PRECISION, UPCAST, EVEN_KV)
    tl.store(DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh + qpos[:, None] * stride_dqn
             + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=qvalid[:, None] & (offs_d[None, :] < HEAD_D))
'''
