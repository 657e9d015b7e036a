"""Packed variable-length batches: ``fn.varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
max_seqlen_k)`` on the one-pass kernel (softmax, sigmoid, normsum plans).

The convention is FlashAttention's ``flash_attn_varlen_func`` (also vLLM's and transformers'
packed path): ``q`` is ``(total_q, H, D)``, ``k``/``v`` are ``(total_kv, H_kv, D)``, sequence ``s``
holds rows ``cu_seqlens_q[s] .. cu_seqlens_q[s+1]`` of ``q`` and ``cu_seqlens_k[s] ..
cu_seqlens_k[s+1]`` of ``k``/``v`` (int32, ``num_seqs + 1`` entries from 0). Each sequence is its
own attention: the variant's mask and score see positions from that sequence's start, its lengths
as ``P``/``M`` (bottom-right alignment per sequence, see :mod:`einfuse.ir.positions`) and its index
as ``b``. The output is ``(total_q, H, D_v)``.

The lengths are read on the host (a device sync when ``cu_seqlens`` live on the GPU; CPU tensors
avoid it) to build the work list and block tables (:mod:`einfuse.lowering.varlen_tables`), which
are cached per batch layout: the layers of one forward pass pay for them once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from einfuse.codegen import autotune
from einfuse.codegen.autotune import KernelConfig
from einfuse.codegen.triton.options import pow2
from einfuse.codegen.triton.runtime import AttentionKernel, LaunchOptions, check_device_and_dtype, check_heads
from einfuse.codegen.triton.varlen_emit import VARLEN_KERNEL_NAME, emit_varlen_kernel
from einfuse.errors import CodegenError
from einfuse.ir.positions import Q_OFFSET
from einfuse.lowering.varlen_tables import VarlenTables, pack, tile_kinds

_CACHED_BATCHES = 32  # batch layouts whose tables are kept per kernel


class VarlenKernel:
    """The varlen kernel of one compiled one-pass variant: its module and a cache of batch tables."""

    def __init__(self, kernel: AttentionKernel, tokens: int | None = None) -> None:
        self.kernel = kernel
        self.tokens = tokens
        self._module = None
        self._masks: dict[tuple, Any] = {}
        self._batches: OrderedDict[tuple, VarlenTables] = OrderedDict()
        self.last_config: KernelConfig | None = None
        self.last_tables: VarlenTables | None = None

    @property
    def name(self) -> str:
        return self.kernel.plan.name

    def module(self):
        """The contiguous-tile module of the plan with the varlen kernel appended (imported once)."""
        if self._module is None:
            from einfuse.codegen.triton.emit import emit_module
            from einfuse.codegen.triton.loader import load_module
            from einfuse.ir.printer import format_cascade
            from einfuse.lowering.tile_order import FLAT

            k = self.kernel
            text = emit_module(k.plan, k.sizes, FLAT, FLAT, format_cascade(k.cascade), k.lowering)
            text += emit_varlen_kernel(k.plan)
            mod = load_module(text, f"{k.plan.name}_varlen")
            mod.__source__ = text
            self._module = mod
        return self._module

    @property
    def source(self) -> str:
        return self.module().__source__

    # ---- call -----------------------------------------------------------------------------------
    def __call__(self, q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: int,
                 max_seqlen_k: int, q_offset: int | None = None, **options: Any) -> Any:
        import torch

        H, Hkv, D, Dv, dt = check_varlen_inputs(self.name, q, k, v)
        cu_q = _offsets(self.name, "cu_seqlens_q", cu_seqlens_q, q.shape[0])
        cu_k = _offsets(self.name, "cu_seqlens_k", cu_seqlens_k, k.shape[0])
        if len(cu_q) != len(cu_k):
            raise CodegenError(f"{self.name}: cu_seqlens_q has {len(cu_q)} entries and cu_seqlens_k "
                               f"{len(cu_k)}; both hold num_seqs + 1 offsets")
        lens_q, lens_k = np.diff(cu_q), np.diff(cu_k)
        for nm, given, lens in (("max_seqlen_q", max_seqlen_q, lens_q), ("max_seqlen_k", max_seqlen_k, lens_k)):
            longest = int(lens.max()) if len(lens) else 0
            if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < longest:
                raise CodegenError(f"{self.name}: {nm}={given!r} must be an integer >= the longest sequence "
                                   f"({longest})")
        self._check_grid(lens_q, lens_k)
        opts = LaunchOptions.from_kwargs(options)
        if opts.autotune or opts.tile_order not in ("auto", "flat"):
            raise CodegenError(f"{self.name}: varlen calls take block_m, block_n, num_warps, num_stages, "
                               "fast_math and precision; autotune and tile_order are for (B, H, N, D) calls")
        q_off = self._q_offset(q_offset)
        out = torch.empty((q.shape[0], H, Dv), dtype=q.dtype, device=q.device)
        if q.shape[0] == 0:
            return out
        interp = q.device.type != "cuda"
        cfg = self.config(max(D, Dv), dt, int(max_seqlen_q), int(max_seqlen_k), interp, opts)
        tables = self.tables(cu_q, cu_k, H, cfg, q_off, q.device)
        self.last_config, self.last_tables = cfg, tables
        if tables.n_items == 0:
            return out
        fast = opts.fast_math if opts.fast_math is not None else (not interp and q.dtype != torch.float32)
        precision = opts.precision or ("ieee" if q.dtype == torch.float32 else "tf32")
        kernel = getattr(self.module(), VARLEN_KERNEL_NAME)
        kernel[(tables.n_items * H,)](
            q, k, v, out, tables.items, tables.cu_q, tables.cu_k,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), *tables.kernel_args(),
            H, len(lens_q), H // Hkv, q_off,
            SAME_LEN=bool(np.array_equal(lens_q, lens_k)), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            HEAD_D=D, BLOCK_D=pow2(D), HEAD_DV=Dv, BLOCK_DV=pow2(Dv), FULL_CONTIG=tables.full_contig,
            PART_CONTIG=tables.part_contig, FAST_MATH=fast, DOT_PRECISION=precision,
            UPCAST=interp and q.dtype == torch.bfloat16, EVEN_KV=bool((lens_k % cfg.block_n == 0).all()),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        return out

    def _q_offset(self, q_offset: int | None) -> int:
        """The position of each sequence's query 0 for ``align="offset"`` variants (their QOFF)."""
        sizes = self.kernel.sizes
        if q_offset is None:
            return int(sizes.get(Q_OFFSET, 0))
        if Q_OFFSET not in sizes:
            raise CodegenError(f"{self.name}: q_offset is given but the variant does not use a query offset; "
                               "build it with align='offset' (einfuse.ir.positions)")
        return int(q_offset)

    def config(self, head_dim: int, dt: str, max_q: int, max_k: int, interp: bool,
               opts: LaunchOptions) -> KernelConfig:
        """Explicit options over the heuristic tiles for the longest sequences."""
        base = autotune.heuristic(head_dim, dt, max(max_q, 1), max(max_k, 1), interp)
        return KernelConfig(opts.block_m or base.block_m, opts.block_n or base.block_n,
                            opts.num_warps or base.num_warps, opts.num_stages or base.num_stages)

    def tables(self, cu_q: np.ndarray, cu_k: np.ndarray, heads: int, cfg: KernelConfig, q_offset: int,
               device: Any) -> VarlenTables:
        """The batch's work list and key tiles (cached per layout, tiles, heads, offset and device)."""
        key = (cu_q.tobytes(), cu_k.tobytes(), heads, cfg.block_m, cfg.block_n, q_offset, str(device))
        hit = self._batches.get(key)
        if hit is not None:
            self._batches.move_to_end(key)
            return hit
        mask = self._mask(heads, len(cu_q) - 1, q_offset)
        items, kinds = tile_kinds(mask, np.diff(cu_q), np.diff(cu_k), cfg.block_m, cfg.block_n, heads)
        t = pack(items, kinds, cu_q, cu_k, device)
        self._batches[key] = t
        if len(self._batches) > _CACHED_BATCHES:
            self._batches.popitem(last=False)
        return t

    def _mask(self, heads: int, n_seqs: int, q_offset: int) -> Any:
        """The plan's mask with every size but P and M bound (cached: sympy substitution is slow)."""
        import sympy

        from einfuse.ir.ranks import size_symbol

        mask = self.kernel.plan.mask
        if mask is None:
            return None
        key = (heads, n_seqs, q_offset)
        if key not in self._masks:
            sizes = {**self.kernel.sizes, "H": heads, "B": n_seqs, Q_OFFSET: q_offset}
            bound = mask.subs({size_symbol(n): sympy.Integer(int(v)) for n, v in sizes.items()
                               if n not in ("P", "M")})
            self._masks[key] = bound
        return self._masks[key]

    def _check_grid(self, lens_q: np.ndarray, lens_k: np.ndarray) -> None:
        """Variants on a token grid (neighbourhoods) need every sequence to be one whole grid."""
        if self.tokens is None:
            return
        bad = [i for i, (a, b) in enumerate(zip(lens_q, lens_k)) if (a or b) and not a == b == self.tokens]
        if bad:
            i = bad[0]
            raise CodegenError(f"{self.name}: the variant's token grid holds {self.tokens} tokens, but sequence "
                               f"{i} has {lens_q[i]} queries and {lens_k[i]} keys; every non-empty sequence "
                               "must be one whole grid")


