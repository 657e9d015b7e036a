"""Triton back end for decoding: softmax attention of a few queries over a long KV cache.

``build_decode(cascade, **options)`` analyses a softmax cascade (:mod:`decode_analysis`), prints the
split-KV kernels (:mod:`decode_kernels`) and returns a :class:`DecodeKernel`, called as
``fn(q, k, v, **sizes)`` on ``(B, H, Nq, D)`` queries and ``(B, Hkv, Nk, D)`` keys/values, or a paged
cache with ``page_table=`` and per-sequence ``seq_lens=`` (:mod:`kv_cache` describes the layouts). It
is meant for ``Nq <= 16``; larger query counts work but waste the split-KV schedule.

Why split the keys: with one query a head there are only ``B * Hkv`` (batch, KV head) pairs, far
fewer than the GPU has multiprocessors, so each pair's keys are split across ``n_splits`` programs
and their partial softmax states merged by a second, tiny kernel.

Split heuristic (``DecodeKernel.split_plan``): ``n_splits = min(ceil(SMs * programs_per_sm /
(B * H_kv * row_blocks)), max_splits, ceil(N / block_n))``, then each split gets a multiple of
``block_n`` keys. About 8 programs per multiprocessor leaves enough waves that unequal programs
(ragged lengths) even out and the last wave's tail is small; on an H100 at B8 context 32K, 8, 16
and 18 splits timed within noise (benchmarks/notes-linear-decode.md). With per-sequence lengths the
count is planned for the longest sequence the cache can hold (no device-to-host read, so CUDA
graphs can capture the call); each sequence cuts its own keys into that many ranges, and ranges past
its end exit at once. ``benchmarks/decode_grid.py --tune`` times the alternatives at serving sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType
from typing import Any

from einfuse.codegen.triton.decode_kernels import decode_source
from einfuse.codegen.triton.kv_cache import KVCache, check_values, describe
from einfuse.codegen.triton.launch import CallCache
from einfuse.codegen.triton.linear_emit import load_module
from einfuse.codegen.triton.options import cdiv, parse_options, pow2
from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.lowering.decode import DecodePlan
from einfuse.lowering.lower import DEFAULT_SPLITS, kernel_plan
from einfuse.lowering.plan import KernelPlan


@dataclass(frozen=True)
class DecodeOptions:
    """Tuning knobs. ``splits``: key ranges per (batch, KV head), 0 = chosen from the GPU's
    multiprocessor count (about ``programs_per_sm`` programs per multiprocessor, at most
    ``max_splits``: FlashAttention-2's cap, beyond which the combine costs more than the extra
    programs bring); ``block_n``: keys per loop step; ``block_rows``: most query rows (group heads
    x queries) per program; ``fuse_combine``: the last split program of each (batch, KV head, row
    block) to finish, found with an atomic ticket counter, merges the splits itself (one launch
    instead of two; see :class:`PreparedDecode` for the counters)."""

    splits: int = 0
    programs_per_sm: int = 8
    max_splits: int = 128
    block_n: int = 128
    block_rows: int = 64
    num_warps: int = 4
    num_stages: int = 3
    fuse_combine: bool = False

    @staticmethod
    def of(options: dict[str, Any]) -> DecodeOptions:
        opts = parse_options(DecodeOptions, options, "decode", ("block_n", "block_rows"))
        if opts.splits < 0:
            raise CodegenError(f"option splits={opts.splits} must be >= 0 (0 = automatic)")
        return opts


_SMS: dict[str, int] = {}


def _sm_count(device: Any) -> int:
    """Multiprocessors of ``device`` (asked once per device: the query costs microseconds a call)."""
    key = str(device)
    if key not in _SMS:
        import torch

        cuda = getattr(device, "type", "cpu") == "cuda"
        # the interpreter: a few splits, so tests exercise the combine
        _SMS[key] = torch.cuda.get_device_properties(device).multi_processor_count if cuda else 4
    return _SMS[key]


def dot_precision(dtype: Any) -> str:
    """fp32 inputs multiply exactly ('ieee'), as the prefill kernel and PyTorch's attention do; Triton's
    default would be TF32 (~1e-3 relative error); 16-bit inputs ignore the setting."""
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"


@dataclass(frozen=True)
class _Launch:
    """Everything a call's signature decides, computed once per signature (launches stay cheap)."""

    n_splits: int
    split_len: int
    rows: int
    row_blocks: int
    scale: float
    size_args: tuple[int, ...]
    block_n: int
    num_stages: int


