"""The ``einfuse::attention`` torch custom op, so compiled kernels work under ``torch.compile``.

One op serves every compiled variant: its first argument is the variant's key (a string, a constant
to the compiler), looked up in a registry filled by :func:`register`. The fake (meta) kernel only
states the output shape, ``(B, H, N_q, D_v)`` in q's dtype, which is all Dynamo and Inductor need to
trace around an opaque Triton launch. The op is forward-only (no autograd formula).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, Callable[[Any, Any, Any], Any]] = {}
_DEFINED = False
OP_NAME = "einfuse::attention"


def register(key: str, fn: Callable[[Any, Any, Any], Any]) -> None:
    """Make ``torch.ops.einfuse.attention(key, q, k, v)`` call ``fn(q, k, v)``."""
    _ensure_op()
    _REGISTRY[key] = fn


def call(key: str, q: Any, k: Any, v: Any) -> Any:
    import torch

    return torch.ops.einfuse.attention(key, q, k, v)


def _ensure_op() -> None:
    global _DEFINED
    if _DEFINED:
        return
    import torch

    @torch.library.custom_op(OP_NAME, mutates_args=(), schema="(str key, Tensor q, Tensor k, Tensor v) -> Tensor")
    def attention(key, q, k, v):
        if key not in _REGISTRY:
            from einfuse.errors import CodegenError

            raise CodegenError(f"einfuse::attention: no compiled kernel {key!r} in this process "
                               "(call einfuse.compile first)")
        return _REGISTRY[key](q, k, v)

    @attention.register_fake
    def _(key, q, k, v):
        return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))

    _DEFINED = True
