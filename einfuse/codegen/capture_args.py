"""Captured tensors at the kernel boundary: which a plan reads, their kernel parameters, their values.

A plan's score and mask may read captured tensors (:mod:`einfuse.ir.captures`). Every generated
kernel function that evaluates the score or mask then takes, per capture ``NAME``, a pointer
``cap_NAME`` and per dimension ``k`` its extent ``cap_NAME_nk`` (for clamping) and stride
``cap_NAME_sk``; the printers load ``NAME(i, j)`` as
``tl.load(cap_NAME + clamp(i) * cap_NAME_s0 + clamp(j) * cap_NAME_s1)``. This module is the one
place that knows that convention: the emitters add the parameters (:func:`add_params`), the
launchers resolve the tensors of a call (:func:`resolve`: a keyword argument, else the tensor bound
when the variant was declared) and pass :func:`launch_args`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sympy

from einfuse.errors import CodegenError
from einfuse.ir.captures import Capture, expr_read_names, kind_of, reads

GRAD_HINT = ("this kernel has no gradient for it (gradients of captured tensors flow through "
             "one-pass softmax variants called with autograd on); pass it detached (t.detach())")


@dataclass(frozen=True)
class KernelCapture:
    """A captured tensor as one kernel reads it."""

    name: str
    ndim: int
    kind: str
    fn: object  # the sympy read function

    @property
    def base(self) -> str:
        return f"cap_{self.name}"

    def params(self) -> list[str]:
        return ([self.base] + [f"{self.base}_n{k}" for k in range(self.ndim)]
                + [f"{self.base}_s{k}" for k in range(self.ndim)])


_MEMO: dict[tuple[int, ...], tuple[tuple[object, ...], tuple[KernelCapture, ...]]] = {}


def plan_captures(*exprs: object) -> tuple[KernelCapture, ...]:
    """The captures read by these sympy expressions or IR value expressions, sorted by name.

    Memoised by the identity of the expressions (a plan's score and mask live as long as its kernel,
    and launches ask on every call: walking the trees each time would cost every variant, with
    captures or not); the entry holds the expressions, so their ids cannot be reused."""
    key = tuple(id(e) for e in exprs)
    hit = _MEMO.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], exprs)):
        return hit[1]
    out = _find_captures(exprs)
    if len(_MEMO) > 4096:
        _MEMO.clear()
    _MEMO[key] = (exprs, out)
    return out


def _find_captures(exprs: tuple[object, ...]) -> tuple[KernelCapture, ...]:
    found: dict[str, KernelCapture] = {}
    for e in exprs:
        if e is None:
            continue
        rs = reads(e) if isinstance(e, sympy.Basic) else _expr_reads(e)
        for r in rs:
            found.setdefault(r.func.__name__, KernelCapture(r.func.__name__, len(r.args), kind_of(r), r.func))
    return tuple(found[n] for n in sorted(found))


def _expr_reads(e: object) -> set:
    from einfuse.ir.expr import Access, IndexValue, Select, walk

    if not expr_read_names(e):
        return set()
    out: set = set()
    for n in walk(e):
        if isinstance(n, IndexValue):
            out |= reads(n.expr)
        elif isinstance(n, Select) and isinstance(n.cond, sympy.Basic):
            out |= reads(n.cond)
        elif isinstance(n, Access):
            for i in n.indices:
                out |= reads(i)
    return out


def kernel_names(caps: Iterable[KernelCapture]) -> dict[object, str]:
    """Printer names of the read functions (the printers append ``_nk``/``_sk``)."""
    return {c.fn: c.base for c in caps}


def param_text(caps: Iterable[KernelCapture]) -> str:
    """``, cap_bias, cap_bias_n0, cap_bias_s0`` (empty without captures)."""
    return "".join(f", {p}" for c in caps for p in c.params())


_SITES = (re.compile(r"\bH, Q_OFF(?=[,)])"), re.compile(r"\bN_K_TILES, Q_OFF(?=,)"))
BACKWARD_SITES = (re.compile(r"\bN_Q, N_KV, H(?=[,)])"),)
"""The backward module's functions and kernels take ``N_Q, N_KV, H`` (then the captures)."""


def add_params(text: str, caps: tuple[KernelCapture, ...], sites: tuple[re.Pattern, ...] = _SITES,
               expect: int = 1) -> str:
    """Thread the capture parameters through a generated module: after ``Q_OFF`` in every signature
    and call of the score/mask/tile functions (``H, Q_OFF``) and of the kernel (``N_K_TILES,
    Q_OFF``). Raises if a site is missing, so a change of the templates cannot drop them silently."""
    if not caps:
        return text
    extra = param_text(caps)
    for pat in sites:
        text, n = pat.subn(lambda m: m.group(0) + extra, text)
        if n < expect:
            raise CodegenError(f"captured tensors: the generated module has no parameter site {pat.pattern!r}")
    return text


