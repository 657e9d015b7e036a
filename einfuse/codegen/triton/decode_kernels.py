"""Triton source of the split-KV (flash-decoding) kernels, assembled from a :class:`DecodePlan`.

Schedule: the keys of each (batch, KV head) are cut into ``n_splits`` contiguous ranges.

* ``decode_partial``: one program per (batch * KV head, split, row block). Its rows are *all* query
  heads of the GQA group times the few queries (``row = g * NQ + i``), so each key/value tile is read
  from memory once for the whole group. It runs the online softmax over its key range and writes
  the partial max, sum and unnormalised output.
* ``decode_combine``: one program per (batch, head, query) merges the partials:
  ``O = sum_s exp(m_s - m) acc_s / sum_s exp(m_s - m) l_s``; a row that saw no key gets 0, as
  the reference's presence semantics say.

The logit (score_mod) and the mask are printed from the cascade into ``logit`` and ``visible``.
"""

from __future__ import annotations

from einfuse.codegen import capture_args
from einfuse.codegen.triton.index_printer import IndexPrinter
from einfuse.codegen.triton.linear_emit import HELPERS, emit_value
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, size_symbol
from einfuse.lowering.decode import DecodePlan
from einfuse.lowering.linear import M_IDX, P_IDX
from einfuse.lowering.split_kv import SplitKV


def _size_args(plan: DecodePlan) -> str:
    """Run-time sizes, then the captured tensors' pointers, extents and strides (capture_args)."""
    caps = capture_args.plan_captures(plan.logit, plan.mask)
    return "".join(f", sz_{s}" for s in plan.sizes) + capture_args.param_text(caps)


def _printer(plan: DecodePlan) -> IndexPrinter:
    names = {P_IDX: "p", M_IDX: "m", HEAD_INDEX: "h", BATCH_INDEX: "b"}
    names.update({size_symbol(s): f"sz_{s}" for s in plan.sizes})
    names.update(capture_args.kernel_names(capture_args.plan_captures(plan.logit, plan.mask)))
    return IndexPrinter(names, context=f"cascade {plan.name}")


def _logit_fn(plan: DecodePlan) -> str:
    body = emit_value(plan.logit, lambda a: "qk", _printer(plan))
    return f'''
@triton.jit
def logit(qk, p, m, h, b{_size_args(plan)}):
    # the argument of the max over keys, with qk = {plan.score}[m,p] (the scaled dot product)
    return {body}
'''


def _mask_fn(plan: DecodePlan) -> str:
    if plan.mask is None:
        return ""
    return f'''
@triton.jit
def visible(p, m, h, b{_size_args(plan)}):
    # score constraint: {plan.mask}
    return {_printer(plan).predicate(plan.mask)}
'''


