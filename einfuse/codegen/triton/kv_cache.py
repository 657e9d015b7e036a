"""The KV cache a decode call reads: contiguous, contiguous with per-sequence lengths, or paged.

Layouts (what :class:`einfuse.codegen.triton.decode.DecodeKernel` takes):

* **contiguous** (the default): ``k``, ``v`` of shape ``(B, H_kv, N, D)``, every sequence ``N`` keys.
* **contiguous, ragged**: the same tensors with ``seq_lens`` ``(B,)`` int32; sequence ``b`` holds
  keys ``0 .. seq_lens[b] - 1`` (the rest is padding and never read).
* **paged** (vLLM's flash-attn backend and FlashInfer's ``NHD`` layout): ``k_cache``, ``v_cache`` of
  shape ``(num_pages, page_size, H_kv, D)``, ``page_table`` ``(B, max_pages)`` int32 (vLLM's
  ``block_table``) and ``seq_lens`` ``(B,)`` int32 (vLLM's ``seq_lens``, flash-attn's
  ``cache_seqlens``). Key ``m`` of sequence ``b`` is slot ``m % page_size`` of page
  ``page_table[b, m // page_size]``. Pages may be in any order and shared between sequences (a
  common prefix); entries past a sequence's last page are never read. Any page size >= 1 works
  (the kernel is compiled once per page size; 16, vLLM's default, and powers of two are cheapest).

With per-sequence lengths, a mask or score that uses positions sees each sequence's own length
as ``M``: a bottom-right (``align="bottom_right"``) query ``i`` of ``N_q`` sits at
``seq_lens[b] - N_q + i``. A sequence of length 0 gets output 0 (and log-sum-exp ``-inf``).

Values (page indices, lengths) are checked on CPU tensors (the Triton interpreter); on a GPU they
are not, as in vLLM and FlashInfer, because reading them back would synchronise every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from einfuse.errors import CodegenError

_DTYPES = ("torch.bfloat16", "torch.float16", "torch.float32", "torch.float64")  # float64: interpreter


@dataclass(frozen=True)
class KVCache:
    """What the decode launch needs to know of the cache: its layout and the longest sequence it
    can hold (``max_len``, the bound the split count is planned for, without reading lengths)."""

    paged: bool
    page_size: int
    max_len: int
    heads: int
    page_table: Any = None
    seq_lens: Any = None


def describe(name: str, q: Any, k: Any, v: Any, page_table: Any = None, seq_lens: Any = None) -> KVCache:
    """Check a decode call's K/V (and page table, lengths) against ``q`` ``(B, H, N_q, D)``; raise a
    :class:`CodegenError` that says what to change."""
    import torch

    for t, nm in ((q, "q"), (k, "k"), (v, "v")):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise CodegenError(f"{name}: {nm} must be a 4-D torch.Tensor, got "
                               f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.device != q.device:
            raise CodegenError(f"{name}: {nm} is on {t.device}, q on {q.device}; put them on one device")
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            raise CodegenError(f"{name}: {nm} must be contiguous in its last (head) dimension; its strides are "
                               f"{tuple(t.stride())} (call .contiguous())")
    if not (q.dtype == k.dtype == v.dtype) or str(q.dtype) not in _DTYPES:
        raise CodegenError(f"{name}: q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}; give them one dtype of bfloat16, "
                           "float16, float32")
    if q.device.type != "cuda":
        from einfuse.codegen.autotune import interpreter_active

        if not interpreter_active():
            raise CodegenError(f"{name}: tensors are on {q.device}; Triton kernels need CUDA tensors "
                               "(or TRITON_INTERPRET=1 to run them on the CPU for testing)")
    B, H, _, D = q.shape
    if page_table is not None:
        if seq_lens is None:
            raise CodegenError(f"{name}: a paged KV cache needs seq_lens=(B,) int32 with each sequence's length "
                               "beside page_table")
        pages, page_size, hkv, dk = k.shape
        if v.shape[:3] != k.shape[:3]:
            raise CodegenError(f"{name}: k_cache {tuple(k.shape)} and v_cache {tuple(v.shape)} must share "
                               "(num_pages, page_size, H_kv)")
        _index_tensor(name, "page_table", page_table, 2, q.device)
        if page_table.shape[0] != B:
            raise CodegenError(f"{name}: page_table has {page_table.shape[0]} rows for a batch of {B}; it is "
                               "(B, max_pages) int32")
        max_len = page_table.shape[1] * page_size
    else:
        Bk, hkv, max_len, dk = k.shape
        if Bk != B or v.shape[0] != B:
            raise CodegenError(f"{name}: batch sizes differ: q {B}, k {Bk}, v {v.shape[0]} (a paged cache "
                               "also needs page_table=)")
        if v.shape[1:3] != k.shape[1:3]:
            raise CodegenError(f"{name}: k {tuple(k.shape)} and v {tuple(v.shape)} must share heads and length")
        page_size = 0
    if dk != D:
        raise CodegenError(f"{name}: shapes q{tuple(q.shape)} k{tuple(k.shape)} do not match (head dims {D} and {dk})")
    if hkv < 1 or H % hkv:
        raise CodegenError(f"{name}: {hkv} key/value heads do not divide {H} query heads")
    if page_table is not None and page_size < 1:
        raise CodegenError(f"{name}: k_cache has page size 0; pages are (num_pages, page_size, H_kv, D)")
    if seq_lens is not None:
        _index_tensor(name, "seq_lens", seq_lens, 1, q.device)
        if seq_lens.shape[0] != B:
            raise CodegenError(f"{name}: seq_lens has {seq_lens.shape[0]} entries for a batch of {B}")
        if q.device.type == "cpu":
            check_values(name, k.shape[0], page_size, max_len, page_table, seq_lens)
    return KVCache(page_table is not None, page_size, max_len, hkv, page_table, seq_lens)


def _index_tensor(name: str, what: str, t: Any, dims: int, device: Any) -> None:
    import torch

    shape = "(B, max_pages)" if dims == 2 else "(B,)"
    if not isinstance(t, torch.Tensor) or t.dim() != dims or t.dtype != torch.int32:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise CodegenError(f"{name}: {what} must be a {shape} torch.int32 tensor, got {got}")
    if t.device != device:
        raise CodegenError(f"{name}: {what} is on {t.device}, q on {device}; put them on one device")


def check_values(name: str, num_pages: int, page_size: int, max_len: int, page_table: Any,
                  seq_lens: Any) -> None:
    """Lengths within the cache, and every page a sequence reads within the cache (CPU only)."""
    lens = seq_lens.tolist()
    for b, n in enumerate(lens):
        if not 0 <= n <= max_len:
            where = f"{max_len // page_size} pages of {page_size}" if page_table is not None else f"N={max_len}"
            raise CodegenError(f"{name}: seq_lens[{b}] = {n} is outside 0..{max_len} (the cache holds {where})")
        if page_table is not None and n:
            used = page_table[b, : -(-n // page_size)]
            lo, hi = int(used.min()), int(used.max())
            if lo < 0 or hi >= num_pages:
                raise CodegenError(f"{name}: page_table[{b}] names page {lo if lo < 0 else hi}, outside the "
                                   f"cache's 0..{num_pages - 1}")


__all__ = ["KVCache", "check_values", "describe"]
