"""Padded batches as packed variable-length batches: a framework's dense padding mask, recognised once
and run through ``fn.varlen`` (:mod:`einfuse.codegen.triton.varlen`) instead of a dense-mask path.

A padded batch row holds one run of real tokens ``[s, e)`` among padding (left padding: ``e`` is the
end; right padding: ``s`` is 0). When the framework's mask is exactly causal (optionally a sliding
window) over those keys, with the queries the newest positions (bottom-right, as in prefill and
decoding over a dynamic cache), each row is one sequence of a packed batch: keys ``[s, e)``, queries
the real positions among the call's queries. Causal and window masks read only differences of
positions, so the packed sequence (keys from 0, queries bottom-right) computes the same thing.
Query rows at padding positions are left at 0 (the model discards them).

:func:`padding_runs` decides whether a mask is that pattern (one comparison on the mask's device, a
sync) and remembers the answer per mask tensor, so the layers of one forward pass, which share the
mask, pay for it once. :func:`padded_attention` gathers the real tokens, runs the varlen kernel and
scatters the output back.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

_SEEN: dict[int, dict] = {}
"""Layouts found per live mask tensor (by id; the entry goes when the tensor does). Not a
WeakKeyDictionary: it compares keys with ``==``, which a tensor answers elementwise."""


@dataclass(frozen=True)
class PaddedBatch:
    """Where the real tokens of a padded batch are: flat row indices of the queries and keys of
    ``(B * N, ...)`` tensors, and the packed offsets (CPU int32) of each row's tokens."""

    q_index: Any
    k_index: Any
    cu_q: Any
    cu_k: Any
    max_q: int
    max_k: int


def padding_runs(mask: Any, n_q: int, n_kv: int, window: int | None) -> PaddedBatch | None:
    """The packed layout of ``mask`` (bool ``(B, 1 or H, N_q, N_kv)``, True = attend) when it is the
    causal (``window``: sliding-window causal) pattern with queries at the last ``N_q`` positions over
    one run of real keys per row; None for any other mask (cached per mask tensor)."""
    import torch

    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 4 \
            or tuple(mask.shape[2:]) != (n_q, n_kv):
        return None
    key = (n_q, n_kv, window)
    known = _SEEN.get(id(mask))
    if known is None:
        known = _SEEN[id(mask)] = {}
        weakref.finalize(mask, _SEEN.pop, id(mask), None)
    if key not in known:
        known[key] = _analyse(mask, n_q, n_kv, window)
    return known[key]


def _analyse(mask: Any, n_q: int, n_kv: int, window: int | None) -> PaddedBatch | None:
    import torch

    B = mask.shape[0]
    m = mask[:, 0]
    if mask.shape[1] > 1 and not bool((mask == mask[:, :1]).all()):
        return None  # per-head masks are not padding
    real = m.any(dim=1)                                          # keys some query attends: (B, N_kv)
    qpos = torch.arange(n_q, device=m.device)[:, None] + (n_kv - n_q)
    kpos = torch.arange(n_kv, device=m.device)[None, :]
    pattern = kpos <= qpos
    if window is not None:
        pattern = pattern & (qpos - kpos < window)
    if not torch.equal(pattern[None] & real[:, None, :], m):
        return None
    real = real.cpu().numpy()
    starts = np.where(real.any(1), real.argmax(1), n_kv)
    ends = np.where(real.any(1), n_kv - real[:, ::-1].argmax(1), n_kv)
    counts = real.sum(1)
    if (ends - starts != counts).any():
        return None  # a hole in a row's keys: not one run
    q_lo = np.maximum(starts, n_kv - n_q)
    q_len = np.maximum(ends - q_lo, 0)
    k_len = ends - starts
    q_index = np.concatenate([b * n_q + np.arange(q_lo[b], q_lo[b] + q_len[b]) - (n_kv - n_q)
                              for b in range(B)]).astype(np.int64)
    k_index = np.concatenate([b * n_kv + np.arange(starts[b], ends[b]) for b in range(B)]).astype(np.int64)
    cu = lambda lens: torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)  # noqa: E731
    return PaddedBatch(torch.as_tensor(q_index, device=mask.device), torch.as_tensor(k_index, device=mask.device),
                       cu(q_len), cu(k_len), int(q_len.max()) if B else 0, int(k_len.max()) if B else 0)


def padded_attention(fn: Any, q: Any, k: Any, v: Any, batch: PaddedBatch) -> Any:
    """``(B, N_q, H, D_v)`` attention of ``(B, H, N, D)`` tensors under the padding ``batch``
    describes, through ``fn.varlen`` (``fn`` compiled bottom-right, causal or windowed)."""
    import torch

    B, H, n_q, _ = q.shape
    flat = lambda t: t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])  # noqa: E731  (B*N, H, D)
    qp = flat(q).index_select(0, batch.q_index)
    kp, vp = flat(k).index_select(0, batch.k_index), flat(v).index_select(0, batch.k_index)
    out = fn.varlen(qp, kp, vp, batch.cu_q, batch.cu_k, batch.max_q, batch.max_k)
    full = torch.zeros(B * n_q, H, v.shape[3], dtype=out.dtype, device=out.device)
    full.index_copy_(0, batch.q_index, out)
    return full.view(B, n_q, H, v.shape[3])


__all__ = ["PaddedBatch", "padded_attention", "padding_runs"]
