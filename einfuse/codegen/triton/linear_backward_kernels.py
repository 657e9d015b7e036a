"""Triton source of the chunked linear-attention backward, assembled from a :class:`LinearBackwardPlan`.

Four kernels (the math is in :mod:`einfuse.lowering.linear_backward`):

* ``linear_states``: the forward's own states kernel (:mod:`linear_kernels`), recomputing ``S[c]``
  at the backward chunk;
* ``linear_dstates``: the reverse recurrence, walking the chunks of one (batch, query head, key
  block, value block) from the last to the first and storing ``dS[c]`` (the queries after chunk
  ``c``) before adding chunk ``c``'s ``query(p0) fq^T dO``;
* ``linear_dq``: per (query chunk, batch*head): ``dfq`` = masked, decayed ``(dO V^T) fk`` of the
  chunk + ``query(p0) dO S[c]^T``, times ``scale * phi_q'(Q)``;
* ``linear_dkdv``: per (key chunk, batch*K/V head), over the query heads of the group: ``dV`` and
  ``dfk`` from the chunk's transposed quadratic form and ``key(m0)``-decayed products with
  ``dS[c]``, ``dK = dfk * phi_k'(K)``.

As in the forward, the feature maps (and their derivatives), the decay factors and the mask are
printed from the plan; parts a variant lacks are left out of the source. ``FT`` is the float type
of elementwise math and accumulators (float32; float64 for float64 inputs, so gradcheck sees an
exact kernel).
"""

from __future__ import annotations

from einfuse.codegen.triton.index_printer import IndexPrinter
from einfuse.codegen.triton.linear_emit import HELPERS, emit_value, indent
from einfuse.codegen.triton.linear_kernels import _decay_fns, _feature_fn, _mask_fn, _states_kernel
from einfuse.ir.expr import Binary, Compare, Const, Expr, Select, Unary
from einfuse.lowering.backward import STEP
from einfuse.lowering.linear_backward import LinearBackwardPlan


def _no_step(e: Expr) -> Expr:
    """``step(x)`` (a derivative-only operator) as ``where(x > 0, 1, 0)``, which emit_value prints."""
    if isinstance(e, Unary):
        arg = _no_step(e.arg)
        return Select(Compare("gt", arg, Const(0.0)), Const(1.0), Const(0.0)) if e.op == STEP else Unary(e.op, arg)
    if isinstance(e, Binary):
        return Binary(e.op, _no_step(e.left), _no_step(e.right))
    if isinstance(e, Select):
        return Select(e.cond, _no_step(e.then), _no_step(e.otherwise))
    return e


def _derivative_fn(name: str, d: Expr, what: str) -> str:
    body = f"return {emit_value(_no_step(d), lambda a: 'x', IndexPrinter({}, context=f'derivative of the {what} map'))}"
    return f'''
@triton.jit
def {name}(x):
    # derivative of the {what}' feature map (chain rule over the cascade's expression)
    {body}
'''


_HEAD = [
    "    b = bh // H",
    "    h = bh % H",
    "    hkv = h // (H // HKV)",
]


