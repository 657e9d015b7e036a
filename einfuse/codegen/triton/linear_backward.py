"""Launching the chunked linear-attention backward (:mod:`linear_backward_kernels`).

:class:`LinearBackwardKernel` sits beside the forward :class:`~einfuse.codegen.triton.linear.LinearKernel`
it differentiates and serves the same autograd route as the softmax backward
(:mod:`einfuse.codegen.autograd`): ``forward(q, k, v) -> (out, saved)`` for a training call and
``kernel(q, k, v, out, saved, dout) -> (dq, dk, dv)``. ``saved`` takes the place of the softmax
log-sum-exp, ``(B, H, N)``: zeros (nothing is needed beyond q, k, v). A normalised plan's backward
runs the unnormalised kernels on ``[V, 1]`` in float32 first (one call recomputes the numerator and
the normaliser ``SD``), then the unnormalised backward on ``[V, 1]`` and ``[dO, -dO.O] / SD``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from einfuse.codegen.triton.decode import dot_precision
from einfuse.codegen.triton.launch import CallCache, plain_call, refuse_during_capture, tensors_key
from einfuse.codegen.triton.linear import LinearKernel, float_type
from einfuse.codegen.triton.linear_backward_kernels import linear_backward_source
from einfuse.codegen.triton.linear_emit import load_module
from einfuse.codegen.triton.options import cdiv, parse_options, pow2
from einfuse.errors import CodegenError
from einfuse.lowering.linear import M_IDX, P_IDX
from einfuse.lowering.linear_backward import DEFAULT_CHUNK, LinearBackwardPlan
from einfuse.lowering.plan import KernelPlan

INTERPRETER_CHUNK = 16
"""The CPU interpreter's default chunk: small test sizes still span several chunks."""

NORMALIZED_CHUNK = 32
"""The GPU's default chunk of a normalised plan: its kernels run on float32 inputs with V widened by the
normaliser column (head dim 64 -> value tile 128), so at chunk 64 the dK/dV kernel asks for more
shared memory than an H100/H200 has (233472 > 232448 bytes at D96/DV64 with Triton 3.6, compiled
offline for sm_90); chunk 32 needs 155648 (value width <= 127; wider ones also drop to one stage)."""


@dataclass(frozen=True)
class LinearBackwardOptions:
    """Tuning knobs of the backward kernels. ``chunk``: positions per chunk of every kernel (states
    are stored per chunk; 0 = 64, 16 in the CPU interpreter); ``block_k``/``block_v``: key/value
    feature blocks of the two state kernels; ``num_warps``/``num_stages``: of the dQ and dK/dV kernels
    (num_warps 0 = 4 up to head dim 64, else 8: their accumulators are CHUNK x D); ``state_dtype``:
    ``"input"`` stores the recomputed and reverse states in the inputs' 16-bit dtype (as the forward
    and fla do: half the state traffic), ``"fp32"`` keeps them in float32 (float inputs always do)."""

    chunk: int = 0
    block_k: int = 64
    block_v: int = 64
    num_warps: int = 0
    num_stages: int = 2
    state_dtype: str = "input"
    num_warps_states: int = 4
    num_stages_states: int = 2


LINEAR_BACKWARD_OPTIONS = tuple(LinearBackwardOptions.__dataclass_fields__)


