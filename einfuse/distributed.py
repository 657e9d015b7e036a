"""Attention offloading: split-KV decode with the KV cache sharded over a ``torch.distributed`` group.

Each rank of the group holds a shard of every sequence's keys and values (shards may differ in
length, and may be empty): contiguous ``(B, H_kv, N_shard, D)``, optionally with per-sequence
lengths ``seq_lens``, or paged (``(num_pages, page_size, H_kv, D)`` pages, a ``(B, max_pages)`` page
table and ``seq_lens``; :mod:`einfuse.codegen.triton.kv_cache`), so a sequence's shard on one rank
may be longer than on another and its pages may sit anywhere in that rank's pool. A decode step
runs the generated split-KV kernel on each shard
(the decode plan of :mod:`einfuse.lowering`, with the log-sum-exp as a second output), gathers the
small per-row pairs (output, log-sum-exp) with one all-gather, and combines them with the decode
plan's combine kernel (the generated kernel that merges splits on one GPU, each rank one split): ``O = sum_r exp(lse_r - max) o_r / sum_r exp(lse_r - max)``, 0 for a row no
shard sees. Collectives are ``torch.distributed``'s own (NCCL on GPUs, gloo on CPUs); their timeout
is the process group's (``init_process_group(timeout=...)``).

A rank whose kernel raises does not leave the others waiting: every rank first all-gathers a status
flag, so all ranks raise an :class:`EinfuseError` naming the failed ranks (the failed rank re-raises
its own error). The flags travel through a gloo group on the CPU (the data group itself when it is
gloo), so a step has no host synchronisation: the flag exchange overlaps the kernel, and the
all-gather of the partial results and the combine are queued behind it on the GPU.

Lamina's query side: with ``src=r`` the queries exist on rank ``r`` only (the compute device), are
broadcast to the attention ranks, and every rank gets the combined output back.

Masks and score modifications that depend on the key position are refused: a shard's kernel numbers
its keys from 0, so they would be evaluated at the wrong positions.
"""

from __future__ import annotations

from typing import Any

from einfuse.errors import CodegenError, EinfuseError
from einfuse.ir.cascade import Cascade
from einfuse.ir.expr import IndexValue, Select, walk
from einfuse.ir.ranks import KEY_INDEX, size_symbol


