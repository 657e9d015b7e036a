"""One call runs the whole GPU benchmark: every variant, einfuse beside the systems a user would pick.

    python benchmarks/run_gpu.py                 # all cases -> benchmarks/results/<device>.{json,md}
    python benchmarks/run_gpu.py --only lightning,decode_gqa --rep 50
    python benchmarks/run_gpu.py --backward      # training: fwd, bwd, fwd+bwd (benchmarks/backward.py)

Each row is timed with ``triton.testing.do_bench`` (median) after a check of its output against the
float64 reference of the same cascade (benchmarks/bench_reference.py) on a slice of heads and
queries. A system that fails to import, refuses the variant or computes something else gets a row
with an ``error`` (and no speed claim). With ``$OUT`` set (the device machine) the results and a log
are also written there.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import re
import sys
import time
import traceback
import zlib
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_cases import Case, select
from bench_peers import NATIVE_BTHD, PEERS, Unsupported, peer_versions
from bench_reference import reference, visible_pairs
from bench_report import write_reports

import einfuse

REL_TOL = 2e-2  # bf16 operands: 1e-3..1e-2 is normal; above 2e-2 the row is marked wrong


CUTLASS_OWNERS = ("Triton-A",)  # the one-pass softmax/sigmoid plans: what the CUTLASS back end prints


def cutlass_cases(cases: list[Case]) -> list[Case]:
    return [c for c in cases if c.owner in CUTLASS_OWNERS and c.D in (64, 128)]


CUTLASS_SYSTEMS = {"einfuse-cutlass": "auto", "einfuse-cutlass-sm80": "sm80", "einfuse-cutlass-sm90ws": "sm90ws",
                   "einfuse-cutlass-sm90pp": "sm90pp"}
"""einfuse-cutlass: the path einfuse picks (wgmma on Hopper); -sm80: the mma.sync path, for comparison;
-sm90ws: the warp-specialised TMA-pipeline kernel; -sm90pp: the same with intra-warpgroup overlap and
ping-pong (both Hopper only), measured before one becomes the default."""


def _build_cutlass(spec: str, head_dim: int, path: str) -> str:
    """Compile one case's CUTLASS kernel (bf16, its head dim, a path) into the on-disk build cache."""
    try:
        from einfuse.codegen.cutlass.build import arch_of, load_extension

        kern = einfuse.compile(spec, target="cutlass", path=path).kernel
        arch = arch_of(0)
        t0 = time.time()
        load_extension(kern.source((("bf16", head_dim),), kern.path_for(arch)), arch)
        return f"{spec} ({path}): built in {time.time() - t0:.0f}s"
    except Exception as exc:  # noqa: BLE001 - the case's row reports it again when it runs
        return f"{spec} ({path}): {type(exc).__name__}: {str(exc)[-300:]}"


def prebuild_cutlass(cases: list[Case], log: Any, systems: list[str] | None = None) -> None:
    """nvcc takes ~1 min per kernel: build every case's kernel (of the asked CUTLASS systems) at once,
    one process each."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    todo = cutlass_cases(cases)
    if not todo:
        return
    t0 = time.time()
    paths = [path for name, path in CUTLASS_SYSTEMS.items() if not systems or name in systems]
    jobs = [(c.spec, c.D, path) for c in todo for path in paths]
    if not jobs:
        return
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1),
                             mp_context=get_context("spawn")) as pool:
        for line in pool.map(_build_cutlass, *zip(*jobs)):
            print(f"[cutlass] {line}", file=log, flush=True)
    print(f"[cutlass] {len(jobs)} kernels built in {time.time() - t0:.0f}s", file=log, flush=True)


def make_einfuse(case: Case, options: dict[str, Any], target: str = "triton") -> tuple[Any, str]:
    """einfuse's kernel for the case: through ``einfuse.compile`` when it exists, else the builder."""
    if target == "cutlass":
        return (einfuse.compile(case.spec, target="cutlass", **options),
                f"einfuse.compile(target='cutlass', path='{options.get('path', 'auto')}')")
    cascade = einfuse.load_spec(case.spec)
    family = cascade.attrs.get("family")
    compile_error = None
    if hasattr(einfuse, "compile"):
        try:
            return einfuse.compile(case.spec, **options), "einfuse.compile"
        except Exception as exc:  # noqa: BLE001 - recorded, then the direct builder is tried
            compile_error = f"{type(exc).__name__}: {exc}"
    if family == "linear":
        from einfuse.codegen.triton.linear import build_linear

        return build_linear(cascade, **options), "build_linear" + (f" (compile: {compile_error})"
                                                                   if compile_error else "")
    if cascade.attrs.get("decode"):
        from einfuse.codegen.triton.decode import build_decode

        return build_decode(cascade, **options), "build_decode" + (f" (compile: {compile_error})"
                                                                   if compile_error else "")
    raise NotImplementedError(compile_error or "not implemented (einfuse.compile missing)")


