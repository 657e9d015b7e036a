"""Emit the Triton module for a softmax- or sigmoid-family cascade: one kernel, one-pass schedule.

One skeleton serves the whole family (FlashAttention-2's loop: load a query tile, walk key tiles,
update running max/sum/output, store), and everything variant-specific is generated from the
:class:`~einfuse.lowering.onepass.OnePassPlan`:

* ``_score``: the score expression (scale, ALiBi bias, soft-cap, ...) in log2 units for softmax;
* ``_keep``: the mask predicate, called only on PARTIAL tiles;
* ``_q_tile`` / ``_k_tile``: which positions a tile holds (contiguous or grid boxes);
* the normalisation: online softmax (running max, rescaled sum and output), none (sigmoid), or a
  normalised weighted sum (running sum of the weights, no max: the weights are not exponentials).

Each Einsum of the cascade is printed as a comment above the code that implements it, so the file
reads as the cascade, line by line. The module also carries a launcher, ``attention(q, k, v)``,
so ``einfuse compile -o kernel.py`` gives something one can import and call.
"""

from __future__ import annotations

import math
import textwrap

import sympy

from einfuse.codegen import capture_args
from einfuse.codegen.triton.index_printer import HELPERS as INDEX_HELPERS
from einfuse.codegen.triton.index_printer import IndexPrinter
from einfuse.codegen.triton.score_printer import HELPERS as SCORE_HELPERS
from einfuse.codegen.triton.score_printer import may_be_minus_inf, print_score
from einfuse.ir.expr import substitute
from einfuse.ir.positions import Q_OFFSET, equal_lengths
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, size_symbol
from einfuse.ir.ranks import KEY_INDEX as M_IDX
from einfuse.ir.ranks import QUERY_INDEX as P_IDX
from einfuse.lowering.onepass import OnePassPlan
from einfuse.lowering.tile_order import TileOrder

LOG2E = math.log2(math.e)
KERNEL_NAME = "attn_fwd"

TABLE_LOADS = '''n_full = tl.load(FULL_NUM + h * stride_nh + t)
n_part = tl.load(PART_NUM + h * stride_nh + t)
row = h * stride_fh + t * stride_fq
prow = h * stride_ph + t * stride_pq
j_full = tl.load(FULL_IDX + row)
j_part = tl.load(PART_IDX + prow)
'''
"""Kernel lines (unindented) reading query tile ``t``'s row of the block tables of mask head ``h``:
FULL and PARTIAL key-tile counts and the first entry of each list."""

TABLE_ROW = '''    if TABLES:
        # block tables (mask heads x query tiles): counts, then padded lists of key tile indices
''' + textwrap.indent(TABLE_LOADS, " " * 8) + '''    else:
        n_full = N_FULL_DENSE
        n_part = N_K_TILES - N_FULL_DENSE
        row = 0
        prow = 0
        j_full = 0
        j_part = N_FULL_DENSE
'''
"""Kernel lines reading one query tile's row of the block tables (FULL and PARTIAL key-tile counts
and lists; without tables, the dense split): shared by the forward and the dQ backward kernel."""


def kernel_names(plan: OnePassPlan, sizes: dict[str, int]) -> dict[sympy.Symbol, str]:
    """Triton names of the symbols a score or mask may use; params become literal constants."""
    names = {P_IDX: "qi", M_IDX: "ki", HEAD_INDEX: "h", BATCH_INDEX: "b",
             size_symbol("P"): "N_Q", size_symbol("M"): "N_KV", size_symbol("H"): "H",
             size_symbol("B"): "B", size_symbol(Q_OFFSET): "Q_OFF"}
    for k, v in sizes.items():
        names.setdefault(size_symbol(k), str(int(v)))
    names.update(capture_args.kernel_names(capture_args.plan_captures(plan.score, plan.mask)))
    return names


def head_dim_names(plan: OnePassPlan) -> dict[sympy.Symbol, str]:
    """The kernel's constexpr names of the head dims (``1/sqrt(E)``, the default scale, reads E)."""
    return {size_symbol(plan.head_rank): "HEAD_D", size_symbol(plan.value_rank): "HEAD_DV"}


