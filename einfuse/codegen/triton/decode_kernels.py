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

KV layouts (constexpr ``PAGED``): contiguous ``(B, H_kv, N, D)`` (any strides, last one 1), or pages
``(num_pages, page_size, H_kv, D)`` (vLLM's flash-attn layout) read through a page table
``PT[b, m // PAGE_SIZE]``: key ``m`` of sequence ``b`` is slot ``m % PAGE_SIZE`` of that page, loaded
in place (no gather copy). With ``HAS_LENS`` each sequence has its own length ``LENS[b]``: its keys
are split into ``N_SPLITS`` ranges of its own (``SPLIT_LEN`` is ignored), positions in the mask and
logit use that length as ``M`` (a bottom-right query ``i`` sits at ``LENS[b] - NQ + i``), and the
combine reads only the splits that held keys.
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
    m_len = "        sz_M = n_kv  # positions (bottom-right alignment) follow this sequence's length\n" \
        if "M" in plan.sizes else ""
    return f'''
@triton.jit
def decode_partial(Q, K, V, WS, R, PT, LENS, CNT, O, LSE, sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d,
                   sv_b, sv_h, sv_n, sv_d, spt_b, spt_n, so_b, so_h, so_n, so_d, NQ, NK, H, HKV, D, DV, SPLIT_LEN,
                   N_SPLITS, scale{sz},
                   ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                   UPCAST: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
                   HAS_LENS: tl.constexpr, FUSED: tl.constexpr, BS: tl.constexpr, WRITE_LSE: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    # K, V: (B, HKV, N, D) with strides sk_b.. (PAGED=False), or pages (num_pages, PAGE_SIZE, HKV, D)
    # with sk_b the page stride and sk_n the slot stride, read through PT[b, m // PAGE_SIZE].
    # WS: the float32 workspace, R partial maxima, then R sums, then R x DV partial outputs
    Mws = WS
    Lws = WS + R
    Ows = WS + 2 * R
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
    if PAGED:  # the page table row of this sequence; the pages hold every sequence
        k_base = K + hkv * sk_h
        v_base = V + hkv * sv_h
        pt_row = PT + b.to(tl.int64) * spt_b
    else:
        k_base = K + b.to(tl.int64) * sk_b + hkv * sk_h
        v_base = V + b.to(tl.int64) * sv_b + hkv * sv_h
    if HAS_LENS:  # this sequence's own length, cut into N_SPLITS key ranges of its own
        n_kv = tl.load(LENS + b)
        split_len = tl.cdiv(tl.cdiv(n_kv, N_SPLITS), BLOCK_N) * BLOCK_N
{m_len}    else:
        n_kv = NK
        split_len = SPLIT_LEN
    lo = split * split_len
    hi = tl.minimum(lo + split_len, n_kv)
    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, BDV], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        m = start + tl.arange(0, BLOCK_N)
        m_ok = m < hi
        if PAGED:  # key m: slot m % PAGE_SIZE of page PT[b, m // PAGE_SIZE], read in place
            page = tl.load(pt_row + (m // PAGE_SIZE) * spt_n, mask=m_ok, other=0).to(tl.int64)
            slot = m % PAGE_SIZE
            k_row = page * sk_b + slot * sk_n
            v_row = page * sv_b + slot * sv_n
        else:
            k_row = m * sk_n
            v_row = m * sv_n
        kt = tl.load(k_base + k_row[None, :] + offs_d[:, None] * sk_d,
                     mask=m_ok[None, :] & d_ok[:, None], other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
        # {plan.score}[m,p] = Q[p,e] * K[m,e] * scale
        qk = tl.dot(q, kt, input_precision=DOT_PRECISION) * scale
        s = logit(qk, i[:, None], m[None, :], h[:, None], b{sz})
        s = tl.where({keep}, s, float("-inf"))
        # online softmax over this split's keys: running max, rescaled running sum and output
{split.comment("partial_max", 8)}{split.comment("partial_num", 8)}{split.comment("partial_sum", 8)}{split.comment("partial_out", 8)}        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        pr = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(pr, 1)
        v = tl.load(v_base + v_row[:, None] + offs_f[None, :] * sv_d,
                    mask=m_ok[:, None] & f_ok[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
{split.comment("partial_norm")}    po = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    ws = ((b * H + h).to(tl.int64) * NQ + i) * N_SPLITS + split
    # a split past its sequence's end stores nothing: the combine skips it (the comparison is made a
    # row vector first: the interpreter refuses a scalar predicate inside a mask)
    keep = row_ok & (lo + 0 * r < hi)
    tl.store(Mws + ws, m_i, mask=keep)
    tl.store(Lws + ws, l_i, mask=keep)
    tl.store(Ows + ws[:, None] * DV + offs_f[None, :], po, mask=keep[:, None] & f_ok[None, :])
    if FUSED:  # the last of this (batch, KV head, row block)'s N_SPLITS programs to finish merges them
        tl.debug_barrier()  # every thread's partial stores come before the ticket that releases them
        cnt = CNT + pid * tl.num_programs(2) + rb
        ticket = tl.atomic_add(cnt, 1, sem="acq_rel")
        if ticket == N_SPLITS - 1:
            tl.store(cnt, 0)  # all N_SPLITS tickets are taken: zero again for the next call
            tl.debug_barrier()
            if HAS_LENS:  # only the splits that held keys of this sequence
                n_used = tl.cdiv(n_kv, tl.maximum(split_len, 1))
            else:
                n_used = N_SPLITS
            base = ((b * H + h).to(tl.int64) * NQ + i) * N_SPLITS
            offs_s = tl.arange(0, BS)
            # partials of other programs: read from L2 (.cg), never from this SM's L1
            m_s = tl.load(Mws + base[:, None] + offs_s[None, :], mask=row_ok[:, None] & (offs_s < n_used)[None, :],
                          other=float("-inf"), cache_modifier=".cg")
{split.comment("global_max", 12)}            m = tl.max(m_s, 1)
            m_safe = tl.where(m == float("-inf"), 0.0, m)
            l = tl.zeros([ROWS], dtype=tl.float32)
            snv = tl.zeros([ROWS, BDV], dtype=tl.float32)
            for s in range(0, n_used):
                w = tl.load(Lws + base + s, mask=row_ok, other=0.0, cache_modifier=".cg") * \
                    tl.exp(tl.load(Mws + base + s, mask=row_ok, other=float("-inf"), cache_modifier=".cg") - m_safe)
{split.comment("weight", 16)}{split.comment("denominator", 16)}                l += w
                po = tl.load(Ows + (base + s)[:, None] * DV + offs_f[None, :], mask=row_ok[:, None] & f_ok[None, :],
                             other=0.0, cache_modifier=".cg")
{split.comment("weighted", 16)}                snv += po * w[:, None]
{split.comment("output", 12)}            o = snv / tl.where(l > 0, l, 1.0)[:, None]
            tl.store(O + b.to(tl.int64) * so_b + h[:, None] * so_h + i[:, None] * so_n + offs_f[None, :] * so_d,
                     o.to(O.dtype.element_ty), mask=row_ok[:, None] & f_ok[None, :])
            if WRITE_LSE:
                tl.store(LSE + (b * H + h) * NQ + i, tl.where(l > 0, m + tl.log(tl.where(l > 0, l, 1.0)),
                                                              float("-inf")), mask=row_ok)
'''


def _combine_kernel(split: SplitKV) -> str:
    c = split.comment
    return f'''
@triton.jit
def decode_combine(WS, R, O, LSE, LENS, so_b, so_h, so_n, so_d, H, NQ, DV, N_SPLITS,
                   BS: tl.constexpr, CHUNK: tl.constexpr, BDV: tl.constexpr, WRITE_LSE: tl.constexpr,
                   HAS_LENS: tl.constexpr, BLOCK_N: tl.constexpr):
    # merge the splits of one (batch, head, query); 0 where no split saw a visible key
    Mws = WS
    Lws = WS + R
    Ows = WS + 2 * R
    row = tl.program_id(0)
    b = row // (H * NQ)
    h = (row // NQ) % H
    i = row % NQ
    offs_s = tl.arange(0, BS)
    offs_f = tl.arange(0, BDV)
    if HAS_LENS:  # only the splits that held keys of this sequence (decode_partial's split lengths)
        n_kv = tl.load(LENS + b)
        split_len = tl.maximum(tl.cdiv(tl.cdiv(n_kv, N_SPLITS), BLOCK_N) * BLOCK_N, 1)
        n_used = tl.cdiv(n_kv, split_len)
    else:
        n_used = N_SPLITS
    s_ok = offs_s < n_used
    f_ok = offs_f < DV
    base = row.to(tl.int64) * N_SPLITS
    m_s = tl.load(Mws + base + offs_s, mask=s_ok, other=float("-inf"))
    l_s = tl.load(Lws + base + offs_s, mask=s_ok, other=0.0)
{c("global_max")}    m = tl.max(m_s, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
{c("weight")}    w = l_s * tl.exp(m_s - m_safe)
{c("denominator")}    l = tl.sum(w, 0)
    # the weighted outputs, CHUNK splits at a time (a BS x DV tile would not fit in registers)
{c("weighted")}    snv = tl.zeros([BDV], dtype=tl.float32)
    for c0 in range(0, n_used, CHUNK):
        cs = c0 + tl.arange(0, CHUNK)
        c_ok = cs < n_used
        w_c = tl.load(Lws + base + cs, mask=c_ok, other=0.0) * \\
            tl.exp(tl.load(Mws + base + cs, mask=c_ok, other=float("-inf")) - m_safe)
        po = tl.load(Ows + (base + cs[:, None]) * DV + offs_f[None, :], mask=c_ok[:, None] & f_ok[None, :],
                     other=0.0)
        snv += tl.sum(po * w_c[:, None], 0)
{c("output")}    o = snv / tl.where(l > 0, l, 1.0)
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
