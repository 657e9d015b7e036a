"""Host (CPU) time per call of a compiled kernel against its GPU time: a kernel shorter than its
launch path is timed as the launch path, so short kernels need a cheap one.

    python benchmarks/call_overhead.py [SPEC B,H,N,D]
"""

from __future__ import annotations

import sys
import time

import torch
import triton.testing

import einfuse
from einfuse.codegen import torch_op


def host_us(fn, n: int = 300) -> float:
    """Mean microseconds of CPU per call (launches queue up; the GPU is not waited for)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return us


def main() -> None:
    spec = sys.argv[1] if len(sys.argv) > 1 else "na2d:shape=96x96,kernel=13,head_dim=64"
    B, H, N, D = (int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "4,8,9216,64").split(","))
    f = einfuse.compile(spec)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    paths = {
        "f(q, k, v) (eager: direct launch)": lambda: f(q, k, v),
        "custom op torch.ops.einfuse.attention": lambda: torch_op.call(f.key, q, k, v),
        "f.run(q, k, v)": lambda: f.run(q, k, v),
    }
    for name, fn in paths.items():
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        print(f"{spec} {name:40s} GPU-timed {ms:.4f} ms   host {host_us(fn):.1f} us/call", flush=True)


if __name__ == "__main__":
    main()