def check_varlen_inputs(name: str, q: Any, k: Any, v: Any) -> tuple[int, int, int, int, str]:
    """Validate packed q, k, v; returns (H, H_kv, D, D_v, dtype name). Errors say what to change."""
    import torch


    for nm, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise CodegenError(f"{name}: {nm} must be a torch.Tensor of shape (total_tokens, H, D), got "
                               f"{type(t).__name__}")
        if t.dim() != 3:
            raise CodegenError(f"{name}: varlen {nm} must be packed as (total_tokens, H, D); got shape "
                               f"{tuple(t.shape)} (a (B, H, N, D) batch is fn(q, k, v))")
        if t.requires_grad and torch.is_grad_enabled():
            raise CodegenError(f"{name}: varlen attention is forward-only; {nm} requires grad (call under "
                               "torch.no_grad() or pass x.detach())")
        if t.stride(-1) != 1:
            raise CodegenError(f"{name}: {nm} must be contiguous in its last (head) dimension; its strides "
                               f"are {tuple(t.stride())} (call .contiguous())")
    dt = check_device_and_dtype(name, q, k, v)
    _, H, D = q.shape
    _, Hkv, Dk = k.shape
    if v.shape[0] != k.shape[0] or v.shape[1] != Hkv:
        raise CodegenError(f"{name}: k {tuple(k.shape)} and v {tuple(v.shape)} must share tokens and heads")
    check_heads(name, H, Hkv, D, Dk, v.shape[2])
    return H, Hkv, D, v.shape[2], dt


