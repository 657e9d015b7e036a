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

from einfuse.codegen.triton.decode import dot_precision
from einfuse.codegen.triton.launch import BoundLaunch, CallCache, cached_call
from einfuse.codegen.triton.linear_emit import load_module
from einfuse.codegen.triton.linear_kernels import linear_source
from einfuse.codegen.triton.options import IGNORED_OPTIONS, cdiv, parse_options, pow2
from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.lowering.linear import LinearPlan
from einfuse.lowering.lower import kernel_plan
from einfuse.lowering.plan import KernelPlan

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
    _calls: CallCache = field(default_factory=CallCache, repr=False, compare=False)
    explicit: frozenset[str] = frozenset()  # options the user gave: the tuned-defaults table keeps off them
    origin: Cascade | None = field(default=None, repr=False, compare=False)  # unlowered: rebuilds at other chunks
    _siblings: dict = field(default_factory=dict, repr=False, compare=False)

    def __call__(self, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
        """``o`` of shape ``(B, H, N, D_v)``; a signature seen before reuses its prepared launches
        (:mod:`einfuse.codegen.triton.launch`)."""
        return cached_call(self._calls, q, k, v, runtime, lambda: self.prepare(q, k, v, **runtime),
                           self.plan.name)

    def prepare(self, q: Any, k: Any, v: Any, **runtime: Any) -> PreparedLinear:
        """Check the shapes and work out both kernels' grids and arguments for this signature."""
        import torch

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
        opt = self.tuned_options(q, k, v)
        if _state_block(opt) != _state_block(self.options) or opt.chunk != self.options.chunk:
            return self.sibling(opt).prepare(q, k, v)
        chunk = opt.chunk
        schunk = opt.state_chunk or 2 * chunk
        nt = cdiv(N, schunk) if self.plan.causal else 1
        sdt = torch.float32 if opt.state_dtype == "fp32" or q.dtype == torch.float32 else q.dtype
        # the interpreter's bf16 tl.dot is wrong: multiply in fp32 there (see linear_kernels)
        upcast = q.device.type != "cuda" and q.dtype == torch.bfloat16
        ft = float_type(q.dtype)
        prec = dot_precision(q.dtype)  # fp32 exact, not TF32: the normalised backward recomputes O with it
        bk = min(opt.block_k, pow2(D))
        bv = min(opt.block_v, pow2(DV))
        states = BoundLaunch(
            self.module.linear_states, (cdiv(D, bk) * cdiv(DV, bv), B * H), 4,
            (*k.stride(), *v.stride(), H, Hkv, N, nt, D, DV),
            dict(CHUNK=schunk, BK=bk, BV=bv, UPCAST=upcast, FT=ft, DOT_PRECISION=prec), opt.num_warps_states,
            opt.num_stages_states)
        bo = pow2(DV) if opt.block_o == 0 else min(opt.block_o, pow2(DV))
        output = BoundLaunch(
            self.module.linear_output, (cdiv(N, chunk), cdiv(DV, bo), B * H), 6,
            (*q.stride(), *k.stride(), *v.stride(), H * N * DV, N * DV, DV, 1,  # o: contiguous
             H, Hkv, N, nt, D, DV, float(self.plan.scale)),
            dict(CHUNK=chunk, SCHUNK=schunk, BD=pow2(D), BV=bo, UPCAST=upcast, FT=ft,
                 DOT_PRECISION=prec), opt.num_warps_output,
            opt.num_stages_output)
        return PreparedLinear((B, H, N, DV), q.dtype, (B * H, nt, D, DV), sdt,
                              (B * H, nt, D) if self.plan.normalize else None, q.device, states, output)

    def tuned_options(self, q: Any, k: Any, v: Any) -> LinearOptions:
        """The kernel's options with the shipped tuned defaults (einfuse.codegen.tuned_defaults) for
        this device and shape in every field the user did not set; chunk sizes change only when the
        unlowered cascade is known (the plan is lowered per state block)."""
        from dataclasses import replace

        from einfuse.codegen.tuned_defaults import find

        dt = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(q.dtype))
        e = find(q.device, kernel="linear", variant=self.table_variant(), layout="flat", dtype=dt, head_dim=q.shape[3],
                 value_dim=v.shape[3], group=q.shape[1] // k.shape[1], n_q=q.shape[2], n_kv=k.shape[2]) if dt else None
        if e is None:
            return self.options
        fixed = set(self.explicit) | (set() if self.origin is not None else {"chunk", "state_chunk"})
        if fixed & {"chunk", "state_chunk"}:  # the two go together (state block = a multiple of the chunk)
            fixed |= {"chunk", "state_chunk"}
        change = {f: val for f, val in e.config.items() if f not in fixed}
        return replace(self.options, **change) if change else self.options

    def table_variant(self) -> str:
        """The variant's name in tuned-defaults tables: the cascade's name."""
        src = self.origin if self.origin is not None else self.cascade
        return src.name if src is not None else self.plan.name

    def sibling(self, opts: LinearOptions) -> LinearKernel:
        """This variant built at other chunk sizes (lowered again from the unlowered cascade), once."""
        key = (opts.chunk, _state_block(opts))
        if key not in self._siblings:
            from dataclasses import asdict

            self._siblings[key] = build_linear(self.origin, **asdict(opts))
        return self._siblings[key]


def _state_block(opts: LinearOptions) -> int:
    return opts.state_chunk or 2 * opts.chunk


def float_type(dtype: Any) -> Any:
    """The kernels' ``FT``: float32 math and accumulators, float64 for float64 inputs."""
    import torch
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


class PreparedLinear:
    """A prepared linear-attention call: allocate the chunk states and the output, launch both kernels."""

    __slots__ = ("shape", "dtype", "states_shape", "states_dtype", "zs_shape", "device", "states", "output",
                 "_empty", "_f32")

    def __init__(self, shape: tuple[int, ...], dtype: Any, states_shape: tuple[int, ...], states_dtype: Any,
                 zs_shape: tuple[int, ...] | None, device: Any, states: BoundLaunch, output: BoundLaunch) -> None:
        import torch

        self.shape, self.dtype, self.states_shape, self.states_dtype = shape, dtype, states_shape, states_dtype
        self.zs_shape, self.device, self.states, self.output = zs_shape, device, states, output
        self._empty, self._f32 = torch.empty, torch.float64 if dtype == torch.float64 else torch.float32

    def __call__(self, q: Any, k: Any, v: Any) -> Any:
        empty, dev = self._empty, self.device
        o = empty(self.shape, device=dev, dtype=self.dtype)
        states = empty(self.states_shape, device=dev, dtype=self.states_dtype)
        zs = states if self.zs_shape is None else empty(self.zs_shape, device=dev, dtype=self._f32)
        self.states(k, v, states, zs)
        self.output(q, k, v, states, zs, o)
        return o


def build_linear(plan: KernelPlan | Cascade, origin: Cascade | None = None, **options: Any) -> LinearKernel:
    """Generate and load the chunked Triton kernels of a linear-attention plan.

    ``plan``: a :class:`KernelPlan` of family linear (a cascade is lowered first, at the state block
    the options imply). Options: see :class:`LinearOptions`. The plan layer refuses cascades the
    chunked schedule cannot run exactly (non-causal masks, decays not multiplicative in p - m).
    ``origin``: the unlowered cascade of a given plan, so that calls can rebuild at the chunk sizes of
    the tuned-defaults table; the options given here are never overridden by that table.
    """
    opts = LinearOptions.of(dict(options))
    block = opts.state_chunk or 2 * opts.chunk
    if isinstance(plan, Cascade):
        origin = origin if origin is not None else plan
        plan = kernel_plan(plan, state_block=block)
    if plan.family != "linear":
        raise CodegenError(f"{plan.name}: build_linear takes a plan of the linear family, not {plan.family}")
    if plan.detail.state_block != block:
        raise CodegenError(f"{plan.name}: the plan was lowered for a state block of {plan.detail.state_block} "
                           f"positions; these options need {block}")
    lin = plan.detail.plan
    source = linear_source(lin, plan.detail.parts)
    module = load_module(source, f"linear_{lin.name}")
    return LinearKernel(lin, opts, source, module, plan.cascade, plan.lowering,
                        explicit=frozenset(options) - IGNORED_OPTIONS, origin=origin)


__all__ = ["LinearKernel", "LinearOptions", "PreparedLinear", "build_linear"]
