"""Cheap launches: everything that depends only on a call's signature is worked out once.

A serving loop calls one compiled variant thousands of times with tensors of the same shapes,
strides, dtypes and device. Two things used to run on every call: einfuse's own checks, plan,
configuration and block tables, and Triton's ``kernel[grid](*args)``, which re-binds and
re-specialises ~40 arguments (tens of microseconds of CPU; a short kernel then waits for its host).

* :func:`signature_key` is the dictionary key of a call: everything the checks and the launch read
  from the tensors (shape, strides, dtype, device, whether the data pointers are 16-byte aligned,
  which Triton specialises on) plus the keyword options. A variant caches a *prepared call* per key
  (:class:`CallCache`); a key seen before means the checks already passed for it.
* :class:`BoundLaunch` is one kernel launch with its grid and every non-tensor argument fixed. Its
  first launch goes through ``JITFunction.run`` (compiling if needed), which returns the
  :class:`triton.compiler.CompiledKernel` it chose; later launches call that kernel's launcher
  directly, the same call ``JITFunction.run`` ends in, with the pointers passed as integers.

Triton's per-launch options read from its knobs when it compiles (``TRITON_DEBUG``, instrumentation)
are fixed at the first launch of a signature. ``EINFUSE_FAST_LAUNCH=0`` when a signature is first
called keeps Triton's own launch path for its calls (the prepared call is still cached).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from einfuse.errors import CodegenError

CACHE_LIMIT = 256
"""Prepared calls kept per variant; beyond it the oldest is dropped (shapes that change every call,
such as a growing KV cache, must not grow memory without bound)."""


def _min_fast_triton() -> bool:
    """Whether this Triton's ``JITFunction.run`` hands every bound argument (constexprs included)
    to ``CompiledKernel.run``, the convention :class:`BoundLaunch` follows (Triton >= 3.4)."""
    try:
        import triton

        major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return False
    return (major, minor) >= (3, 4)


_FAST_TRITON = _min_fast_triton()


def fast_launch_enabled() -> bool:
    """Launch compiled kernels directly after their first launch (``EINFUSE_FAST_LAUNCH=0``: never)."""
    return _FAST_TRITON and os.environ.get("EINFUSE_FAST_LAUNCH", "1") != "0"


def signature_key(q: Any, k: Any, v: Any, options: dict[str, Any] | None = None) -> tuple | None:
    """The cache key of a call on ``q, k, v``; None when the call must not be cached (a data
    pointer not 16-byte aligned: Triton specialises on alignment, so such calls always take the
    full path; unhashable options; not tensors at all: the full path names the error)."""
    try:
        if (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15:
            return None
        key = (q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), q.dtype, k.dtype, v.dtype,
               q.device, k.device, v.device)
        if options:
            key = (*key, *options.items())
            hash(key)
        return key
    except (AttributeError, TypeError):
        return None


def tensors_key(tensors: Sequence[Any], options: dict[str, Any] | None = None) -> tuple | None:
    """:func:`signature_key` of any number of tensors (the backward's q, k, v, out, lse, dout)."""
    try:
        ptrs = 0
        for t in tensors:
            ptrs |= t.data_ptr()
        if ptrs & 15:
            return None
        key = tuple((t.shape, t.stride(), t.dtype, t.device) for t in tensors)
        if options:
            key = (*key, *options.items())
            hash(key)
        return key
    except (AttributeError, TypeError):
        return None


class CallCache(dict):
    """Prepared calls by :func:`signature_key`, at most ``limit`` (default :data:`CACHE_LIMIT`;
    oldest dropped first)."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: tuple | None, prepared: Any) -> Any:
        if key is not None:
            if len(self) >= (self.limit or CACHE_LIMIT):
                del self[next(iter(self))]
            self[key] = prepared
        return prepared


def refuse_during_capture(name: str, device: Any) -> None:
    """A signature's first call builds tables and compiles; inside CUDA-graph capture that would
    record (or fail on) host synchronisations. Say so instead of failing deep inside torch."""
    if getattr(device, "type", None) == "cuda":
        import torch

        if torch.cuda.is_current_stream_capturing():
            raise CodegenError(f"{name}: first call with these shapes/strides/dtypes/options happens during "
                               "CUDA-graph capture; call it once before capturing (a warm-up), as for any "
                               "Triton kernel, so its plan, block tables and compiled kernel exist (inputs "
                               "whose data pointers are not 16-byte aligned are never cached: copy them)")


class BoundLaunch:
    """``launch(*tensors)``: one Triton kernel launch with its grid and all other arguments fixed.

    ``fn`` is the generated ``@triton.jit`` function; the call's tensors fill its first
    parameters, ``args`` the following ones, and ``constexprs`` the rest by name. Fixed tensors
    among ``args`` (block tables) are kept alive here and passed to the launcher as addresses.
    """

    __slots__ = ("fn", "grid", "rest", "options", "compiled", "_rest_ptrs", "_device", "_stream", "_direct_ok")

    def __init__(self, fn: Any, grid: Sequence[int], n_tensors: int, args: Sequence[Any],
                 constexprs: dict[str, Any], num_warps: int, num_stages: int) -> None:
        names = list(fn.arg_names)
        given = n_tensors + len(args)
        missing = [n for n in names[given:] if n not in constexprs]
        extra = sorted(set(constexprs) - set(names[given:]))
        if given > len(names) or missing or extra:
            raise CodegenError(f"{getattr(fn, '__name__', fn)}: launch arguments do not match the kernel's "
                               f"{len(names)} parameters ({given} positional, missing {missing}, "
                               f"unexpected {extra})")
        self.fn = fn
        self.grid = (int(grid[0]), int(grid[1]) if len(grid) > 1 else 1, int(grid[2]) if len(grid) > 2 else 1)
        self.rest = (*args, *(constexprs[n] for n in names[given:]))
        self.options = {"num_warps": num_warps, "num_stages": num_stages}
        self.compiled: Any = None
        self._rest_ptrs = tuple(a.data_ptr() if hasattr(a, "data_ptr") else a for a in self.rest)
        self._device = -1
        self._stream: Any = None
        self._direct_ok = fast_launch_enabled()  # decided when the call is prepared

    def __call__(self, *tensors: Any) -> None:
        if self.compiled is None:
            self.first(*tensors)
        else:
            self.direct(*map(_data_ptr, tensors))

    def direct(self, *ptrs: int) -> None:
        """Launch with the call's tensors given as device addresses; only after the first launch
        (``compiled`` is set), whose tensors had the same alignment as these addresses."""
        ck = self.compiled
        stream = self._stream(self._device)
        g = self.grid
        enter, leave = _RUNTIME.launch_enter_hook, _RUNTIME.launch_exit_hook
        # hooks are None (Triton 3.4) or HookChains, empty unless a profiler listens
        if (enter is not None and getattr(enter, "calls", True)) or (leave is not None and getattr(leave, "calls", True)):
            meta = ck.launch_metadata(g, stream, *ptrs, *self._rest_ptrs)
        else:
            enter = leave = meta = None
        ck.run(g[0], g[1], g[2], stream, ck.function, ck.packed_metadata, meta, enter, leave,
               *ptrs, *self._rest_ptrs)

    def first(self, *tensors: Any) -> None:
        """Triton's own path; keeps the compiled kernel for the direct path when that is safe."""
        fn = self.fn
        if not (self._direct_ok and hasattr(fn, "run") and tensors[0].device.type == "cuda"):
            fn[self.grid](*tensors, *self.rest, **self.options)
            return
        global _RUNTIME, _data_ptr
        import torch
        from torch._C import _cuda_getCurrentRawStream
        from triton import knobs
        from triton.compiler import CompiledKernel

        ck = fn.run(*tensors, *self.rest, grid=self.grid, warmup=False, **self.options)
        device = tensors[0].get_device()
        # the compiled kernel was loaded for the current device: launch it directly only there
        if isinstance(ck, CompiledKernel) and device == torch.cuda.current_device():
            _RUNTIME, _data_ptr = knobs.runtime, torch.Tensor.data_ptr
            self._device, self._stream = device, _cuda_getCurrentRawStream
            self.compiled = ck


_RUNTIME: Any = None  # triton.knobs.runtime, bound at the first direct launch
_data_ptr: Any = None  # torch.Tensor.data_ptr, likewise


_TORCH: Any = None


def plain_call(q: Any, k: Any, v: Any) -> bool:
    """Whether a call may use a prepared call: plain torch tensors (not traced, fake or subclassed)
    and nothing for autograd to record (that path checks and saves more)."""
    global _TORCH
    if _TORCH is None:
        import torch

        _TORCH = torch
    T = _TORCH.Tensor
    return (type(q) is T and type(k) is T and type(v) is T
            and not (_TORCH.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)))


def cached_call(cache: CallCache, q: Any, k: Any, v: Any, options: dict[str, Any],
                prepare: Callable[[], Callable[[Any, Any, Any], Any]], name: str = "einfuse") -> Any:
    """Run the prepared call of this signature, preparing (checks, plan, tables) on a miss."""
    if plain_call(q, k, v):
        key = signature_key(q, k, v, options)
        prepared = cache.get(key)
        if prepared is None:
            if key is not None:
                refuse_during_capture(name, q.device)
            prepared = cache.remember(key, prepare())
        return prepared(q, k, v)
    return prepare()(q, k, v)