@dataclass
class LinearBackwardKernel:
    """``kernel(q, k, v, out, saved, dout) -> (dq, dk, dv)`` for the linear forward ``forward_kernel``."""

    forward_kernel: LinearKernel
    forward_plan: KernelPlan
    options: LinearBackwardOptions
    _modules: dict = field(default_factory=dict, repr=False)
    """chunk -> (backward plan, loaded module)"""
    _numerator: Any = field(default=None, repr=False)
    _calls: CallCache = field(default_factory=CallCache, repr=False)
    prepare_count: int = 0
    """Backward call signatures prepared so far (tests check that a repeated signature is not)."""

    @property
    def plan(self) -> LinearBackwardPlan:
        """The backward plan at the GPU's default chunk (what ``einfuse passes --backward`` prints)."""
        return self.at(self.options.chunk or DEFAULT_CHUNK)[0]

    def source(self, chunk: int = 0) -> str:
        return self.at(chunk or self.options.chunk or DEFAULT_CHUNK)[1].__source__

    def at(self, chunk: int) -> tuple[LinearBackwardPlan, Any]:
        """The backward plan and module for ``chunk`` positions per chunk (derived and loaded once)."""
        if chunk not in self._modules:
            from einfuse.lowering.linear_backward import linear_backward_plan

            bp = linear_backward_plan(self.forward_plan, chunk)
            src = linear_backward_source(bp)
            mod = load_module(src, f"linear_{bp.name}_bwd{chunk}")
            mod.__source__ = src
            self._modules[chunk] = (bp, mod)
        return self._modules[chunk]

    @property
    def family(self) -> str:
        return "linear"

    def _has_keys(self, n: int, device: Any) -> Any:
        """Rows whose mask keeps some key (the others' output is 0, as in the forward kernel)."""
        import torch

        mask = self.plan.forward.mask
        rows = torch.ones(n, dtype=torch.bool, device=device)
        if mask is not None and not bool(sympy.sympify(mask).subs({P_IDX: 0, M_IDX: 0})):
            rows[0] = False  # causal masks keep every m < p: only row 0 can have no key
        return rows

    def numerator_kernel(self) -> LinearKernel:
        """The unnormalised forward kernels of a normalised plan (same options), built once."""
        if self._numerator is None:
            from einfuse.codegen.triton.linear_kernels import linear_source

            fk = self.forward_kernel
            plan = self.plan.unnormalized
            src = linear_source(plan, self.forward_plan.detail.parts)
            self._numerator = LinearKernel(plan, fk.options, src, load_module(src, f"linear_{plan.name}_num"))
        return self._numerator

    def forward(self, q: Any, k: Any, v: Any, **runtime: Any) -> tuple[Any, Any]:
        """``(out, saved)`` of a training call: the forward kernel's output and zeros (the backward
        needs nothing beyond q, k, v; a normalised plan recomputes its normaliser there)."""
        import torch

        sdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        return self.forward_kernel(q, k, v, **runtime), torch.zeros(q.shape[:3], dtype=sdt, device=q.device)

    def __call__(self, q: Any, k: Any, v: Any, out: Any, saved: Any, dout: Any,
                 **runtime: Any) -> tuple[Any, Any, Any]:
        """Gradients of ``out = forward(q, k, v)`` given ``dout``."""
        import torch

        if runtime:
            raise CodegenError(f"{self.plan.name}: unexpected runtime argument(s) {', '.join(runtime)}")
        if not self.plan.forward.normalize:
            return self.launch(q, k, v, dout)
        # O = NV / SD: the unnormalised backward with V' = [V, 1], dO' = [dO / SD, -D / SD], D = dO.O.
        # dO.V[m] - D cancels when the weights are near uniform, so D must come from an exact O: the
        # numerator kernels recompute NV and SD in float32 (the saved 16-bit output would cost ~1e-2)
        wide = saved.dtype
        qw, kw = q.to(wide), k.to(wide)
        vw = torch.cat([v.to(wide), torch.ones((*v.shape[:3], 1), dtype=wide, device=v.device)], -1)
        both = self.numerator_kernel()(qw, kw, vw)
        keys = self._has_keys(q.shape[2], q.device)[:, None]
        den = torch.where(keys, both[..., -1:], 1.0)
        o = torch.where(keys, both[..., :-1] / den, 0.0)
        d = (dout.to(wide) * o).sum(-1, keepdim=True)
        dout2 = torch.where(keys, torch.cat([dout.to(wide), -d], -1) / den, 0.0)
        dq, dk, dv = self.launch(qw, kw, vw, dout2)
        return dq.to(q.dtype), dk.to(k.dtype), dv[..., :-1].to(v.dtype).contiguous()

    def launch(self, q: Any, k: Any, v: Any, dout: Any) -> tuple[Any, Any, Any]:
        """The four kernels on unnormalised attention; a signature (shapes, strides, dtypes, device,
        alignment of the contiguous q, k, v, dout) seen before launches its bound kernels directly
        (:mod:`einfuse.codegen.triton.launch`), others are worked out and launched through Triton. A GPU
        that lacks the shared memory for a configuration raises a :class:`CodegenError` naming the
        options to lower."""
        try:
            return self._launch(q, k, v, dout)
        except Exception as e:  # triton.runtime.errors.OutOfResources, without importing triton here
            if type(e).__name__ != "OutOfResources":
                raise
            raise CodegenError(
                f"{self.plan.name}: the backward kernels at head dims {q.shape[3]}/{v.shape[3]}, {q.dtype} "
                f"({'float32-widened, normalised' if self.plan.forward.normalize else 'inputs'}) do not fit "
                f"this GPU: {e}; lower backward option chunk (now {self.options.chunk or 'default'}) or "
                f"num_stages (now {self.options.num_stages})") from e

    def _launch(self, q: Any, k: Any, v: Any, dout: Any) -> tuple[Any, Any, Any]:
        q, k, v, dout = (t.contiguous() for t in (q, k, v, dout))
        key = tensors_key((q, k, v, dout)) if plain_call(q, k, v) and plain_call(dout, dout, dout) else None
        if key is None:
            return self.specs(q, k, v, dout).run_unprepared(q, k, v, dout)
        prepared = self._calls.get(key)
        if prepared is None:
            refuse_during_capture(f"{self.plan.name} (backward)", q.device)
            self.prepare_count += 1
            prepared = self._calls.remember(key, self.specs(q, k, v, dout).bind())
        return prepared(q, k, v, dout)

    def launch_unprepared(self, q: Any, k: Any, v: Any, dout: Any) -> tuple[Any, Any, Any]:
        """:meth:`launch` with nothing cached and Triton's launch path (tests compare the two)."""
        q, k, v, dout = (t.contiguous() for t in (q, k, v, dout))
        return self.specs(q, k, v, dout).run_unprepared(q, k, v, dout)

    def specs(self, q: Any, k: Any, v: Any, dout: Any) -> LinearBackwardSpecs:
        """Checks, chunk, blocks and every launch argument but the tensors, for contiguous inputs."""
        import torch

        from einfuse.codegen.triton.backward import LaunchSpec

        B, H, N, D = q.shape
        Hkv, DV = k.shape[1], v.shape[3]
        if dout.shape != (B, H, N, DV):
            raise CodegenError(f"{self.plan.name}: dout has shape {tuple(dout.shape)}, expected {(B, H, N, DV)}")
        opt = self.options
        interp = q.device.type != "cuda"
        wide = self.plan.forward.normalize and q.dtype == torch.float32
        chunk = opt.chunk or (INTERPRETER_CHUNK if interp else NORMALIZED_CHUNK if wide else DEFAULT_CHUNK)
        bp, mod = self.at(chunk)
        causal = bp.forward.causal
        nt = cdiv(N, chunk) if causal else 1
        ft = float_type(q.dtype)
        # fp32 inputs (and the normalised path's widened ones) multiply exactly: Triton's default TF32
        # (10-bit mantissa) costs ~1e-3 per product, amplified by the normalised path's cancellation
        prec = dot_precision(q.dtype)
        upcast = interp and q.dtype == torch.bfloat16
        sdt = q.dtype if opt.state_dtype == "input" and q.dtype in (torch.bfloat16, torch.float16) else \
            torch.float64 if q.dtype == torch.float64 else torch.float32
        bk, bv = min(opt.block_k, pow2(D)), min(opt.block_v, pow2(DV))
        scale = float(bp.forward.scale)
        grid_s = (cdiv(D, bk) * cdiv(DV, bv), B * H)
        sw = (opt.num_warps_states, opt.num_stages_states)
        smeta = dict(CHUNK=chunk, BK=bk, BV=bv, UPCAST=upcast, FT=ft, DOT_PRECISION=prec)
        states = LaunchSpec(mod.linear_states, grid_s, 4, (*k.stride(), *v.stride(), H, Hkv, N, nt, D, DV), smeta,
                            *sw)
        dstates = LaunchSpec(mod.linear_dstates, grid_s, 3, (*q.stride(), *dout.stride(), H, N, nt, D, DV, scale),
                             smeta, *sw)
        rest = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(), H, Hkv, N, nt, D, DV, scale)
        warps = opt.num_warps or (4 if max(D, DV) <= 64 else 8)
        meta = dict(CHUNK=chunk, BD=pow2(D), BV=pow2(DV), UPCAST=upcast, FT=ft, DOT_PRECISION=prec)
        stages = 1 if wide and pow2(DV) > 128 else opt.num_stages
        dq = LaunchSpec(mod.linear_dq, (cdiv(N, chunk), B * H), 6, rest, meta, warps, stages)
        dkdv = LaunchSpec(mod.linear_dkdv, (cdiv(N, chunk), B * Hkv), 7, rest, meta, warps, stages)
        return LinearBackwardSpecs(states, dstates, dq, dkdv, (B * H, nt, D, DV), sdt, q.device)