def _dstates_kernel(bp: LinearBackwardPlan) -> str:
    plan = bp.forward
    dec = plan.decay is not None
    lines = [
        "@triton.jit",
        "def linear_dstates(Q, DO, DS, sq_b, sq_h, sq_n, sq_d, sd_b, sd_h, sd_n, sd_d, H, N, NT, D, DV, scale,",
        "                   CHUNK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, UPCAST: tl.constexpr,",
        "                   FT: tl.constexpr, DOT_PRECISION: tl.constexpr):",
        "    # reverse running state dS[e,f] = sum_p query(p0) fq[p,e] dO[p,f] of the queries after each chunk",
        "    pid = tl.program_id(0)",
        "    bh = tl.program_id(1)",
        "    nvb = tl.cdiv(DV, BV)",
        "    kb = pid // nvb",
        "    vb = pid % nvb",
        "    b = bh // H",
        "    h = bh % H",
        "    offs_e = kb * BK + tl.arange(0, BK)",
        "    offs_f = vb * BV + tl.arange(0, BV)",
        "    offs_c = tl.arange(0, CHUNK)",
        "    q_base = Q + b.to(tl.int64) * sq_b + h * sq_h",
        "    do_base = DO + b.to(tl.int64) * sd_b + h * sd_h",
        "    ds_ptrs = DS + bh.to(tl.int64) * NT * D * DV + offs_e[:, None] * DV + offs_f[None, :]",
        "    ds_mask = (offs_e[:, None] < D) & (offs_f[None, :] < DV)",
        "    dstate = tl.zeros([BK, BV], dtype=FT)",
    ]
    if dec:
        lines.append("    chunk_decay = state_decay(h, H, CHUNK)")
    lines.append(f"    for i in range(0, {'NT' if plan.causal else 'tl.cdiv(N, CHUNK)'}):")
    body = ["c = " + ("NT - 1 - i" if plan.causal else "i")]
    if plan.causal:
        body += ["# dS after chunk c: what the later queries ask of chunk c's keys",
                 "tl.store(ds_ptrs + c * D * DV, dstate.to(DS.dtype.element_ty), mask=ds_mask)"]
    body += [
        "p = c * CHUNK + offs_c",
        "p_ok = p < N",
        "qt = tl.load(q_base + p[None, :] * sq_n + offs_e[:, None] * sq_d,",
        "             mask=p_ok[None, :] & (offs_e[:, None] < D), other=0.0).to(FT)",
        "qt = tl.where(p_ok[None, :] & (offs_e[:, None] < D), phi_q(qt), 0.0) * scale",
    ]
    if dec:
        body += ["# decay of each query from the chunk start", "qt = qt * query_decay(offs_c, h, H, CHUNK)[None, :]",
                 "dstate = dstate * chunk_decay"]
    body += [
        "do = tl.load(do_base + p[:, None] * sd_n + offs_f[None, :] * sd_d,",
        "             mask=p_ok[:, None] & (offs_f[None, :] < DV), other=0.0)",
        "if UPCAST:",
        "    do = do.to(tl.float32)",
        "dstate += tl.dot(qt.to(do.dtype), do, input_precision=DOT_PRECISION).to(FT)",
    ]
    lines.append(indent("\n".join(body), 8))
    if not plan.causal:
        lines.append("    tl.store(ds_ptrs, dstate.to(DS.dtype.element_ty), mask=ds_mask)")
    return "\n".join(lines) + "\n"


def _load(name: str, tensor: str, head: str, pos: str, offs: str, ok: str, width: str) -> list[str]:
    s = name[0] if name != "do" else "d"
    return [
        f"{name} = tl.load({tensor} + b.to(tl.int64) * s{s}_b + {head} * s{s}_h + {pos}[:, None] * s{s}_n"
        f" + {offs}[None, :] * s{s}_d,",
        f"    mask={ok}[:, None] & ({offs}[None, :] < {width}), other=0.0)",
        "if UPCAST:",
        f"    {name} = {name}.to(tl.float32)",
    ]


_STRIDES = "sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d, sd_b, sd_h, sd_n, sd_d"