def scale_code(score, plan: OnePassPlan) -> str | None:
    """Triton code for ``scale * log2(e)`` when the score is ``scale * Q.K`` with a positive constant
    scale or one of the head dims only (``1/sqrt(E)``, folded by Triton); else None."""
    from einfuse.codegen.triton.score_printer import const_code, constexpr_code
    from einfuse.ir.expr import Access, Binary, Const, IndexValue
    from einfuse.lowering.onepass import DOT

    if isinstance(score, Access) and score.tensor == DOT:
        return const_code(LOG2E)
    if not (isinstance(score, Binary) and score.op == "mul"):
        return None
    for a, b in ((score.left, score.right), (score.right, score.left)):
        if not (isinstance(a, Access) and a.tensor == DOT):
            continue
        if isinstance(b, Const) and b.value > 0:
            return const_code(b.value * LOG2E)
        if isinstance(b, IndexValue) and b.expr.is_positive:
            code = constexpr_code(b.expr, head_dim_names(plan))
            if code is not None:
                return f"({code} * {const_code(LOG2E)})"
    return None


def _bind_params(e: sympy.Basic, sizes: dict[str, int]) -> sympy.Basic:
    """Substitute compile-time sizes (params) so divisions by them become constant divisions."""
    keep = _RUNTIME_SIZES
    return sympy.sympify(e).subs({size_symbol(k): int(v) for k, v in sizes.items() if k not in keep})


_RUNTIME_SIZES = {"P", "M", "H", "B", Q_OFFSET}
"""Sizes the kernel takes at run time (N_Q, N_KV, H, B, Q_OFF); other params are compiled in."""


def _same_length_variant(general: str, same: str) -> str:
    """``general``, or ``same`` (the expression with M = P) when the lengths are
    equal (SAME_LEN, a constexpr), so a bottom-right query position ``p + M - P`` costs nothing,
    and keeps the unsigned index arithmetic of ``p``, when queries and keys are one sequence."""
    if general == same:
        return general
    return f"{same} if SAME_LEN else {general}"


def _comment(roles: tuple[tuple[str, str], ...], *wanted: str, indent: str = "    ") -> str:
    lines = [f"{indent}# {line}" for role, line in roles if role in wanted]
    return "\n".join(lines) + ("\n" if lines else "")


def emit_module(plan: OnePassPlan, sizes: dict[str, int], q_order: TileOrder, k_order: TileOrder,
                cascade_text: str, lowering: str) -> str:
    """The complete Python source of the generated module."""
    from einfuse.codegen.triton.score_printer import const_code

    names = kernel_names(plan, sizes)
    idx = IndexPrinter(names, context=f"cascade {plan.name}", tensors=(P_IDX, M_IDX))
    score = _bind_params_expr(plan.score, sizes)
    softmax = plan.family == "softmax"
    scale = scale_code(score, plan) if softmax else None
    guard_full = may_be_minus_inf(score)
    mask_code = "True"
    if plan.mask is not None:
        mask = _bind_params(plan.mask, sizes)
        mask_code = _same_length_variant(idx.predicate(mask), idx.predicate(equal_lengths(mask)))
    roles = plan.roles

    # ---- score: the Einsums from Q.K to the normalisation ---------------------------------------
    if scale is not None:
        score_fn = (f"    # log2 units: exp(x) = exp2(x * log2 e), with log2 e folded into the scale\n"
                    f"    return qk * {scale}\n")
        fast_max = True
    else:
        same = substitute(score, {size_symbol("M"): size_symbol("P")})
        hd = head_dim_names(plan)
        body = _same_length_variant(print_score(score, idx, constexprs=hd), print_score(same, idx, constexprs=hd))
        unit = f" * {const_code(LOG2E)}" if softmax else ""
        score_fn = f"    s = {body}\n    return s{unit}\n" if unit else f"    return {body}\n"
        fast_max = False
    score_comment = _comment(roles, "score")
    mask_line = f"m, p kept where {plan.mask}" if plan.mask is not None else "no mask: every pair kept"

    header = _header(plan, cascade_text, lowering, q_order, k_order)
    parts = [header, "import triton", "import triton.language as tl", "", ""]
    parts.append(f"FAMILY = {plan.family!r}\nHAS_MASK = {plan.mask is not None}\n"
                 f"MASK_USES_HEAD = {plan.mask_uses(HEAD_INDEX)}\n"
                 f"MASK_USES_BATCH = {plan.mask_uses(BATCH_INDEX)}\n"
                 f"Q_GRID = {q_order.grid!r}\nK_GRID = {k_order.grid!r}\n"
                 f"K_SPAN = {not k_order.is_flat and not isinstance(k_order, TileOrder)}\n"
                 f"SIZES = {dict(sizes)!r}\nLOWERING = {lowering!r}\n"
                 f"CASCADE_TEXT = r\"\"\"\n{cascade_text}\"\"\"\n")
    parts.append(INDEX_HELPERS)
    parts.append(SCORE_HELPERS)
    parts.append(q_order.triton_function("_q_tile", "BLOCK_M"))
    parts.append("\n" + k_order.triton_function("_k_tile", "BLOCK_N"))
    parts.append(f'''

@triton.jit
def _score(qk, qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr, HEAD_D: tl.constexpr,
           HEAD_DV: tl.constexpr, FAST_MATH: tl.constexpr):
    """The score of each (query qi, key ki) pair from the tile of dot products qk."""
{score_comment}{score_fn}

@triton.jit
def _keep(qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN: tl.constexpr):
    """The mask predicate ({mask_line}); evaluated on partial tiles only."""
    return {mask_code}
''')
    parts.append(_tile_fn(plan, roles, softmax, fast_max, guard_full, scale))
    parts.append(_kernel_fn(plan, roles, softmax))
    parts.append(LAUNCHER)
    # captured tensors (bias tables, document ids): their pointers, extents and strides follow Q_OFF
    return capture_args.add_params("\n".join(parts), capture_args.plan_captures(plan.score, plan.mask))


