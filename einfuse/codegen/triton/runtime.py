"""Launching a generated softmax/sigmoid/normsum kernel: input checks, configuration, block tables, grid.

:class:`AttentionKernel` is what ``einfuse.compile`` returns for softmax-family cascades (wrapped in
the torch custom op). It owns the generated modules (one per tile order), the block tables cached
per (sizes, tiles, device), and the configuration choice (explicit, autotuned, or heuristic).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

from einfuse.codegen import autotune
from einfuse.codegen.autotune import KernelConfig
from einfuse.codegen.triton.emit import KERNEL_NAME, emit_module
from einfuse.codegen.triton.launch import BoundLaunch, CallCache, cached_call
from einfuse.codegen.triton.loader import load_module
from einfuse.codegen.triton.options import pow2
from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.ir.positions import Q_OFFSET
from einfuse.ir.ranks import BATCH_INDEX
from einfuse.lowering.blocks import BlockTables, build_tables, dense_tables
from einfuse.lowering.lower import kernel_plan
from einfuse.lowering.onepass import OnePassPlan
from einfuse.lowering.plan import KernelPlan
from einfuse.lowering.span_tables import build_span_tables
from einfuse.lowering.tile_order import FLAT, SpanBoxes, TileOrder

# (query tile order, key tile order): contiguous/contiguous, boxes/boxes, or boxes/boxes over key spans
Layout = tuple[TileOrder, "TileOrder | SpanBoxes"]
_FLAT_LAYOUT: Layout = (FLAT, FLAT)

_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32",
           "torch.float64": "fp64"}  # fp64: interpreter only (check_inputs)
MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class LaunchOptions:
    """Per-call knobs (all optional): a fixed configuration, autotuning, numerics."""

    block_m: int | None = None
    block_n: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    autotune: bool = False
    fast_math: bool | None = None
    precision: str | None = None
    tile_order: str = "auto"

    @staticmethod
    def from_kwargs(kwargs: dict[str, Any]) -> LaunchOptions:
        known = set(LaunchOptions.__dataclass_fields__)
        bad = sorted(set(kwargs) - known)
        if bad:
            raise CodegenError(f"unknown option {', '.join(bad)}; valid options: {', '.join(sorted(known))}")
        from einfuse.codegen.triton.options import check_option_value

        typed = {"fast_math": False, "precision": ""}  # defaults of None that stand for a bool, a str
        for k, v in kwargs.items():
            if v is not None or k not in typed:
                check_option_value(k, v, typed.get(k, getattr(LaunchOptions(), k)))
        opts = LaunchOptions(**kwargs)
        if opts.precision not in (None, "ieee", "tf32"):
            raise CodegenError(f"option precision={opts.precision!r}: use 'ieee' or 'tf32'")
        if opts.tile_order not in ("auto", "flat", "box", "span"):
            raise CodegenError(f"option tile_order={opts.tile_order!r}: use 'auto', 'flat', 'box' or 'span'")
        for name in ("block_m", "block_n"):
            v = getattr(opts, name)
            if v is not None and (v < 16 or v & (v - 1)):
                raise CodegenError(f"option {name}={v}: must be a power of two >= 16")
        return opts


def check_device_and_dtype(name: str, q: Any, k: Any, v: Any) -> str:
    """One device (CUDA, or the CPU under the interpreter) and one supported dtype; its short name."""
    from einfuse.codegen.autotune import interpreter_active

    if not (q.device == k.device == v.device):
        raise CodegenError(f"{name}: q, k, v are on different devices ({q.device}, {k.device}, {v.device})")
    if q.device.type != "cuda" and not interpreter_active():
        raise CodegenError(f"{name}: tensors are on {q.device}; Triton kernels need CUDA tensors "
                           "(or TRITON_INTERPRET=1 to run them on the CPU for testing)")
    dt = _DTYPES.get(str(q.dtype))
    if dt == "fp64" and q.device.type == "cuda":
        dt = None  # float64 runs in the Triton interpreter only (exact kernels for gradcheck and tests)
    if dt is None:
        raise CodegenError(f"{name}: dtype {q.dtype} is not supported; use bfloat16, float16 or float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise CodegenError(f"{name}: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one")
    return dt


def check_heads(name: str, H: int, Hkv: int, D: int, Dk: int, Dv: int) -> None:
    """Grouped-query heads and head dims the kernels take (batched and packed inputs alike)."""
    if Hkv < 1 or H % Hkv:
        raise CodegenError(f"{name}: K/V heads ({Hkv}) must divide query heads ({H}) for grouped-query attention")
    if Dk != D:
        raise CodegenError(f"{name}: q head dim {D} differs from k head dim {Dk}")
    for dim, what in ((D, "q/k head dim"), (Dv, "v head dim")):
        if not 1 <= dim <= MAX_HEAD_DIM:
            raise CodegenError(f"{name}: {what} {dim} is outside 1..{MAX_HEAD_DIM}")


def check_inputs(name: str, q: Any, k: Any, v: Any) -> tuple[int, int, int, int, int, int, str]:
    """Validate q, k, v; returns (B, H, Hkv, N_q, N_kv, D, dtype name). Errors say what to change."""
    from einfuse.codegen.compile import check_tensors

    check_tensors(name, {"q": q, "k": k, "v": v})  # types, ranks, float dtypes, data, no autograd
    dt = check_device_and_dtype(name, q, k, v)
    B, H, Nq, D = q.shape
    Bk, Hkv, Nkv, Dk = k.shape
    if Bk != B or v.shape[0] != B:
        raise CodegenError(f"{name}: batch sizes differ: q {B}, k {Bk}, v {v.shape[0]}")
    if v.shape[1] != Hkv or v.shape[2] != Nkv:
        raise CodegenError(f"{name}: k {tuple(k.shape)} and v {tuple(v.shape)} must share heads and length")
    check_heads(name, H, Hkv, D, Dk, v.shape[3])
    if min(B, H, Nq, Nkv) < 1:
        raise CodegenError(f"{name}: empty input (B={B}, H={H}, N_q={Nq}, N_kv={Nkv})")
    for t, nm in ((q, "q"), (k, "k"), (v, "v")):
        if t.stride(-1) != 1:
            raise CodegenError(f"{name}: {nm} must be contiguous in its last (head) dimension; "
                               f"its strides are {tuple(t.stride())} (call .contiguous())")
    return B, H, Hkv, Nq, Nkv, D, dt


@dataclass
class AttentionKernel:
    """A compiled softmax/sigmoid/normsum attention: ``kernel(q, k, v) -> out`` on (B, H, N, D) tensors."""

    cascade: Cascade
    plan: OnePassPlan
    sizes: dict[str, int]
    lowering: str
    defaults: LaunchOptions = field(default_factory=LaunchOptions)
    grid_hint: tuple[int, ...] | None = None
    _modules: dict = field(default_factory=dict)
    _tables: dict = field(default_factory=dict)
    _configs: dict = field(default_factory=dict)
    _calls: CallCache = field(default_factory=CallCache, repr=False)
    _last: Any = field(default=None, repr=False)

    @property
    def last_config(self) -> KernelConfig | None:
        """The configuration of the last launch (tests and benchmarks read it)."""
        return self._last.config if self._last is not None else None

    @property
    def last_tables(self) -> BlockTables | None:
        return self._last.tables if self._last is not None else None

    @staticmethod
    def build(plan: KernelPlan, sizes: dict[str, int] | None = None,
              grid_hint: tuple[int, ...] | None = None, **options: Any) -> AttentionKernel:
        """The kernel of a one-pass plan (softmax, sigmoid, normsum); ``sizes`` bind params."""
        if plan.family not in ("softmax", "sigmoid", "normsum"):
            raise CodegenError(f"{plan.name}: the one-pass kernel takes softmax/sigmoid/normsum plans, "
                               f"not {plan.family}")
        bound = {k: int(v) for k, v in plan.cascade.params.items() if float(v).is_integer()}
        bound.update({k: int(v) for k, v in (sizes or {}).items()})
        kern = AttentionKernel(plan.cascade, plan.detail, bound, plan.lowering,
                               LaunchOptions.from_kwargs(options), grid_hint)
        kern.source(FLAT)  # generate (and import) now: errors surface at compile time
        return kern

    # ---- code -----------------------------------------------------------------------------------
    def source(self, order: TileOrder = FLAT, k_order: TileOrder | SpanBoxes | None = None) -> str:
        return self.module((order, k_order or order)).__source__

    def module(self, layout: Layout):
        if layout not in self._modules:
            from einfuse.ir.printer import format_cascade

            text = emit_module(self.plan, self.sizes, layout[0], layout[1], format_cascade(self.cascade),
                               self.lowering)
            mod = load_module(text, self.plan.name)
            mod.__source__ = text
            _KERNELS[mod.__name__] = self
            self._modules[layout] = mod
        return self._modules[layout]

    def order_for(self, q: Any, k: Any, opts: LaunchOptions) -> Layout:
        """Contiguous tiles, or boxes of the token grid when the spec has one (key boxes as a fixed
        partition, 'box', or laid over each query tile's key span, 'span'). With 'auto', flat or box,
        whichever's block tables visit fewer key positions per query tile (at the heuristic tile
        sizes). 'span' is never picked by 'auto': it visits 12-33% fewer keys, but its tiles need
        bounds checks (lanes past the box or grid), and on an H100 that cost more than it saved
        (na3d 16x32x32 k7: 0.383 ms vs 0.354 ms for box; benchmarks/notes-softmax.md, run 4)."""
        B, H, n_q, D = q.shape
        n_kv = k.shape[2]
        grid = self.grid_hint
        fits = grid is not None and math.prod(grid) == n_q == n_kv
        if opts.tile_order in ("box", "span"):
            if not fits:
                raise CodegenError(f"{self.plan.name}: tile_order={opts.tile_order!r} needs a token grid whose "
                                   f"size equals the query and key lengths (grid {grid}, N_q={n_q}, N_kv={n_kv})")
            box = TileOrder(tuple(grid))
            return (box, box) if opts.tile_order == "box" else (box, SpanBoxes(tuple(grid)))
        if opts.tile_order != "auto" or not fits:
            return _FLAT_LAYOUT
        key = ("order", n_q, n_kv, H, str(q.device))
        if key not in self._configs:
            box = TileOrder(tuple(grid))
            cfg = autotune.heuristic(D, _DTYPES[str(q.dtype)], n_q, n_kv, q.device.type != "cuda", boxed=True)
            layouts = [_FLAT_LAYOUT, (box, box)]
            costs = {lay: self.tables(n_q, n_kv, H, B, cfg, lay, q.device).cost(cfg.block_n) for lay in layouts}
            self._configs[key] = min(costs, key=costs.get)
        return self._configs[key]

    # ---- launch ---------------------------------------------------------------------------------
    def __call__(self, q: Any, k: Any, v: Any, q_offset: int | None = None, out: Any = None,
                 **options: Any) -> Any:
        """``q_offset``: the position of query 0 for cascades built with ``align="offset"`` (their
        ``QOFF``; default the cascade's value), see :mod:`einfuse.ir.positions`. A call whose
        signature (shapes, strides, dtypes, device, options) was seen before reuses its prepared
        launch (:mod:`einfuse.codegen.triton.launch`). ``out``: a ``(B, H, N_q, D_v)`` buffer to
        write, any strides with the last one 1 (a transposed view of ``(B, N_q, H, D_v)`` memory is
        what Hugging Face layers want, with no copy afterwards)."""
        if out is not None:
            return self._call_into(q, k, v, out, q_offset, options)
        if self._reads_captures():  # captured tensors: their addresses and tables change per call
            return self.prepare(q, k, v, q_offset, **options)(q, k, v)
        opts = options if q_offset is None else {**options, "q_offset": q_offset}
        return cached_call(self._calls, q, k, v, opts, lambda: self.prepare(q, k, v, q_offset, **options),
                           self.plan.name)

    def forward_with_lse(self, q: Any, k: Any, v: Any, q_offset: int | None = None,
                         **options: Any) -> tuple[Any, Any]:
        """``(out, lse)``: the output and each query row's log-sum-exp of the score in log2 units,
        ``(B, H, N_q)`` fp32 (+inf for rows with no kept key); softmax plans only (the backward's
        saved state)."""
        if self.plan.family != "softmax":
            raise CodegenError(f"{self.plan.name}: the log-sum-exp exists for softmax plans only")
        if self._reads_captures():
            return self.prepare(q, k, v, q_offset, with_lse=True, **options)(q, k, v)
        opts = {**options, "q_offset": q_offset, " lse": True}
        return cached_call(self._calls, q, k, v, opts,
                           lambda: self.prepare(q, k, v, q_offset, with_lse=True, **options), self.plan.name)

    def _call_into(self, q: Any, k: Any, v: Any, out: Any, q_offset: int | None,
                   options: dict[str, Any]) -> Any:
        """A call writing a caller's buffer: its strides are part of the prepared launch's key."""
        from einfuse.codegen.triton.launch import plain_call, refuse_during_capture, signature_key

        if not hasattr(out, "stride") or out.dim() != 4 or out.stride(-1) != 1:
            raise CodegenError(f"{self.plan.name}: out must be a 4-d (B, H, N_q, D_v) tensor with last stride 1")
        strides = tuple(out.stride()[:3])
        prep = lambda: self.prepare(q, k, v, q_offset, out_strides=strides, **options)  # noqa: E731
        if self._reads_captures() or not plain_call(q, k, v):
            return prep()(q, k, v, out=out)
        key = signature_key(q, k, v, {**options, "q_offset": q_offset, " out": strides})
        prepared = self._calls.get(key)
        if prepared is None:
            if key is not None:
                refuse_during_capture(self.plan.name, q.device)
            prepared = self._calls.remember(key, prep())
        return prepared(q, k, v, out=out)

    def prepare(self, q: Any, k: Any, v: Any, q_offset: int | None = None, *, with_lse: bool = False,
                out_strides: tuple[int, ...] | None = None, **options: Any) -> PreparedAttention:
        """Check the inputs and work out everything a call of this signature needs (configuration,
        tile order, block tables, grid, arguments); the result launches on tensors like these."""
        import torch

        caps = self.call_captures(options, q)  # keyword arguments naming captured tensors
        opts = LaunchOptions.from_kwargs({**_non_default(self.defaults), **options})
        B, H, _, Nq, _, _, _ = check_inputs(self.plan.name, q, k, v)
        order = self.order_for(q, k, opts)
        cfg = self.config(q, k, v, order, opts, caps)
        launch, tables = self._bind(q, k, v, cfg, order, opts, self._q_offset(q_offset), with_lse, caps,
                                   out_strides)
        lse = None
        if with_lse:
            lse = ((B, H, Nq), torch.float64 if q.dtype == torch.float64 else torch.float32)
        return PreparedAttention(self, (B, H, Nq, v.shape[3]), q.dtype, q.device, launch, lse, cfg, tables)

    def call_captures(self, options: dict[str, Any], q: Any) -> tuple[dict[str, Any], tuple] | None:
        """The captured tensors of this call (popped from ``options``) and their version key, or
        None when the plan reads none (einfuse.codegen.capture_args)."""
        from einfuse.codegen import capture_args

        caps = capture_args.plan_captures(self.plan.score, self.plan.mask)
        if not caps:
            return None
        return capture_args.resolve(self.plan.name, caps, self.cascade.captures, options, q)

    def _reads_captures(self) -> bool:
        """Whether the score or mask reads captured tensors (such calls are prepared every time)."""
        from einfuse.codegen import capture_args

        return bool(capture_args.plan_captures(self.plan.score, self.plan.mask))

    def _q_offset(self, q_offset: int | None) -> int:
        if q_offset is None:
            return int(self.sizes.get(Q_OFFSET, 0))
        if Q_OFFSET not in self.sizes:
            raise CodegenError(f"{self.plan.name}: q_offset is given but the variant does not use a query "
                               "offset; build it with align='offset' (einfuse.ir.positions)")
        return int(q_offset)

    def _bind(self, q, k, v, cfg: KernelConfig, layout: Layout, opts: LaunchOptions,
              q_offset: int = 0, store_lse: bool = False,
              captures: tuple[dict[str, Any], tuple] | None = None,
              out_strides: tuple[int, ...] | None = None) -> tuple[BoundLaunch, BlockTables]:
        """The kernel launch of this signature: tables, grid and every argument but the tensors
        ``q, k, v, out, lse`` (``out`` again when no log-sum-exp is stored)."""
        import torch

        from einfuse.codegen import capture_args

        B, H, Nq, D = q.shape
        Hkv, Nkv, Dv = k.shape[1], k.shape[2], v.shape[3]
        tables = self.tables(Nq, Nkv, H, B, cfg, layout, q.device, q_offset, captures)
        cap_args = capture_args.launch_args(capture_args.plan_captures(self.plan.score, self.plan.mask),
                                            captures[0]) if captures else []
        kernel = getattr(self.module(layout), KERNEL_NAME)
        order, k_order = layout
        interp = q.device.type != "cuda"
        fast = opts.fast_math if opts.fast_math is not None else (not interp and q.dtype != torch.float32)
        # fp32 inputs: exact fp32 products unless tf32 is asked for; 16-bit inputs ignore it
        precision = opts.precision or ("ieee" if q.dtype == torch.float32 else "tf32")
        bq = order.box(cfg.block_m)
        bk = tables.k_box if isinstance(k_order, SpanBoxes) else k_order.box(cfg.block_n)
        dummy = tables.full_num if not tables.dense else self._dummy(q.device)
        grid = (order.num_tiles(Nq, cfg.block_m), B * H)
        # the output has q's shape with v's head dim, allocated contiguous unless the caller gives a buffer
        out_strides = out_strides or (H * Nq * Dv, Nq * Dv, Dv)
        args = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out_strides,
                *tables.kernel_args(dummy),
                Nq, Nkv, H, B, H // Hkv, tables.n_full, tables.n_k_tiles, q_offset, *cap_args)
        constexprs = dict(
            SAME_LEN=Nq == Nkv, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_D=D, BLOCK_D=pow2(D),
            HEAD_DV=Dv, BLOCK_DV=pow2(Dv), TABLES=not tables.dense, FULL_CONTIG=tables.full_contig,
            PART_CONTIG=tables.part_contig, BQ0=bq[0], BQ1=bq[1], BQ2=bq[2], BK0=bk[0], BK1=bk[1],
            BK2=bk[2], FAST_MATH=fast, DOT_PRECISION=precision,
            UPCAST=interp and q.dtype == torch.bfloat16, EVEN_KV=k_order.whole(Nkv, cfg.block_n),
            STORE_LSE=store_lse)
        return BoundLaunch(kernel, grid, 5, args, constexprs, cfg.num_warps, cfg.num_stages), tables

    def _dummy(self, device: Any) -> Any:
        """A one-element int32 tensor standing in for absent table pointers (one per device)."""
        key = ("dummy", str(device))
        if key not in self._tables:
            import torch

            self._tables[key] = torch.zeros(1, dtype=torch.int32, device=device)
        return self._tables[key]

    def tables(self, n_q: int, n_kv: int, heads: int, batch: int, cfg: KernelConfig, layout: Layout,
               device: Any, q_offset: int = 0, captures: tuple[dict[str, Any], tuple] | None = None) -> BlockTables:
        from einfuse.codegen.capture_args import evict_stale, mask_tables_key

        key = (n_q, n_kv, heads, cfg.block_m, cfg.block_n, layout, str(device), q_offset,
               mask_tables_key(self.plan.mask, captures))
        if key not in self._tables and key[-1]:
            evict_stale(self._tables)  # tables of earlier document ids: keep a few, not every batch's
        if key not in self._tables:
            order, k_order = layout
            mask = self.plan.mask if self.plan.mask is not None else _always()
            sizes = {**self.sizes, "P": n_q, "M": n_kv, "H": heads, "B": batch, Q_OFFSET: q_offset}
            if self.plan.mask is None and order.is_flat:
                t = dense_tables(n_kv, cfg.block_n, masked=False)
            elif isinstance(k_order, SpanBoxes) and not self.plan.mask_uses(BATCH_INDEX):
                t = build_span_tables(mask, sizes, n_q, n_kv, heads, cfg.block_m, cfg.block_n, order,
                                      k_order.grid, device)
            elif isinstance(k_order, SpanBoxes):  # batch-dependent masks: one box per key, nothing skipped
                raise CodegenError(f"{self.plan.name}: tile_order='span' needs a mask that does not depend "
                                   "on the batch index; use 'box' or 'flat'")
            else:
                t = build_tables(self.cascade, mask, sizes, n_q, n_kv, heads, cfg.block_m, cfg.block_n,
                                 order, k_order, device, captured=_mask_env(mask, captures))
            self._tables[key] = t
        return self._tables[key]

    def config(self, q, k, v, layout: Layout, opts: LaunchOptions,
               captures: tuple[dict[str, Any], tuple] | None = None) -> KernelConfig:
        """Explicit options, else the tuned (cached) configuration, else the shipped tuned default
        (einfuse/codegen/tuned_defaults.json), else the heuristic one."""
        B, H, Nq, D = q.shape
        Hkv, Nkv = k.shape[1], k.shape[2]
        dt = _DTYPES[str(q.dtype)]
        interp = q.device.type != "cuda"
        fixed = [opts.block_m, opts.block_n, opts.num_warps, opts.num_stages]
        memo = (layout, dt, D, v.shape[3], Nq, Nkv, H // Hkv, str(q.device), opts.autotune, *fixed)
        if memo in self._configs:  # launches stay cheap: no hashing or device queries per call
            return self._configs[memo]
        boxed = not layout[0].is_flat
        base = autotune.heuristic(max(D, v.shape[3]), dt, Nq, Nkv, interp, boxed=boxed)
        if any(x is not None for x in fixed) or interp:
            cfg = KernelConfig(opts.block_m or base.block_m, opts.block_n or base.block_n,
                               opts.num_warps or base.num_warps, opts.num_stages or base.num_stages)
            self._configs[memo] = cfg
            return cfg
        klass = autotune.shape_class(dt, D, v.shape[3], Nq, Nkv, H // Hkv)
        key = f"{self.variant_key(layout)}|{klass}|{autotune.device_key(q.device)}"
        cache = autotune.TuneCache()
        cfg = cache.get(key)
        if cfg is None and opts.autotune:
            import torch

            out = torch.empty((B, H, Nq, v.shape[3]), dtype=q.dtype, device=q.device)

            def make_run(c: KernelConfig):  # bound once: the timing sees the GPU, not our host code
                launch, _ = self._bind(q, k, v, c, layout, opts, captures=captures)
                return lambda: launch(q, k, v, out, out)

            cfg = autotune.tune(make_run, autotune.candidates(max(D, v.shape[3]), dt, boxed),
                                key, cache)
        if cfg is None:  # a fresh machine: the shipped tuning results (einfuse.codegen.tuned_defaults)
            from einfuse.codegen.tuned_defaults import attention_config

            cfg = attention_config(q.device, self.cascade.name, layout_kind(layout), dt, D, v.shape[3],
                                   H // Hkv, Nq, Nkv)
        cfg = cfg or base
        self._configs[memo] = cfg
        return cfg

    def variant_key(self, layout: Layout) -> str:
        import hashlib

        return hashlib.sha256(self.module(layout).__source__.encode()).hexdigest()[:16]


class PreparedAttention:
    """A prepared call: allocate the output (and the log-sum-exp), launch the bound kernel."""

    __slots__ = ("kernel", "shape", "dtype", "device", "launch", "lse", "config", "tables", "_empty")

    def __init__(self, kernel: AttentionKernel, shape: tuple[int, ...], dtype: Any, device: Any,
                 launch: BoundLaunch, lse: tuple[tuple[int, ...], Any] | None, config: KernelConfig,
                 tables: BlockTables) -> None:
        import torch

        self.kernel, self.shape, self.dtype, self.device, self.launch = kernel, shape, dtype, device, launch
        self.lse, self.config, self.tables, self._empty = lse, config, tables, torch.empty

    def __call__(self, q: Any, k: Any, v: Any, out: Any = None) -> Any:
        self.kernel._last = self
        if out is None:
            out = self._empty(self.shape, dtype=self.dtype, device=self.device)
        elif tuple(out.shape) != self.shape or out.dtype != self.dtype or out.device != self.device:
            raise CodegenError(f"{self.kernel.plan.name}: out must be a {self.dtype} tensor of shape {self.shape} "
                               f"on {self.device}; got {out.dtype} {tuple(out.shape)} on {out.device}")
        if self.lse is None:
            self.launch(q, k, v, out, out)
            return out
        lse = self._empty(self.lse[0], dtype=self.lse[1], device=self.device)
        self.launch(q, k, v, out, lse)
        return out, lse


def layout_kind(layout: Layout) -> str:
    """'flat', 'box' or 'span': the tile order's name in tuned-defaults tables."""
    if layout[0].is_flat:
        return "flat"
    return "span" if isinstance(layout[1], SpanBoxes) else "box"


def _non_default(opts: LaunchOptions) -> dict[str, Any]:
    base = LaunchOptions()
    return {k: getattr(opts, k) for k in LaunchOptions.__dataclass_fields__ if getattr(opts, k) != getattr(base, k)}


def _mask_env(mask: Any, captures: tuple[dict[str, Any], tuple] | None) -> dict | None:
    """Read function -> tensor of the captures the mask reads (block tables evaluate it on them)."""
    from einfuse.codegen import capture_args

    caps = capture_args.plan_captures(mask)
    return capture_args.env(caps, captures[0]) if caps and captures else None


def _always():
    import sympy

    return sympy.true


_KERNELS: dict[str, AttentionKernel] = {}


def launcher_for_module(module_name: str, namespace: dict[str, Any] | None = None) -> AttentionKernel:
    """The kernel object of a generated module: the one ``einfuse.compile`` made, or one rebuilt
    from the module's own constants when the file written by ``einfuse compile`` is imported alone."""
    if module_name in _KERNELS:
        return _KERNELS[module_name]
    from types import SimpleNamespace

    from einfuse.ir.parser import parse_cascade

    ns = namespace if namespace is not None else vars(sys.modules[module_name])
    key = ns.get("__file__") or module_name
    if key in _KERNELS:
        return _KERNELS[key]
    cascade = parse_cascade(ns["CASCADE_TEXT"])
    grid = tuple(ns["Q_GRID"]) or None
    detail = kernel_plan(cascade, check=False).detail
    kern = AttentionKernel(cascade, detail, dict(ns["SIZES"]), ns["LOWERING"], grid_hint=grid)
    mod = SimpleNamespace(**ns)
    with open(ns["__file__"], encoding="utf-8") as fh:
        mod.__source__ = fh.read()
    q_order = TileOrder(tuple(ns["Q_GRID"]))
    k_order = SpanBoxes(tuple(ns["K_GRID"])) if ns.get("K_SPAN") else TileOrder(tuple(ns["K_GRID"]))
    kern._modules[(q_order, k_order)] = mod
    _KERNELS[key] = kern
    return kern