def _dq_kernel(bp: LinearBackwardPlan) -> str:
    plan = bp.forward
    dec = plan.decay is not None
    lines = [
        "@triton.jit",
        f"def linear_dq(Q, K, V, DO, S, DQ, {_STRIDES},",
        "              H, HKV, N, NT, D, DV, scale, CHUNK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,",
        "              UPCAST: tl.constexpr, FT: tl.constexpr, DOT_PRECISION: tl.constexpr):",
        "    # dfq[p,e] = sum_m dA[m,p] fk[m,e] (intra, this chunk) + query(p0) sum_f dO[p,f] S[c][e,f] (inter)",
        "    c = tl.program_id(0)",
        "    bh = tl.program_id(1)",
        *_HEAD,
        "    offs_c = tl.arange(0, CHUNK)",
        "    offs_e = tl.arange(0, BD)",
        "    offs_f = tl.arange(0, BV)",
        "    p = c * CHUNK + offs_c",
        "    p_ok = p < N",
        "    e_ok = offs_e < D",
        "    f_ok = offs_f < DV",
    ]
    body = [*_load("q", "Q", "h", "p", "offs_e", "p_ok", "D"), *_load("do", "DO", "h", "p", "offs_f", "p_ok", "DV"),
            "dt = q.dtype"]
    if plan.causal:
        body += [
            "# intra part: dA[m,p] = dO[p].V[m], decayed and masked like A (keys m of this chunk)",
            "m = p",
            "m_ok = p_ok",
            *_load("k", "K", "hkv", "m", "offs_e", "m_ok", "D"),
            *_load("v", "V", "hkv", "m", "offs_f", "m_ok", "DV"),
            "fk = tl.where(m_ok[:, None] & e_ok[None, :], phi_k(k.to(FT)), 0.0).to(dt)",
            "da = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION).to(FT)",
        ]
        if dec:
            body.append("da = da * intra_decay(offs_c[:, None], tl.minimum(offs_c[None, :], offs_c[:, None]), h, H, CHUNK)")
        body += [
            "da = tl.where(visible(p[:, None], m[None, :]) & m_ok[None, :], da, 0.0)",
            "dfq = tl.dot(da.to(dt), fk, input_precision=DOT_PRECISION).to(FT)",
            "# inter part: the forward's state S[c] of the keys before this chunk",
            "s_base = S + (bh.to(tl.int64) * NT + c) * D * DV",
        ]
    else:
        body += ["# no mask: every query reads the state of the whole sequence",
                 "dfq = tl.zeros([CHUNK, BD], dtype=FT)",
                 "s_base = S + bh.to(tl.int64) * D * DV"]
    body += [
        "s = tl.load(s_base + offs_e[:, None] * DV + offs_f[None, :], mask=e_ok[:, None] & f_ok[None, :], other=0.0)",
        "inter = tl.dot(do, tl.trans(s.to(dt)), input_precision=DOT_PRECISION).to(FT)",
    ]
    if dec:
        body.append("inter = inter * query_decay(offs_c, h, H, CHUNK)[:, None]")
    body += [
        "dfq += inter",
        "dq = dfq * scale" if bp.dq_map is None else "dq = dfq * scale * dphi_q(q.to(FT))",
        "tl.store(DQ + bh.to(tl.int64) * N * D + p[:, None] * D + offs_e[None, :], dq.to(DQ.dtype.element_ty),",
        "         mask=p_ok[:, None] & e_ok[None, :])",
    ]
    return "\n".join(lines) + "\n" + indent("\n".join(body), 4) + "\n"


