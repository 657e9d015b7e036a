"""Lower a cascade to its :class:`~einfuse.lowering.plan.KernelPlan`: the one entry every back end uses.

Dispatch follows the cascade's structure, never its name:

* several ``Q.K`` score products: split into stages (:mod:`einfuse.lowering.stages`), each planned on
  its own, the leftover elementwise Einsums as combiners;
* a softmax, sigmoid or normalised-weighted-sum normalisation of one score (:mod:`onepass`): the
  one-pass plan, softmax first lowered by ``fuse_online_softmax`` (running max, sum and output);
  with ``decode=True``, the split-KV plan of the same cascade (:mod:`decode`, :mod:`split_kv`);
* otherwise a linear-attention cascade (:mod:`linear`): the chunked plan, its decay factors taken
  from ``split_lightning``'s lowering at the state block (:mod:`linear_split`).

Whatever the passes did, the plan's score and mask are over logical positions ``p`` and ``m``.
"""

from __future__ import annotations

from dataclasses import replace

from einfuse.errors import CodegenError, EinfuseError
from einfuse.ir.cascade import Cascade
from einfuse.ir.positions import equal_length_cascade
from einfuse.ir.printer import format_einsum
from einfuse.lowering.plan import KernelPlan, Loop, StateVar

DEFAULT_KEY_TILE = 64
"""Key tile of the fused cascade when no back end asks for another (GPU kernels re-tile at launch)."""
DEFAULT_SPLITS = 16


def family_of(c: Cascade) -> str:
    """softmax | sigmoid | normsum (the one-pass plan) or linear, from the cascade's structure."""
    from einfuse.lowering.onepass import analyze

    try:
        return analyze(c).family
    except CodegenError as softmax_error:
        from einfuse.lowering.linear import analyse_linear

        try:
            analyse_linear(equal_length_cascade(c))  # as the linear plan reads it
        except EinfuseError as linear_error:
            raise (linear_error if c.attrs.get("family") == "linear" else softmax_error) from None
        return "linear"


def one_pass_cascade(c: Cascade, tile: int = DEFAULT_KEY_TILE) -> tuple[Cascade, str]:
    """The softmax cascade in one-pass form (key tile ``tile``), and how it was lowered."""
    if c.attrs.get("lowered") == "online_softmax" or any(t.iterative for t in c.tensors.values()):
        return c, "already in one-pass form (running max, sum and output over key tiles)"
    from einfuse.passes.fusion import fuse_online_softmax

    try:
        fused = fuse_online_softmax(c, tile=tile)
    except EinfuseError as exc:
        raise CodegenError(f"cascade {c.name}: cannot lower to the one-pass form: {exc}") from None
    return fused, f"lowered by fuse_online_softmax (key tile M0 = {tile}; a GPU kernel re-tiles at launch)"


def kernel_plan(c: Cascade, *, decode: bool = False, key_tile: int | None = None,
                state_block: int = 128, splits: int = DEFAULT_SPLITS, check: bool = True) -> KernelPlan:
    """The kernel plan of ``c``.

    ``decode``: the split-KV plan (softmax only) for calls with few queries; ``key_tile``: the key
    tile of the fused cascade (a back end that tiles at launch leaves it None: the plan's loop then
    names the launch-time symbol); ``state_block``: positions per stored state of linear attention;
    ``splits``: key ranges of the split-KV cascade; ``check``: restate one-pass plans as cascades
    and compare them with the original on random inputs (:mod:`plan_check`).
    """
    from einfuse.lowering.stages import is_multistage

    if is_multistage(c):
        return _staged(c, key_tile, state_block, check)
    family = family_of(c)
    if family == "linear":
        return _linear(c, state_block)
    if decode:
        if family != "softmax":
            raise CodegenError(f"cascade {c.name}: the split-KV decode plan needs softmax attention, "
                               f"not {family}")
        return _decode(c, splits)
    return _one_pass(c, family, key_tile, check)


# ---- one pass (softmax, sigmoid, normsum) -------------------------------------------------------

_ONE_PASS_STATE = {
    "softmax": (StateVar("m_i", "BLOCK_M", "running row max of the score (log2 units)"),
                StateVar("l_i", "BLOCK_M", "running row sum of exp(score - max)"),
                StateVar("acc", "BLOCK_M, F", "running output, rescaled when the max grows")),
    "sigmoid": (StateVar("acc", "BLOCK_M, F", "running output sum_m sigmoid(score) * V"),),
    "normsum": (StateVar("l_i", "BLOCK_M", "running row sum of the weights"),
                StateVar("acc", "BLOCK_M, F", "running weighted sum of V")),
}
_FINALIZE = {
    "softmax": "O = acc / l_i (a row with no kept key gives 0)",
    "sigmoid": "O = acc",
    "normsum": "O = acc / l_i (a row with no kept key gives 0)",
}


def _classes(mask) -> str:
    if mask is None:
        return "every tile full (no mask)"
    return ("full / partial / empty tiles from the mask's block sparsity (tables per shape at launch); "
            "only partial tiles evaluate the mask")