def _partial_kernel(plan: DecodePlan, split: SplitKV) -> str:
    sz = _size_args(plan)
    keep = "m_ok[None, :]"
    if plan.mask is not None:
        keep += f" & visible(i[:, None], m[None, :], h[:, None], b{sz})"
    return f'''
@triton.jit
def decode_partial(Q, K, V, Mws, Lws, Ows, sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d,
                   sv_b, sv_h, sv_n, sv_d, NQ, NK, H, HKV, D, DV, SPLIT_LEN, N_SPLITS, scale{sz},
                   ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                   UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rb = tl.program_id(2)
    b = pid // HKV
    hkv = pid % HKV
    G = H // HKV
    # rows: every query head of this KV head's group, times every query
    r = rb * ROWS + tl.arange(0, ROWS)
    g = r // NQ
    i = r % NQ
    h = hkv * G + g
    row_ok = g < G
    offs_d = tl.arange(0, BD)
    offs_f = tl.arange(0, BDV)
    d_ok = offs_d < D
    f_ok = offs_f < DV
    q = tl.load(Q + b.to(tl.int64) * sq_b + h[:, None] * sq_h + i[:, None] * sq_n + offs_d[None, :] * sq_d,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:  # CPU interpreter only: its bf16 tl.dot is wrong, so every dot runs in fp32
        q = q.to(tl.float32)
    k_base = K + b.to(tl.int64) * sk_b + hkv * sk_h
    v_base = V + b.to(tl.int64) * sv_b + hkv * sv_h
    lo = split * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, NK)
    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, BDV], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        m = start + tl.arange(0, BLOCK_N)
        m_ok = m < hi
        kt = tl.load(k_base + m[None, :] * sk_n + offs_d[:, None] * sk_d,
                     mask=m_ok[None, :] & d_ok[:, None], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        # {plan.score}[m,p] = Q[p,e] * K[m,e] * scale
        qk = tl.dot(q, kt) * scale
        s = logit(qk, i[:, None], m[None, :], h[:, None], b{sz})
        s = tl.where({keep}, s, float("-inf"))
        # online softmax over this split's keys: running max, rescaled running sum and output
{split.comment("partial_max", 8)}{split.comment("partial_num", 8)}{split.comment("partial_sum", 8)}{split.comment("partial_out", 8)}        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        pr = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        v = tl.load(v_base + m[:, None] * sv_n + offs_f[None, :] * sv_d,
                    mask=m_ok[:, None] & f_ok[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
        m_i = m_new
{split.comment("partial_norm")}    po = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    ws = ((b * H + h).to(tl.int64) * NQ + i) * N_SPLITS + split
    tl.store(Mws + ws, m_i, mask=row_ok)
    tl.store(Lws + ws, l_i, mask=row_ok)
    tl.store(Ows + ws[:, None] * DV + offs_f[None, :], po, mask=row_ok[:, None] & f_ok[None, :])
'''


def _combine_kernel(split: SplitKV) -> str:
    c = split.comment
    return f'''
@triton.jit
def decode_combine(Mws, Lws, Ows, O, LSE, so_b, so_h, so_n, so_d, H, NQ, DV, N_SPLITS,
                   BS: tl.constexpr, BDV: tl.constexpr, WRITE_LSE: tl.constexpr):
    # merge the splits of one (batch, head, query); 0 where no split saw a visible key
    row = tl.program_id(0)
    offs_s = tl.arange(0, BS)
    offs_f = tl.arange(0, BDV)
    s_ok = offs_s < N_SPLITS
    f_ok = offs_f < DV
    base = row.to(tl.int64) * N_SPLITS
    m_s = tl.load(Mws + base + offs_s, mask=s_ok, other=float("-inf"))
    l_s = tl.load(Lws + base + offs_s, mask=s_ok, other=0.0)
{c("global_max")}    m = tl.max(m_s, 0)
{c("weight")}    w = l_s * tl.exp(m_s - tl.where(m == float("-inf"), 0.0, m))
{c("denominator")}    l = tl.sum(w, 0)
    po = tl.load(Ows + (base + offs_s[:, None]) * DV + offs_f[None, :],
                 mask=s_ok[:, None] & f_ok[None, :], other=0.0)
{c("weighted")}    snv = tl.sum(po * w[:, None], 0)
{c("output")}    o = snv / tl.where(l > 0, l, 1.0)
    b = row // (H * NQ)
    h = (row // NQ) % H
    i = row % NQ
    tl.store(O + b.to(tl.int64) * so_b + h * so_h + i * so_n + offs_f * so_d,
             o.to(O.dtype.element_ty), mask=f_ok)
    if WRITE_LSE:  # log-sum-exp of the row's logits (-inf when no key is visible): combines across devices
        tl.store(LSE + row, tl.where(l > 0, m + tl.log(tl.where(l > 0, l, 1.0)), float("-inf")))
'''


def decode_source(plan: DecodePlan, split: SplitKV) -> str:
    """The generated module: header with the cascade, helpers, logit/mask, the two kernels."""
    header = [f'"""Generated by einfuse from cascade {plan.name!r} (split-KV decode).', "", "Cascade:"]
    header += [f"    {line}" for line in plan.einsums]
    header += ["", f"Schedule: {split.how}."]
    header += ['"""', "", "import triton", "import triton.language as tl", ""]
    return "\n".join(["\n".join(header), HELPERS, _logit_fn(plan), _mask_fn(plan),
                      _partial_kernel(plan, split), _combine_kernel(split)])