def _inputs(case: Case, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape_q = (case.B, case.H, case.NQ, case.D)
    shape_kv = (case.B, case.Hkv, case.NK, case.D)
    mk = lambda s: torch.randn(s, generator=gen, device="cuda", dtype=torch.bfloat16)
    return mk(shape_q), mk(shape_kv), mk(shape_kv)


def _slice(case: Case) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Batch, heads and queries checked: first/last head, first/last queries and a spread between."""
    heads = torch.tensor(sorted({0, case.H // 2, case.H - 1}), device="cuda")
    n = case.NQ
    picks = set(range(min(n, 8))) | set(range(max(0, n - 32), n)) | set(range(0, n, max(1, n // 64)))
    return case.B - 1, heads, torch.tensor(sorted(picks), device="cuda")


def _prep(case: Case, cascade: einfuse.Cascade) -> dict[str, Any]:
    prep: dict[str, Any] = {}
    if case.variant == "lightning":
        from einfuse.ir.positions import equal_length_cascade
        from einfuse.ir.ranks import HEAD_EXTENT, HEAD_INDEX
        from einfuse.ir.symeval import evaluate
        from einfuse.lowering.linear import DIST, analyse_linear

        plan = analyse_linear(equal_length_cascade(cascade))  # as build_linear reads it
        import numpy as np

        g1 = evaluate(plan.decay, {DIST: np.float64(1), HEAD_INDEX: np.arange(case.H, dtype=np.float64),
                                   HEAD_EXTENT: np.float64(case.H)}) * np.ones(case.H)
        prep["rates"] = torch.tensor(-np.log(g1), device="cuda", dtype=torch.float32)
    if case.variant == "sigmoid_causal":
        prep["causal_mask"] = torch.ones(case.NQ, case.NK, device="cuda", dtype=torch.bool).triu(1)
    return prep


def _metric(case: Case, ms: float, pairs: int) -> dict[str, float]:
    if case.metric == "mtok_s":
        return {"mtok_s": case.B * case.NQ / (ms * 1e-3) / 1e6}
    if case.metric == "tb_s":
        kv_bytes = 2 * case.B * case.Hkv * case.NK * case.D * 2
        return {"tb_s": kv_bytes / (ms * 1e-3) / 1e12}
    return {"tflops": 4.0 * case.B * case.H * pairs * case.D / (ms * 1e-3) / 1e12}


def run_case(case: Case, systems: list[str], device: str, rep: int, warmup: int,
             einfuse_options: dict[str, Any], log: Any) -> list[dict[str, Any]]:
    import triton

    cascade = einfuse.load_spec(case.spec)
    q, k, v = _inputs(case, seed=zlib.crc32(case.variant.encode()) % 10000)
    b, heads, qidx = _slice(case)
    t0 = time.time()
    ref = reference(cascade, q, k, v, b, heads, qidx)
    pairs = visible_pairs(cascade, case.NQ, case.NK) if case.metric == "tflops" else 0
    prep = _prep(case, cascade)
    print(f"[{case.variant}] reference + mask count {time.time() - t0:.1f}s", file=log, flush=True)
    rows = []
    for system in systems:
        row: dict[str, Any] = {"device": device, "variant": case.variant, "shape": case.shape,
                               "system": system, "spec": case.spec, "owner": case.owner}
        t0 = time.time()
        try:
            if system in CUTLASS_SYSTEMS:
                fn, via = make_einfuse(case, {"path": CUTLASS_SYSTEMS[system]}, target="cutlass")
                to_native = lambda *x: x
                row["via"] = via
            elif system == "einfuse-triton":
                fn, via = make_einfuse(case, einfuse_options.get(case.variant, {}))
                to_native = lambda *x: x
                row["via"] = via
            else:
                fn, to_native = PEERS[system](case, prep)
            args = to_native(q, k, v)
            out = fn(*args)
            if isinstance(out, tuple):
                out = out[0]
            if system in NATIVE_BTHD:
                out = out.transpose(1, 2)
            torch.cuda.synchronize()
            got = out[b][heads][:, qidx].double()
            if not torch.isfinite(got).all():
                raise ValueError("non-finite output")
            rel = float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))
            row["rel_err"] = rel
            if rel > REL_TOL:
                row["error"] = f"wrong result: rel_err {rel:.3g} > {REL_TOL}"
            del out, got
            ms = triton.testing.do_bench(lambda fn=fn, args=args: fn(*args), warmup=warmup, rep=rep,
                                         return_mode="median")
            row["ms"] = ms
            row.update(_metric(case, ms, pairs))
        except Unsupported as exc:
            row["error"] = f"unsupported: {exc}"
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            traceback.print_exc(file=log)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps(row), file=log, flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    return rows


def retime_einfuse(case: Case, rows: list[dict[str, Any]], rep: int, warmup: int,
                   einfuse_options: dict[str, Any], log: Any) -> None:
    """Pass 2: time the case's einfuse rows again after every case's pass 1 ran (other processes'
    load, clocks and host contention then differ); bench_report flags rows whose passes differ."""
    import triton

    mine = [r for r in rows if r["variant"] == case.variant and r["system"].startswith("einfuse-") and "ms" in r]
    if not mine:
        return
    q, k, v = _inputs(case, seed=zlib.crc32(case.variant.encode()) % 10000)
    for row in mine:
        try:
            if row["system"] in CUTLASS_SYSTEMS:
                fn, _ = make_einfuse(case, {"path": CUTLASS_SYSTEMS[row["system"]]}, target="cutlass")
            else:
                fn, _ = make_einfuse(case, einfuse_options.get(case.variant, {}))
            fn(q, k, v)
            row["ms_pass2"] = triton.testing.do_bench(lambda fn=fn, a=(q, k, v): fn(*a), warmup=warmup, rep=rep,
                                                      return_mode="median")
        except Exception as exc:  # noqa: BLE001 - recorded; pass 1 stands
            row["pass2_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        print(json.dumps({"variant": case.variant, "system": row["system"], "pass1": row["ms"],
                          "pass2": row.get("ms_pass2")}), file=log, flush=True)
    del q, k, v
    gc.collect()
    torch.cuda.empty_cache()


def device_info() -> dict[str, Any]:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
        "peers": peer_versions(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "einfuse_commit": os.environ.get("EINFUSE_COMMIT", ""),
    }


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--backward" in argv:  # forward + backward timings: benchmarks/backward.py (its own options)
        import backward

        return backward.main([a for a in argv if a != "--backward"])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated case variants (default: all)")
    ap.add_argument("--systems", help="comma-separated systems (default: einfuse-triton + the case's peers)")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time, ms")
    ap.add_argument("--results-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", help="results file stem (default: the device name)")
    ap.add_argument("--no-cutlass", action="store_true", help="skip the einfuse-cutlass rows (nvcc builds)")
    ap.add_argument("--einfuse-options", default="{}", help='JSON {"variant": {option: value}}')
    ap.add_argument("--single-pass", action="store_true",
                    help="time einfuse rows once (default: a second pass after all cases, for repeatability)")
    args = ap.parse_args(argv)
    info = device_info()
    out_dir = os.environ.get("OUT")
    log = open(os.path.join(out_dir, "bench.log"), "a") if out_dir else sys.stderr  # noqa: SIM115
    print(json.dumps(info), file=log, flush=True)
    opts = json.loads(args.einfuse_options)
    rows: list[dict[str, Any]] = []
    stem = args.name or slug(info["device"])
    dirs = [args.results_dir] + ([out_dir] if out_dir else [])
    done: list[Case] = []
    cases = select(args.only)
    with_cutlass = not args.no_cutlass and (not args.systems or "einfuse-cutlass" in args.systems)
    if with_cutlass:
        prebuild_cutlass(cases, log, args.systems.split(",") if args.systems else None)
    for case in cases:
        systems = ["einfuse-triton", *(list(CUTLASS_SYSTEMS) if with_cutlass and case in cutlass_cases([case])
                                       else []), *case.peers]
        if args.systems:
            systems = [s for s in args.systems.split(",") if s in systems]
        rows += run_case(case, systems, info["device"], args.rep, args.warmup, opts, log)
        done.append(case)
        for d in dirs:  # after every case, so a run cut short still leaves its results
            os.makedirs(d, exist_ok=True)
            write_reports(rows, info, done, os.path.join(d, stem))
        for r in rows[-len(systems):]:
            print(f"{r['variant']:15s} {r['system']:16s} ms={r.get('ms', float('nan')):.4f} "
                  f"rel={r.get('rel_err', float('nan')):.2e} {r.get('error', '')[:90]}", flush=True)
    if not args.single_pass:
        for case in done:
            retime_einfuse(case, rows, args.rep, args.warmup, opts, log)
        for d in dirs:
            write_reports(rows, info, done, os.path.join(d, stem))
    with open(os.path.join(dirs[-1], stem + ".md")) as fh:
        print(fh.read())
    return 0 if all(math.isfinite(r.get("ms", 0.0)) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
