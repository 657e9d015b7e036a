"""Compile a cascade: lower it to its kernel plan, hand the plan to the Triton back end.

The plan layer (:mod:`einfuse.lowering`) decides what runs: a one-pass plan (softmax, sigmoid,
normalised weighted sums) printed by :mod:`einfuse.codegen.triton.emit`, with calls of at most
:data:`DECODE_MAX_QUERIES` queries going to the split-KV decode plan's kernels
(:mod:`einfuse.codegen.triton.decode`); a linear plan (:mod:`einfuse.codegen.triton.linear`); or
stages (:mod:`einfuse.codegen.stages_run`). This module only dispatches on the plan's family.

Every builder returns ``fn(q, k, v, **runtime) -> out`` on ``(B, H, N, D)`` tensors with output
``(B, H, N_q, D_v)``. The returned :class:`CompiledAttention` goes through the ``einfuse::attention``
torch custom op (so it composes with ``torch.compile``) when traced.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from einfuse.codegen.triton.launch import (
    CallCache,
    cached_call,
    plain_call,
    refuse_during_capture,
    signature_key,
)
from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.ir.positions import Q_OFFSET

if TYPE_CHECKING:
    from einfuse.codegen.stages_run import MultiStageAttention
    from einfuse.lowering.plan import KernelPlan

DECODE_MAX_QUERIES = 16
_UNCACHED = frozenset({"return_lse", "page_table", "seq_lens"})
"""Runtime keywords whose calls skip the plain prepared-call cache (the paged/ragged ones have their own)."""
_KV_CACHE = frozenset({"page_table", "seq_lens"})
TARGETS = ("triton", "cutlass", "auto")


@dataclass
class CompiledAttention:
    """A compiled attention variant: call it as ``fn(q, k, v)``; ``source`` is the generated code."""

    name: str
    family: str
    cascade: Cascade
    lowered: Cascade
    kernel: Callable[..., Any]
    decode: bool = True
    decode_options: dict[str, Any] = field(default_factory=dict)
    use_torch_op: bool = True
    key: str = ""
    _decode_kernel: Any = None
    decode_fallback: str | None = None
    plan: KernelPlan | None = None
    """The kernel plan the main kernel prints (``einfuse.lowering.format_plan`` shows it)."""
    tokens: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    """Token count of the declared grid (neighbourhood variants): queries and keys must number it."""
    _backward_kernel: Any = None
    backward_options: dict[str, Any] = field(default_factory=dict)
    """Tile options of the backward kernels (``compile(..., backward_options={...})``)."""
    backend_note: str | None = None
    """Why ``target="auto"`` compiled for one back end only (the CUTLASS back end refused the plan)."""
    _varlen_kernel: Any = None
    _calls: CallCache = field(default_factory=CallCache, repr=False)

    @property
    def has_backward(self) -> bool:
        """Whether gradients can flow through this variant (one-pass softmax and sigmoid plans, and
        linear plans, on Triton)."""
        from einfuse.codegen.triton.runtime import AttentionKernel
        from einfuse.lowering.backward import BACKWARD_FAMILIES

        kernel = getattr(self.kernel, "triton", self.kernel)  # target="auto" trains on its Triton kernel
        if self.plan is not None and self.plan.family == "linear":
            from einfuse.codegen.triton.linear import LinearKernel

            return isinstance(kernel, LinearKernel)
        return (self.plan is not None and self.plan.family in BACKWARD_FAMILIES
                and isinstance(kernel, AttentionKernel))

    def __call__(self, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
        if not _compiling() and plain_call(q, k, v):
            if self._cacheable(runtime):
                # eager calls without gradients: the prepared launch of this signature (checks, plan,
                # tables and the bound kernel were worked out on its first call)
                key = signature_key(q, k, v, runtime)
                prepared = self._calls.get(key)
                if prepared is None:
                    if key is not None:
                        refuse_during_capture(self.name, q.device)
                    prepared = self._calls.remember(key, self.prepare(q, k, v, **runtime))
                return prepared(q, k, v)
            if runtime.keys() & _KV_CACHE and not self.cascade.captures:
                page_table, seq_lens = runtime.get("page_table"), runtime.get("seq_lens")
                prepared = self._kv_prepared(q, k, v, page_table, seq_lens, runtime)  # paged/ragged: cached too
                if prepared is not None:
                    return prepared(q, k, v, page_table, seq_lens)
        from einfuse.codegen import autograd
        from einfuse.codegen.call_extras import broadcast_kv

        k, v = broadcast_kv(self.name, q, k, v)  # K/V of batch 1 serve every batch (FlexAttention)
        from einfuse.codegen.capture_args import grad_captures

        grad_names, grad_caps = grad_captures(self, runtime)
        grad = autograd.needs_grad(q, k, v, *grad_caps)
        if grad and runtime.get("return_lse"):
            raise CodegenError(f"{self.name}: return_lse=True is forward only; call it under torch.no_grad()")
        check_tensors(self.name, {"q": q, "k": k, "v": v}, grad_ok=grad and self.has_backward,
                      family=self.family)
        traced = self.use_torch_op and _traced(q)
        if grad and traced and grad_names:
            # the custom ops carry q, k, v only: a learned table's gradient would be lost in the graph,
            # so this call runs eagerly (Dynamo breaks the graph here; fullgraph=True reports it)
            return _eager_training_call(self, q, k, v, runtime)
        if grad and not traced:
            return autograd.attention_with_grad(self, q, k, v, **runtime)  # forward + saved LSE, backward
        if not traced:
            # eager calls launch directly: the custom op is for graphs (torch.compile, export), and
            # its dispatch costs ~0.1 ms of CPU per call, more than short kernels take on the GPU
            return self.run(q, k, v, **runtime)
        from einfuse.codegen import torch_op

        if grad:  # the trainable op: its registered autograd formula launches the backward kernels
            return torch_op.call_train(self.key, q, k, v, **runtime)
        return torch_op.call(self.key, q, k, v, **runtime)

    def _cacheable(self, runtime: dict[str, Any]) -> bool:
        """Whether a call may reuse a prepared launch: no captured tensors (their addresses and the
        tables they imply change per call), no paged/ragged cache, no log-sum-exp output."""
        if self.cascade.captures:
            return False
        return not runtime or (not (runtime.keys() & _UNCACHED)
                               and not any(hasattr(x, "data_ptr") for x in runtime.values()))

    def run(self, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
        """Launch directly (no custom op): decode kernel for short query blocks, else the main one.

        ``q_offset=`` sets the position of query 0 of a variant built with ``align="offset"``
        (the cascade's ``QOFF``; einfuse.ir.positions), whichever kernel runs. ``page_table=`` and
        ``seq_lens=`` (a paged or ragged KV cache, einfuse.codegen.triton.kv_cache) go to the decode kernel."""
        if self._cacheable(runtime):
            return cached_call(self._calls, q, k, v, runtime, lambda: self.prepare(q, k, v, **runtime), self.name)
        return self.prepare(q, k, v, **runtime)(q, k, v)

    def prepare(self, q: Any, k: Any, v: Any, **runtime: Any) -> Callable[[Any, Any, Any], Any]:
        """Check a call and choose its kernel; returns ``launch(q, k, v) -> out`` for tensors of the
        same signature (shapes, strides, dtypes, device) and these runtime options. K/V of batch 1
        are broadcast here (stride 0): the launch is given the caller's k, v, at the same address."""
        runtime = dict(runtime)
        if "page_table" in runtime or "seq_lens" in runtime:
            return lambda q, k, v: self._run_kv_cache(q, k, v, **runtime)
        from einfuse.codegen.call_extras import broadcast_kv, forward_lse

        name = self.name
        k, v = broadcast_kv(name, q, k, v)  # K/V of batch 1 serve every batch (FlexAttention)
        if self.family != "linear" and not getattr(self.kernel, "checks_inputs", False):
            from einfuse.codegen.triton.runtime import check_inputs

            check_inputs(self.name, q, k, v)  # the same clear errors whichever kernel runs
        return_lse = bool(runtime.pop("return_lse", False))
        q_offset = runtime.pop("q_offset", None)
        if q_offset is not None and Q_OFFSET not in self.cascade.params:
            raise CodegenError(f"{self.name}: q_offset is given but the variant does not use a query offset; "
                               "build it with align='offset' (einfuse.ir.positions)")
        else:
            check_tensors(self.name, {"q": q, "k": k, "v": v})
        if self.tokens is not None and (q.shape[2] != self.tokens or k.shape[2] != self.tokens):
            from einfuse.ir.grid import check_grid

            check_grid(self.cascade, q.shape[2], k.shape[2], self.sizes, "q and k", CodegenError)
        if self.family == "softmax" and self.decode and q.shape[2] <= DECODE_MAX_QUERIES:
            dec = self.decode_kernel()
            if dec is not None:  # the decode kernel caches its own launch plan per shape
                extra = {} if q_offset is None else {Q_OFFSET: q_offset}
                if return_lse:
                    return lambda q, k, v: forward_lse(self, q, *broadcast_kv(name, q, k, v), dec, **runtime, **extra)
                return dec.prepare(q, k, v, **runtime, **extra)  # bakes the broadcast k, v strides in
        if q_offset is not None:
            runtime["q_offset"] = q_offset
        if return_lse:
            return lambda q, k, v: forward_lse(self, q, *broadcast_kv(name, q, k, v), None, **runtime)
        kernel = self.kernel
        # the kernel's own prepare only (target="auto" forwards attributes to its Triton kernel, but
        # chooses the back end per call); it bakes the broadcast k, v strides in
        prepare = getattr(type(kernel), "prepare", None)
        if prepare is not None:
            return prepare(kernel, q, k, v, **runtime)
        return lambda q, k, v: kernel(q, *broadcast_kv(name, q, k, v), **runtime)

    def varlen(self, q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: int,
               max_seqlen_k: int, **runtime: Any) -> Any:
        """A packed variable-length batch, FlashAttention's ``flash_attn_varlen_func`` convention:
        ``(total, H, D)`` tensors, int32 offsets; each sequence attends within itself
        (:mod:`einfuse.codegen.triton.varlen`). Returns ``(total_q, H, D_v)``."""
        from einfuse.codegen.triton.varlen import varlen_call

        return varlen_call(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **runtime)

    def _kv_prepared(self, q: Any, k: Any, v: Any, page_table: Any, seq_lens: Any, runtime: dict[str, Any]) -> Any:
        """The prepared decode call of this paged/ragged signature (decode.call_key), made on a miss
        after the checks the full path runs; None for calls the full path must take (unaligned or
        other tensors, batch-1 K/V to broadcast)."""
        from einfuse.codegen.triton.decode import call_key

        key = call_key(q, k, v, page_table, seq_lens, runtime)
        if key is None:
            return None
        prepared = self._calls.get(key)
        if prepared is None:
            if q.dim() == 4 and k.dim() == 4 and q.shape[0] > 1 and k.shape[0] == 1 and "page_table" not in runtime:
                return None  # batch-1 K/V broadcast over the batch: the full path expands them
            refuse_during_capture(self.name, q.device)
            check_tensors(self.name, {"q": q, "k": k, "v": v})
            runtime = dict(runtime)
            q_offset = runtime.pop("q_offset", None)
            dec = self._kv_decoder(q)
            prepared = self._calls.remember(key, dec.prepare(q, k, v, **runtime,
                                                             **({} if q_offset is None else {Q_OFFSET: q_offset})))
        return prepared

    def _run_kv_cache(self, q: Any, k: Any, v: Any, **runtime: Any) -> Any:
        """A decode step over a paged cache or per-sequence lengths: only the split-KV decode kernel
        reads those, so anything it cannot run is an error rather than a silent fallback."""
        dec = self._kv_decoder(q)
        q_offset = runtime.pop("q_offset", None)
        return dec(q, k, v, **runtime, **({} if q_offset is None else {Q_OFFSET: q_offset}))

    def _kv_decoder(self, q: Any) -> Any:
        """The split-KV decode kernel for a paged/ragged call, or a CodegenError saying why not."""
        why = None
        if self.family != "softmax" or not self.decode:
            why = f"is not used for {self.family} variants" if self.family != "softmax" else "is off (decode=False)"
        elif q.dim() == 4 and q.shape[2] > DECODE_MAX_QUERIES:
            why = f"takes at most {DECODE_MAX_QUERIES} queries, got {q.shape[2]}"
        dec = self.decode_kernel() if why is None else None
        if dec is None:
            raise CodegenError(f"{self.name}: page_table=/seq_lens= are read by the split-KV decode kernel, "
                               f"which {why or 'cannot run this variant: ' + str(self.decode_fallback)}")
        return dec

    def decode_kernel(self) -> Any:
        if self._decode_kernel is None and self.decode_fallback is None:
            build = _builder("decode", "build_decode")
            try:
                self._decode_kernel = build(self.cascade, **self.decode_options)  # lowered to its decode plan
            except CodegenError as exc:  # e.g. a mask the decode generator does not take: use ours
                self.decode_fallback = str(exc)
        return self._decode_kernel

    @property
    def source(self) -> str:
        """The generated module (for the softmax/sigmoid kernel: the tile order the spec implies; for
        the CUTLASS back end the .cu source with every (dtype, head dim) instance)."""
        src = getattr(self.kernel, "source", None)
        from einfuse.codegen.cutlass.runtime import CutlassAttention

        if isinstance(self.kernel, CutlassAttention):
            return self.kernel.source()
        if callable(src):
            from einfuse.lowering.tile_order import FLAT, TileOrder

            grid = getattr(self.kernel, "grid_hint", None)
            return src(TileOrder(tuple(grid)) if grid else FLAT)
        if isinstance(src, str):
            return src
        raise CodegenError(f"{self.name}: this kernel does not expose its source")


_FLOAT_DTYPES = ("torch.bfloat16", "torch.float16", "torch.float32")


def check_sizes(c: Cascade, sizes: Any) -> dict[str, int]:
    """``sizes=`` of :func:`compile`: a mapping of the cascade's params or rank sizes to integers >= 1."""
    import numbers

    if sizes is None:
        return {}
    if not isinstance(sizes, Mapping):
        raise CodegenError(f"{c.name}: sizes must be a dict of NAME: integer (e.g. {{'X1': 64}}), got "
                           f"{type(sizes).__name__}")
    known = set(c.params) | set(c.ranks)
    out = {}
    for k, v in sizes.items():
        if k not in known:
            raise CodegenError(f"{c.name}: sizes names {k!r}, which is not a param or rank of the cascade "
                               f"(params: {', '.join(c.params) or 'none'}; ranks: {', '.join(c.ranks)})")
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer() or v < 1:
            raise CodegenError(f"{c.name}: sizes[{k!r}] = {v!r} must be an integer >= 1")
        out[k] = int(v)
    return out


def check_tensors(name: str, tensors: Mapping[str, Any], grad_ok: bool = False, family: str = "") -> None:
    """What every compiled kernel needs of its inputs, checked before anything is dispatched:
    (B, H, N, D) torch tensors of a float dtype with data (not on the meta device), and no autograd
    unless ``grad_ok`` (the variant has a backward). float64 is accepted on the CPU (the Triton
    interpreter: gradcheck). Raises :class:`CodegenError` saying what to pass."""
    import torch

    for nm, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CodegenError(f"{name}: {nm} must be a torch.Tensor of shape (B, H, N, D), got "
                               f"{type(t).__name__} (convert with torch.as_tensor(...))")
        if t.dim() != 4:
            raise CodegenError(f"{name}: {nm} must have shape (B, H, N, D); got {tuple(t.shape)}")
        if str(t.dtype) not in _FLOAT_DTYPES and not (str(t.dtype) == "torch.float64" and t.device.type == "cpu"):
            raise CodegenError(f"{name}: {nm} has dtype {t.dtype}; use bfloat16, float16 or float32")
        if t.device.type == "meta" and not _traced(t):
            raise CodegenError(f"{name}: {nm} is a meta tensor (no data); the kernels need real tensors")
        if t.requires_grad and torch.is_grad_enabled() and not grad_ok:
            what = f"{family} attention" if family else "this variant"
            raise CodegenError(f"{name}: {nm} requires grad, but there is no backward for {what} yet (one-pass softmax, "
                               "sigmoid and linear plans on the Triton target do); call under torch.no_grad() or pass detached "
                               "tensors (x.detach())")


def _eager_training_call(compiled: Any, q: Any, k: Any, v: Any, runtime: dict[str, Any]) -> Any:
    """The eager autograd path, kept out of traced graphs (captured tensors that require grad)."""
    import torch

    from einfuse.codegen import autograd

    if type(q) is not torch.Tensor and not torch.compiler.is_compiling():  # export / make_fx: no way out
        raise CodegenError(f"{compiled.name}: captured tensors that require grad cannot be traced into a graph "
                           "(export, make_fx); train eagerly or under torch.compile, where this call runs "
                           "outside the graph")
    return autograd.attention_with_grad_outside_graphs(compiled, q, k, v, **runtime)


def _compiling() -> bool:
    """``torch.compiler.is_compiling()``: True while Dynamo traces (it folds the call to a constant)."""
    import torch

    return torch.compiler.is_compiling()


def _traced(q: Any) -> bool:
    """Whether this call is being traced into a graph (Dynamo, or a fake/functional tensor of
    export or make_fx) rather than run eagerly on real tensors."""
    import torch

    return torch.compiler.is_compiling() or type(q) is not torch.Tensor


def _builder(module: str, fn: str) -> Callable[..., Any]:
    try:
        mod = importlib.import_module(f"einfuse.codegen.triton.{module}")
    except ImportError as exc:
        raise CodegenError(f"the Triton {module} generator (einfuse.codegen.triton.{module}) is not "
                           f"available: {exc}") from None
    return getattr(mod, fn)


def compile(c: Cascade, *, target: str = "triton", sizes: Mapping[str, int] | None = None,
            decode: bool = True, decode_options: Mapping[str, Any] | None = None,
            torch_op: bool = True, **options: Any) -> CompiledAttention | MultiStageAttention:
    """Compile a cascade to a GPU kernel callable on torch tensors (``einfuse.compile`` resolves
    spec strings first, then calls this).

    The cascade is lowered to its kernel plan (:func:`einfuse.lowering.kernel_plan`) and the
    Triton back end prints the plan. ``sizes`` binds cascade params (grid sizes, windows) at compile
    time. ``options`` go to the kernel builder: for softmax/sigmoid ``block_m``, ``block_n``,
    ``num_warps``, ``num_stages`` (a fixed configuration), ``autotune=True`` (time candidates on the
    GPU once per shape class; cached on disk), ``fast_math``, ``precision`` ('ieee' | 'tf32' for
    float32 inputs), ``tile_order`` ('auto' | 'flat' | 'box' | 'span'); for linear attention the options of
    ``build_linear``. ``decode=False`` keeps short query blocks on the main kernel;
    ``decode_options`` go to ``build_decode``. ``torch_op=False`` skips the custom op.
    A cascade with several score products (several attention stages) is split into stages
    (:mod:`einfuse.lowering.stages`): the result is called ``fn(q, k, v, **extra_inputs)``.
    """
    if target not in TARGETS:
        raise CodegenError(f"target {target!r} is not supported; choose one of {', '.join(TARGETS)}")
    backward_options = check_backward_options(c.name if isinstance(c, Cascade) else "compile",
                                              options.pop("backward_options", None), target)
    if not isinstance(c, Cascade):
        raise CodegenError(f"compile takes a Cascade, got {type(c).__name__}; einfuse.compile also takes "
                           "spec strings")
    from einfuse.lowering.stages import is_multistage
    sizes = check_sizes(c, sizes)
    if decode_options:
        from einfuse.codegen.triton.decode import DecodeOptions

        DecodeOptions.of(dict(decode_options))  # bad decode options are errors now, not a silent fallback

    if target == "cutlass":
        return _compile_cutlass(c, sizes=sizes, torch_op=torch_op, **options)
    if target == "auto" and not is_multistage(c):
        return _compile_auto(c, sizes=sizes, decode=decode, decode_options=decode_options, torch_op=torch_op,
                             backward_options=backward_options, **options)
    if is_multistage(c):
        # several score products (Agent, BASED): one kernel per stage, launched directly. Decided
        # before the one-stage analysers run: they trace one softmax chain and would not notice the
        # other stage (BASED's window branch alone passes them), so their acceptance is no proof.
        from einfuse.codegen.stages_run import compile_stages

        return compile_stages(c, sizes=sizes, decode=decode, decode_options=decode_options, **options)
    from einfuse.lowering.lower import family_of, kernel_plan

    family = family_of(c)
    _check_family_backward_options(c.name, family, backward_options)
    if family == "linear":
        build_linear = _builder("linear", "build_linear")
        opts = _builder("linear", "LinearOptions").of(dict(options))
        plan = kernel_plan(c, state_block=opts.state_chunk or 2 * opts.chunk)
        kernel = build_linear(plan, origin=c, **options)
    else:
        from einfuse.codegen.triton.runtime import AttentionKernel
        from einfuse.lowering.tile_order import grid_of

        plan = kernel_plan(c)
        bound = {k: int(v) for k, v in (sizes or {}).items()}
        grid = grid_of(c.attrs, {**c.params, **bound})
        kernel = AttentionKernel.build(plan, sizes=bound, grid_hint=grid, **options)
    from einfuse.ir.grid import grid_tokens

    out = CompiledAttention(c.name, family, c, plan.cascade, kernel, decode=decode and family == "softmax",
                            decode_options=dict(decode_options or {}), use_torch_op=torch_op, plan=plan,
                            tokens=grid_tokens(c, sizes), sizes=dict(sizes or {}),
                            backward_options=backward_options)
    if torch_op:
        from einfuse.codegen import torch_op as op

        out.key = f"{c.name}-{id(out):x}"
        op.register(out.key, out.run, out)
    return out


def check_backward_options(name: str, given: Mapping[str, Any] | None, target: str) -> dict[str, Any]:
    """``backward_options=``: tile options of the backward kernels (the fields of
    :class:`einfuse.codegen.triton.backward.BackwardKernel`), checked when compiling."""
    if not given:
        return {}
    if target == "cutlass":
        raise CodegenError(f"{name}: backward_options is for the Triton backward; the CUTLASS target has no "
                           "backward yet (use target='triton' or 'auto' to train)")
    if not isinstance(given, Mapping):
        raise CodegenError(f"{name}: backward_options must be a mapping, got {type(given).__name__}")
    from einfuse.codegen.triton.backward import BACKWARD_OPTIONS
    from einfuse.codegen.triton.linear_backward import LINEAR_BACKWARD_OPTIONS

    unknown = sorted(set(given) - set(BACKWARD_OPTIONS) - set(LINEAR_BACKWARD_OPTIONS))
    if unknown:
        raise CodegenError(f"{name}: unknown backward option(s) {', '.join(unknown)}; known: "
                           f"{', '.join(BACKWARD_OPTIONS)} (linear attention: {', '.join(LINEAR_BACKWARD_OPTIONS)})")
    return dict(given)


def _check_family_backward_options(name: str, family: str, given: dict[str, Any]) -> None:
    """``backward_options`` names the backward kernels of this family take (linear attention has its own)."""
    from einfuse.codegen.triton.backward import BACKWARD_OPTIONS
    from einfuse.codegen.triton.linear_backward import LINEAR_BACKWARD_OPTIONS

    known = LINEAR_BACKWARD_OPTIONS if family == "linear" else BACKWARD_OPTIONS
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise CodegenError(f"{name}: backward option(s) {', '.join(unknown)} do not apply to {family} attention; "
                           f"its backward takes {', '.join(known)}")


def _compile_auto(c: Cascade, *, sizes: Mapping[str, int] | None, torch_op: bool, **kwargs: Any) -> Any:
    """``target="auto"``: the Triton kernel and, where the CUTLASS back end prints the plan, its kernel
    too; each shape class runs on the faster (:mod:`einfuse.codegen.backend_choice`). Plans the CUTLASS
    back end refuses (linear attention, ...) compile for Triton alone."""
    out = compile(c, target="triton", sizes=sizes, torch_op=torch_op, **kwargs)
    if not isinstance(out, CompiledAttention) or out.family == "linear" or out.plan is None:
        return out
    from einfuse.codegen.backend_choice import FastestBackend
    from einfuse.codegen.cutlass.runtime import CutlassAttention

    try:
        cutlass = CutlassAttention.build(out.plan, sizes=sizes)
    except CodegenError as exc:
        out.backend_note = f"Triton only: {exc}"
        return out
    out.kernel = FastestBackend(c.name, out.kernel, cutlass)
    return out


def _compile_cutlass(c: Cascade, *, sizes: Mapping[str, int] | None, torch_op: bool,
                     **options: Any) -> CompiledAttention:
    """The CUTLASS back end prints one-pass plans only; other families get a CodegenError naming them."""
    from einfuse.lowering.lower import kernel_plan
    from einfuse.lowering.stages import is_multistage

    if is_multistage(c):
        raise CodegenError(f"{c.name}: the CUTLASS back end has no kernel for staged plans (several score "
                           "products); use target='triton'")
    from einfuse.codegen.cutlass.runtime import CutlassAttention

    plan = kernel_plan(c)
    kernel = CutlassAttention.build(plan, sizes=sizes, **options)
    out = CompiledAttention(c.name, plan.family, c, plan.cascade, kernel, decode=False,
                            use_torch_op=torch_op, plan=plan)
    if torch_op:
        from einfuse.codegen import torch_op as op

        out.key = f"{c.name}-cutlass-{id(out):x}"
        op.register(out.key, out.run)
    return out
