"""Triton back end for linear attention (``linear``, ``lightning`` and DSL ``linear_attention``).

``build_linear(cascade, **options)`` analyses the cascade (:mod:`linear_analysis`), prints the
chunked kernels (:mod:`linear_kernels`) and returns a :class:`LinearKernel`, a callable
``fn(q, k, v) -> o`` on ``(B, H, N, D)`` tensors (K/V may carry fewer heads: GQA). The generated
source is kept on the callable (``fn.source``) so that ``einfuse compile`` can write it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from einfuse.codegen.triton.linear_analysis import LinearPlan, analyse_linear
from einfuse.codegen.triton.linear_emit import load_module
from einfuse.codegen.triton.linear_kernels import linear_source
from einfuse.codegen.triton.linear_lowering import lower_linear
from einfuse.codegen.triton.options import parse_options, pow2
from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.ir.positions import equal_length_cascade

# options every Triton builder may be handed by the dispatcher and that this one does not use


@dataclass(frozen=True)
class LinearOptions:
    """Tuning knobs of the two linear kernels (all powers of two).

    ``chunk``: query/key block of the quadratic (intra-chunk) part; ``state_chunk``: positions
    between stored states (a multiple of ``chunk``; 0 = ``2 * chunk``, best on the H100): larger means fewer state bytes
    written and read, and more intra-chunk work; ``block_k``/``block_v``: key/value
    feature blocks of the state kernel (more blocks = more parallel programs over one sequence);
    ``block_o``: value-feature block of the output kernel (0 = the whole value width);
    ``state_dtype``: ``"input"`` stores chunk states in the inputs' dtype (as fla does), ``"fp32"``
    keeps them in float32 (more exact, twice the state traffic).
    """

    chunk: int = 64
    state_chunk: int = 0
    block_k: int = 64
    block_v: int = 64
    block_o: int = 0
    state_dtype: str = "input"
    num_warps_states: int = 4
    num_warps_output: int = 4
    num_stages_states: int = 4
    num_stages_output: int = 2

    @staticmethod
    def of(options: dict[str, Any]) -> LinearOptions:
        opts = parse_options(LinearOptions, options, "linear-attention", ("chunk", "block_k", "block_v"))
        if opts.state_chunk and (opts.state_chunk < opts.chunk or opts.state_chunk % opts.chunk
                                 or opts.state_chunk & (opts.state_chunk - 1)):
            raise CodegenError(f"option state_chunk={opts.state_chunk} must be a power-of-two multiple "
                               f"of chunk={opts.chunk}")
        if opts.state_dtype not in ("input", "fp32"):
            raise CodegenError(f"option state_dtype={opts.state_dtype!r} must be 'input' or 'fp32'")
        return opts


@dataclass(frozen=True)
class LinearKernel:
    """A compiled linear-attention variant: call it as ``fn(q, k, v)``."""

    plan: LinearPlan
    options: LinearOptions
    source: str
    module: ModuleType = field(repr=False)
    cascade: Cascade | None = field(default=None, repr=False)  # the lowered cascade the kernel follows
    lowering: str = ""

    def __call__(self, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
        import torch
        import triton

        if runtime:
            raise CodegenError(f"{self.plan.name}: unexpected runtime argument(s) {', '.join(runtime)}")
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            raise CodegenError("q, k, v must be (B, H, N, D) tensors")
        B, H, N, D = q.shape
        Hkv, DV = k.shape[1], v.shape[-1]
        if k.shape[0] != B or k.shape[2] != N or k.shape[3] != D or v.shape[:3] != k.shape[:3]:
            raise CodegenError(f"shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)} do not match")
        if H % Hkv:
            raise CodegenError(f"{Hkv} key/value heads do not divide {H} query heads")
        o = torch.empty((B, H, N, DV), device=q.device, dtype=q.dtype)
        opt = self.options
        chunk = opt.chunk
        schunk = opt.state_chunk or 2 * chunk
        nt = triton.cdiv(N, schunk) if self.plan.causal else 1
        sdt = torch.float32 if opt.state_dtype == "fp32" or q.dtype == torch.float32 else q.dtype
        states = torch.empty((B * H, nt, D, DV), device=q.device, dtype=sdt)
        zs = torch.empty((B * H, nt, D), device=q.device, dtype=torch.float32) if self.plan.normalize \
            else states
        # the interpreter's bf16 tl.dot is wrong: multiply in fp32 there (see linear_kernels)
        upcast = q.device.type != "cuda" and q.dtype == torch.bfloat16
        bk = min(opt.block_k, pow2(D))
        bv = min(opt.block_v, pow2(DV))
        grid_s = (triton.cdiv(D, bk) * triton.cdiv(DV, bv), B * H)
        self.module.linear_states[grid_s](
            k, v, states, zs, *k.stride(), *v.stride(), H, Hkv, N, nt, D, DV,
            CHUNK=schunk, BK=bk, BV=bv, UPCAST=upcast, num_warps=opt.num_warps_states, num_stages=opt.num_stages_states)
        bd = pow2(D)
        bo = pow2(DV) if opt.block_o == 0 else min(opt.block_o, pow2(DV))
        grid_o = (triton.cdiv(N, chunk), triton.cdiv(DV, bo), B * H)
        self.module.linear_output[grid_o](
            q, k, v, states, zs, o, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
            H, Hkv, N, nt, D, DV, float(self.plan.scale),
            CHUNK=chunk, SCHUNK=schunk, BD=bd, BV=bo, UPCAST=upcast, num_warps=opt.num_warps_output, num_stages=opt.num_stages_output)
        return o


def build_linear(cascade: Cascade, **options: Any) -> LinearKernel:
    """Generate and load the chunked Triton kernels of a linear-attention cascade.

    Options: see :class:`LinearOptions`. Raises :class:`CodegenError` for cascades the chunked
    schedule cannot run exactly (non-causal masks, decays that are not multiplicative in p - m).
    """
    opts = LinearOptions.of(dict(options))
    if cascade.attrs.get("lowered") == "lightning":
        raise CodegenError(f"{cascade.name}: pass the unlowered cascade; build_linear runs split_lightning "
                           "itself, with the block = the state_chunk option")
    # the chunked kernels take as many queries as keys (checked per call), where every query
    # alignment agrees: read a bottom-right `m <= p + M - P` as `m <= p`
    cascade = equal_length_cascade(cascade)
    plan = analyse_linear(cascade)
    lowered, parts, how = lower_linear(cascade, plan, opts.state_chunk or 2 * opts.chunk)
    source = linear_source(plan, parts)
    module = load_module(source, f"linear_{plan.name}")
    return LinearKernel(plan, opts, source, module, lowered or cascade, how)


__all__ = ["LinearKernel", "LinearOptions", "build_linear"]
