"""Triton back end for decoding: softmax attention of a few queries over a long KV cache.

``build_decode(cascade, **options)`` analyses a softmax cascade (:mod:`decode_analysis`), prints the
split-KV kernels (:mod:`decode_kernels`) and returns a :class:`DecodeKernel`, called as
``fn(q, k, v, **sizes)`` on ``(B, H, Nq, D)`` queries and ``(B, Hkv, Nk, D)`` keys/values. It is
meant for ``Nq <= 16``; larger query counts work but waste the split-KV schedule.

Why split the keys: with one query a head there are only ``B * Hkv`` (batch, KV head) pairs, far
fewer than the GPU has multiprocessors, so each pair's keys are split across ``n_splits`` programs
and their partial softmax states merged by a second, tiny kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from einfuse.codegen.triton.decode_kernels import decode_source
from einfuse.codegen.triton.linear_emit import load_module
from einfuse.codegen.triton.options import cdiv, parse_options, pow2
from einfuse.errors import CodegenError
from einfuse.ir.cascade import Cascade
from einfuse.lowering.decode import DecodePlan
from einfuse.lowering.lower import DEFAULT_SPLITS, kernel_plan
from einfuse.lowering.plan import KernelPlan


@dataclass(frozen=True)
class DecodeOptions:
    """Tuning knobs. ``splits``: key ranges per (batch, KV head), 0 = chosen from the GPU's
    multiprocessor count (about ``programs_per_sm`` programs per multiprocessor); ``block_n``: keys
    per loop step; ``block_rows``: most query rows (group heads x queries) per program."""

    splits: int = 0
    programs_per_sm: int = 8
    block_n: int = 128
    block_rows: int = 64
    num_warps: int = 4
    num_stages: int = 3

    @staticmethod
    def of(options: dict[str, Any]) -> DecodeOptions:
        opts = parse_options(DecodeOptions, options, "decode", ("block_n", "block_rows"))
        if opts.splits < 0:
            raise CodegenError(f"option splits={opts.splits} must be >= 0 (0 = automatic)")
        return opts


def _sm_count(device: Any) -> int:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few splits, so tests exercise the combine


@dataclass(frozen=True)
class DecodeKernel:
    """A compiled decode variant: ``fn(q, k, v, splits=None, **sizes)``."""

    plan: DecodePlan
    options: DecodeOptions
    source: str
    module: ModuleType = field(repr=False)
    cascade: Cascade | None = field(default=None, repr=False)  # the split-KV cascade it follows
    lowering: str = ""
    captures: dict = field(default_factory=dict, repr=False)  # the variant's declared captures (values)

    def split_plan(self, B: int, Hkv: int, row_blocks: int, NK: int, device: Any,
                   splits: int | None = None) -> tuple[int, int]:
        """(n_splits, keys per split), the latter a multiple of ``block_n``."""
        bn = self.options.block_n
        want = splits or self.options.splits
        if not want:
            target = _sm_count(device) * self.options.programs_per_sm
            want = cdiv(target, B * Hkv * row_blocks)
        want = max(1, min(want, cdiv(NK, bn)))
        split_len = cdiv(cdiv(NK, want), bn) * bn
        return cdiv(NK, split_len), split_len

    def _sizes(self, B: int, H: int, NQ: int, NK: int, D: int, DV: int, given: dict[str, Any]) -> list[int]:
        known = self._known(B, H, NQ, NK, D, DV, given)
        out = []
        for s in self.plan.sizes:
            if s not in known:
                raise CodegenError(f"{self.plan.name}: size {s} is needed at run time; pass {s}=...")
            out.append(int(known[s]))
        return out

    def _known(self, B: int, H: int, NQ: int, NK: int, D: int, DV: int, given: dict[str, Any]) -> dict[str, float]:
        return {**self.plan.params, "B": B, "H": H, "P": NQ, "M": NK, "E": D, "F": DV, **given}

    def scale(self, known: dict[str, float]) -> float:
        """The score scale: a constant, or (the default ``1/sqrt(E)``) evaluated at these sizes."""
        if isinstance(self.plan.scale, (int, float)):
            return float(self.plan.scale)
        from einfuse.ir.ranks import size_symbol

        return float(self.plan.scale.subs({size_symbol(k): v for k, v in known.items()}))

    def __call__(self, q: Any, k: Any, v: Any, splits: int | None = None, return_lse: bool = False,
                 **sizes: Any) -> Any:
        """The output ``(B, H, N_q, D_v)``; with ``return_lse`` also the float32 log-sum-exp of each
        row's logits ``(B, H, N_q)`` (-inf for a row with no visible key), which is what combining
        partial results over key shards needs (:mod:`einfuse.distributed`)."""
        import torch

        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            raise CodegenError("q, k, v must be (B, H, N, D) tensors")
        B, H, NQ, D = q.shape
        Hkv, NK, DV = k.shape[1], k.shape[2], v.shape[-1]
        if k.shape[0] != B or k.shape[3] != D or v.shape[:3] != k.shape[:3]:
            raise CodegenError(f"shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)} do not match")
        if H % Hkv:
            raise CodegenError(f"{Hkv} key/value heads do not divide {H} query heads")
        cap_args = self._capture_args(sizes, q)  # pops captured tensors given by keyword
        unknown = set(sizes) - set(self.plan.sizes) - set(self.plan.params)
        if unknown:
            raise CodegenError(f"{self.plan.name}: unknown runtime argument(s) {', '.join(sorted(unknown))}")
        size_args = self._sizes(B, H, NQ, NK, D, DV, sizes)
        group_rows = (H // Hkv) * NQ
        rows = min(self.options.block_rows, pow2(group_rows))
        row_blocks = cdiv(group_rows, rows)
        n_splits, split_len = self.split_plan(B, Hkv, row_blocks, NK, q.device, splits)
        dev = q.device
        mws = torch.empty((B * H * NQ * n_splits,), device=dev, dtype=torch.float32)
        lws = torch.empty_like(mws)
        ows = torch.empty((B * H * NQ * n_splits, DV), device=dev, dtype=torch.float32)
        o = torch.empty((B, H, NQ, DV), device=dev, dtype=q.dtype)
        # the interpreter's bf16 tl.dot is wrong: multiply in fp32 there (see decode_kernels)
        upcast = dev.type != "cuda" and q.dtype == torch.bfloat16
        self.module.decode_partial[(B * Hkv, n_splits, row_blocks)](
            q, k, v, mws, lws, ows, *q.stride(), *k.stride(), *v.stride(),
            NQ, NK, H, Hkv, D, DV, split_len, n_splits, self.scale(self._known(B, H, NQ, NK, D, DV, sizes)),
            *size_args, *cap_args,
            ROWS=rows, BLOCK_N=self.options.block_n, BD=pow2(D), BDV=pow2(DV), UPCAST=upcast,
            num_warps=self.options.num_warps, num_stages=self.options.num_stages)
        lse = torch.empty((B, H, NQ), device=dev, dtype=torch.float32) if return_lse else mws
        self.module.decode_combine[(B * H * NQ,)](
            mws, lws, ows, o, lse, *o.stride(), H, NQ, DV, n_splits,
            BS=pow2(n_splits, 2), BDV=pow2(DV), WRITE_LSE=return_lse, num_warps=4)
        return (o, lse) if return_lse else o


    def _capture_args(self, runtime: dict[str, Any], q: Any) -> list[Any]:
        """Launch arguments of the captured tensors the logit or mask reads (einfuse.ir.captures)."""
        from einfuse.codegen import capture_args

        caps = capture_args.plan_captures(self.plan.logit, self.plan.mask)
        if not caps:
            return []
        declared = self.captures or (self.cascade.captures if self.cascade is not None else {})
        tensors, _ = capture_args.resolve(self.plan.name, caps, declared, runtime, q)
        return capture_args.launch_args(caps, tensors)


def build_decode(plan: KernelPlan | Cascade, **options: Any) -> DecodeKernel:
    """Generate and load the split-KV decode kernels of a decode plan.

    ``plan``: a :class:`KernelPlan` of family decode (a softmax cascade is lowered first). Options:
    see :class:`DecodeOptions`. Sigmoid and linear attention have their own plans and kernels.
    """
    opts = DecodeOptions.of(dict(options))
    declared = dict(plan.captures) if isinstance(plan, Cascade) else {}
    if isinstance(plan, Cascade):
        plan = kernel_plan(plan, decode=True, splits=opts.splits or DEFAULT_SPLITS)
    if plan.family != "decode":
        raise CodegenError(f"{plan.name}: build_decode takes a plan of the decode family, not {plan.family}")
    dec, split = plan.detail.plan, plan.detail.split
    source = decode_source(dec, split)
    module = load_module(source, f"decode_{dec.name}")
    return DecodeKernel(dec, opts, source, module, plan.cascade, plan.lowering, declared)


__all__ = ["DecodeKernel", "DecodeOptions", "build_decode"]
