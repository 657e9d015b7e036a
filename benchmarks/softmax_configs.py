"""Sweep tile configurations of one generated kernel on this GPU: ms per config, or why it failed.

    python benchmarks/softmax_configs.py SPEC B,H,N,D [--order auto|flat|box] [BM,BN,WARPS,STAGES ...]
"""

from __future__ import annotations

import sys
import traceback


def main() -> None:
    import torch

    import einfuse
    from einfuse.codegen.autotune import KernelConfig, candidates, time_config

    spec, shape = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    args = sys.argv[3:]
    order = "auto"
    if args and args[0] == "--order":
        order, args = args[1], args[2:]
    B, H, N, D = shape
    cfgs = [KernelConfig(*map(int, a.split(","))) for a in args] or candidates(D, "bf16")
    f = einfuse.compile(spec, torch_op=False, decode=False)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for c in cfgs:
        opts = {"block_m": c.block_m, "block_n": c.block_n, "num_warps": c.num_warps, "num_stages": c.num_stages,
                    "tile_order": order}
        try:
            f(q, k, v, **opts)
            ms = time_config(lambda opts=opts: f(q, k, v, **opts))
            t = f.kernel.last_tables
            print(f"{spec} {c}: {ms:.4f} ms  (tables {t.method}, visited {t.visited_fraction:.3f})", flush=True)
        except Exception as exc:  # noqa: BLE001 - the point is to see why a config fails
            print(f"{spec} {c}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            traceback.print_exc(limit=2)


if __name__ == "__main__":
    main()