def _bind_params_expr(e, sizes):
    keep = _RUNTIME_SIZES
    return substitute(e, {size_symbol(k): sympy.Integer(int(v)) for k, v in sizes.items() if k not in keep})


_SCHEDULES = {
    "softmax": "online softmax: running max, sum and output",
    "sigmoid": "no reduction: sigmoid scores times V, accumulated",
    "normsum": "normalised weighted sum: running sum of the weights and of weights times V, one division",
}


def _header(plan: OnePassPlan, cascade_text: str, lowering: str, q_order: TileOrder,
            k_order: TileOrder) -> str:
    body = textwrap.indent(cascade_text.rstrip(), "    ")
    return f'''"""einfuse kernel for cascade `{plan.name}` ({plan.family} family).

Generated by einfuse from the cascade below ({lowering}); edit the spec, not this file.
Schedule: one pass over key tiles per query tile ({_SCHEDULES.get(plan.family, _SCHEDULES["sigmoid"])}).
Query tiles: {q_order.describe()}; key tiles: {k_order.describe()}.
Key tiles are visited from block tables: FULL tiles without mask code, PARTIAL tiles with it,
EMPTY tiles never.

{body}
"""
'''


def _tile_fn(plan: OnePassPlan, roles, softmax: bool, fast_max: bool, guard_full: bool,
             scale: str | None) -> str:
    """The body run for one key tile: load K, score, mask, normalise, accumulate P.V; ``scale`` is
    the code of ``scale * log2(e)`` on the fast path (``fast_max``)."""

    head = '''
@triton.jit
def _tile(acc, m_i, l_i, q, qi, K_head, V_head, j, h, b, stride_kn, stride_vn, N_Q, N_KV, H, Q_OFF,
          SAME_LEN: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
          BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, BK0: tl.constexpr,
          BK1: tl.constexpr, BK2: tl.constexpr, FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr,
          UPCAST: tl.constexpr, EVEN_KV: tl.constexpr):
    """One key tile j; MASKED tiles evaluate the mask (and bounds-check keys unless every key tile is
    whole, EVEN_KV); full tiles do neither."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    kpos, kvalid = _k_tile(j, offs_n, N_KV, BLOCK_N, BK0, BK1, BK2)
    k_ptrs = K_head + kpos[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V_head + kpos[:, None] * stride_vn + offs_dv[None, :]
    if MASKED and not EVEN_KV:
        k = tl.load(k_ptrs, mask=kvalid[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    elif BLOCK_D != HEAD_D:
        k = tl.load(k_ptrs, mask=offs_d[None, :] < HEAD_D, other=0.0)
    else:
        k = tl.load(k_ptrs)
    if UPCAST:  # (CPU interpreter only: its bf16 tl.dot is wrong, so multiply in fp32)
        k = k.to(tl.float32)
'''
    score_c = _comment(roles, "score")
    body = f'''{score_c}    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    ki = kpos[None, :]
'''
    if softmax:
        max_c = _comment(roles, "max")
        num_c = _comment(roles, "numerator")
        corr_c = _comment(roles, "correction")
        sum_c = _comment(roles, "sum")
        if fast_max:
            c = scale
            unmasked = f'''        # score = qk * scale (in log2 units): scale the row max, then one FMA per element
{max_c.replace("    #", "        #")}        m_new = tl.maximum(m_i, tl.max(qk, 1) * {c})
{num_c.replace("    #", "        #")}        p = tl.math.exp2(qk * {c} - m_new[:, None])
{corr_c.replace("    #", "        #")}        alpha = tl.math.exp2(m_i - m_new)
        m_sub = m_new
'''
        else:
            unmasked = f'''        s = _score(qk, qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN, HEAD_D, HEAD_DV, FAST_MATH)
{max_c.replace("    #", "        #")}        m_new = tl.maximum(m_i, tl.max(s, 1))
'''
            if guard_full:
                unmasked += ("        # the score can be -inf: a row may have no finite score yet\n"
                             "        m_sub = tl.where(m_new == float('-inf'), 0.0, m_new)\n")
            else:
                unmasked += "        m_sub = m_new\n"
            unmasked += f'''{num_c.replace("    #", "        #")}        p = tl.math.exp2(s - m_sub[:, None])
{corr_c.replace("    #", "        #")}        alpha = tl.math.exp2(m_i - m_sub)
'''
        if fast_max:  # mask the raw products; scale the row max, then one FMA per element as below
            masked_score = "qk"
            row_max = f"tl.max(s, 1) * {scale}"
            numerator = f"s * {scale} - m_sub[:, None]"
        else:
            masked_score = "_score(qk, qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN, HEAD_D, HEAD_DV, FAST_MATH)"
            row_max = "tl.max(s, 1)"
            numerator = "s - m_sub[:, None]"
        body += f'''    if MASKED:
        s = {masked_score}
        keep = _keep(qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN)
        if not EVEN_KV:  # some key tile runs past the keys: bounds join the mask
            keep = keep & kvalid[None, :]
        s = tl.where(keep, s, float('-inf'))
{max_c.replace("    #", "        #")}        m_new = tl.maximum(m_i, {row_max})
        # a row with every key masked so far keeps max -inf: subtract 0 instead (exp2(-inf) = 0, no NaN)
        m_sub = tl.where(m_new == float('-inf'), 0.0, m_new)
{num_c.replace("    #", "        #")}        p = tl.math.exp2({numerator})
{corr_c.replace("    #", "        #")}        alpha = tl.math.exp2(m_i - m_sub)
    else:
{unmasked}{sum_c}    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
'''
        ret = "    return acc, m_new, l_i\n"
    else:
        normsum = plan.family == "normsum"
        act_c = _comment(roles, "numerator" if normsum else "activation")
        act = "" if normsum else "    a = _sigmoid(a, FAST_MATH)\n"
        body += f'''{act_c}    a = _score(qk, qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN, HEAD_D, HEAD_DV, FAST_MATH)
{act}    if MASKED:
        keep = _keep(qi, ki, h, b, N_Q, N_KV, H, Q_OFF, SAME_LEN)
        if not EVEN_KV:
            keep = keep & kvalid[None, :]
        a = tl.where(keep, a, 0.0)
    p = a
'''
        if normsum:  # running sum of the weights: the denominator, divided out once at the end
            body += f"{_comment(roles, 'sum')}    l_i = l_i + tl.sum(p, 1)\n"
        ret = "    return acc, m_i, l_i\n"
    pv_c = _comment(roles, "pv")
    load_v = '''    if MASKED and not EVEN_KV:
        v = tl.load(v_ptrs, mask=kvalid[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    elif BLOCK_DV != HEAD_DV:
        v = tl.load(v_ptrs, mask=offs_dv[None, :] < HEAD_DV, other=0.0)
    else:
        v = tl.load(v_ptrs)
    if UPCAST:
        v = v.to(tl.float32)
'''
    body += load_v + f"{pv_c}    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)\n" + ret
    return head + body