def _offsets(name: str, what: str, cu: Any, total: int) -> np.ndarray:
    """``cu`` as an int64 NumPy array after checking the cu_seqlens convention."""
    import torch

    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.dtype not in (torch.int32, torch.int64):
        desc = f"{type(cu).__name__}" if not isinstance(cu, torch.Tensor) else f"{cu.dtype} {tuple(cu.shape)}"
        raise CodegenError(f"{name}: {what} must be a 1-D int32 tensor of num_seqs + 1 offsets "
                           f"(flash_attn_varlen_func's convention), got {desc}")
    arr = cu.detach().cpu().numpy().astype(np.int64)  # a device sync when cu lives on the GPU
    if arr.size < 2:
        raise CodegenError(f"{name}: {what} has {arr.size} entries; it holds num_seqs + 1 offsets (at least 2)")
    if arr[0] != 0 or (np.diff(arr) < 0).any() or arr[-1] != total:
        shown = f"{arr[:8].tolist()}{' ...' if arr.size > 8 else ''}"
        raise CodegenError(f"{name}: {what} must start at 0, never decrease and end at the packed length "
                           f"{total}; got {shown} (last {arr[-1]})")
    if arr[-1] >= 2 ** 31:
        raise CodegenError(f"{name}: {what} ends at {arr[-1]}, past int32 offsets")
    return arr


def varlen_call(fn: Any, q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: int,
                max_seqlen_k: int, **runtime: Any) -> Any:
    """``CompiledAttention.varlen``: the varlen kernel of ``fn``'s one-pass plan (built once)."""
    kernel = getattr(fn.kernel, "triton", fn.kernel)  # target="auto": its Triton kernel
    if not isinstance(kernel, AttentionKernel):
        raise CodegenError(f"{fn.name}: packed variable-length batches run on the one-pass Triton kernel "
                           f"(softmax, sigmoid, normsum plans); this variant is {fn.family} on "
                           f"{type(fn.kernel).__name__}")
    if fn._varlen_kernel is None:
        fn._varlen_kernel = VarlenKernel(kernel, fn.tokens)
    return fn._varlen_kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **runtime)


__all__ = ["VarlenKernel", "check_varlen_inputs", "varlen_call"]
