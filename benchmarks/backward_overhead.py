"""Host cost of the backward: prepared backward calls against the GPU time of their kernels.

    python benchmarks/backward_overhead.py                        # -> benchmarks/results/backward_overhead/<device>.{json,md}
    python benchmarks/backward_overhead.py --results-dir $OUT --calls 500
    python benchmarks/backward_overhead.py --dry-run              # CPU interpreter, tiny sizes: paths run, report format

A short backward (na2d 96x96 k13 at B4 H8 D64: ~0.46 ms of kernels on an H200) is timed as its host
path when that is longer. Per case (bf16), each row one way of running the same backward:

* ``kernel_ms``: the sum of the CUDA kernels of one call from ``torch.profiler`` (the floor);
* ``bench_ms``: ``triton.testing.do_bench`` of the call (what benchmark rows report);
* ``host_us``: CPU time per call with the GPU kept busy (the host never waits: pure host cost);

for ``BackwardKernel.__call__`` (prepared: bound launches), ``EINFUSE_FAST_LAUNCH=0`` (prepared,
Triton's launch path), ``call_unprepared`` (everything worked out and launched through Triton each
call, the path before prepared calls), the prepared call with a no-op launcher (its Python alone),
autograd's ``torch.autograd.grad`` of a recorded forward (the backward as training sees it), and the
forward+backward. Numbers are meaningful on an idle host only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if not os.environ.get("PYTHONPATH"):  # this checkout's einfuse, not an installed one
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class BackwardCase:
    name: str
    spec: str
    B: int
    H: int
    Hkv: int
    N: int
    D: int
    runtime: tuple = ()  # (name, builder(N, device)) pairs: captured tensors passed per call


def _doc_ids(n: int, device: Any) -> Any:
    """Documents of 1/8, 3/8, 1/4, 1/4 of the sequence (a packed batch, FlexAttention's document mask)."""
    import torch

    cuts = [0, n // 8, n // 2, 3 * n // 4, n]
    return torch.cat([torch.full((b - a,), i, dtype=torch.int32) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]).to(device)


CASES = [
    BackwardCase("na2d 96x96 k13", "na2d:shape=96x96,kernel=13,head_dim=64", 4, 8, 8, 9216, 64),
    BackwardCase("causal 8K doc mask", "doc_causal", 1, 16, 16, 8192, 128, (("doc_ids", _doc_ids),)),
    BackwardCase("causal 4K", "causal:head_dim=128", 4, 16, 16, 4096, 128),
]
Fn = Callable[[], Any]


def compile_case(case: BackwardCase, n: int, device: Any) -> tuple[Any, dict[str, Any]]:
    """The compiled variant and its per-call keyword arguments (captured tensors)."""
    import einfuse

    runtime = {name: build(n, device) for name, build in case.runtime}
    if case.spec == "doc_causal":
        doc_ids = runtime["doc_ids"]  # the capture's name is the variable's: passed as doc_ids= per call
        c = einfuse.attention("doc_causal", mask_mod=lambda b, h, q, kv: (doc_ids[q] == doc_ids[kv]) & (kv <= q),
                              head_dim=case.D)
        return einfuse.compile(c, decode=False), runtime
    return einfuse.compile(case.spec, decode=False), runtime


def inputs(case: BackwardCase, n: int, batch: int, device: Any, dtype: Any) -> tuple[Any, ...]:
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    mk = lambda *s: torch.randn(*s, device=device, generator=gen).to(dtype)  # noqa: E731
    return (mk(batch, case.H, n, case.D), mk(batch, case.Hkv, n, case.D), mk(batch, case.Hkv, n, case.D),
            mk(batch, case.H, n, case.D))


class _NoLauncher:
    function = None
    packed_metadata = None

    @staticmethod
    def run(*args: Any) -> None:
        return None

    @staticmethod
    def launch_metadata(*args: Any) -> None:
        return None


def systems(case: BackwardCase, f: Any, runtime: dict[str, Any], q: Any, k: Any, v: Any, do: Any) -> dict[str, Fn | str]:
    """Each way of running the case's backward (and the forward+backward), bound to its inputs."""
    import torch

    from einfuse.codegen.autograd import backward_kernel
    from einfuse.codegen.triton.backward import BackwardKernel

    bwd = backward_kernel(f)
    out, lse = f.kernel.forward_with_lse(q, k, v, **runtime)
    call = lambda kern: (lambda: kern(q, k, v, out, lse, do, **runtime))  # noqa: E731
    rows: dict[str, Fn | str] = {"prepared": call(bwd)}
    os.environ["EINFUSE_FAST_LAUNCH"] = "0"
    try:
        slow = BackwardKernel(bwd.forward, bwd.plan)
        slow(q, k, v, out, lse, do, **runtime)  # binds its launches while the variable is set
    finally:
        del os.environ["EINFUSE_FAST_LAUNCH"]
    rows["prepared, Triton launch (EINFUSE_FAST_LAUNCH=0)"] = call(slow)
    rows["unprepared (before)"] = lambda: bwd.call_unprepared(q, k, v, out, lse, do, **runtime)
    quiet = BackwardKernel(bwd.forward, bwd.plan)
    quiet(q, k, v, out, lse, do, **runtime)
    rows["prepared, no-op launcher (Python only)"] = "n/a: no direct launch (CPU or Triton < 3.4)"
    if q.device.type == "cuda":
        launches = [b for p in list(quiet._calls.values()) + list(quiet._capture_calls.values())
                    for b in p.launches if b is not None]
        if launches and all(b.compiled is not None for b in launches):
            for b in launches:
                b.compiled = _NoLauncher
            rows["prepared, no-op launcher (Python only)"] = call(quiet)
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
    rec = f(qg, kg, vg, **runtime)
    rows["autograd.grad"] = lambda: torch.autograd.grad(rec, (qg, kg, vg), do, retain_graph=True)

    def fwd_bwd() -> Any:
        o = f(qg, kg, vg, **runtime)
        return torch.autograd.grad(o, (qg, kg, vg), do)

    rows["forward+backward (autograd)"] = fwd_bwd
    return rows


def kernel_ms(fn: Fn, calls: int = 20) -> float:
    """Sum of the CUDA kernel times of one call, from torch.profiler (mean over ``calls``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total_us = 0.0
    for e in prof.events():
        if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA"):
            total_us += e.device_time if hasattr(e, "device_time") else e.cuda_time
    return total_us / calls / 1e3


def measure(case: BackwardCase, calls: int, log: Any) -> list[dict[str, Any]]:
    import torch
    import triton.testing
    from call_overhead import host_us

    f, runtime = compile_case(case, case.N, "cuda")
    q, k, v, do = inputs(case, case.N, case.B, "cuda", torch.bfloat16)
    rows = []
    for system, fn in systems(case, f, runtime, q, k, v, do).items():
        row: dict[str, Any] = {"case": case.name, "shape": f"B{case.B} H{case.H}/{case.Hkv} N{case.N} D{case.D}",
                               "system": system}
        if isinstance(fn, str):
            row["error"] = fn
        else:
            try:
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
                if "no-op" not in system:
                    row["kernel_ms"] = kernel_ms(fn)
                    row["bench_ms"] = triton.testing.do_bench(fn, warmup=50, rep=300)
                row["host_us"] = host_us(fn, calls)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        rows.append(row)
        print(json.dumps(row), file=log, flush=True)
    return rows


def dry_run(log: Any) -> list[dict[str, Any]]:
    """Without a GPU: every system of every case runs twice at a tiny size in the interpreter and the
    prepared gradients equal the unprepared ones; nothing is timed."""
    import torch

    rows = []
    for case in CASES:
        if case.spec.startswith("na2d"):  # the 96x96 grid is too slow for the interpreter: a 6x6 one
            small = BackwardCase(case.name, "na2d:shape=6x6,kernel=3,head_dim=16", 1, 2, 2, 36, 16)
        else:
            small = BackwardCase(case.name, re.sub(r"head_dim=\d+", "head_dim=16", case.spec), 1, 2, 2, 64, 16,
                                 case.runtime)
        n = small.N
        f, runtime = compile_case(small, n, "cpu")
        q, k, v, do = inputs(small, n, 1, "cpu", torch.float32)
        fns = systems(small, f, runtime, q, k, v, do)
        got = {}
        for system, fn in fns.items():
            if not isinstance(fn, str):
                got[system] = (fn(), fn())
            rows.append({"case": case.name, "shape": f"B{case.B} H{case.H}/{case.Hkv} N{case.N} D{case.D}",
                         "system": system, "error": "dry run: not timed"})
        for a, b in zip(got["prepared"][1], got["unprepared (before)"][0]):
            assert torch.equal(a, b), case.name
        print(f"{case.name}: {len(got)} systems ran; prepared == unprepared", file=log, flush=True)
    return rows


def write_reports(rows: list[dict[str, Any]], info: dict[str, Any], stem: str) -> None:
    with open(stem + ".json", "w") as fh:
        json.dump({"info": info, "rows": rows}, fh, indent=1)
    fmt = lambda x, p: "-" if x is None else f"{x:.{p}f}"  # noqa: E731
    lines = [f"# Backward host cost: {info['device']}", "",
             f"- date: {info['date']}; torch {info['torch']}, triton {info['triton']}, Python {info['python']}; "
             f"einfuse {info.get('einfuse_commit') or 'working tree'}; {info['calls']} calls per host_us",
             "- kernel_ms: sum of the CUDA kernels of one call (torch.profiler); bench_ms: triton do_bench of "
             "the call; host_us: CPU time per call with the GPU kept busy", "",
             "| case | shape | system | kernel_ms | bench_ms | bench / kernel | host_us | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (f"{r['bench_ms'] / r['kernel_ms']:.2f}" if r.get("bench_ms") and r.get("kernel_ms") else "-")
        lines.append(f"| {r['case']} | {r['shape']} | {r['system']} | {fmt(r.get('kernel_ms'), 3)} | "
                     f"{fmt(r.get('bench_ms'), 3)} | {ratio} | {fmt(r.get('host_us'), 1)} | "
                     f"{(r.get('error') or '').replace('|', '/')} |")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500, help="calls per host_us (default 500)")
    ap.add_argument("--results-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                          "backward_overhead"))
    ap.add_argument("--only", help="substring of a case name")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: run every path at tiny sizes, no timings")
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    import triton

    name = "dry run (no GPU)" if args.dry_run else torch.cuda.get_device_name(0)
    info = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "calls": args.calls,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "einfuse_commit": os.environ.get("EINFUSE_COMMIT", "")}
    if args.dry_run:
        rows = dry_run(sys.stderr)
    else:
        rows = []
        for case in CASES:
            if not args.only or args.only in case.name:
                rows += measure(case, args.calls, sys.stderr)
    stem_name = "backward-overhead-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    dirs = [args.results_dir] + ([os.environ["OUT"]] if os.environ.get("OUT") else [])
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        write_reports(rows, info, os.path.join(d, stem_name))
    with open(os.path.join(dirs[0], stem_name + ".md")) as fh:
        print(fh.read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
