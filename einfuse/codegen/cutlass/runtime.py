"""Launching a generated CUTLASS kernel: input checks, block tables, build on first use, launch.

:class:`CutlassAttention` is what ``einfuse.compile(spec, target="cutlass")`` wraps: called as
``fn(q, k, v)`` on ``(B, H, N, D)`` CUDA tensors it returns ``(B, H, N_q, D)``; ``return_lse=True``
also returns the natural-log log-sum-exp ``(B, H, N_q)`` in float32 (softmax plans; ``-inf`` for
rows with every key masked), which the backward pass needs. One extension is built per (dtype,
head dim, arch) on first use, so a call pays nvcc once per configuration and machine.

``path`` picks the MMA path: ``"auto"`` (default) runs the wgmma kernel (``sm90``) on Hopper and the
mma.sync kernel (``sm80``) elsewhere; ``"sm80"`` also runs on Hopper (to compare the two);
``"sm90ws"`` is the warp-specialised Hopper kernel (TMA loads through a multi-stage pipeline,
producer and consumer warpgroups) and ``"sm90pp"`` the same with FlashAttention-3's intra-warpgroup
overlap and warpgroup ping-pong; both are measured against ``sm90`` before one becomes the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from einfuse.codegen.cutlass.build import arch_of, load_extension
from einfuse.codegen.cutlass.emit import (
    ALL_CONFIGS,
    BLOCK_M,
    BLOCK_N,
    HOPPER_PATHS,
    check_config,
    check_path,
    check_plan,
    emit_source,
)
from einfuse.errors import CodegenError
from einfuse.ir.ranks import BATCH_INDEX
from einfuse.lowering.blocks import BlockTables, build_tables, dense_tables
from einfuse.lowering.plan import KernelPlan
from einfuse.lowering.tile_order import FLAT

_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}


@dataclass
class CutlassAttention:
    """A softmax/sigmoid/normsum plan printed as a CuTe kernel: ``kernel(q, k, v) -> out``."""

    plan: KernelPlan
    sizes: dict[str, int]
    path: str = "auto"
    _sources: dict = field(default_factory=dict)
    _tables: dict = field(default_factory=dict)
    last_tables: BlockTables | None = None
    checks_inputs = True  # (class attribute) its own checks: CUDA tensors, bf16/fp16, head dim 64/128

    @staticmethod
    def build(plan: KernelPlan, sizes: dict[str, int] | None = None, **options: Any) -> CutlassAttention:
        check_plan(plan)
        path = options.pop("path", "auto")
        if options:
            raise CodegenError(f"{plan.name}: the CUTLASS back end takes only path= ('auto', 'sm80', 'sm90', 'sm90ws', 'sm90pp'; "
                               f"got {', '.join(sorted(options))}); tiles are {BLOCK_M}x{BLOCK_N}")
        if path != "auto":
            check_path(plan.name, path)
        bound = {k: int(v) for k, v in plan.cascade.params.items() if float(v).is_integer()}
        bound.update({k: int(v) for k, v in (sizes or {}).items()})
        kern = CutlassAttention(plan, bound, path)
        kern.source(ALL_CONFIGS[:1])  # print now: printer errors surface at compile time
        return kern

    def source(self, configs: tuple[tuple[str, int], ...] = ALL_CONFIGS, path: str | None = None) -> str:
        """The .cu source for ``configs`` on ``path`` (default: this kernel's; ``auto`` prints sm80)."""
        path = path or (self.path if self.path != "auto" else "sm80")
        if (configs, path) not in self._sources:
            self._sources[(configs, path)] = emit_source(self.plan, self.sizes, configs, path=path)
        return self._sources[(configs, path)]

    def path_for(self, arch: str) -> str:
        """The MMA path that runs on ``arch`` (``90a``, ``80``, ...)."""
        if self.path == "auto":
            return "sm90" if arch == "90a" else "sm80"
        if self.path in HOPPER_PATHS and arch != "90a":
            raise CodegenError(f"{self.plan.name}: the CUTLASS {self.path} path (wgmma) needs a Hopper GPU (sm_90a); "
                               f"this one is sm_{arch}: use path='sm80'")
        return self.path

    def __call__(self, q: Any, k: Any, v: Any, return_lse: bool = False) -> Any:
        import torch

        name = self.plan.name
        from einfuse.codegen.triton.runtime import check_inputs

        if not (isinstance(q, torch.Tensor) and q.is_cuda):
            raise CodegenError(f"{name}: the CUTLASS kernel needs CUDA tensors"
                               + (f"; q is on {q.device}" if isinstance(q, torch.Tensor) else ""))
        B, H, _, Nq, Nkv, D, _ = check_inputs(name, q, k, v)
        dt = _DTYPES.get(str(q.dtype), str(q.dtype).replace("torch.", ""))
        check_config(name, dt, D, v.shape[3])
        if return_lse and self.plan.family != "softmax":
            raise CodegenError(f"{name}: return_lse is for softmax plans; this one is {self.plan.family}")
        q, k, v = (_aligned(t) for t in (q, k, v))
        tables = self.tables(Nq, Nkv, H, B, q.device)
        self.last_tables = tables
        arch = arch_of(q.device)
        mod = load_extension(self.source(((dt, D),), self.path_for(arch)), arch)
        out = torch.empty((B, H, Nq, D), dtype=q.dtype, device=q.device)
        lse = torch.empty((B, H, Nq) if return_lse else (0,), dtype=torch.float32, device=q.device)
        dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
        fn, fi, pn, pi, *strides = tables.kernel_args(dummy)
        ints = [0, D, int(not tables.dense), int(tables.full_contig), int(tables.part_contig), tables.n_full,
                tables.n_k_tiles, *(int(s) for s in strides)]
        mod.fwd(q, k, v, out, lse, fn, fi, pn, pi, ints)
        return (out, lse) if return_lse else out

    def tables(self, n_q: int, n_kv: int, heads: int, batch: int, device: Any) -> BlockTables:
        """Block tables for the kernel's tiles (``BLOCK_M`` x ``BLOCK_N``), cached per shape."""
        key = (n_q, n_kv, heads, batch if self.plan.detail.mask_uses(BATCH_INDEX) else 0, str(device))
        if key not in self._tables:
            mask = self.plan.detail.mask
            if mask is None:
                t = dense_tables(n_kv, BLOCK_N, masked=False)
            else:
                sizes = {**self.sizes, "P": n_q, "M": n_kv, "H": heads, "B": batch}
                t = build_tables(self.plan.cascade, mask, sizes, n_q, n_kv, heads, BLOCK_M, BLOCK_N, FLAT, FLAT,
                                 device)
            self._tables[key] = t
        return self._tables[key]


def _aligned(t: Any) -> Any:
    """cp.async moves 16 bytes: rows must start 16-byte aligned (strides multiples of 8 elements);
    TMA tensor maps (sm90ws) also refuse a zero stride (an expanded dimension)."""
    if t.data_ptr() % 16 or any(s % 8 or (s == 0 and n > 1) for s, n in zip(t.stride()[:3], t.shape[:3])):
        t = t.contiguous()
    return t
