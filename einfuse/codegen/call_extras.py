"""Two FlexAttention call conventions on top of the kernels: K/V shared by the batch, and the LSE.

* **K/V batch broadcast**: ``k`` and ``v`` of batch 1 with queries of batch ``B`` (one KV cache or
  one set of learned keys for every sequence), as FlexAttention accepts. They are expanded to ``B``
  with stride 0 on the batch dimension, so every kernel reads the same memory and autograd sums
  the gradients over the batch (the backward of ``expand``).
* **return_lse**: ``out, lse = fn(q, k, v, return_lse=True)``; ``lse`` is ``(B, H, N_q)`` float32,
  the natural-log log-sum-exp of each query row's (modified, masked) scores, ``-inf`` for a row with
  no kept key: FlexAttention's ``return_lse`` convention. Forward only.
"""

from __future__ import annotations

import math
from typing import Any

from einfuse.errors import CodegenError


def broadcast_kv(name: str, q: Any, k: Any, v: Any) -> tuple[Any, Any]:
    """``k, v`` expanded over the query batch when they have batch 1 (stride 0, no copy)."""
    import torch

    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return k, v
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return k, v  # the input checks name the problem
    B = q.shape[0]
    if B > 1 and k.shape[0] == 1 and v.shape[0] == 1:
        return k.expand(B, *k.shape[1:]), v.expand(B, *v.shape[1:])
    if B > 1 and (k.shape[0] == 1) != (v.shape[0] == 1):
        raise CodegenError(f"{name}: k has batch {k.shape[0]} and v batch {v.shape[0]}; broadcast both or neither")
    return k, v


def forward_lse(compiled: Any, q: Any, k: Any, v: Any, decode: Any, **runtime: Any) -> tuple[Any, Any]:
    """``(out, lse)`` of a softmax variant (see the module docstring); ``decode`` is the split-KV
    kernel when the call goes to it, else None."""
    import torch

    if compiled.family != "softmax":
        raise CodegenError(f"{compiled.name}: return_lse exists for softmax attention only, not {compiled.family}")
    if decode is not None:
        out, lse = decode(q, k, v, return_lse=True, **runtime)
        return out, lse
    if not hasattr(compiled.kernel, "forward_with_lse"):
        raise CodegenError(f"{compiled.name}: this kernel ({type(compiled.kernel).__name__}) cannot return the LSE")
    out, lse2 = compiled.kernel.forward_with_lse(q, k, v, **runtime)  # log2 units, +inf for empty rows
    lse = torch.where(torch.isinf(lse2), torch.full_like(lse2, -math.inf), lse2 * math.log(2.0))
    return out, lse.float()


__all__ = ["broadcast_kv", "forward_lse"]
