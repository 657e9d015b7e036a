"""Launching the backward kernels of a softmax or sigmoid one-pass plan (:mod:`backward_emit`).

:class:`BackwardKernel` sits beside the forward :class:`~einfuse.codegen.triton.runtime.AttentionKernel`
it differentiates: it shares the forward's sizes, tile orders and block tables (the same
classification; the dK/dV loop reads them transposed), and launches preprocess (softmax only), dK/dV
and dQ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from einfuse.codegen.autotune import KernelConfig
from einfuse.codegen.capture_args import KEEP_TABLES
from einfuse.codegen.triton.backward_emit import DKDV, DQ, PREPROCESS, emit_backward_module
from einfuse.codegen.triton.launch import CallCache, plain_call, refuse_during_capture, tensors_key
from einfuse.codegen.triton.loader import load_module
from einfuse.codegen.triton.options import pow2
from einfuse.codegen.triton.runtime import AttentionKernel, LaunchOptions, Layout, _non_default
from einfuse.lowering.backward import BackwardPlan, transpose_tables
from einfuse.lowering.tile_order import SpanBoxes


@dataclass
class BackwardKernel:
    """``kernel(q, k, v, out, lse, dout) -> (dq, dk, dv)`` for the forward kernel ``forward``."""

    forward: AttentionKernel
    plan: BackwardPlan
    block_m: int | None = None
    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    dq_block_m: int | None = None
    dq_block_n: int | None = None
    dq_num_warps: int | None = None
    dq_num_stages: int | None = None
    dq_layout: str = "separate"
    """'separate': a dQ kernel per query tile (recomputes P and dS, deterministic); 'atomic': the dK/dV
    kernel adds dQ into an fp32 buffer with atomics (no recomputation, run-to-run rounding differs)."""
    _modules: dict = field(default_factory=dict)
    _tables: dict = field(default_factory=dict)
    last_config: KernelConfig | None = None
    last_dq_config: KernelConfig | None = None
    last_capture_tables: Any = None
    """The block tables the captured-tensor gradient kernel last walked (the dQ kernel's)."""
    prepare_count: int = 0
    """Backward call signatures prepared so far (tests check that a repeated signature is not)."""
    _calls: CallCache = field(default_factory=CallCache, repr=False)
    _capture_calls: CallCache = field(default_factory=lambda: CallCache(KEEP_TABLES), repr=False)
    _reads_captures: bool | None = field(default=None, repr=False)
    _mask_captures: frozenset | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.dq_layout not in ("separate", "atomic"):
            from einfuse.errors import CodegenError

            raise CodegenError(f"{self.plan.name}: dq_layout={self.dq_layout!r}: use 'separate' or 'atomic'")

    def source(self, layout: Layout | None = None) -> str:
        from einfuse.lowering.tile_order import FLAT

        return self.module(layout or (FLAT, FLAT)).__source__

    def module(self, layout: Layout):
        if layout not in self._modules:
            text = emit_backward_module(self.plan, self.forward.sizes, layout[0], layout[1])
            mod = load_module(text, f"{self.plan.name}_bwd")
            mod.__source__ = text
            self._modules[layout] = mod
        return self._modules[layout]

    def layout(self, q: Any, k: Any, opts: LaunchOptions) -> Layout:
        """The forward's tile orders; key boxes over spans become plain boxes (their tables have
        origins, not tile indices, and cannot be transposed)."""
        order, k_order = self.forward.order_for(q, k, opts)
        return (order, order) if isinstance(k_order, SpanBoxes) else (order, k_order)

    def config(self, q: Any) -> KernelConfig:
        """The dK/dV kernel's configuration (tiles: ``block_n`` keys stay on chip, ``block_m`` queries stream).

        GPU default 64 x 64, 4 warps, 2 stages at every head dim: the fastest dK/dV tiles of the H200
        sweep (benchmarks/results/backward/nvidia-h200-tune-backward.md: causal D128 2.96 ms against
        4.22 ms with 8 warps; na2d D64 the best too)."""
        interp = q.device.type != "cuda"
        base = KernelConfig(32, 32, 4, 1) if interp else KernelConfig(64, 64, 4, 2)
        cfg = KernelConfig(self.block_m or base.block_m, self.block_n or base.block_n,
                           self.num_warps or base.num_warps, self.num_stages or base.num_stages)
        check_dkdv_rows(self.plan.name, cfg, q)
        return cfg

    def dq_config(self, q: Any) -> KernelConfig:
        """The dQ kernel's configuration (``block_m`` queries stay on chip, ``block_n`` keys stream).

        The two kernels are tuned separately (benchmarks/tune_backward.py): on the GPU the dQ kernel
        defaults to 128 x 128 with 8 warps for head dims 65..128 (causal D128: 1.95 ms for the whole
        backward against 2.96 ms at the dK/dV kernel's 64 x 64), else to the dK/dV kernel's tiles (na2d
        D64: 64 x 64, 4 warps is best); an explicit ``dq_*`` field wins, then an explicit dK/dV field."""
        kv = self.config(q)
        wide = q.device.type == "cuda" and 64 < q.shape[3] <= 128
        base = (KernelConfig(128, 128, 8, 2) if wide and not (self.block_m or self.block_n or self.num_warps)
                else kv)
        return KernelConfig(self.dq_block_m or base.block_m, self.dq_block_n or base.block_n,
                            self.dq_num_warps or base.num_warps, self.dq_num_stages or base.num_stages)

    def __call__(self, q: Any, k: Any, v: Any, out: Any, lse: Any, dout: Any, q_offset: int | None = None,
                 **options: Any) -> tuple[Any, Any, Any]:
        """Gradients of ``out = forward(q, k, v, q_offset=q_offset, **options)`` given ``dout``.

        A call whose signature (shapes, strides, dtypes, device and alignment of the contiguous
        inputs, the query offset, the options and the versions of the captured tensors) was seen
        before reuses its :class:`PreparedBackward` (tables, grids and arguments bound once, the
        kernels launched directly, :mod:`einfuse.codegen.triton.launch`); other calls (tensor
        subclasses, unaligned pointers) prepare and launch through Triton's own path every time."""
        fwd = self.forward
        options = dict(options)
        if self._reads_captures is None:  # asked once: the plan does not change
            self._reads_captures = fwd._reads_captures()
        # captured tensors (bias tables, ids) the score/mask read, checked, and their versions
        caps = fwd.call_captures(options, q) if self._reads_captures else None
        q, k, v, out, dout = (t.contiguous() for t in (q, k, v, out, dout))
        if not (plain_call(q, k, v) and plain_call(out, lse, dout)):
            return self.launch_specs(q, k, v, out, lse, dout, q_offset, caps, options).run_unprepared(
                q, k, v, out, lse, dout)
        q_off = fwd._q_offset(q_offset)
        key = tensors_key((q, k, v, out, lse, dout), options)
        if key is None:
            return self.launch_specs(q, k, v, out, lse, dout, q_offset, caps, options).run_unprepared(
                q, k, v, out, lse, dout)
        key = (key, q_off) if caps is None else (key, q_off, self._captures_key(caps))
        # calls keyed on captured values (a new doc-ids tensor per batch) get a small cache of their own
        cache = self._calls if caps is None else self._capture_calls
        prepared = cache.get(key)
        if prepared is None:
            refuse_during_capture(f"{self.plan.name} (backward)", q.device)
            self.prepare_count += 1
            prepared = cache.remember(key, self.launch_specs(q, k, v, out, lse, dout, q_offset, caps,
                                                             options).bind())
        self.last_config, self.last_dq_config = prepared.config, prepared.dq_config
        return prepared(q, k, v, out, lse, dout)

    def _captures_key(self, caps: tuple[dict[str, Any], tuple]) -> tuple:
        """The part of a prepared call's key from its captured tensors. The mask's captures and any
        converted one (int64 ids read as int32: a new copy when the values change) by version (their
        tables or copies follow the values); tensors the score reads as given only by address,
        shape, strides and dtype: the kernel reads their values at launch, so a learned bias updated
        in place each step keeps its prepared call (which holds the tensor, so the address is not reused)."""
        if self._mask_captures is None:
            from einfuse.codegen.capture_args import plan_captures

            self._mask_captures = frozenset(c.name for c in plan_captures(self.forward.plan.mask))
        tensors, out = caps[0], []
        for item in caps[1]:  # (name, token, data_ptr, version, shape, strides, dtype)
            name = item[0]
            if name in self._mask_captures or tensors[name].data_ptr() != item[2]:
                out.append(item)
            else:
                out.append((name, *item[4:], item[2]))
        return tuple(out)

    def call_unprepared(self, q: Any, k: Any, v: Any, out: Any, lse: Any, dout: Any, q_offset: int | None = None,
                        **options: Any) -> tuple[Any, Any, Any]:
        """The same gradients with nothing cached and Triton's launch path (tests compare the two)."""
        options = dict(options)
        caps = self.forward.call_captures(options, q)
        q, k, v, out, dout = (t.contiguous() for t in (q, k, v, out, dout))
        return self.launch_specs(q, k, v, out, lse, dout, q_offset, caps, options).run_unprepared(
            q, k, v, out, lse, dout)

    def launch_specs(self, q: Any, k: Any, v: Any, out: Any, lse: Any, dout: Any, q_offset: int | None,
                     caps: tuple[dict[str, Any], tuple] | None, options: dict[str, Any]) -> BackwardSpecs:
        """Everything the kernels of a call with these (contiguous) inputs need but the tensors:
        configurations, tile orders, block tables (transposed for dK/dV), grids, strides, flags."""
        import torch
        import triton.language as tl

        from einfuse.codegen import capture_args

        fwd = self.forward
        cap_args = capture_args.launch_args(capture_args.plan_captures(fwd.plan.score, fwd.plan.mask),
                                            caps[0]) if caps else []
        opts = LaunchOptions.from_kwargs({**_non_default(fwd.defaults), **options})
        B, H, Nq, D = q.shape
        Hkv, Nkv, Dv = k.shape[1], k.shape[2], v.shape[3]
        layout = self.layout(q, k, opts)
        order, k_order = layout
        kv_cfg, q_cfg = self.config(q), self.dq_config(q)
        self.last_config = kv_cfg
        self.last_dq_config = q_cfg
        q_off = fwd._q_offset(q_offset)
        mod = self.module(layout)
        interp = q.device.type != "cuda"
        fast = opts.fast_math if opts.fast_math is not None else (not interp and q.dtype != torch.float32)
        precision = opts.precision or ("ieee" if q.dtype == torch.float32 else "tf32")
        dummy = fwd._dummy(q.device)

        def constexprs(cfg: KernelConfig) -> dict[str, Any]:
            bq, bk = order.box(cfg.block_m), k_order.box(cfg.block_n)
            return dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_D=D, BLOCK_D=pow2(D), HEAD_DV=Dv,
                        BLOCK_DV=pow2(Dv), BQ0=bq[0], BQ1=bq[1], BQ2=bq[2], BK0=bk[0], BK1=bk[1], BK2=bk[2],
                        FAST_MATH=fast, DOT_PRECISION=precision, UPCAST=interp and q.dtype == torch.bfloat16,
                        EVEN_KV=k_order.whole(Nkv, cfg.block_n),
                        ACC=tl.float64 if q.dtype == torch.float64 else tl.float32)

        strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *dout.stride()[:3])
        # the outputs are allocated contiguous: their strides follow from their shapes
        dk_shape, dv_shape, dq_shape = (B, Hkv, Nkv, D), (B, Hkv, Nkv, Dv), (B, H, Nq, D)
        dk_strides, dv_strides, dq_strides = (_contiguous_strides(s)[:3] for s in (dk_shape, dv_shape, dq_shape))
        pre = None
        if self.plan.family == "softmax":  # D[p] = sum_f dO[p,f] O[p,f]
            pre_m = 64 if not interp else 32
            pre = LaunchSpec(getattr(mod, PREPROCESS), (-(-Nq // pre_m), B * H), 3,
                             (*out.stride()[:3], *dout.stride()[:3], Nq, H),
                             dict(BLOCK_M=pre_m, HEAD_DV=Dv, BLOCK_DV=pow2(Dv)), 4, 3)  # Triton's CUDA defaults
        # sigmoid: no normaliser, the kernels read neither lse nor D (delta is lse)

        # dK, dV: the forward's block tables at the dK/dV tiles, transposed (key-major)
        tables_kv = fwd.tables(Nq, Nkv, H, B, kv_cfg, layout, q.device, q_off, captures=caps)
        n_q_tiles = order.num_tiles(Nq, kv_cfg.block_m)
        key = (Nq, Nkv, H, kv_cfg.block_m, kv_cfg.block_n, layout, str(q.device), q_off,
               capture_args.mask_tables_key(fwd.plan.mask, caps))
        if key not in self._tables and key[-1]:
            capture_args.evict_stale(self._tables)  # transposed tables of earlier ids
        if key not in self._tables:
            self._tables[key] = transpose_tables(tables_kv, n_q_tiles)
        tables_t = self._tables[key]
        atomic = self.dq_layout == "atomic"
        n_k_tiles = k_order.num_tiles(Nkv, kv_cfg.block_n)
        dkdv = LaunchSpec(
            getattr(mod, DKDV), (n_k_tiles, B * Hkv), 9,
            (*strides, *dk_strides, *dv_strides, *(dq_strides if atomic else (0, 0, 0)),
             *tables_t.kernel_args(dummy), Nq, Nkv, H, *cap_args, q_off, Nq == Nkv, H // Hkv, tables_kv.n_full,
             n_q_tiles),
            dict(TABLES=not tables_t.dense, FULL_CONTIG=tables_t.full_contig, PART_CONTIG=tables_t.part_contig,
                 ATOMIC_DQ=atomic, **constexprs(kv_cfg)), kv_cfg.num_warps, kv_cfg.num_stages)
        dq = None
        if not atomic:
            # dQ: the forward's block tables at the dQ tiles, query-major as the forward reads them
            tables = fwd.tables(Nq, Nkv, H, B, q_cfg, layout, q.device, q_off, captures=caps)
            dq = LaunchSpec(
                getattr(mod, DQ), (order.num_tiles(Nq, q_cfg.block_m), B * H), 7,
                (*strides, *dq_strides, *tables.kernel_args(dummy), Nq, Nkv, H, *cap_args, q_off, Nq == Nkv,
                 H // Hkv, tables.n_full, tables.n_k_tiles),
                dict(TABLES=not tables.dense, FULL_CONTIG=tables.full_contig, PART_CONTIG=tables.part_contig,
                     **constexprs(q_cfg)), q_cfg.num_warps, q_cfg.num_stages)
        return BackwardSpecs(self, pre, dkdv, dq, q.dtype, k.dtype, v.dtype, lse.dtype, q.device,
                             (B, H, Nq), dk_shape, dv_shape, dq_shape, kv_cfg, q_cfg)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= n
    return tuple(reversed(out))


@dataclass
class LaunchSpec:
    """One kernel launch but its tensors: the kernel, grid, the ``n_tensors`` leading tensor
    parameters, then the other positional arguments and the constexprs by name."""

    fn: Any
    grid: tuple[int, ...]
    n_tensors: int
    args: tuple[Any, ...]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int

    def launch(self, *tensors: Any) -> None:
        """Triton's own launch path (``kernel[grid](...)``), everything re-bound."""
        self.fn[self.grid](*tensors, *self.args, **self.constexprs, num_warps=self.num_warps,
                           num_stages=self.num_stages)

    def bind(self) -> Any:
        from einfuse.codegen.triton.launch import BoundLaunch

        return BoundLaunch(self.fn, self.grid, self.n_tensors, self.args, self.constexprs,
                           self.num_warps, self.num_stages)


@dataclass
class BackwardSpecs:
    """The launches of one backward call signature, runnable unprepared or bound once (:meth:`bind`)."""

    kernel: BackwardKernel
    pre: LaunchSpec | None
    dkdv: LaunchSpec
    dq: LaunchSpec | None
    q_dtype: Any
    k_dtype: Any
    v_dtype: Any
    acc_dtype: Any
    device: Any
    delta_shape: tuple[int, ...]
    dk_shape: tuple[int, ...]
    dv_shape: tuple[int, ...]
    dq_shape: tuple[int, ...]
    config: KernelConfig
    dq_config: KernelConfig

    def run_unprepared(self, q: Any, k: Any, v: Any, out: Any, lse: Any, dout: Any) -> tuple[Any, Any, Any]:
        import torch

        launches = (self.pre.launch if self.pre else None, self.dkdv.launch, self.dq.launch if self.dq else None)
        return _run(self, launches, torch.empty, torch.zeros, q, k, v, out, lse, dout)

    def bind(self) -> PreparedBackward:
        return PreparedBackward(self, self.pre.bind() if self.pre else None, self.dkdv.bind(),
                                self.dq.bind() if self.dq else None)


class PreparedBackward:
    """A prepared backward call: allocate the gradients (and D), launch the bound kernels."""

    __slots__ = ("specs", "launches", "config", "dq_config", "_empty", "_zeros")

    def __init__(self, specs: BackwardSpecs, pre: Any, dkdv: Any, dq: Any) -> None:
        import torch

        self.specs, self.launches = specs, (pre, dkdv, dq)
        self.config, self.dq_config = specs.config, specs.dq_config
        self._empty, self._zeros = torch.empty, torch.zeros

    def __call__(self, q: Any, k: Any, v: Any, out: Any, lse: Any, dout: Any) -> tuple[Any, Any, Any]:
        return _run(self.specs, self.launches, self._empty, self._zeros, q, k, v, out, lse, dout)


def _run(s: BackwardSpecs, launches: tuple[Any, Any, Any], empty: Any, zeros: Any, q: Any, k: Any, v: Any,
         out: Any, lse: Any, dout: Any) -> tuple[Any, Any, Any]:
    """Allocate and launch: preprocess (softmax), dK/dV (with atomic dQ), dQ; one body for both paths."""
    pre, dkdv, dq_launch = launches
    dev = s.device
    if pre is not None:
        delta = empty(s.delta_shape, dtype=s.acc_dtype, device=dev)  # fp64 for fp64 inputs
        pre(out, dout, delta)
    else:
        delta = lse
    dk = empty(s.dk_shape, dtype=s.k_dtype, device=dev)
    dv = empty(s.dv_shape, dtype=s.v_dtype, device=dev)
    if dq_launch is None:  # atomic layout: the dK/dV kernel adds dQ into an fp32 (fp64) buffer
        dq_acc = zeros(s.dq_shape, dtype=s.acc_dtype, device=dev)
        dkdv(q, k, v, dout, lse, delta, dk, dv, dq_acc)
        return dq_acc.to(s.q_dtype), dk, dv
    dkdv(q, k, v, dout, lse, delta, dk, dv, dk)
    dq = empty(s.dq_shape, dtype=s.q_dtype, device=dev)
    dq_launch(q, k, v, dout, lse, delta, dq)
    return dq, dk, dv


MIN_DKDV_ROWS_16BIT = 64
"""The smallest query tile of the dK/dV kernel on a GPU for 16-bit inputs. With ``block_m`` 16 or 32,
Triton 3.6 on the H200 computes dK wrong (rel. error 0.02-0.2, dQ and dV right) for most warp/stage
choices (16x64 4 warps, 32x64 4 warps, 32x128 8 warps, 32x128 4 warps at D64, ...), while the
interpreter and fp32 inputs are right; every ``block_m`` >= 64 was right (benchmarks/results/backward/
README.md). The choice depends on warps and stages, i.e. on code generation, so no tile below is
trusted."""


def check_dkdv_rows(name: str, cfg: KernelConfig, q: Any) -> None:
    """Refuse a dK/dV query tile below :data:`MIN_DKDV_ROWS_16BIT` on a GPU for 16-bit inputs."""
    import torch

    if (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16)
            and cfg.block_m < MIN_DKDV_ROWS_16BIT):
        from einfuse.errors import CodegenError

        raise CodegenError(
            f"{name}: backward block_m={cfg.block_m}: the dK/dV kernel needs block_m >= "
            f"{MIN_DKDV_ROWS_16BIT} on the GPU for {str(q.dtype).removeprefix('torch.')} inputs (smaller "
            f"query tiles compute wrong dK with this Triton; fp32 inputs and the interpreter are not affected)")


BACKWARD_OPTIONS = ("block_m", "block_n", "num_warps", "num_stages", "dq_block_m", "dq_block_n", "dq_num_warps",
                    "dq_num_stages", "dq_layout")
"""What ``einfuse.compile(..., backward_options={...})`` may set (fields of :class:`BackwardKernel`)."""


def build_backward(forward: AttentionKernel, plan: Any, **options: Any) -> BackwardKernel:
    """The backward of a compiled softmax or sigmoid kernel; ``options``: block_m, block_n, num_warps,
    num_stages (the dK/dV kernel, and the dQ kernel's defaults), dq_block_m, dq_block_n, dq_num_warps,
    dq_num_stages, and dq_layout ('separate' | 'atomic')."""
    from einfuse.lowering.backward import backward_plan

    bp = plan if isinstance(plan, BackwardPlan) else backward_plan(plan)
    kern = BackwardKernel(forward, bp, **options)
    kern.source()  # generate (and import) now: errors surface at compile time
    return kern
