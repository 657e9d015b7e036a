"""Check that the kernel generator's reading of a cascade computes the cascade.

:func:`einfuse.lowering.onepass.analyze` reduces a softmax/sigmoid cascade to an
:class:`OnePassPlan` (score expression over the Q.K product, mask, normalisation) by following the
chain from the normalisation back to the product. Anything off that chain, e.g. an extra Einsum that
rescales the output or a second branch added to it, is not part of the plan, and a kernel generated
from the plan would silently compute something else. So before generating, rebuild the cascade the
plan describes (Einsum by Einsum, no front end involved) and compare both with the float64 reference executor on small random
inputs. Cheap (two reference runs on a few dozen positions) and independent of how the cascade was
written or lowered.
"""

from __future__ import annotations

import numpy as np

from einfuse.codegen.capture_args import plan_captures
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError, EinfuseError
from einfuse.ir.builder import CascadeBuilder
from einfuse.ir.captures import Capture
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import Access, binary, map_accesses, unary
from einfuse.lowering.onepass import DOT

CHECK_SIZES = {"B": 1, "H": 4, "P": 11, "M": 13, "E": 5, "F": 6}


def plan_cascade(plan) -> Cascade:
    """The cascade an :class:`OnePassPlan` describes, written out Einsum by Einsum: the score
    ``QK[m,p] = Q[p,e]*K[m,e]`` (and ``S[m,p]``, the plan's score expression), under the plan's mask,
    then the family's normalisation."""
    cb = CascadeBuilder(f"{plan.name}_plan")
    cb.params.update(plan.params)
    cb.attrs["family"] = plan.family
    cb.captures.update({k.name: Capture(k.name, k.ndim, k.kind) for k in plan_captures(plan.score, plan.mask)})
    qa, ka, va = cb.input("Q", "P", "E"), cb.input("K", "M", "E"), cb.input("V", "M", "F")
    mask = plan.mask
    qk = cb.einsum("QK", ("M", "P"), binary("mul", qa, ka), where=mask, comment="scores")
    score = map_accesses(plan.score, lambda a: qk if a.tensor == DOT else a)
    if score != qk:
        score = cb.einsum("S", ("M", "P"), score, reduce=None, where=mask, comment="score")
    if plan.family == "softmax":
        gm = cb.einsum("GM", ("P",), score, reduce="max")
        sn = cb.einsum("SN", ("M", "P"), unary("exp", binary("sub", score, gm)), reduce=None)
        sd = cb.einsum("SD", ("P",), sn)
        a = cb.einsum("A", ("M", "P"), binary("div", sn, sd), reduce=None)
        cb.einsum("O", ("P", "F"), binary("mul", a, va), output=True)
    elif plan.family == "sigmoid":
        a = cb.einsum("A", ("M", "P"), unary("sigmoid", score), reduce=None, where=mask)
        cb.einsum("O", ("P", "F"), binary("mul", a, va), output=True)
    else:  # normsum: O = (sum_m W*V) / (sum_m W), W the plan's score
        ws = cb.einsum("WS", ("P",), score, comment="sum of the weights")
        nv = cb.einsum("NV", ("P", "F"), binary("mul", score, va), comment="weighted sum")
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
    caps = check_captures(c, rng)  # the same values for both runs
    try:
        got = run_cascade(c, {**arrays, **caps})[c.outputs[0]]
        want_out = run_cascade(ref_c, {"Q": natural[plan.q], "K": natural[plan.k], "V": natural[plan.v], **caps})["O"]
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


def check_captures(c: Cascade, rng: np.random.Generator, unbound_only: bool = False) -> dict[str, np.ndarray]:
    """Values of the captured tensors for the check: random, of extent 7 per dimension (reads clamp,
    so any extent is valid); ids and lengths in 0..3 so that equalities hold somewhere. With
    ``unbound_only``, only for captures declared without a value (random inputs of the CLI)."""
    out = {}
    for name, cap in c.captures.items():
        if unbound_only and cap.value is not None:
            continue
        shape = (7,) * cap.ndim
        out[name] = rng.integers(0, 4, shape).astype(np.float64) if cap.kind == "int" else rng.standard_normal(shape)
    return out


def _fmt(e) -> str:
    from einfuse.ir.printer import format_expr

    return format_expr(e) if not isinstance(e, Access) else "Q.K"
