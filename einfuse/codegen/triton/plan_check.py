"""Check that the kernel generator's reading of a cascade computes the cascade.

:func:`einfuse.codegen.triton.analysis.analyze` reduces a softmax/sigmoid cascade to an
:class:`AttentionPlan` (score expression over the Q.K product, mask, normalisation) by following the
chain from the normalisation back to the product. Anything off that chain, e.g. an extra Einsum that
rescales the output or a second branch added to it, is not part of the plan, and a kernel generated
from the plan would silently compute something else. So before generating, rebuild the cascade the
plan describes with the DSL and compare both with the float64 reference executor on small random
inputs. Cheap (two reference runs on a few dozen positions) and independent of how the cascade was
written or lowered.
"""

from __future__ import annotations

import numpy as np

from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError, EinfuseError
from einfuse.frontends import dsl
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import Access, binary, map_accesses

CHECK_SIZES = {"B": 1, "H": 4, "P": 11, "M": 13, "E": 5, "F": 6}


def plan_cascade(plan) -> Cascade:
    """The cascade an :class:`AttentionPlan` describes, written with the DSL."""
    from einfuse.codegen.triton.analysis import DOT

    def score_mod(s, b, h, q, kv):
        return map_accesses(plan.score, lambda a: s if a.tensor == DOT else a)

    mask = plan.mask
    if plan.family == "normsum":
        return _normsum_cascade(plan, score_mod, mask)
    return dsl.attention(f"{plan.name}_plan", score_mod=score_mod,
                         mask_mod=(lambda b, h, q, kv: mask) if mask is not None else None,
                         normalization=plan.family, params=dict(plan.params),
                         scale=1.0)  # the plan's score carries the cascade's scale itself


def _normsum_cascade(plan, score_mod, mask) -> Cascade:
    """``O = (sum_m W*V) / (sum_m W)`` with ``W`` the plan's score (the DSL has no such normalisation)."""
    cb = dsl.CascadeBuilder(f"{plan.name}_plan")
    cb.params.update(plan.params)
    cb.attrs["family"] = "normsum"
    w = dsl.qk_einsums(cb, None, score_mod, (lambda b, h, q, kv: mask) if mask is not None else None)
    va = cb.input("V", "M", "F")
    ws = cb.einsum("WS", ("P",), w, comment="sum of the weights")
    nv = cb.einsum("NV", ("P", "F"), binary("mul", w, va), comment="weighted sum")
    cb.einsum("O", ("P", "F"), binary("div", nv, ws), reduce=None, output=True)
    return cb.build()


def check_plan(c: Cascade, plan) -> None:
    """Raise CodegenError when the plan and the cascade disagree on random inputs."""
    try:
        ref_c = plan_cascade(plan)
    except EinfuseError as exc:
        raise CodegenError(f"cascade {c.name}: cannot restate the kernel plan as a cascade: {exc}") from None
    rng = np.random.default_rng(0)
    B, H, P, M, E, F = (CHECK_SIZES[k] for k in "BHPMEF")
    shapes = {plan.q: (P, E), plan.k: (M, E), plan.v: (M, F)}
    extra = [t for t in c.inputs if t not in shapes]
    if extra:
        raise CodegenError(f"cascade {c.name}: input {extra[0]} is not read by the attention kernel")
    feature = {plan.q: plan.head_rank, plan.k: plan.head_rank, plan.v: plan.value_rank}
    natural = {}  # (B, H, positions, features) for the restated cascade
    arrays = {}   # the same data in the cascade's own storage order
    for name, (n, d) in shapes.items():
        natural[name] = rng.standard_normal((B, H, n, d))
        stored_last = c.tensors[name].ranks[-1] == feature[name]
        arrays[name] = natural[name] if stored_last else np.swapaxes(natural[name], 2, 3)
    try:
        got = run_cascade(c, arrays)[c.outputs[0]]
        want_out = run_cascade(ref_c, {"Q": natural[plan.q], "K": natural[plan.k], "V": natural[plan.v]})["O"]
    except EinfuseError as exc:
        raise CodegenError(f"cascade {c.name}: could not check the kernel plan: {exc}") from None
    if got.shape != want_out.shape:
        got = np.swapaxes(got, 2, 3)
    err = float(np.linalg.norm(got - want_out) / max(np.linalg.norm(want_out), 1e-300))
    if not err < 1e-9:
        raise CodegenError(
            f"cascade {c.name}: the Triton generator reads it as {plan.family} attention with score "
            f"{_fmt(plan.score)} and mask {plan.mask}, which computes something else (rel. difference "
            f"{err:.2e}); Einsums outside the score -> normalisation -> output chain are not supported")


def _fmt(e) -> str:
    from einfuse.ir.printer import format_expr

    return format_expr(e) if not isinstance(e, Access) else "Q.K"
