"""Emit the packed variable-length forward kernel of a one-pass plan (softmax, sigmoid, normsum).

The kernel is appended to the module :func:`einfuse.codegen.triton.emit.emit_module` prints for
contiguous tiles, and calls that module's ``_tile`` (load K, score, mask, normalise, P.V) unchanged:
only the outer loop differs. A program takes one work item of
:class:`einfuse.lowering.varlen_tables.VarlenTables` (a query tile of one sequence) and one head,
reads its sequence's offsets and lengths, and walks the key tiles the tables list for it, all
inside that sequence. ``N_Q``/``N_KV`` are the sequence's lengths and ``b`` its index, so masks
and scores see positions counted from the sequence's start.
"""

from __future__ import annotations

import textwrap

from einfuse.codegen.triton.emit import TABLE_LOADS, _comment
from einfuse.lowering.onepass import OnePassPlan

VARLEN_KERNEL_NAME = "attn_fwd_varlen"


def emit_varlen_kernel(plan: OnePassPlan) -> str:
    """Source of ``attn_fwd_varlen`` for ``plan`` (to append to the plan's contiguous-tile module)."""
    roles = plan.roles
    final_c = _comment(roles, "final", "normalise")
    init_c = _comment(roles, "init")
    if plan.family in ("softmax", "normsum"):
        finish = (f"{final_c}    # rows whose keys are all masked (or a sequence without keys) store 0\n"
                  "    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]\n")
    else:
        finish = "    out = acc\n"
    table_loads = textwrap.indent(TABLE_LOADS, "    ")
    tile_args = ("N_Q, N_KV, H, Q_OFF, SAME_LEN, {masked}, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV, BLOCK_DV, 1, 1, "
                 "BLOCK_N, FAST_MATH, DOT_PRECISION, UPCAST, EVEN_KV")
    return f'''

@triton.jit
def {VARLEN_KERNEL_NAME}(
    Q, K, V, Out, ITEMS, CU_Q, CU_K,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, stride_nh, stride_fh, stride_fq, stride_ph, stride_pq,
    H, B, GROUP, Q_OFF,
    SAME_LEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
    BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, FULL_CONTIG: tl.constexpr,
    PART_CONTIG: tl.constexpr, FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, EVEN_KV: tl.constexpr,
):
    """Packed variable-length batch: one program per (work item, head); an item is one query tile
    of one sequence (heaviest first). Q/Out are (total_q, H, D), K/V (total_kv, H_kv, D); sequence
    b holds rows CU_Q[b]..CU_Q[b+1] of Q and CU_K[b]..CU_K[b+1] of K and V."""
    pid = tl.program_id(0)
    t = pid // H
    h = pid % H
    b = tl.load(ITEMS + 2 * t)           # the sequence: the batch index of masks and scores
    q_tile = tl.load(ITEMS + 2 * t + 1)  # which query tile of it
    q_start = tl.load(CU_Q + b)
    N_Q = tl.load(CU_Q + b + 1) - q_start
    k_start = tl.load(CU_K + b)
    N_KV = tl.load(CU_K + b + 1) - k_start
    hk = h // GROUP  # grouped-query attention: GROUP query heads share one K/V head
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    qpos, qvalid = _q_tile(q_tile, offs_m, N_Q, BLOCK_M, 1, 1, BLOCK_M)
    qi = qpos[:, None]  # positions counted from the sequence's start
    q_ptrs = Q + q_start.to(tl.int64) * stride_qn + h.to(tl.int64) * stride_qh \\
        + qpos[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=qvalid[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    K_head = K + k_start.to(tl.int64) * stride_kn + hk.to(tl.int64) * stride_kh
    V_head = V + k_start.to(tl.int64) * stride_vn + hk.to(tl.int64) * stride_vh
{init_c}    m_i = tl.full([BLOCK_M], float('-inf'), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    # this item's row of the tables: FULL and PARTIAL key tiles of its own sequence only
{table_loads}    # FULL key tiles: every (query, key) pair of the tile is kept; no bounds checks, no mask
    for i in range(0, n_full):
        if FULL_CONTIG:
            j = j_full + i
        else:
            j = tl.load(FULL_IDX + row + i)
        acc, m_i, l_i = _tile(acc, m_i, l_i, q, qi, K_head, V_head, j, h, b, stride_kn, stride_vn,
                              {tile_args.format(masked="False")})
    # PARTIAL key tiles: bounds and mask predicate evaluated per pair
    for i in range(0, n_part):
        if PART_CONTIG:
            j = j_part + i
        else:
            j = tl.load(PART_IDX + prow + i)
        acc, m_i, l_i = _tile(acc, m_i, l_i, q, qi, K_head, V_head, j, h, b, stride_kn, stride_vn,
                              {tile_args.format(masked="True")})
{finish}    o_ptrs = Out + q_start.to(tl.int64) * stride_on + h.to(tl.int64) * stride_oh \\
        + qpos[:, None] * stride_on + offs_dv[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=qvalid[:, None] & (offs_dv[None, :] < HEAD_DV))
'''


__all__ = ["VARLEN_KERNEL_NAME", "emit_varlen_kernel"]