class DistributedDecode:
    """A decode variant whose KV cache is sharded over the ranks of ``group`` (default: the world).

    Call it on every rank as ``fn(q, k_shard, v_shard)`` with ``(B, H, N_q, D)`` queries and this
    rank's ``(B, H_kv, N_shard, D)`` keys and values, or ``fn(q, k_pages, v_pages, page_table=...,
    seq_lens=...)`` with this rank's paged shard; every rank gets the ``(B, H, N_q, D_v)`` output.
    """

    def __init__(self, spec: str | Cascade, group: Any = None, timeout: Any = None,
                 **decode_options: Any) -> None:
        from einfuse.codegen.triton.decode import build_decode
        from einfuse.lowering import kernel_plan

        if isinstance(spec, Cascade):
            c = spec
        else:
            from einfuse.frontends import load_spec

            c = load_spec(spec)
        plan = kernel_plan(c, decode=True)
        dec = plan.detail.plan
        uses = set(dec.mask.free_symbols) if dec.mask is not None else set()
        for node in walk(dec.logit):  # index terms of the score (the Q.K leaf itself is read at [m, p])
            if isinstance(node, IndexValue):
                uses |= node.expr.free_symbols
            elif isinstance(node, Select) and hasattr(node.cond, "free_symbols"):
                uses |= node.cond.free_symbols
        if KEY_INDEX in uses or size_symbol("M") in uses:
            raise CodegenError(f"{c.name}: its mask or score depends on the key position ({dec.mask}); "
                               "a sharded KV cache numbers each shard's keys from 0, so only variants "
                               "without key-position terms can be decoded over shards")
        self.name = c.name
        self.plan = plan
        self.group = group
        self.timeout = timeout  # of the CPU group that carries the status flags (None: torch's default)
        self._flags_group: Any = None
        self.kernel = build_decode(plan, **decode_options)

    def __call__(self, q: Any, k: Any, v: Any, src: int | None = None, page_table: Any = None,
                 seq_lens: Any = None) -> Any:
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise EinfuseError(f"{self.name}: distributed decode needs torch.distributed initialised "
                               "(init_process_group) on every rank")
        if src is not None:
            q = self._broadcast_queries(q, k, src)
        rank, world = dist.get_rank(self.group), dist.get_world_size(self.group)
        error: Exception | None = None
        try:
            o, lse = self.kernel(q, k, v, return_lse=True, page_table=page_table, seq_lens=seq_lens)
        except Exception as exc:  # noqa: BLE001 - reported to every rank below, then re-raised here
            error = exc
        status = torch.tensor([0 if error is None else 1], dtype=torch.int32)
        flags = torch.zeros(world, dtype=torch.int32)
        dist.all_gather_into_tensor(flags, status, group=self._flags())  # CPU: no wait on the GPU
        failed = [r for r in range(world) if flags[r]]
        if error is not None:
            raise error
        if failed:
            raise EinfuseError(f"{self.name}: distributed decode failed on rank(s) "
                               f"{', '.join(map(str, failed))} (this is rank {rank}); see their errors")
        # one all-gather of the small pairs: outputs in float32 with the log-sum-exp as a last column
        packed = torch.cat([o.float(), lse.unsqueeze(-1)], dim=-1)
        flat = packed.new_empty(world * packed.numel())  # 1-D buffers: gloo takes no stacked shape
        dist.all_gather_into_tensor(flat, packed.reshape(-1), group=self.group)
        stacked = flat.view(world, *packed.shape)          # (ranks, B, H, N_q, D_v + 1)
        return self._combine(stacked, q.dtype)

    def _combine(self, stacked: Any, dtype: Any) -> Any:
        """Merge the ranks' pairs with the decode plan's own combine kernel (printed from the plan's
        combine roles): each rank is one split whose running max is its log-sum-exp and whose sum is 1
        (0 weight where a rank saw no key), so the kernel's rule is exactly :func:`combine`'s."""
        import torch

        from einfuse.codegen.triton.options import pow2

        world, B, H, NQ, width = stacked.shape
        DV = width - 1
        R = B * H * NQ * world
        rows = stacked.permute(1, 2, 3, 0, 4).reshape(R, width)  # (row, split) order, as the kernel reads
        ws = torch.empty(R * (DV + 2), dtype=torch.float32, device=stacked.device)
        ws[:R] = rows[:, -1]
        ws[R:2 * R] = 1.0
        ws[2 * R:] = rows[:, :-1].reshape(-1)
        out = torch.empty((B, H, NQ, DV), dtype=dtype, device=stacked.device)
        n = pow2(world, 2)
        self.kernel.module.decode_combine[(B * H * NQ,)](
            ws, R, out, ws, ws, *out.stride(), H, NQ, DV, world, BS=n, CHUNK=min(n, 16), BDV=pow2(DV),
            WRITE_LSE=False, HAS_LENS=False, BLOCK_N=self.kernel.options.block_n, num_warps=4)
        return out

    def _flags(self) -> Any:
        """The gloo group of this group's ranks for the status flags (made once, by its members only)."""
        import torch.distributed as dist

        if self._flags_group is None:
            if dist.get_backend(self.group) == "gloo":
                self._flags_group = self.group
            else:
                ranks = dist.get_process_group_ranks(self.group or dist.group.WORLD)
                kw = {} if self.timeout is None else {"timeout": self.timeout}
                self._flags_group = dist.new_group(ranks, backend="gloo", use_local_synchronization=True,
                                                   **kw)
        return self._flags_group

    def _broadcast_queries(self, q: Any, k: Any, src: int) -> Any:
        import torch
        import torch.distributed as dist

        mine = dist.get_rank(self.group) == src
        meta = torch.tensor(list(q.shape) if mine else [0, 0, 0, 0], dtype=torch.int64, device=k.device)
        dist.broadcast(meta, src, group=self.group)
        buf = q.contiguous() if mine else torch.empty(tuple(int(x) for x in meta), dtype=k.dtype, device=k.device)
        dist.broadcast(buf, src, group=self.group)
        return buf


def combine(outputs: Any, lse: Any) -> Any:
    """Merge per-shard results: ``outputs`` (S, ..., D_v) normalised per shard, ``lse`` (S, ...) their
    log-sum-exps (-inf: the shard saw no key). The split-KV plan's combine rule over shards, in torch:
    the reference the kernel path of :class:`DistributedDecode` is tested against."""
    import torch

    top = lse.max(dim=0).values
    safe = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    w = torch.exp(lse - safe)                             # 0 for empty shards
    den = w.sum(dim=0)
    num = (w.unsqueeze(-1) * outputs).sum(dim=0)
    return num / torch.where(den > 0, den, torch.ones_like(den)).unsqueeze(-1)


def decode(spec: str | Cascade, q: Any, k: Any, v: Any, group: Any = None, src: int | None = None,
           page_table: Any = None, seq_lens: Any = None, **decode_options: Any) -> Any:
    """One-shot :class:`DistributedDecode` (build it once and reuse it in a serving loop)."""
    return DistributedDecode(spec, group=group, **decode_options)(q, k, v, src=src, page_table=page_table,
                                                                  seq_lens=seq_lens)


__all__ = ["DistributedDecode", "combine", "decode"]