def _kernel_fn(plan: OnePassPlan, roles, softmax: bool) -> str:
    final_c = _comment(roles, "final", "normalise")
    init_c = _comment(roles, "init")
    if softmax or plan.family == "normsum":
        finish = f'''{final_c}    # rows whose keys are all masked have l = 0 and acc = 0: they store 0 (the reference's absent rows)
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
'''
    else:
        finish = "    out = acc\n"
    return f'''

@triton.jit
def {KERNEL_NAME}(
    Q, K, V, Out, LSE,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    FULL_NUM, FULL_IDX, PART_NUM, PART_IDX, stride_nh, stride_fh, stride_fq, stride_ph, stride_pq,
    N_Q, N_KV, H, B, GROUP, N_FULL_DENSE, N_K_TILES, Q_OFF,
    SAME_LEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
    BLOCK_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_DV: tl.constexpr, TABLES: tl.constexpr,
    FULL_CONTIG: tl.constexpr, PART_CONTIG: tl.constexpr, BQ0: tl.constexpr, BQ1: tl.constexpr,
    BQ2: tl.constexpr, BK0: tl.constexpr, BK1: tl.constexpr, BK2: tl.constexpr,
    FAST_MATH: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, EVEN_KV: tl.constexpr,
    STORE_LSE: tl.constexpr,
):
    """One program per (query tile, batch x head): walk FULL then PARTIAL key tiles, then store
    (and, with STORE_LSE, the row log-sum-exp in log2 units, (B, H, N_Q) fp32, for the backward).
    Query tiles run last-first: the GPU starts programs in launch order, so under a causal mask the
    heaviest tiles (the most keys) start early and the last programs to start are the light ones,
    instead of a final wave of the heaviest tiles on a few SMs."""
    t = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    hk = h // GROUP  # grouped-query attention: GROUP query heads share one K/V head
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    qpos, qvalid = _q_tile(t, offs_m, N_Q, BLOCK_M, BQ0, BQ1, BQ2)
    qi = qpos[:, None]
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh \\
        + qpos[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_ptrs, mask=qvalid[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    K_head = K + b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    V_head = V + b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
{init_c}    m_i = tl.full([BLOCK_M], float('-inf'), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
{TABLE_ROW}    # FULL key tiles: every (query, key) pair of the tile is kept; no bounds checks, no mask
    for i in range(0, n_full):
        if TABLES and not FULL_CONTIG:
            j = tl.load(FULL_IDX + row + i)
        else:
            j = j_full + i
        acc, m_i, l_i = _tile(acc, m_i, l_i, q, qi, K_head, V_head, j, h, b, stride_kn, stride_vn,
                              N_Q, N_KV, H, Q_OFF, SAME_LEN, False, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV,
                              BLOCK_DV, BK0, BK1, BK2, FAST_MATH, DOT_PRECISION, UPCAST, EVEN_KV)
    # PARTIAL key tiles: bounds and mask predicate evaluated per pair
    for i in range(0, n_part):
        if TABLES and not PART_CONTIG:
            j = tl.load(PART_IDX + prow + i)
        else:
            j = j_part + i
        acc, m_i, l_i = _tile(acc, m_i, l_i, q, qi, K_head, V_head, j, h, b, stride_kn, stride_vn,
                              N_Q, N_KV, H, Q_OFF, SAME_LEN, True, BLOCK_N, HEAD_D, BLOCK_D, HEAD_DV,
                              BLOCK_DV, BK0, BK1, BK2, FAST_MATH, DOT_PRECISION, UPCAST, EVEN_KV)
{finish}    o_ptrs = Out + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh \\
        + qpos[:, None] * stride_on + offs_dv[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=qvalid[:, None] & (offs_dv[None, :] < HEAD_DV))
{_LSE_STORE if softmax else ""}'''


_LSE_STORE = '''    if STORE_LSE:
        # LSE[p] = max + log2(sum): the backward recomputes P = exp2(s - LSE); +inf where no key is
        # kept, so those rows recompute P = 0 everywhere
        lse = tl.where(l_i == 0.0, float('inf'), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        tl.store(LSE + bh.to(tl.int64) * N_Q + qpos, lse, mask=qvalid)
'''


LAUNCHER = '''

def attention(q, k, v, **options):
    """Run this kernel on (B, H, N, D) tensors; options as for einfuse.compile (block_m, ...)."""
    from einfuse.codegen.triton.runtime import launcher_for_module

    return launcher_for_module(__name__, globals())(q, k, v, **options)
'''
