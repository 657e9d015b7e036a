"""Sweep the linear-attention backward's options on the lightning case; report the best.

    python benchmarks/tune_linear_backward.py                          # B4 H16 N8192 D128 bf16
    python benchmarks/tune_linear_backward.py --chunk 32,64 --warps 4,8 --stages 1,2,3 --block 32,64
    TRITON_INTERPRET=1 python benchmarks/tune_linear_backward.py --dry-run   # tiny shapes: plumbing only

The forward runs once; then every configuration of
:class:`einfuse.codegen.triton.linear_backward.LinearBackwardOptions` (``chunk`` x ``num_warps`` x
``num_stages`` of the dQ and dK/dV kernels x ``block_k = block_v`` of the two state kernels) is timed
with ``do_bench`` (median, backward only: states, reverse states, dQ, dK/dV) after its ``dq, dk, dv``
are compared with the default configuration's. Writes ``<device>-tune-linear-backward.{json,md}``
under benchmarks/results/backward/ and ``$OUT``; the best row is what ``LinearBackwardOptions``'s
defaults (or ``backward_options=``) should say.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from backward import cases, dry_cases, rel

import einfuse
from einfuse.codegen.autograd import backward_kernel
from einfuse.codegen.triton.linear_backward import LinearBackwardKernel, LinearBackwardOptions

AGREE_TOL = 2e-2  # bf16 gradients of two chunkings differ by rounding (bf16 states); more: a broken config


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def sweep(case: Any, grid: list[tuple[int, int, int, int]], dev: str, bench) -> list[dict[str, Any]]:
    f = einfuse.compile(case.spec)
    gen = torch.Generator(device=dev).manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen, device=dev, dtype=torch.bfloat16)  # noqa: E731
    q, k, v = mk(case.B, case.H, case.NQ, case.D), mk(case.B, case.Hkv, case.NK, case.D), mk(case.B, case.Hkv, case.NK, case.D)
    do = mk(case.B, case.H, case.NQ, case.D)
    default = backward_kernel(f)
    out, saved = default.forward(q, k, v)
    want = default(q, k, v, out, saved, do)
    rows = [{"variant": case.variant, "shape": case.shape, "config": "default",
             "ms": bench(lambda: default(q, k, v, out, saved, do))}]
    print(json.dumps(rows[0]), flush=True)
    for chunk, warps, stages, block in grid:
        cfg = dict(chunk=chunk, num_warps=warps, num_stages=stages, block_k=block, block_v=block)
        row: dict[str, Any] = {"variant": case.variant, "shape": case.shape, "config": cfg}
        try:
            kern = LinearBackwardKernel(f.kernel, f.plan, LinearBackwardOptions(**cfg))
            got = kern(q, k, v, out, saved, do)
            row["agree"] = {n: rel(g, w.double()) for n, g, w in zip(("dq", "dk", "dv"), got, want)}
            if not all(e <= AGREE_TOL for e in row["agree"].values()):
                row["error"] = f"gradients differ from the default configuration's: {row['agree']}"
            else:
                row["ms"] = bench(lambda kern=kern: kern(q, k, v, out, saved, do))
        except Exception as exc:  # noqa: BLE001 - out of resources, compile errors: recorded
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def write(rows: list[dict[str, Any]], device: str, stem: str, dirs: list[str]) -> None:
    timed = [r for r in rows if "ms" in r]
    top = min(timed, key=lambda r: r["ms"]) if timed else None
    base = next((r for r in timed if r["config"] == "default"), None)
    lines = [f"# Linear-attention backward sweep: {device}", "",
             "bf16, lightning; backward only (states, reverse states, dQ, dK/dV), median of do_bench; every "
             f"configuration's gradients agree with the default's within {AGREE_TOL}", ""]
    if top and base:
        lines += [f"best: `{top['config']}` {top['ms']:.3f} ms, default {base['ms']:.3f} ms "
                  f"({base['ms'] / top['ms']:.3f}x)", ""]
    lines += ["| config | ms | note |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {'-' if 'ms' not in r else round(r['ms'], 3)} | "
                     f"{r.get('error', '').replace('|', '/')} |")
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, stem + ".json"), "w") as fh:
            json.dump({"device": device, "rows": rows, "best": top}, fh, indent=1)
        with open(os.path.join(d, stem + ".md"), "w") as fh:
            fh.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", default="32,64")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--block", default="32,64", help="block_k = block_v of the state kernels")
    ap.add_argument("--rep", type=int, default=50, help="do_bench repetition time, ms")
    ap.add_argument("--results-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton interpreter), two configs")
    args = ap.parse_args(argv)
    dev = "cpu" if args.dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --dry-run (TRITON_INTERPRET=1) to check the plumbing")
    if args.dry_run:
        case = next(c for c in dry_cases() if c.variant == "lightning")
        grid = [(16, 4, 1, 16), (32, 4, 1, 16)]

        def bench(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    else:
        import triton

        case = next(c for c in cases("lightning"))
        grid = list(itertools.product(ints(args.chunk), ints(args.warps), ints(args.stages), ints(args.block)))

        def bench(fn):
            return triton.testing.do_bench(fn, rep=args.rep, return_mode="median")
    device = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (Triton interpreter)"
    stem = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") + "-tune-linear-backward"
    dirs = [os.path.join(args.results_dir, "backward")] + ([os.environ["OUT"]] if os.environ.get("OUT") else [])
    rows = sweep(case, grid, dev, bench)
    write(rows, device, stem, dirs)
    print(open(os.path.join(dirs[-1], stem + ".md")).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