@dataclass
class LinearBackwardSpecs:
    """The four launches of one linear backward signature, runnable unprepared or bound once."""

    states: Any
    dstates: Any
    dq: Any
    dkdv: Any
    states_shape: tuple[int, ...]
    states_dtype: Any
    device: Any

    def run_unprepared(self, q: Any, k: Any, v: Any, dout: Any) -> tuple[Any, Any, Any]:
        return _run_linear(self, (self.states.launch, self.dstates.launch, self.dq.launch, self.dkdv.launch),
                           q, k, v, dout)

    def bind(self) -> PreparedLinearBackward:
        return PreparedLinearBackward(self, tuple(s.bind() for s in (self.states, self.dstates, self.dq, self.dkdv)))


class PreparedLinearBackward:
    """A prepared linear backward call: allocate states and gradients, launch the bound kernels."""

    __slots__ = ("specs", "launches")

    def __init__(self, specs: LinearBackwardSpecs, launches: tuple[Any, ...]) -> None:
        self.specs, self.launches = specs, launches

    def __call__(self, q: Any, k: Any, v: Any, dout: Any) -> tuple[Any, Any, Any]:
        return _run_linear(self.specs, self.launches, q, k, v, dout)


def _run_linear(s: LinearBackwardSpecs, launches: tuple[Any, ...], q: Any, k: Any, v: Any,
                dout: Any) -> tuple[Any, Any, Any]:
    """States, reverse states, dQ, dK/dV; one body for the prepared and the unprepared path."""
    import torch

    states_l, dstates_l, dq_l, dkdv_l = launches
    states = torch.empty(s.states_shape, dtype=s.states_dtype, device=s.device)
    dstates = torch.empty_like(states)
    states_l(k, v, states, states)
    dstates_l(q, dout, dstates)
    dq = torch.empty_like(q)
    dq_l(q, k, v, dout, states, dq)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dkdv_l(q, k, v, dout, dstates, dk, dv)
    return dq, dk, dv


def build_linear_backward(forward: LinearKernel, plan: KernelPlan, **options: Any) -> LinearBackwardKernel:
    """The backward of a compiled linear-attention kernel. ``plan``: the forward's
    :class:`~einfuse.lowering.plan.KernelPlan`; options: :class:`LinearBackwardOptions`. The module of
    the default chunk is generated now, so errors surface when gradients are first asked for."""
    opts = parse_options(LinearBackwardOptions, dict(options), "linear backward", ("block_k", "block_v"))
    if opts.state_dtype not in ("input", "fp32"):
        raise CodegenError(f"{plan.name}: backward option state_dtype={opts.state_dtype!r} must be 'input' or 'fp32'")
    if opts.chunk and (opts.chunk < 16 or opts.chunk & (opts.chunk - 1)):
        raise CodegenError(f"{plan.name}: backward option chunk={opts.chunk} must be a power of two >= 16")
    kern = LinearBackwardKernel(forward, plan, opts)
    kern.plan  # noqa: B018  (derive and load the default chunk's module)
    return kern


__all__ = ["LINEAR_BACKWARD_OPTIONS", "LinearBackwardKernel", "LinearBackwardOptions", "build_linear_backward"]
