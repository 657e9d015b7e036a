"""Sweep the backward kernels' tile sizes, warps and stages per benchmark case; report the best.

    python benchmarks/tune_backward.py                         # the training cases, default grid
    python benchmarks/tune_backward.py --only causal,na2d --block-m 64,128 --block-n 32,64 --warps 4,8
    TRITON_INTERPRET=1 python benchmarks/tune_backward.py --dry-run   # tiny shapes on the CPU: plumbing only

For each case (benchmarks/backward.py's, bf16) the forward runs once (output and log-sum-exp), then
configurations of the backward (:class:`einfuse.codegen.triton.backward.BackwardKernel`:
``block_m`` x ``block_n`` x ``num_warps`` x ``num_stages``, for the dK/dV kernel with the dQ kernel
at its default, then for the dQ kernel with the best dK/dV one; their times add up) are timed with
``do_bench`` (median) after their ``dq, dk, dv`` are compared with the default configuration's; then the
atomic dQ layout (the dK/dV kernel adds dQ, no dQ kernel) over the same grid (a configuration that computes
something else, or does not compile, gets a row with the error and is never "best"). Writes
``<device>-tune-backward.{json,md}`` under benchmarks/results/backward/ and ``$OUT``: every row, and
per case the best pair with its speed-up over the default, which is what ``BackwardKernel.config`` and
``dq_config`` (and ``dq_layout``) should pick. 3 x 18 configurations per case at the default grid: run
a few cases per call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import time
import traceback
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from backward import cases, dry_cases, rel

import einfuse
from einfuse.codegen.autograd import backward_kernel
from einfuse.codegen.triton.backward import BackwardKernel

AGREE_TOL = 1e-2  # bf16 gradients of two tilings differ by rounding (~1e-3); more means a broken config


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def sweep_case(case: Any, grid: list[tuple[int, int, int, int]], dev: str, bench) -> list[dict[str, Any]]:
    f = einfuse.compile(case.spec)
    if not f.has_backward:
        return [{"variant": case.variant, "error": f"no backward for {f.family} plans"}]
    gen = torch.Generator(device=dev).manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen, device=dev, dtype=torch.bfloat16)  # noqa: E731
    q, k, v = mk(case.B, case.H, case.NQ, case.D), mk(case.B, case.Hkv, case.NK, case.D), mk(case.B, case.Hkv, case.NK, case.D)
    do = mk(case.B, case.H, case.NQ, case.D)
    default = backward_kernel(f)
    if f.plan.family == "softmax":
        out, lse = f.kernel.forward_with_lse(q, k, v)
    else:
        out, lse = f.kernel(q, k, v), torch.zeros(q.shape[:3], device=dev)
    want = default(q, k, v, out, lse, do)
    kv0, dq0 = default.config(q), default.dq_config(q)
    rows: list[dict[str, Any]] = []

    def run(kernel: str, kv: tuple, dq: tuple, layout: str = "separate") -> dict[str, Any]:
        row: dict[str, Any] = {"variant": case.variant, "shape": case.shape, "kernel": kernel,
                               "dkdv": list(kv), "dq": list(dq), "dq_layout": layout}
        try:
            kern = BackwardKernel(f.kernel, default.plan, block_m=kv[0], block_n=kv[1], num_warps=kv[2],
                                  num_stages=kv[3], dq_block_m=dq[0], dq_block_n=dq[1], dq_num_warps=dq[2],
                                  dq_num_stages=dq[3], dq_layout=layout)
            got = kern(q, k, v, out, lse, do)
            errs = {n: rel(g, w_.double()) for n, g, w_ in zip(("dq", "dk", "dv"), got, want)}
            row["agree"] = errs
            if not all(e <= AGREE_TOL for e in errs.values()):
                row["error"] = f"gradients differ from the default configuration's: {errs}"
            else:
                row["ms"] = bench(lambda kern=kern: kern(q, k, v, out, lse, do))
        except Exception as exc:  # noqa: BLE001 - out of shared memory, compile errors: recorded
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    as_tuple = lambda c: (c.block_m, c.block_n, c.num_warps, c.num_stages)  # noqa: E731
    base_kv, base_dq = as_tuple(kv0), as_tuple(dq0)
    run("default", base_kv, base_dq)
    # the two kernels' times add up: sweep dK/dV with dQ at its default, then dQ with the best dK/dV
    for c in grid:
        if c != base_kv:
            run("dkdv", c, base_dq)
    timed = [r for r in rows if "ms" in r]
    best_kv = tuple(min(timed, key=lambda r: r["ms"])["dkdv"]) if timed else base_kv
    for c in grid:
        if c != base_dq:
            run("dq", best_kv, c)
    # the other layout: dQ added atomically by the dK/dV kernel (no dQ kernel), swept over its tiles
    for c in grid:
        run("atomic", c, base_dq, "atomic")
    return rows


def best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case: the fastest measured pair of configurations and its speed-up over the default pair."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant and "ms" in r]
        if not mine:
            out.append({"variant": variant, "error": "no configuration ran"})
            continue
        top = min(mine, key=lambda r: r["ms"])
        base = next((r for r in mine if r.get("kernel") == "default"), None)
        out.append({"variant": variant, "shape": top["shape"], "dq_layout": top["dq_layout"], "dkdv": top["dkdv"],
                    "dq": top["dq"],
                    "best_ms": top["ms"], "default_ms": base["ms"] if base else None,
                    "speedup_over_default": base["ms"] / top["ms"] if base else None})
    return out


def write(rows: list[dict[str, Any]], device: str, stem: str, dirs: list[str]) -> None:
    summary = best(rows)
    cfg = "(block_m, block_n, warps, stages)"
    lines = [f"# Backward kernel sweep: {device}", "",
             "bf16; backward only (preprocess + dK/dV + dQ), median of do_bench; the dK/dV kernel is swept with "
             "dQ at its default, then dQ with the best dK/dV; every configuration's gradients agree with the "
             f"default's within {AGREE_TOL}", "",
             f"| variant | shape | dQ layout | best dK/dV {cfg} | best dQ {cfg} | best ms | default ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        if "dkdv" not in s:
            lines.append(f"| {s['variant']} | - | - | - | - | - | - | {s['error']} |")
            continue
        dflt = "-" if s["default_ms"] is None else f"{s['default_ms']:.3f}"
        up = "-" if s["speedup_over_default"] is None else f"{s['speedup_over_default']:.3f}"
        dq_cfg = "-" if s["dq_layout"] == "atomic" else tuple(s["dq"])
        lines.append(f"| {s['variant']} | {s['shape']} | {s['dq_layout']} | {tuple(s['dkdv'])} | {dq_cfg} | "
                     f"{s['best_ms']:.3f} | {dflt} | {up} |")
    lines += ["", "## All configurations", "", f"| variant | swept | dK/dV {cfg} | dQ {cfg} | ms | note |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        if "dkdv" not in r:
            continue
        lines.append(f"| {r['variant']} | {r['kernel']} | {tuple(r['dkdv'])} | {tuple(r['dq'])} | "
                     f"{'-' if 'ms' not in r else round(r['ms'], 3)} | {r.get('error', '').replace('|', '/')} |")
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, stem + ".json"), "w") as fh:
            json.dump({"device": device, "rows": rows, "best": summary}, fh, indent=1)
        with open(os.path.join(d, stem + ".md"), "w") as fh:
            fh.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated case variants (default: every case with a backward)")
    ap.add_argument("--block-m", default="32,64,128", help="query tile sizes")
    ap.add_argument("--block-n", default="32,64,128", help="key tile sizes")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--stages", default="2")
    ap.add_argument("--rep", type=int, default=50, help="do_bench repetition time, ms")
    ap.add_argument("--results-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton interpreter), two configs")
    args = ap.parse_args(argv)
    dev = "cpu" if args.dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --dry-run (TRITON_INTERPRET=1) to check the plumbing")
    if args.dry_run:
        todo = [c for c in dry_cases() if c.variant in (args.only or "causal").split(",")]
        grid = [(16, 16, 4, 1), (32, 16, 4, 1)]

        def bench(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    else:
        import triton

        todo = [c for c in cases(args.only) if c.variant not in ("lightning",)]
        grid = list(itertools.product(ints(args.block_m), ints(args.block_n), ints(args.warps), ints(args.stages)))

        def bench(fn):
            return triton.testing.do_bench(fn, rep=args.rep, return_mode="median")
    device = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (Triton interpreter)"
    stem = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") + "-tune-backward"
    dirs = [os.path.join(args.results_dir, "backward")] + ([os.environ["OUT"]] if os.environ.get("OUT") else [])
    rows: list[dict[str, Any]] = []
    for case in todo:
        try:
            rows += sweep_case(case, grid, dev, bench)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            rows.append({"variant": case.variant, "error": f"{type(exc).__name__}: {exc}"})
        write(rows, device, stem, dirs)
        if dev == "cuda":
            torch.cuda.empty_cache()
    print(open(os.path.join(dirs[-1], stem + ".md")).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
