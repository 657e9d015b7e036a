"""Captured tensors in the DSL: ``bias[h, q - kv + 52]`` inside a score_mod or mask_mod.

Two ways to get one, as FlexAttention users would expect:

* **closures**: a mod that closes over a torch tensor (a closure variable or a module global,
  ``lambda s, b, h, q, kv: s + rel_bias[q - kv + 52]``) is traced with the tensor replaced by a
  symbolic :class:`CapturedTensor` named after the variable; the tensor is bound at compile time
  (held by reference, so in-place updates such as an optimizer step are seen) and a tensor passed
  at call time under the same name (``fn(q, k, v, rel_bias=t)``) replaces it for that call;
* **placeholders**: ``rel_bias = ef.tensor("rel_bias", ndim=1)`` declares one without data; it must
  be passed at call time. Helper functions called by a mod see only placeholders (their globals
  are not rewritten).

Indexing takes integer index expressions of ``b``, ``h``, ``q_idx``, ``kv_idx`` (and of other
reads of ``int`` captures: ``offsets[b] + q``); the result is an index (``int`` captures, usable in
masks and in further indices) or a real value (``float`` captures, for scores). Out-of-range
indices read the nearest element (see :mod:`einfuse.ir.captures`).
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import sympy

from einfuse.errors import SpecError
from einfuse.frontends import symbolic
from einfuse.ir.captures import KINDS, Capture, check_name

_TRACE: contextvars.ContextVar[dict[str, Capture] | None] = contextvars.ContextVar("ef_captures", default=None)


class CapturedTensor:
    """A symbolic stand-in for a tensor a mod indexes; ``t[i, j]`` is a read (see module doc)."""

    __slots__ = ("capture",)

    def __init__(self, capture: Capture) -> None:
        self.capture = capture

    @property
    def name(self) -> str:
        return self.capture.name

    @property
    def ndim(self) -> int:
        return self.capture.ndim

    def __getitem__(self, key: object) -> symbolic.Index:
        items = key if isinstance(key, tuple) else (key,)
        cap = self.capture
        if len(items) != cap.ndim:
            raise SpecError(f"captured tensor {cap.name} has {cap.ndim} dimension(s); it is indexed with "
                            f"{len(items)} ({cap.name}[{', '.join(map(str, items))}])")
        idx = []
        for k, it in enumerate(items):
            if isinstance(it, (slice, type(Ellipsis))) or it is None:
                raise SpecError(f"captured tensor {cap.name}: dimension {k} is indexed with {it!r}; index every "
                                "dimension with an integer expression of b, h, q_idx, kv_idx")
            if not symbolic.is_index_like(it):
                raise SpecError(f"captured tensor {cap.name}: index {k} ({it!r}) is not an index expression "
                                "(scores cannot index a tensor)")
            e = sympy.sympify(symbolic.unwrap(it))
            if not e.is_integer:
                raise SpecError(f"captured tensor {cap.name}: index {k} = {e} is not an integer; use // "
                                "for division (q // 2), not /")
            idx.append(e)
        _record(cap)
        return symbolic.Index(cap.read(*idx))

    def __repr__(self) -> str:
        return f"ef.tensor({self.name!r}, ndim={self.ndim}, kind={self.capture.kind!r})"

    def __bool__(self) -> bool:
        raise SpecError(f"captured tensor {self.name} has no truth value while tracing")


def tensor(name: str, ndim: int | None = None, kind: str | None = None, value: Any = None) -> CapturedTensor:
    """A captured tensor for score_mod/mask_mod: ``ndim`` dimensions, ``kind`` ``"float"`` (bias
    tables, slopes) or ``"int"`` (ids, lengths, offsets). With ``value`` (a torch tensor) it is bound
    at compile time and ``ndim``/``kind`` default to the tensor's; without, it must be passed at call
    time as a keyword argument named ``name``."""
    if value is not None:
        ndim = _ndim(value) if ndim is None else ndim
        kind = kind_of_dtype(value) if kind is None else kind
        if ndim != _ndim(value):
            raise SpecError(f"ef.tensor({name!r}): ndim={ndim} but the value has {_ndim(value)} dimensions")
    if ndim is None:
        raise SpecError(f"ef.tensor({name!r}) needs ndim= (its number of dimensions) or a value=")
    try:
        return CapturedTensor(Capture(name, ndim, kind or "float", value))
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def _ndim(t: Any) -> int:
    return int(getattr(t, "ndim", 0))


def kind_of_dtype(t: Any) -> str:
    """``float`` for floating tensors, ``int`` for integer and boolean ones."""
    dt = getattr(t, "dtype", None)
    if dt is not None and getattr(dt, "is_floating_point", False):
        return "float"
    if dt is not None and "complex" in str(dt):
        raise SpecError(f"captured tensors hold real numbers; got dtype {dt}")
    return "int" if dt is not None else "float"


def _record(cap: Capture) -> None:
    seen = _TRACE.get()
    if seen is None:
        return
    old = seen.get(cap.name)
    if old is not None and (old.ndim, old.kind) != (cap.ndim, cap.kind):
        raise SpecError(f"two captured tensors are named {cap.name} ({old.ndim}-d {old.kind}, {cap.ndim}-d "
                        f"{cap.kind}); rename one")
    if old is not None and old.value is not None and cap.value is not None and old.value is not cap.value:
        raise SpecError(f"two different tensors are captured as {cap.name}; rename one of the variables")
    if old is None or (old.value is None and cap.value is not None):
        seen[cap.name] = cap


@contextlib.contextmanager
def tracing() -> Iterator[dict[str, Capture]]:
    """Collect the captures read while the block traces a variant's mods."""
    seen: dict[str, Capture] = {}
    token = _TRACE.set(seen)
    try:
        yield seen
    finally:
        _TRACE.reset(token)


# ---- closures over torch tensors ------------------------------------------------------------------

def substitute_tensors(fn: Callable[..., object]) -> Callable[..., object]:
    """``fn`` with every torch tensor it reads from a closure cell or a module global replaced by a
    :class:`CapturedTensor` bound to that tensor (the function object itself is left unchanged)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(fn, types.FunctionType):
        return fn
    code = fn.__code__
    cells = list(fn.__closure__ or ())
    changed = False
    for k, (name, cell) in enumerate(zip(code.co_freevars, cells)):
        try:
            val = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned later)
            continue
        if isinstance(val, torch.Tensor):
            cells[k] = types.CellType(_placeholder(name, val))
            changed = True
    glob = fn.__globals__
    hits = {n: glob[n] for n in _global_names(code) if isinstance(glob.get(n), torch.Tensor)}
    if hits:
        glob = dict(glob)
        glob.update({n: _placeholder(n, t) for n, t in hits.items()})
        changed = True
    if not changed:
        return fn
    out = types.FunctionType(code, glob, fn.__name__, fn.__defaults__, tuple(cells) or None)
    out.__kwdefaults__ = fn.__kwdefaults__
    return out


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _placeholder(name: str, t: Any) -> CapturedTensor:
    if t.dim() == 0:
        raise SpecError(f"captured tensor {name} is 0-dimensional; use a Python number (float({name})) instead")
    try:
        check_name(name)
    except ValueError as exc:
        raise SpecError(f"{exc}; rename the variable the mod reads, or index an ef.tensor(...) placeholder") from None
    return CapturedTensor(Capture(name, t.dim(), kind_of_dtype(t), t))


__all__ = ["KINDS", "CapturedTensor", "kind_of_dtype", "substitute_tensors", "tensor", "tracing"]
