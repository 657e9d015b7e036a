"""Triton source of the chunked linear-attention kernels, assembled from a :class:`LinearPlan`.

Schedule (Lightning Attention-2, in the two-kernel form of fla's ``chunk`` kernels): the sequence is
cut into chunks of ``CHUNK`` positions.

* ``linear_states`` walks the chunks of one (batch, head, key block, value block) in order and
  stores the running state ``S_c = sum_{m < c0} g(c0 - m) phi(k_m) v_m^T`` before each chunk ``c``
  (``c0`` its first position), decaying it by ``g(CHUNK)`` per chunk; with a normaliser it also keeps
  ``z_c = sum_{m < c0} g(c0 - m) phi(k_m)``.
* ``linear_output`` runs every (chunk, value block, batch*head) in parallel: the intra-chunk part is
  the masked quadratic form ``(phi(q) phi(k)^T * g(p - m)) v``, the inter-chunk part
  ``g(p - c0) phi(q) S_c``.

Only the skeleton above is fixed. The feature maps, the decay ``g`` and the diagonal mask are
printed from the cascade's Einsums (see :mod:`linear_emit`), and parts a variant does not have
(decay, normaliser, causal mask) are left out of the source rather than switched off at run time.
"""

from __future__ import annotations

from einfuse.codegen.triton.index_printer import IndexPrinter
from einfuse.codegen.triton.linear_emit import HELPERS, emit_value, indent
from einfuse.ir.ranks import HEAD_EXTENT, HEAD_INDEX
from einfuse.lowering.linear import M_IDX, P_IDX, LinearPlan
from einfuse.lowering.linear_split import BLOCK, M0, P0, DecayParts


def _feature_fn(name: str, fm, what: str) -> str:
    if fm is None:
        body = "return x"
    else:
        index = IndexPrinter({}, context=f"feature map of the {what}")
        body = f"return {emit_value(fm, lambda a: 'x', index)}"
    return f'''
@triton.jit
def {name}(x):
    # feature map of the {what} (from the cascade)
    {body}
'''


def _decay_fns(plan: LinearPlan, parts: DecayParts) -> str:
    """intra/key/state/query decay factors, printed from the lowered cascade's index values."""
    if plan.decay is None:
        return ""
    index = IndexPrinter({P0: "p0", M0: "m0", BLOCK: "P0", HEAD_INDEX: "h", HEAD_EXTENT: "H"},
                         context=f"cascade {plan.name}: decay")
    docs = {"intra": "within a block, key m0 to query p0", "key": "a block's key m0 to the block end",
            "state": "the running state across one block", "query": "the state to query p0"}
    args = {"intra": "p0, m0, h, H, P0", "key": "m0, h, H, P0", "state": "h, H, P0", "query": "p0, h, H, P0"}
    out = [f"\n# decay factors ({parts.source}), positions relative to a block of P0 positions:"]
    out += [f"#   {line}" for line in parts.einsums]
    for name in ("intra", "key", "state", "query"):
        e = getattr(parts, name)
        out.append(f'''
@triton.jit
def {name}_decay({args[name]}):
    # {docs[name]}: {e}
    return {index.float_value(e)}
''')
    return "\n".join(out)


def _mask_fn(plan: LinearPlan) -> str:
    if plan.mask is None:
        return ""
    index = IndexPrinter({P_IDX: "p", M_IDX: "m"}, context=f"cascade {plan.name}: mask")
    return f'''
@triton.jit
def visible(p, m):
    # score constraint: {plan.mask}
    return {index.predicate(plan.mask)}
'''


# FT is the float type of elementwise math and accumulators: float32, float64 for float64 inputs
# (the CPU interpreter: gradcheck needs the forward exact in float64).
# The Triton CPU interpreter multiplies bfloat16 tl.dot operands wrongly (relative error ~1e9);
# with UPCAST (set by the launcher in the interpreter for bf16 inputs only) the dot operands are
# cast to float32 after loading. On the GPU UPCAST is False and the branch compiles away.
_UPCAST_V = ["if UPCAST:", "    v = v.to(tl.float32)"]