def _one_pass(c: Cascade, family: str, key_tile: int | None, check: bool) -> KernelPlan:
    from einfuse.lowering.onepass import analyze

    if check:  # (plan_check imports the reference executor: only when asked, not for the simulator)
        from einfuse.lowering.plan_check import check_plan

        check_plan(c, analyze(c))  # the kernel must compute this cascade, not a part of it
    if family == "softmax":
        lowered, how = one_pass_cascade(c, key_tile or DEFAULT_KEY_TILE)
    else:
        lowered, how = c, "as written (no reduction to fuse: one pass over key tiles)"
    detail = analyze(lowered)
    tile = str(key_tile) if key_tile else "BLOCK_N (chosen at launch)"
    return KernelPlan(
        name=c.name, family=family, grid=("B", "H", "ceil(P / BLOCK_M) query tiles"),
        loop=Loop("M", tile, _classes(detail.mask)), state=_ONE_PASS_STATE[family], score=detail.score,
        mask=detail.mask, finalize=_FINALIZE[family], combine=None, detail=detail, cascade=lowered,
        source=c, lowering=how)


# ---- split-KV decode ---------------------------------------------------------------------------

def _decode(c: Cascade, splits: int) -> KernelPlan:
    from einfuse.lowering.decode import analyse_decode
    from einfuse.lowering.split_kv import DecodeDetail, lower_decode

    plan = analyse_decode(c)
    split = lower_decode(c, splits)
    state = (StateVar("m", "ROWS", "running max of each split"),
             StateVar("l", "ROWS", "running sum of each split"),
             StateVar("acc", "ROWS, F", "unnormalised output of each split"))
    return KernelPlan(
        name=c.name, family="decode",
        grid=("B", "H_kv", "KV splits", "ceil(group heads x P / ROWS) row blocks"),
        loop=Loop("M within a split", "BLOCK_N (chosen at launch)", _classes(plan.mask)),
        state=state, score=plan.logit, mask=plan.mask,
        finalize="each split writes its (max, sum, output) triple",
        combine="O = sum_s exp(m_s - max) acc_s / sum_s exp(m_s - max) l_s over the splits",
        detail=DecodeDetail(plan, split), cascade=split.cascade or c, source=c, lowering=split.how)


# ---- linear attention -------------------------------------------------------------------------

def _linear(c: Cascade, state_block: int) -> KernelPlan:
    from einfuse.lowering.linear import analyse_linear
    from einfuse.lowering.linear_split import LinearDetail, lower_linear

    if c.attrs.get("lowered") == "lightning":
        raise CodegenError(f"{c.name}: pass the unlowered cascade; the plan runs split_lightning itself, "
                           "with the block = the state_chunk option")
    # the chunked kernels take as many queries as keys (checked per call), where every query
    # alignment agrees: read a bottom-right `m <= p + M - P` as `m <= p`
    c = equal_length_cascade(c)
    plan = analyse_linear(c)
    lowered, parts, how = lower_linear(c, plan, state_block)
    weight = "" if parts.key == 1 else f"{parts.key} "
    decay = "" if parts.state == 1 else f", decayed by {parts.state} per chunk"
    state = [StateVar("S", "E, F", f"KV state sum_m {weight}K[m]^T V[m] of the earlier chunks{decay}")]
    if plan.normalize:
        state.append(StateVar("z", "E", "key sum of the earlier chunks (normaliser)"))
    finalize = "O = (intra-chunk scores + Q S) / (intra sum + Q z)" if plan.normalize else \
        "O = intra-chunk scores @ V + decayed Q S"
    return KernelPlan(
        name=c.name, family="linear",
        grid=("B x H", "state tiles E/BK x F/BV (states kernel)", "P / CHUNK chunks (output kernel)"),
        loop=Loop("M", f"{state_block} (state block) / CHUNK (quadratic block)",
                  "causal: earlier chunks through the state, own chunk quadratic" if plan.causal
                  else "no mask: one state over the whole sequence"),
        state=tuple(state), score=None, mask=plan.mask, finalize=finalize, combine=None,
        detail=LinearDetail(plan, parts, state_block), cascade=lowered or c, source=c, lowering=how)


# ---- several stages ----------------------------------------------------------------------------

def _staged(c: Cascade, key_tile: int | None, state_block: int, check: bool) -> KernelPlan:
    from einfuse.lowering.stages import split_stages

    split = split_stages(c)
    plans = tuple(replace(kernel_plan(st.cascade, key_tile=key_tile, state_block=state_block, check=check),
                          name=f"{c.name}.{st.output}") for st in split.stages)
    return KernelPlan(
        name=c.name, family="staged", grid=("one grid per stage",),
        loop=Loop("M", "per stage", "per stage"), state=(), score=None, mask=None,
        finalize=f"output {c.outputs[0]}", combine=None, detail=split, cascade=c, source=c,
        lowering=f"split into {len(plans)} stages (each the smallest sub-cascade a plan accepts)",
        stages=plans, combiners=tuple(format_einsum(c, e) for e in split.combine))


__all__ = ["DEFAULT_KEY_TILE", "family_of", "kernel_plan", "one_pass_cascade"]
