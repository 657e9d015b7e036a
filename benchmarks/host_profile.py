"""Host (Python) cost of an eager call, measured on the CPU without a GPU: the kernels' launches
are replaced by no-ops, so what is timed is einfuse's wrapper (signature lookup, checks, plan,
allocation of the output) and nothing of Triton's launcher or the GPU.

    python benchmarks/host_profile.py                 # the three call_overhead cases, us per call
    python benchmarks/host_profile.py --profile       # and where the time goes (cProfile, top 15)
    PYTHONPATH=/path/to/other/checkout python benchmarks/host_profile.py   # the same for another version

It sets ``TRITON_INTERPRET=1`` and patches ``InterpretedFunction.run`` (the interpreter's launch)
to return at once, so it times any einfuse version the same way. Allocations are CPU ``torch.empty``
(malloc), dearer than CUDA's caching allocator (na2d's 38 MB output most of all); ``--no-alloc``
times the calls without them. Numbers
scale with the host's single-thread speed: compare versions on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ["TRITON_INTERPRET"] = "1"
if not os.environ.get("PYTHONPATH"):  # this checkout's einfuse, not an installed one
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
from call_overhead import CASES  # noqa: E402 - the same cases as the GPU measurement


def per_call_us(fn: Callable[[], Any], calls: int, repeats: int = 5) -> float:
    """Best of ``repeats`` means over ``calls`` calls, in CPU time of this process (other processes
    on a shared host then cost little; the minimum is the least disturbed)."""
    for _ in range(20):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t) / calls * 1e6)
    return best


class _NoLaunch:
    """Stands in for a ``CompiledKernel``: the direct launch path runs all its Python, then
    calls this launcher, which does nothing (on a GPU, Triton's C launcher runs here)."""

    function = None
    packed_metadata = None

    @staticmethod
    def run(*args: Any) -> None:
        return None


def _cache_allocations(torch: Any) -> None:
    """Make ``torch.empty`` return one tensor per (shape, dtype, device), allocated once."""
    real, pool = torch.empty, {}

    def empty(*shape: Any, dtype: Any = None, device: Any = None, **kw: Any) -> Any:
        key = (shape, dtype, str(device))
        if key not in pool:
            pool[key] = real(*shape, dtype=dtype, device=device, **kw)
        return pool[key]

    torch.empty = empty


def _stub_direct_launch() -> bool:
    """With einfuse's BoundLaunch (the launch cache), make each launch after the first take the
    direct path the GPU takes, ending in a no-op launcher; False for versions without it."""
    try:
        from einfuse.codegen.triton import launch
    except ImportError:
        return False
    from triton import knobs

    first = launch.BoundLaunch.first

    def first_then_direct(self: Any, *tensors: Any) -> None:
        first(self, *tensors)
        launch._RUNTIME, launch._data_ptr = knobs.runtime, type(tensors[0]).data_ptr
        self._device, self._stream, self.compiled = -1, lambda device: 0, _NoLaunch

    launch.BoundLaunch.first = first_then_direct
    return True


def _parts(f: Any, q: Any, k: Any, v: Any, calls: int) -> dict[str, float]:
    """Each step of a cached eager call timed alone, in the order the call runs them."""
    from einfuse.codegen.compile import _compiling
    from einfuse.codegen.triton.launch import plain_call, signature_key

    key = signature_key(q, k, v, {})
    prepared = f._calls[key]
    steps: dict[str, Callable[[], Any]] = {
        "is_compiling": _compiling,
        "plain_call": lambda: plain_call(q, k, v),
        "signature_key": lambda: signature_key(q, k, v, {}),
        "cache lookup": lambda: f._calls.get(key),
    }
    bound = getattr(prepared, "launch", None)
    if bound is not None:  # the forward kernel: output allocation, then the launch's own Python
        out = prepared._empty(prepared.shape, dtype=prepared.dtype, device=prepared.device)
        steps["allocate output"] = lambda: prepared._empty(prepared.shape, dtype=prepared.dtype,
                                                           device=prepared.device)
        steps["launch (no-op launcher)"] = lambda: bound(q, k, v, out, out)
    else:  # decode/linear: allocations and launches together
        steps["allocate + launches"] = lambda: prepared(q, k, v)
    return {name: per_call_us(fn, calls) for name, fn in steps.items()}


def _backward_cases(calls: int, profile: bool) -> dict[str, float]:
    """Host cost of one backward call of na2d 96x96 k13 (B4 H8 D64, bf16): the prepared call (after
    its first), and the unprepared path (configs, tables, arguments worked out, Triton's launch)."""
    import torch

    import einfuse
    from einfuse.codegen.autograd import backward_kernel

    case = next(c for c in CASES if c.name.startswith("na2d"))
    f = einfuse.compile(case.spec)
    bwd = backward_kernel(f)
    q, do = (torch.randn(case.B, case.H, case.NQ, case.D, dtype=torch.bfloat16) for _ in range(2))
    k, v = (torch.randn(case.B, case.Hkv, case.NK, case.D, dtype=torch.bfloat16) for _ in range(2))
    lse = torch.zeros(case.B, case.H, case.NQ)
    out = torch.randn_like(q)
    bwd(q, k, v, out, lse, do)  # prepares: not timed
    res = {"prepared": per_call_us(lambda: bwd(q, k, v, out, lse, do), max(calls // 4, 50)),
           "unprepared": per_call_us(lambda: bwd.call_unprepared(q, k, v, out, lse, do), max(calls // 10, 20))}
    for name, us in res.items():
        print(f"{'na2d 96x96 k13 backward, ' + name:32s} {us:8.2f} us per call (no launch)", flush=True)
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(max(calls // 4, 50)):
            bwd(q, k, v, out, lse, do)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile of each case")
    ap.add_argument("--only", help="substring of a case name")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--parts", action="store_true",
                    help="also time each step of a cached call on its own (where the time goes)")
    ap.add_argument("--backward", action="store_true",
                    help="also time the backward of the na2d case (BackwardKernel call: prepared and unprepared)")
    ap.add_argument("--no-alloc", action="store_true",
                    help="torch.empty hands back one cached tensor per shape (CPU malloc of large outputs "
                         "costs far more than CUDA's caching allocator)")
    args = ap.parse_args(argv)

    import torch
    from triton.runtime import interpreter

    import einfuse

    interpreter.InterpretedFunction.run = lambda self, *a, **k: None  # the launch: a no-op
    if args.no_alloc:
        _cache_allocations(torch)
    direct = _stub_direct_launch()
    results = {"einfuse": os.path.dirname(einfuse.__file__), "torch": torch.__version__, "cases": {}}
    empty_us = per_call_us(lambda: torch.empty((1, 8, 128, 64), dtype=torch.bfloat16), args.calls)
    results["cpu_torch_empty_us"] = empty_us
    print(f"einfuse from {results['einfuse']}; one CPU torch.empty: {empty_us:.2f} us; "
          f"{'direct launch path (BoundLaunch) with a no-op launcher' if direct else 'interpreter launch: no-op'}")
    for case in CASES:
        name = case.name
        if args.only and args.only not in name:
            continue
        f = einfuse.compile(case.spec)
        q = torch.randn(case.B, case.H, case.NQ, case.D, dtype=torch.bfloat16)
        k, v = (torch.randn(case.B, case.Hkv, case.NK, case.D, dtype=torch.bfloat16) for _ in range(2))
        with torch.no_grad():
            f(q, k, v)  # the first call prepares (tables, plan): not timed
        us = per_call_us(lambda: f(q, k, v), args.calls)
        results["cases"][name] = us
        print(f"{name:32s} {us:8.2f} us per call (no launch)", flush=True)
        if args.parts and direct:
            parts = _parts(f, q, k, v, args.calls)
            results.setdefault("parts", {})[name] = parts
            print("    " + ", ".join(f"{p} {t:.2f}" for p, t in parts.items()) + " (us)")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.calls):
                f(q, k, v)
            prof.disable()
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    if args.backward:
        results["backward"] = _backward_cases(args.calls, args.profile)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