def _states_kernel(plan: LinearPlan) -> str:
    dec = plan.decay is not None
    norm = plan.normalize
    lines = [
        "@triton.jit",
        "def linear_states(K, V, S, Z, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,",
        "                  H, HKV, N, NT, D, DV,",
        "                  CHUNK: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, UPCAST: tl.constexpr, FT: tl.constexpr,",
        "                  DOT_PRECISION: tl.constexpr):",
        "    # running state S[e,f] of the chunks before each chunk: inter-chunk part of",
        "    #   O[p,f] = sum_m A[m,p] * V[m,f]   for m in earlier chunks",
        "    pid = tl.program_id(0)",
        "    bh = tl.program_id(1)",
        "    nvb = tl.cdiv(DV, BV)",
        "    kb = pid // nvb",
        "    vb = pid % nvb",
        "    b = bh // H",
        "    h = bh % H",
        "    hkv = h // (H // HKV)",
        "    offs_e = kb * BK + tl.arange(0, BK)",
        "    offs_f = vb * BV + tl.arange(0, BV)",
        "    offs_c = tl.arange(0, CHUNK)",
        "    k_base = K + b.to(tl.int64) * sk_b + hkv * sk_h",
        "    v_base = V + b.to(tl.int64) * sv_b + hkv * sv_h",
        "    s_ptrs = S + bh.to(tl.int64) * NT * D * DV + offs_e[:, None] * DV + offs_f[None, :]",
        "    s_mask = (offs_e[:, None] < D) & (offs_f[None, :] < DV)",
        "    state = tl.zeros([BK, BV], dtype=FT)",
    ]
    if norm:
        lines += [
            "    z_ptrs = Z + bh.to(tl.int64) * NT * D + offs_e",
            "    zsum = tl.zeros([BK], dtype=FT)",
        ]
    if dec:
        lines.append("    chunk_decay = state_decay(h, H, CHUNK)")
    lines.append("    for c in range(0, N_CHUNKS_LOOP):")
    body = []
    if plan.causal:
        body += [
            "# state before chunk c: what its queries see of earlier chunks",
            "tl.store(s_ptrs + c * D * DV, state.to(S.dtype.element_ty), mask=s_mask)",
        ]
        if norm:
            body += ["if vb == 0:", "    tl.store(z_ptrs + c * D, zsum, mask=offs_e < D)"]
    body += [
        "m = c * CHUNK + offs_c",
        "m_ok = m < N",
        "kt = tl.load(k_base + m[None, :] * sk_n + offs_e[:, None] * sk_d,",
        "             mask=m_ok[None, :] & (offs_e[:, None] < D), other=0.0).to(FT)",
        "kt = tl.where(m_ok[None, :] & (offs_e[:, None] < D), phi_k(kt), 0.0)",
    ]
    if dec:
        body += [
            "# decay of each key to the end of the block",
            "kt = kt * key_decay(offs_c, h, H, CHUNK)[None, :]",
        ]
    body += [
        "v = tl.load(v_base + m[:, None] * sv_n + offs_f[None, :] * sv_d,",
        "            mask=m_ok[:, None] & (offs_f[None, :] < DV), other=0.0)",
        *_UPCAST_V,
    ]
    if dec:
        body.append("state = state * chunk_decay")
    body.append("state += tl.dot(kt.to(v.dtype), v, input_precision=DOT_PRECISION)")
    if norm:
        body.append("zsum = zsum * chunk_decay + tl.sum(kt, 1)" if dec else "zsum += tl.sum(kt, 1)")
    lines.append(indent("\n".join(body), 8))
    if not plan.causal:
        lines += [
            "    # no mask: every query sees the state of the whole sequence",
            "    tl.store(s_ptrs, state.to(S.dtype.element_ty), mask=s_mask)",
        ]
        if norm:
            lines += ["    if vb == 0:", "        tl.store(z_ptrs, zsum, mask=offs_e < D)"]
    src = "\n".join(lines) + "\n"
    return src.replace("N_CHUNKS_LOOP", "NT" if plan.causal else "tl.cdiv(N, CHUNK)")