def resolve(kernel_name: str, caps: tuple[KernelCapture, ...], declared: Mapping[str, Capture],
            runtime: dict[str, Any], like: Any) -> tuple[dict[str, Any], tuple]:
    """The tensors of this call, by name, and their :func:`version_key`: popped from ``runtime``
    (keyword arguments) or the tensor bound at declaration; checked for dimensions, device and
    dtype, and converted to what the kernel reads (int32 indices, float values; strides are passed,
    so any layout works)."""
    import torch

    out, given = {}, {}
    names = {c.name for c in caps}
    for name in [n for n in runtime if n in declared and n not in names]:
        runtime.pop(name)  # a capture the kernel does not read (e.g. a mask folded away): ignored
    for c in caps:
        t = runtime.pop(c.name, None)
        if t is None:
            cap = declared.get(c.name)
            t = None if cap is None else cap.value
        if t is None:
            raise CodegenError(f"{kernel_name}: captured tensor {c.name} has no value; pass it as "
                               f"{c.name}=tensor ({c.ndim}-d)")
        if not isinstance(t, torch.Tensor):
            raise CodegenError(f"{kernel_name}: captured tensor {c.name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != c.ndim or t.numel() == 0:
            raise CodegenError(f"{kernel_name}: captured tensor {c.name} must be a non-empty {c.ndim}-d tensor; "
                               f"got shape {tuple(t.shape)}")
        if t.device != like.device:
            raise CodegenError(f"{kernel_name}: captured tensor {c.name} is on {t.device}, q on {like.device}; "
                               "move it to the same device")
        if t.requires_grad and torch.is_grad_enabled():
            raise CodegenError(f"{kernel_name}: captured tensor {c.name} requires grad: {GRAD_HINT}")
        given[c.name] = t
        if c.kind == "float" and not t.is_floating_point():
            t = _converted(t, torch.float32)
        if c.kind == "int" and (t.is_floating_point() or t.dtype == torch.bool):
            raise CodegenError(f"{kernel_name}: captured tensor {c.name} is read as an index (int); got dtype "
                               f"{t.dtype}")
        if c.kind == "int" and t.dtype not in (torch.int32,):
            t = _converted(t, torch.int32)
        out[c.name] = t
    return out, version_key(given)


_CONVERTED: dict[int, tuple[tuple, Any, Any]] = {}


def _converted(t: Any, dtype: Any) -> Any:
    """``t.to(dtype)``, reused while ``t`` is unchanged (int64 ids are read as int32 on every call:
    one conversion per new tensor or in-place update, not one kernel launch per call)."""
    key = version_key({"t": t}) + (str(dtype),)
    hit = _CONVERTED.get(id(t))
    if hit is not None and hit[0] == key and hit[1] is t:
        return hit[2]
    out = t.to(dtype)
    if len(_CONVERTED) > 256:
        _CONVERTED.clear()
    _CONVERTED[id(t)] = (key, t, out)
    return out


def launch_args(caps: tuple[KernelCapture, ...], tensors: Mapping[str, Any]) -> list[Any]:
    """Pointer, extents, strides of each capture, in :func:`param_text` order."""
    args: list[Any] = []
    for c in caps:
        t = tensors[c.name]
        args += [t, *t.shape, *t.stride()]
    return args


def env(caps: tuple[KernelCapture, ...], tensors: Mapping[str, Any]) -> dict[object, Any]:
    """Read function -> tensor, for evaluating masks on tensors (torch_eval, block tables)."""
    return {c.fn: tensors[c.name] for c in caps}


_TOKENS = itertools.count()


def version_key(tensors: Mapping[str, Any]) -> tuple:
    """Identity of the captured values of a call: block tables computed from them are reused while
    it is unchanged. A token set on each tensor object (a new tensor at a freed tensor's address is
    another object, so it never inherits its tables), its in-place version counter (``ids[3] = 7``
    bumps it; writes through ``.data`` do not, so avoid them), storage and layout."""
    out = []
    for n, t in sorted(tensors.items()):
        token = getattr(t, "_einfuse_token", None)
        if token is None:
            token = next(_TOKENS)
            try:
                t._einfuse_token = token
            except (AttributeError, TypeError):  # a tensor subclass without a __dict__: no reuse
                token = ("unique", next(_TOKENS))
        out.append((n, token, t.data_ptr(), t._version, tuple(t.shape), tuple(t.stride()), str(t.dtype)))
    return tuple(out)


def grad_captures(compiled: Any, runtime: Mapping[str, Any]) -> tuple[tuple[str, ...], list[Any]]:
    """Names and tensors of this call's captured tensors that require grad (a keyword argument, else
    the tensor bound at declaration); their gradients come from einfuse.codegen.triton.capture_grad."""
    names, tensors = [], []
    for name, cap in compiled.cascade.captures.items():
        t = runtime.get(name, cap.value)
        if getattr(t, "requires_grad", False):
            names.append(name)
            tensors.append(t)
    return tuple(names), tensors


def mask_tables_key(mask: object, captures: tuple[dict[str, Any], tuple] | None) -> tuple:
    """The part of a block-table cache key that depends on captured values: the version of each
    capture the mask reads (tables of a ``doc_ids`` mask follow the ids), else nothing."""
    names = {c.name for c in plan_captures(mask)}
    if not names:
        return ()
    if captures is None:
        raise CodegenError(f"the mask reads captured tensors ({', '.join(sorted(names))}) but none were given")
    return tuple(item for item in captures[1] if item[0] in names)


KEEP_TABLES = 8
"""Block tables kept per kernel for masks over captured values (one per recent set of ids)."""


def evict_stale(tables: dict) -> None:
    """Drop the oldest capture-dependent block tables beyond :data:`KEEP_TABLES` (keys end with the
    capture part of :func:`mask_tables_key`; dicts keep insertion order)."""
    dependent = [k for k in tables if isinstance(k, tuple) and k and k[-1]]
    for k in dependent[: max(0, len(dependent) - KEEP_TABLES + 1)]:
        del tables[k]


__all__ = ["GRAD_HINT", "KEEP_TABLES", "evict_stale", "grad_captures", "mask_tables_key", "KernelCapture", "add_params", "env", "kernel_names", "launch_args", "param_text",
           "plan_captures", "resolve", "version_key"]