SMEM_BUDGET = 160 * 1024
"""Shared memory the decode kernel's K/V pipeline may take (A100's 164 KB per block, with margin)."""


def fit_tiles(block_n: int, num_stages: int, rows: int, head_dim: int, elem_bytes: int) -> tuple[int, int]:
    """``(block_n, num_stages)`` whose buffers fit :data:`SMEM_BUDGET`: the defaults are sized for
    16-bit inputs; float32 K/V tiles take twice the bytes (fp32 at D128 asked 272 KB on an H200)."""
    d = pow2(head_dim)
    need = lambda bn, st: (max(st - 1, 1) * 2 * bn + rows) * d * elem_bytes  # noqa: E731
    while need(block_n, num_stages) > SMEM_BUDGET and (block_n > 16 or num_stages > 2):
        if num_stages > 2:
            num_stages -= 1
        else:
            block_n //= 2
    return block_n, num_stages


@dataclass(frozen=True)
class DecodeKernel:
    """A compiled decode variant: ``fn(q, k, v, splits=None, page_table=None, seq_lens=None, **sizes)``."""

    plan: DecodePlan
    options: DecodeOptions
    source: str
    module: ModuleType = field(repr=False)
    cascade: Cascade | None = field(default=None, repr=False)  # the split-KV cascade it follows
    lowering: str = ""
    captures: dict = field(default_factory=dict, repr=False)  # the variant's declared captures (values)

    def split_plan(self, B: int, Hkv: int, row_blocks: int, NK: int, device: Any,
                   splits: int | None = None, block_n: int | None = None) -> tuple[int, int]:
        """(n_splits, keys per split), the latter a multiple of ``block_n``."""
        bn = block_n or self.options.block_n
        want = splits or self.options.splits
        if not want:
            target = _sm_count(device) * self.options.programs_per_sm
            want = min(cdiv(target, B * Hkv * row_blocks), self.options.max_splits)
        want = max(1, min(want, cdiv(NK, bn)))
        split_len = cdiv(cdiv(NK, want), bn) * bn
        return cdiv(NK, split_len), split_len

    def _plan_launch(self, B: int, H: int, NQ: int, D: int, DV: int, Hkv: int, NK: int, device: Any,
                     splits: int | None, sizes: dict[str, Any], elem_bytes: int = 2) -> _Launch:
        size_args = tuple(self._sizes(B, H, NQ, NK, D, DV, sizes))
        group_rows = (H // Hkv) * NQ
        rows = min(self.options.block_rows, pow2(group_rows))
        row_blocks = cdiv(group_rows, rows)
        block_n, stages = fit_tiles(self.options.block_n, self.options.num_stages, rows, max(D, DV), elem_bytes)
        n_splits, split_len = self.split_plan(B, Hkv, row_blocks, NK, device, splits, block_n)
        scale = self.scale(self._known(B, H, NQ, NK, D, DV, sizes))
        return _Launch(n_splits, split_len, rows, row_blocks, scale, size_args, block_n, stages)

    def _sizes(self, B: int, H: int, NQ: int, NK: int, D: int, DV: int, given: dict[str, Any]) -> list[int]:
        known = self._known(B, H, NQ, NK, D, DV, given)
        out = []
        for s in self.plan.sizes:
            if s not in known:
                raise CodegenError(f"{self.plan.name}: size {s} is needed at run time; pass {s}=...")
            out.append(int(known[s]))
        return out

    def _known(self, B: int, H: int, NQ: int, NK: int, D: int, DV: int, given: dict[str, Any]) -> dict[str, float]:
        return {**self.plan.params, "B": B, "H": H, "P": NQ, "M": NK, "E": D, "F": DV, **given}

    def scale(self, known: dict[str, float]) -> float:
        """The score scale: a constant, or (the default ``1/sqrt(E)``) evaluated at these sizes."""
        if isinstance(self.plan.scale, (int, float)):
            return float(self.plan.scale)
        from einfuse.ir.ranks import size_symbol

        return float(self.plan.scale.subs({size_symbol(k): v for k, v in known.items()}))

    def __call__(self, q: Any, k: Any, v: Any, splits: int | None = None, return_lse: bool = False,
                 page_table: Any = None, seq_lens: Any = None, **sizes: Any) -> Any:
        """The output ``(B, H, N_q, D_v)``; with ``return_lse`` also the float32 log-sum-exp of each
        row's logits ``(B, H, N_q)`` (-inf for a row with no visible key), which is what combining
        partial results over key shards needs (:mod:`einfuse.distributed`).

        ``k``, ``v``: ``(B, H_kv, N, D)``, or pages ``(num_pages, page_size, H_kv, D)`` with
        ``page_table`` ``(B, max_pages)`` int32; ``seq_lens`` ``(B,)`` int32 gives each sequence its
        own length (required with pages). See :mod:`einfuse.codegen.triton.kv_cache`.

        A call whose signature (:func:`call_key`) was seen before reuses its prepared launch
        (:meth:`prepare`): checks, plan and bound kernels are worked out once per signature."""
        if self._plan_captures:  # captured tensors: their pointers and extents are read every call
            return self._call_with_captures(q, k, v, splits, return_lse, page_table, seq_lens, sizes)
        key = call_key(q, k, v, page_table, seq_lens, {"splits": splits, "return_lse": return_lse, **sizes})
        prepared = self._prepared.get(key) if key is not None else None
        if prepared is None:
            prepared = self.prepare(q, k, v, splits, page_table=page_table, seq_lens=seq_lens,
                                    return_lse=return_lse, **sizes)
            if key is not None and not _capturing(q.device):  # no entry made of capture-time memory
                self._prepared.remember(key, prepared)
        return prepared(q, k, v, page_table, seq_lens)

    @cached_property
    def _plan_captures(self) -> tuple:
        from einfuse.codegen import capture_args

        return tuple(capture_args.plan_captures(self.plan.logit, self.plan.mask))

    @cached_property
    def _prepared(self) -> CallCache:
        """Prepared calls of direct ``DecodeKernel`` calls, by :func:`call_key`."""
        return CallCache()

    def _call_with_captures(self, q: Any, k: Any, v: Any, splits: int | None, return_lse: bool,
                            page_table: Any, seq_lens: Any, sizes: dict[str, Any]) -> Any:
        """The unprepared call of a variant whose score or mask reads captured tensors: their
        launch arguments sit between the sizes and the constexprs, so they are bound every call."""
        import torch

        cache = describe(self.plan.name, q, k, v, page_table, seq_lens)
        B, H, NQ, D = q.shape
        Hkv, NK, DV = cache.heads, cache.max_len, v.shape[-1]
        cap_args = self._capture_args(sizes, q)  # pops captured tensors given by keyword
        self._check_sizes(sizes)
        if NK == 0:
            return _empty_result(q, DV, return_lse)
        plan = self._plan_launch(B, H, NQ, D, DV, Hkv, NK, q.device, splits, sizes, k.element_size())
        R = B * H * NQ * plan.n_splits
        ws = torch.empty((R * (DV + 2),), device=q.device, dtype=torch.float32)
        o = torch.empty((B, H, NQ, DV), device=q.device, dtype=q.dtype)
        lse = torch.empty((B, H, NQ), device=q.device, dtype=torch.float32) if return_lse else ws
        args, constexprs = self._partial_launch(q, k, v, cache, plan, fused=False, return_lse=return_lse)
        self.module.decode_partial[(B * Hkv, plan.n_splits, plan.row_blocks)](
            q, k, v, ws, R, page_table if cache.paged else ws, seq_lens if seq_lens is not None else ws, ws, o, lse,
            *args, *cap_args, **constexprs, num_warps=self.options.num_warps, num_stages=plan.num_stages)
        args, constexprs = self._combine_launch(o, plan, NQ, H, DV, seq_lens is not None, return_lse)
        self.module.decode_combine[(B * H * NQ,)](ws, R, o, lse, seq_lens if seq_lens is not None else ws,
                                                  *args, **constexprs, num_warps=4)
        return (o, lse) if return_lse else o

    def _check_sizes(self, sizes: dict[str, Any]) -> None:
        unknown = set(sizes) - set(self.plan.sizes) - set(self.plan.params)
        if unknown:
            raise CodegenError(f"{self.plan.name}: unknown runtime argument(s) {', '.join(sorted(unknown))}")

    def _partial_launch(self, q: Any, k: Any, v: Any, cache: KVCache, plan: _Launch, fused: bool,
                        return_lse: bool) -> tuple[tuple, dict]:
        """``decode_partial``'s arguments after its ten per-call ones (Q, K, V, WS, R, PT, LENS, CNT,
        O, LSE) and before the captured tensors', and its constexprs; the output is contiguous."""
        import torch

        if cache.paged:  # (num_pages, page_size, H_kv, D): page, slot, head, dim strides
            k_strides = (k.stride(0), k.stride(2), k.stride(1), k.stride(3))
            v_strides = (v.stride(0), v.stride(2), v.stride(1), v.stride(3))
            pt_strides = (cache.page_table.stride(0), cache.page_table.stride(1))
        else:
            k_strides, v_strides, pt_strides = k.stride(), v.stride(), (0, 0)
        B, H, NQ, D = q.shape
        DV = v.shape[-1]
        # the interpreter's bf16 tl.dot is wrong: multiply in fp32 there (see decode_kernels)
        upcast = q.device.type != "cuda" and q.dtype == torch.bfloat16
        args = (*q.stride(), *k_strides, *v_strides, *pt_strides, *_contiguous_strides((B, H, NQ, DV)), NQ,
                cache.max_len, H, cache.heads, D, DV, plan.split_len, plan.n_splits, plan.scale, *plan.size_args)
        constexprs = dict(ROWS=plan.rows, BLOCK_N=plan.block_n, BD=pow2(D), BDV=pow2(DV), UPCAST=upcast,
                          PAGED=cache.paged, PAGE_SIZE=max(cache.page_size, 1), HAS_LENS=cache.seq_lens is not None,
                          FUSED=fused, BS=pow2(plan.n_splits, 2), WRITE_LSE=fused and return_lse,
                          DOT_PRECISION=dot_precision(q.dtype))
        return args, constexprs

    def _combine_launch(self, o: Any, plan: _Launch, NQ: int, H: int, DV: int, has_lens: bool,
                        return_lse: bool) -> tuple[tuple, dict]:
        """``decode_combine``'s arguments after its five per-call ones (WS, R, O, LSE, LENS)."""
        bs = pow2(plan.n_splits, 2)
        return ((*o.stride(), H, NQ, DV, plan.n_splits),
                dict(BS=bs, CHUNK=min(bs, 16), BDV=pow2(DV), WRITE_LSE=return_lse, HAS_LENS=has_lens,
                     BLOCK_N=plan.block_n))

    def prepare(self, q: Any, k: Any, v: Any, splits: int | None = None, *, page_table: Any = None,
                seq_lens: Any = None, return_lse: bool = False, **sizes: Any) -> Any:
        """A prepared call for this signature (shapes, strides, dtypes, device, layout, options):
        the inputs are checked and both kernels bound once with their grids and arguments
        (:class:`~einfuse.codegen.triton.launch.BoundLaunch`), launched directly after their first
        launch. Called as ``prepared(q, k, v, page_table=None, seq_lens=None)`` with tensors of the
        same signature; the page table and lengths are read on the device (no host synchronisation,
        so a CUDA graph can capture the call and replay it on new lengths and pages)."""
        from einfuse.codegen.triton.launch import BoundLaunch

        if self._plan_captures:
            return lambda q, k, v, page_table=page_table, seq_lens=seq_lens: self._call_with_captures(
                q, k, v, splits, return_lse, page_table, seq_lens, dict(sizes))
        cache = describe(self.plan.name, q, k, v, page_table, seq_lens)
        self._check_sizes(sizes)
        B, H, NQ, D = q.shape
        Hkv, NK, DV = cache.heads, cache.max_len, v.shape[-1]
        if NK == 0:  # no key anywhere: every row is empty (output 0, log-sum-exp -inf)
            return lambda q, k, v, page_table=None, seq_lens=None: _empty_result(q, DV, return_lse)
        dev = q.device
        plan = self._plan_launch(B, H, NQ, D, DV, Hkv, NK, dev, splits, sizes, k.element_size())
        n = B * H * NQ * plan.n_splits
        fused = self.options.fuse_combine
        args, constexprs = self._partial_launch(q, k, v, cache, plan, fused, return_lse)
        partial = BoundLaunch(self.module.decode_partial, (B * Hkv, plan.n_splits, plan.row_blocks), 10, args,
                              constexprs, self.options.num_warps, plan.num_stages)
        combine = None
        if not fused:
            out_strides = _contiguous_strides((B, H, NQ, DV))
            c_args, c_constexprs = self._combine_launch(_Strided(out_strides), plan, NQ, H, DV, seq_lens is not None,
                                                        return_lse)
            combine = BoundLaunch(self.module.decode_combine, (B * H * NQ,), 5, c_args, c_constexprs, 4, 3)
        check = None
        if dev.type == "cpu" and seq_lens is not None:  # values are checked on CPU tensors only (kv_cache)
            name, pages, psize = self.plan.name, k.shape[0], cache.page_size

            def check(page_table: Any, seq_lens: Any) -> None:
                check_values(name, pages, psize, NK, page_table, seq_lens)
        counters = _Counters(B * Hkv * plan.row_blocks, dev) if fused else None
        return PreparedDecode(n, DV, (B, H, NQ, DV), q.dtype, dev, partial, combine, cache.paged,
                              seq_lens is not None, return_lse, check, counters)

    def _capture_args(self, runtime: dict[str, Any], q: Any) -> list[Any]:
        """Launch arguments of the captured tensors the logit or mask reads (einfuse.ir.captures)."""
        from einfuse.codegen import capture_args

        caps = capture_args.plan_captures(self.plan.logit, self.plan.mask)
        if not caps:
            return []
        declared = self.captures or (self.cascade.captures if self.cascade is not None else {})
        tensors, _ = capture_args.resolve(self.plan.name, caps, declared, runtime, q)
        return capture_args.launch_args(caps, tensors)


class PreparedDecode:
    """A prepared decode call: allocate the split workspace and the output (and log-sum-exp), launch
    the kernels (by address once they have launched through Triton). The page table and lengths,
    when the signature has them, are this call's tensors; otherwise the workspace stands in for
    them (the kernels do not read it there). With a fused combine (``counters`` given) there is one
    launch, whose programs take tickets from the counters of the current stream."""

    __slots__ = ("n", "dv", "shape", "dtype", "device", "partial", "combine", "paged", "has_lens", "lse",
                 "check", "counters", "_empty", "_f32")

    def __init__(self, n: int, dv: int, shape: tuple[int, ...], dtype: Any, device: Any, partial: Any,
                 combine: Any, paged: bool = False, has_lens: bool = False, lse: bool = False,
                 check: Any = None, counters: _Counters | None = None) -> None:
        import torch

        self.n, self.dv, self.shape, self.dtype, self.device = n, dv, shape, dtype, device
        self.partial, self.combine, self.counters = partial, combine, counters
        self.paged, self.has_lens, self.lse, self.check = paged, has_lens, lse, check
        self._empty, self._f32 = torch.empty, torch.float32

    def __call__(self, q: Any, k: Any, v: Any, page_table: Any = None, seq_lens: Any = None) -> Any:
        n = self.n
        if self.check is not None:
            self.check(page_table, seq_lens)
        ws = self._empty((n * (self.dv + 2),), device=self.device, dtype=self._f32)
        o = self._empty(self.shape, device=self.device, dtype=self.dtype)
        lse = self._empty(self.shape[:3], device=self.device, dtype=self._f32) if self.lse else ws
        pt = page_table if self.paged else ws
        lens = seq_lens if self.has_lens else ws
        cnt = ws if self.counters is None else self.counters.get()
        partial, combine = self.partial, self.combine
        if partial.compiled is not None:
            w, ln = ws.data_ptr(), lens.data_ptr()
            partial.direct(q.data_ptr(), k.data_ptr(), v.data_ptr(), w, n, pt.data_ptr(), ln, cnt.data_ptr(),
                           o.data_ptr(), lse.data_ptr())
        else:
            partial.first(q, k, v, ws, n, pt, lens, cnt, o, lse)
            w = ln = None
        if combine is None:
            pass
        elif combine.compiled is not None:
            if w is None:
                w, ln = ws.data_ptr(), lens.data_ptr()
            combine.direct(w, n, o.data_ptr(), lse.data_ptr(), ln)
        else:
            combine.first(ws, n, o, lse, lens)
        return (o, lse) if self.lse else o


class _Counters:
    """The fused combine's ticket counters (int32, one per (batch, KV head, row block)), one array
    per stream: the kernel leaves them zero, so calls in order on one stream share an array, while
    calls on concurrent streams each get their own. An array made while a CUDA graph is being
    captured comes from the graph's memory (zeroed by a node of the graph at each replay); it is
    kept alive here, never reused outside that graph."""

    __slots__ = ("size", "device", "by_stream", "captured", "_stream", "_index")

    def __init__(self, size: int, device: Any) -> None:
        self.size, self.device = size, device
        self.by_stream: dict[int, Any] = {}
        self.captured: list[Any] = []
        if getattr(device, "type", None) == "cuda":
            from torch._C import _cuda_getCurrentRawStream

            self._stream, self._index = _cuda_getCurrentRawStream, device.index if device.index is not None else 0
            if device.index is None:
                import torch

                self._index = torch.cuda.current_device()
        else:
            self._stream, self._index = (lambda i: 0), 0

    def get(self) -> Any:
        stream = self._stream(self._index)
        cnt = self.by_stream.get(stream)
        if cnt is None:
            import torch

            cnt = torch.zeros(self.size, dtype=torch.int32, device=self.device)
            if _capturing(self.device):
                self.captured.append(cnt)
            else:
                self.by_stream[stream] = cnt
        return cnt


def _empty_result(q: Any, dv: int, return_lse: bool) -> Any:
    """The result of a call with no key anywhere: output 0, log-sum-exp -inf."""
    import torch

    B, H, NQ, _ = q.shape
    o = torch.zeros((B, H, NQ, dv), device=q.device, dtype=q.dtype)
    if not return_lse:
        return o
    return o, torch.full((B, H, NQ), float("-inf"), device=q.device, dtype=torch.float32)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


@dataclass(frozen=True)
class _Strided:
    """Stands for the output tensor when binding the combine (only its strides are read)."""

    strides: tuple[int, ...]

    def stride(self) -> tuple[int, ...]:
        return self.strides


_KV_TENSORS = frozenset({"page_table", "seq_lens"})


def call_key(q: Any, k: Any, v: Any, page_table: Any, seq_lens: Any, options: dict[str, Any]) -> tuple | None:
    """The cache key of a decode call: :func:`~einfuse.codegen.triton.launch.signature_key` of ``q,
    k, v``, the page table's and lengths' shapes, strides, dtypes and devices (their contents are
    read on the device every call), and the other keyword options' values (``splits``,
    ``return_lse``, sizes; ``page_table``/``seq_lens`` among them are skipped). None (the call is
    prepared every time) when a data pointer is not 16-byte aligned (Triton specialises on it), or
    an option is a tensor or unhashable."""
    from einfuse.codegen.triton.launch import signature_key

    key = signature_key(q, k, v)
    if key is None:
        return None
    try:
        tables = tuple(None if t is None else (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() & 15)
                       for t in (page_table, seq_lens))
        rest = tuple(item for item in options.items() if item[0] not in _KV_TENSORS)
        if rest:
            if any(hasattr(x, "data_ptr") for _, x in rest):
                return None
            hash(rest)
    except (AttributeError, TypeError):
        return None
    if (tables[0] is not None and tables[0][4]) or (tables[1] is not None and tables[1][4]):
        return None
    return ("kv-cache", key, tables, rest)


def _capturing(device: Any) -> bool:
    """Whether ``device``'s current stream is capturing a CUDA graph (asked on a cache miss only)."""
    if getattr(device, "type", None) != "cuda":
        return False
    import torch

    return torch.cuda.is_current_stream_capturing()


def build_decode(plan: KernelPlan | Cascade, **options: Any) -> DecodeKernel:
    """Generate and load the split-KV decode kernels of a decode plan.

    ``plan``: a :class:`KernelPlan` of family decode (a softmax cascade is lowered first). Options:
    see :class:`DecodeOptions`. Sigmoid and linear attention have their own plans and kernels.
    """
    opts = DecodeOptions.of(dict(options))
    declared = dict(plan.captures) if isinstance(plan, Cascade) else {}
    if isinstance(plan, Cascade):
        plan = kernel_plan(plan, decode=True, splits=opts.splits or DEFAULT_SPLITS)
    if plan.family != "decode":
        raise CodegenError(f"{plan.name}: build_decode takes a plan of the decode family, not {plan.family}")
    dec, split = plan.detail.plan, plan.detail.split
    source = decode_source(dec, split)
    module = load_module(source, f"decode_{dec.name}")
    return DecodeKernel(dec, opts, source, module, plan.cascade, plan.lowering, declared)


__all__ = ["DecodeKernel", "DecodeOptions", "PreparedDecode", "build_decode", "call_key"]