def _dkdv_kernel(bp: LinearBackwardPlan) -> str:
    plan = bp.forward
    dec = plan.decay is not None
    lines = [
        "@triton.jit",
        f"def linear_dkdv(Q, K, V, DO, DS, DK, DVAL, {_STRIDES},",
        "                H, HKV, N, NT, D, DV, scale, CHUNK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,",
        "                UPCAST: tl.constexpr, FT: tl.constexpr, DOT_PRECISION: tl.constexpr):",
        "    # dV[m,f] = sum_p A[m,p] dO[p,f], dfk[m,e] = sum_p dA[m,p] fq[p,e]: this chunk's queries directly,",
        "    # later ones through dS[c], summed over the query heads of the K/V head's group",
        "    c = tl.program_id(0)",
        "    bkv = tl.program_id(1)",
        "    b = bkv // HKV",
        "    hkv = bkv % HKV",
        "    G = H // HKV",
        "    offs_c = tl.arange(0, CHUNK)",
        "    offs_e = tl.arange(0, BD)",
        "    offs_f = tl.arange(0, BV)",
        "    m = c * CHUNK + offs_c",
        "    m_ok = m < N",
        "    e_ok = offs_e < D",
        "    f_ok = offs_f < DV",
    ]
    body = [*_load("k", "K", "hkv", "m", "offs_e", "m_ok", "D"), *_load("v", "V", "hkv", "m", "offs_f", "m_ok", "DV"),
            "dt = k.dtype",
            "fk = tl.where(m_ok[:, None] & e_ok[None, :], phi_k(k.to(FT)), 0.0).to(dt)",
            "dfk = tl.zeros([CHUNK, BD], dtype=FT)",
            "dv = tl.zeros([CHUNK, BV], dtype=FT)",
            "for g in range(0, G):"]
    loop = ["h = hkv * G + g", "bh = b * H + h"]
    if plan.causal:
        loop += [
            "# intra part: the queries p of this chunk (columns), A and dA transposed",
            "p = m",
            "p_ok = m_ok",
            *_load("q", "Q", "h", "p", "offs_e", "p_ok", "D"),
            *_load("do", "DO", "h", "p", "offs_f", "p_ok", "DV"),
            "fq = (tl.where(p_ok[:, None] & e_ok[None, :], phi_q(q.to(FT)), 0.0) * scale).to(dt)",
            "at = tl.dot(fk, tl.trans(fq), input_precision=DOT_PRECISION).to(FT)",
            "dat = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION).to(FT)",
        ]
        if dec:
            loop += ["w = intra_decay(offs_c[None, :], tl.minimum(offs_c[:, None], offs_c[None, :]), h, H, CHUNK)",
                     "at = at * w", "dat = dat * w"]
        loop += [
            "keep = visible(p[None, :], m[:, None]) & p_ok[None, :]",
            "at = tl.where(keep, at, 0.0)",
            "dat = tl.where(keep, dat, 0.0)",
            "dv += tl.dot(at.to(dt), do, input_precision=DOT_PRECISION).to(FT)",
            "dfk += tl.dot(dat.to(dt), fq, input_precision=DOT_PRECISION).to(FT)",
            "# inter part: dS[c] of the queries after this chunk",
            "ds_base = DS + (bh.to(tl.int64) * NT + c) * D * DV",
        ]
    else:
        loop += ["# no mask: every key is read by the whole sequence's queries", "ds_base = DS + bh.to(tl.int64) * D * DV"]
    loop += [
        "ds = tl.load(ds_base + offs_e[:, None] * DV + offs_f[None, :], mask=e_ok[:, None] & f_ok[None, :],",
        "             other=0.0).to(dt)",
        "dv_in = tl.dot(fk, ds, input_precision=DOT_PRECISION).to(FT)",
        "dk_in = tl.dot(v, tl.trans(ds), input_precision=DOT_PRECISION).to(FT)",
    ]
    if dec:
        loop += ["kd = key_decay(offs_c, h, H, CHUNK)[:, None]", "dv_in = dv_in * kd", "dk_in = dk_in * kd"]
    loop += ["dv += dv_in", "dfk += dk_in"]
    body += [indent("\n".join(loop), 4)]
    body += [
        "dk = dfk" if bp.dk_map is None else "dk = dfk * dphi_k(k.to(FT))",
        "tl.store(DK + bkv.to(tl.int64) * N * D + m[:, None] * D + offs_e[None, :], dk.to(DK.dtype.element_ty),",
        "         mask=m_ok[:, None] & e_ok[None, :])",
        "tl.store(DVAL + bkv.to(tl.int64) * N * DV + m[:, None] * DV + offs_f[None, :], dv.to(DVAL.dtype.element_ty),",
        "         mask=m_ok[:, None] & f_ok[None, :])",
    ]
    return "\n".join(lines) + "\n" + indent("\n".join(body), 4) + "\n"


def linear_backward_source(bp: LinearBackwardPlan) -> str:
    """The whole generated backward module: header, helpers, variant functions, four kernels."""
    from einfuse.lowering.linear_backward import format_linear_backward

    plan = bp.unnormalized
    header = [f'"""Generated by einfuse: backward of cascade {plan.name!r} (chunked linear attention).', "",
              format_linear_backward(bp, "    "), "", "Cascade:"]
    header += [f"    {line}" for line in plan.einsums]
    header += ['"""', "", "import triton", "import triton.language as tl", ""]
    parts = ["\n".join(header), HELPERS,
             _feature_fn("phi_q", plan.q_map, "queries"), _feature_fn("phi_k", plan.k_map, "keys"),
             _derivative_fn("dphi_q", bp.dq_map, "queries") if bp.dq_map is not None else "",
             _derivative_fn("dphi_k", bp.dk_map, "keys") if bp.dk_map is not None else "",
             _decay_fns(plan, bp.parts), _mask_fn(plan), "", _states_kernel(plan), "", _dstates_kernel(bp), "",
             _dq_kernel(bp), "", _dkdv_kernel(bp)]
    return "\n".join(p for p in parts if p)


__all__ = ["linear_backward_source"]
