"""Sweep the linear and decode kernels' options at the target shapes, beside their peers, in one call.

    python benchmarks/tune_triton_b.py [--quick]

Prints one line per configuration (ms, throughput, rel_err) and writes ``$OUT/tune.json``. The
chosen defaults go into LinearOptions / DecodeOptions; benchmarks/notes-linear-decode.md keeps the
numbers and the reasoning.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_cases import select
from bench_peers import PEERS, peer_versions
from bench_reference import reference
from run_gpu import _inputs, _prep, _slice, device_info

import einfuse
from einfuse.codegen.triton.decode import build_decode
from einfuse.codegen.triton.linear import build_linear


def _time(fn: Any, args: tuple, rep: int) -> float:
    import triton

    return triton.testing.do_bench(lambda: fn(*args), warmup=10, rep=rep, return_mode="median")


def _check(out: torch.Tensor, ref: torch.Tensor, b: int, heads: torch.Tensor, qidx: torch.Tensor,
           bthd: bool = False) -> float:
    if bthd:
        out = out.transpose(1, 2)
    got = out[b][heads][:, qidx].double()
    if not torch.isfinite(got).all():
        return float("nan")
    return float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))


def sweep(variant: str, configs: list[dict[str, Any]], build: Any, rep: int, results: list,
          skip: tuple[str, ...] = ()) -> None:
    case = select(variant)[0]
    cascade = einfuse.load_spec(case.spec)
    q, k, v = _inputs(case, 7)
    b, heads, qidx = _slice(case)
    ref = reference(cascade, q, k, v, b, heads, qidx)
    prep = _prep(case, cascade)
    for peer in (p for p in case.peers if p not in skip):
        t0 = time.time()
        try:
            fn, to_native = PEERS[peer](case, prep)
            args = to_native(q, k, v)
            out = fn(*args)
            out = out[0] if isinstance(out, tuple) else out
            rel = _check(out, ref, b, heads, qidx, bthd=peer in ("fla", "triton-sigmoid"))
            ms = _time(fn, args, rep)
            row = {"variant": variant, "system": peer, "ms": ms, "rel_err": rel}
        except Exception as exc:  # noqa: BLE001
            row = {"variant": variant, "system": peer, "error": f"{type(exc).__name__}: {exc}"[:300]}
        row["s"] = round(time.time() - t0, 1)
        results.append(row)
        print(json.dumps(row), flush=True)
    for cfg in configs:
        t0 = time.time()
        try:
            fn = build(cascade, **cfg)
            out = fn(q, k, v)
            rel = _check(out, ref, b, heads, qidx)
            ms = _time(fn, (q, k, v), rep)
            row = {"variant": variant, "system": "einfuse-triton", "cfg": cfg, "ms": ms, "rel_err": rel}
        except Exception as exc:  # noqa: BLE001
            row = {"variant": variant, "system": "einfuse-triton", "cfg": cfg,
                   "error": f"{type(exc).__name__}: {exc}"[:300]}
        row["s"] = round(time.time() - t0, 1)
        results.append(row)
        print(json.dumps(row), flush=True)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the memory ceiling)."""
    import triton

    x = torch.empty(2**29, device="cuda", dtype=torch.bfloat16).normal_()
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=50, return_mode="median")
    return 2 * x.numel() * 2 / (ms * 1e-3) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="lightning,decode_gqa")
    ap.add_argument("--skip", default="", help="comma-separated peers not to time")
    args = ap.parse_args()
    rep = 30 if args.quick else 60
    info = device_info()
    print(json.dumps(info), flush=True)
    results: list[dict[str, Any]] = [{"copy_tb_s": copy_bandwidth()}]
    print(json.dumps(results[0]), flush=True)
    only = args.only.split(",")
    if "lightning" in only:
        lin = [{"chunk": 64, "state_chunk": sc, "num_stages_states": st, "num_stages_output": so}
               for sc, st, so in itertools.product((64, 128, 256), (2, 3, 4), (2, 3))]
        lin += [{"chunk": 64, "state_chunk": 128, "block_k": 32, "block_v": 32, "num_stages_states": 3},
                {"chunk": 64, "state_chunk": 128, "block_k": 128, "block_v": 64, "num_stages_states": 3,
                 "num_warps_states": 8}]
        sweep("lightning", lin, build_linear, rep, results, tuple(args.skip.split(",")))
    if "decode_gqa" in only:
        dec = [{}, {"splits": 16, "block_n": 128, "num_stages": 3}, {"splits": 8, "block_n": 128, "num_stages": 3},
               {"splits": 16, "block_n": 64, "num_stages": 4}]
        sweep("decode_gqa", dec, build_decode, rep, results, tuple(args.skip.split(",")))
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "tune.json"), "w") as fh:
            json.dump({"info": info, "peers": peer_versions(), "results": results}, fh, indent=1)
    print("\n== summary (best first) ==")
    for variant in ("lightning", "decode_gqa"):
        rows = sorted((r for r in results if r.get("variant") == variant and "ms" in r), key=lambda r: r["ms"])
        for r in rows[:8]:
            print(variant, r["system"], r.get("cfg", ""), f"{r['ms']:.4f} ms rel {r['rel_err']:.2e}")
        for r in results:
            if r.get("variant") == variant and r["system"] != "einfuse-triton":
                print(variant, "PEER", r["system"], r.get("ms", r.get("error")))


if __name__ == "__main__":
    main()