def _output_kernel(plan: LinearPlan) -> str:
    dec = plan.decay is not None
    norm = plan.normalize
    lines = [
        "@triton.jit",
        "def linear_output(Q, K, V, S, Z, O, sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d,",
        "                  sv_b, sv_h, sv_n, sv_d, so_b, so_h, so_n, so_d,",
        "                  H, HKV, N, NT, D, DV, scale,",
        "                  CHUNK: tl.constexpr, SCHUNK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,",
        "                  UPCAST: tl.constexpr, FT: tl.constexpr, DOT_PRECISION: tl.constexpr):",
        "    # queries of block c (CHUNK positions); states are stored every SCHUNK positions",
        "    c = tl.program_id(0)",
        "    vb = tl.program_id(1)",
        "    bh = tl.program_id(2)",
        "    b = bh // H",
        "    h = bh % H",
        "    hkv = h // (H // HKV)",
        "    offs_c = tl.arange(0, CHUNK)",
        "    offs_e = tl.arange(0, BD)",
        "    offs_f = vb * BV + tl.arange(0, BV)",
        "    p = c * CHUNK + offs_c",
        "    p_ok = p < N",
        "    e_ok = offs_e < D",
        "    f_ok = offs_f < DV",
        "    q = tl.load(Q + b.to(tl.int64) * sq_b + h * sq_h + p[:, None] * sq_n + offs_e[None, :] * sq_d,",
        "                mask=p_ok[:, None] & e_ok[None, :], other=0.0)",
        "    if UPCAST:  # CPU interpreter only: its bf16 tl.dot is wrong, so every dot runs in fp32",
        "        q = q.to(tl.float32)",
        "    dt = q.dtype",
        "    fq = tl.where(p_ok[:, None] & e_ok[None, :], phi_q(q.to(FT)), 0.0) * scale",
    ]
    if plan.causal:
        load_kv = [
            "k = tl.load(K + b.to(tl.int64) * sk_b + hkv * sk_h + m[:, None] * sk_n + offs_e[None, :] * sk_d,",
            "            mask=m_ok[:, None] & e_ok[None, :], other=0.0)",
            "fk = tl.where(m_ok[:, None] & e_ok[None, :], phi_k(k.to(FT)), 0.0)",
            "qk = tl.dot(fq.to(dt), tl.trans(fk.to(dt)), input_precision=DOT_PRECISION)",
        ]
        if dec:
            load_kv += ["# A[m,p] = QK[m,p] * decay(p, m)  (masked lanes: clamped to m = p)",
                        "qk = qk * intra_decay((p - c0)[:, None], tl.minimum(m[None, :], p[:, None]) - c0, h, H, SCHUNK)"]
        load_v = [
            "v = tl.load(V + b.to(tl.int64) * sv_b + hkv * sv_h + m[:, None] * sv_n + offs_f[None, :] * sv_d,",
            "            mask=m_ok[:, None] & f_ok[None, :], other=0.0)",
            *_UPCAST_V,
        ]
        lines += [
            "    sc = (c * CHUNK) // SCHUNK",
            "    c0 = sc * SCHUNK",
            "    acc = tl.zeros([CHUNK, BV], dtype=FT)",
        ]
        if norm:
            lines.append("    den = tl.zeros([CHUNK], dtype=FT)")
        lines += [
            "    # intra part, earlier key blocks of this state chunk: every key is before every query",
            "    for m0 in range(c0, c * CHUNK, CHUNK):",
            "        m = m0 + offs_c",
            "        m_ok = m < N",
        ]
        pv = "acc += tl.dot(a.to(v.dtype), v, input_precision=DOT_PRECISION)"
        lines += [indent(x, 8) for x in load_kv + ["a = qk"] + load_v + [pv]]
        if norm:
            lines.append("        den += tl.sum(a, 1)")
        lines += [
            "    # intra part, the diagonal block: the masked quadratic form (m = p range)",
            "    m = p",
            "    m_ok = p_ok",
        ]
        lines += [indent(x, 4) for x in load_kv]
        lines += ["    a = tl.where(visible(p[:, None], m[None, :]) & m_ok[None, :], qk, 0.0)"]
        lines += [indent(x, 4) for x in load_v]
        lines.append("    acc += tl.dot(a.to(v.dtype), v, input_precision=DOT_PRECISION)")
        if norm:
            lines.append("    den += tl.sum(a, 1)")
        lines += [
            "    # inter-chunk part: the running state of the keys before c0",
            "    s_base = S + (bh.to(tl.int64) * NT + sc) * D * DV",
        ]
    else:
        lines += [
            "    # no mask: every query reads the state of the whole sequence",
            "    s_base = S + bh.to(tl.int64) * D * DV",
        ]
    lines += [
        "    state = tl.load(s_base + offs_e[:, None] * DV + offs_f[None, :],",
        "                    mask=e_ok[:, None] & f_ok[None, :], other=0.0)",
    ]
    if dec:
        lines += [
            "    # decay(p, m) = query_decay(p - c0) * (decay of m to c0, already in the state)",
            "    fq = fq * query_decay(p - c0, h, H, SCHUNK)[:, None]",
        ]
    inter = "tl.dot(fq.to(dt), state.to(dt), input_precision=DOT_PRECISION)"
    lines.append(f"    acc += {inter}" if plan.causal else f"    acc = {inter}")
    if norm:
        zoff = "(bh.to(tl.int64) * NT + sc) * D" if plan.causal else "bh.to(tl.int64) * D"
        lines += [
            "    # normaliser SD[p] = sum_m A[m,p]: the same two parts with V = 1",
            f"    z = tl.load(Z + {zoff} + offs_e, mask=e_ok, other=0.0)",
            f"    den {'+' if plan.causal else ''}= tl.sum(fq * z[None, :], 1)",
            "    acc = acc / tl.where(p_ok, den, 1.0)[:, None]",
        ]
        if plan.causal:  # a causal mask keeps every key m < p: only row 0 can have none (m < p)
            lines += [
                "    # a query with no visible key has an empty sum: its output is absent, i.e. 0 (not 0/0)",
                "    has_keys = (p > 0) | visible(p, p * 0)",
                "    acc = tl.where(has_keys[:, None], acc, 0.0)",
            ]
    lines += [
        "    tl.store(O + b.to(tl.int64) * so_b + h * so_h + p[:, None] * so_n + offs_f[None, :] * so_d,",
        "             acc.to(O.dtype.element_ty), mask=p_ok[:, None] & f_ok[None, :])",
    ]
    return "\n".join(lines) + "\n"


def linear_source(plan: LinearPlan, parts: DecayParts) -> str:
    """The whole generated module: header, helpers, variant functions, the two kernels."""
    header = [f'"""Generated by einfuse from cascade {plan.name!r} (chunked linear attention).', "", "Cascade:"]
    header += [f"    {line}" for line in plan.einsums]
    header += ['"""', "", "import triton", "import triton.language as tl", ""]
    if plan.mask is None and plan.causal:
        raise AssertionError("causal plan without a mask")
    parts = ["\n".join(header), HELPERS,
             _feature_fn("phi_q", plan.q_map, "queries"),
             _feature_fn("phi_k", plan.k_map, "keys"),
             _decay_fns(plan, parts), _mask_fn(plan), "", _states_kernel(plan), "", _output_kernel(plan)]
    return "\n".join(p for p in parts if p is not None)


__all__ = ["linear_source"]
