"""Host cost of one eager call: einfuse beside SDPA and FlexAttention, on a GPU.

    python benchmarks/call_overhead.py                          # -> benchmarks/results/call_overhead/<device>.{json,md}
    python benchmarks/call_overhead.py --results-dir $OUT --calls 1000
    python benchmarks/call_overhead.py --dry-run --results-dir /tmp/co   # CPU: cases, einfuse compiles, report format

A kernel shorter than its launch path is timed as the launch path, so short kernels (small decode
batches, tiny prefill) need a cheap one. Per (case, system), each over ``--calls`` calls:

* ``host_us``: CPU time per call with the GPU kept busy (``torch.cuda._sleep`` before each batch
  of 100 calls), so the host never waits for the device: the pure host cost of a call;
* ``wall_us``: the whole call, host included: ``--calls`` calls back to back on a CPU clock,
  synchronised at the end, divided by the count (what a serving loop of eager calls sees);
* ``graph_us``: the same calls as replays of a CUDA graph that captured one call (device time plus
  the graph launch; einfuse's capture needs one warm-up call per signature, as any Triton kernel).

einfuse is also timed with ``EINFUSE_FAST_LAUNCH=0`` (Triton's own launch path after the first call)
and with its launcher replaced by a no-op (``no launch``: the Python of the call alone, whose
difference to ``host_us`` is Triton's C launcher and the driver). Numbers are meaningful on an idle
host only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class OverheadCase:
    name: str
    spec: str
    B: int
    H: int
    Hkv: int
    NQ: int
    NK: int
    D: int
    causal: bool = False
    na_shape: tuple[int, ...] = ()
    na_kernel: int = 0


CASES = [
    OverheadCase("tiny softmax", "softmax:head_dim=64", 1, 8, 8, 128, 128, 64),
    OverheadCase("decode B1 ctx 1K GQA 4:1", "decode:head_dim=128", 1, 32, 8, 1, 1024, 128),
    OverheadCase("na2d 96x96 k13", "na2d:shape=96x96,kernel=13,head_dim=64", 4, 8, 8, 9216, 9216, 64,
                 na_shape=(96, 96), na_kernel=13),
]
SYSTEMS = ("einfuse", "einfuse (Triton launch)", "einfuse (no launch)", "sdpa", "flex")
Fn = Callable[[], Any]


def shape_of(c: OverheadCase) -> str:
    return f"B{c.B} H{c.H}/{c.Hkv} Nq{c.NQ} Nkv{c.NK} D{c.D}"


def host_us(fn: Fn, calls: int, batch: int = 100) -> float:
    """CPU microseconds per call while the GPU is busy (the host never waits for it)."""
    import torch

    total, done = 0.0, 0
    while done < calls:
        n = min(batch, calls - done)
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU spin: longer than n calls take to enqueue
        t = time.perf_counter()
        for _ in range(n):
            fn()
        total += time.perf_counter() - t
        done += n
        torch.cuda.synchronize()
    return total / calls * 1e6


def wall_us(fn: Fn, calls: int) -> float:
    """Whole-call microseconds: ``calls`` calls back to back, synchronised at the end."""
    import torch

    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


def graph_us(fn: Fn, calls: int) -> float:
    """Microseconds per replay of a CUDA graph holding one call."""
    import torch

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    return wall_us(graph.replay, calls)


def make_systems(case: OverheadCase) -> dict[str, Fn | str]:
    """Each system's call on the case's bf16 inputs, or why it cannot run the case."""
    import torch
    import torch.nn.functional as F
    from bench_peers import _flex

    import einfuse

    gen = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda *s: torch.randn(*s, device="cuda", generator=gen).to(torch.bfloat16)
    q, k, v = mk(case.B, case.H, case.NQ, case.D), mk(case.B, case.Hkv, case.NK, case.D), mk(case.B, case.Hkv, case.NK, case.D)
    out: dict[str, Fn | str] = {}
    f = einfuse.compile(case.spec)
    out["einfuse"] = lambda: f(q, k, v)
    os.environ["EINFUSE_FAST_LAUNCH"] = "0"
    try:
        slow = einfuse.compile(case.spec)
        slow(q, k, v)  # the first call binds its launches while the variable is set
    finally:
        del os.environ["EINFUSE_FAST_LAUNCH"]
    out["einfuse (Triton launch)"] = lambda: slow(q, k, v)
    out["einfuse (no launch)"] = _without_launch(case, q, k, v)
    if case.na_shape:
        out["sdpa"] = "unsupported: SDPA has no neighbourhood mask (only a dense one)"
    else:
        gqa = {"enable_gqa": True} if case.H != case.Hkv else {}
        out["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, **gqa)
    peer = _FlexCase(case)
    try:
        fx, _ = _flex(peer, {})
        out["flex"] = lambda: fx(q, k, v)
    except Exception as exc:  # noqa: BLE001 - recorded as the row's error
        out["flex"] = f"{type(exc).__name__}: {exc}"
    return out


class _FlexCase:
    """The attributes bench_peers' Flex wrapper reads, for one overhead case."""

    def __init__(self, c: OverheadCase) -> None:
        self.variant = "na2d" if c.na_shape else ("causal" if c.causal else "softmax")
        self.H, self.Hkv, self.NQ, self.NK, self.D = c.H, c.Hkv, c.NQ, c.NK, c.D
        self.extra = {"shape": c.na_shape, "kernel": c.na_kernel} if c.na_shape else {}


class _NoLauncher:
    """Stands in for Triton's CompiledKernel: the direct launch path runs all its Python and then
    this launcher, which does nothing."""

    function = None
    packed_metadata = None

    @staticmethod
    def run(*args: Any) -> None:
        return None

    @staticmethod
    def launch_metadata(*args: Any) -> None:
        return None


def _without_launch(case: OverheadCase, q: Any, k: Any, v: Any) -> Fn | str:
    """einfuse's call with the final launches replaced by no-ops: the Python of a call alone."""
    import einfuse
    from einfuse.codegen.triton.launch import BoundLaunch

    f = einfuse.compile(case.spec)
    f(q, k, v)  # prepares and binds
    prepared = next(iter(f._calls.values()))
    bound = [b for b in (getattr(prepared, n, None) for n in ("launch", "partial", "combine", "states", "output"))
             if isinstance(b, BoundLaunch)]
    if not bound:
        return "n/a: this call launches through Triton's own path"
    for b in bound:
        if b.compiled is None:
            raise RuntimeError("the direct launch path is off (EINFUSE_FAST_LAUNCH=0 or Triton < 3.4)")
        b.compiled = _NoLauncher
    return lambda: f(q, k, v)


def measure(case: OverheadCase, calls: int, log: Any) -> list[dict[str, Any]]:
    import torch

    rows = []
    for system, fn in make_systems(case).items():
        row: dict[str, Any] = {"case": case.name, "shape": shape_of(case), "spec": case.spec, "system": system}
        if isinstance(fn, str):
            row["error"] = fn
        else:
            try:
                for _ in range(20):
                    fn()
                torch.cuda.synchronize()
                row["host_us"] = host_us(fn, calls)
                row["wall_us"] = wall_us(fn, calls)
                if system != "einfuse (no launch)":
                    try:
                        row["graph_us"] = graph_us(fn, calls)
                    except Exception as exc:  # noqa: BLE001 - a peer that cannot be captured
                        row["graph_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        rows.append(row)
        print(json.dumps(row), file=log, flush=True)
    return rows


def write_reports(rows: list[dict[str, Any]], info: dict[str, Any], stem: str) -> None:
    with open(stem + ".json", "w") as fh:
        json.dump({"info": info, "rows": rows}, fh, indent=1)
    f = lambda x: "-" if x is None else f"{x:.1f}"
    lines = [f"# Host cost per eager call: {info['device']}", "",
             f"- date: {info['date']}; torch {info['torch']}, triton {info['triton']}, Python {info['python']}; "
             f"einfuse {info.get('einfuse_commit') or 'working tree'}; {info['calls']} calls per number",
             "- host_us: CPU time per call with the GPU kept busy (pure host cost); wall_us: the whole call, "
             "host included, CPU clock over all calls, synchronised at the end; graph_us: replays of a CUDA "
             "graph of one call",
             "- einfuse (Triton launch): EINFUSE_FAST_LAUNCH=0; einfuse (no launch): the launcher replaced by a "
             "no-op (the Python of the call alone)",
             *[f"- **note**: {n}" for n in info.get("notes", [])], "",
             "| case | shape | system | host_us | wall_us | graph_us | host / SDPA | wall / SDPA | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    sdpa = {r["case"]: r for r in rows if r["system"] == "sdpa" and "error" not in r}
    for r in rows:
        s = sdpa.get(r["case"], {})
        ratio = lambda key: (f"{r[key] / s[key]:.2f}" if key in r and key in s and s[key] else "-")
        note = (r.get("error") or r.get("graph_error") or "").replace("|", "/")
        lines.append(f"| {r['case']} | {r['shape']} | {r['system']} | {f(r.get('host_us'))} | "
                     f"{f(r.get('wall_us'))} | {f(r.get('graph_us'))} | {ratio('host_us')} | {ratio('wall_us')} | "
                     f"{note} |")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


def device_info(calls: int, dry_run: bool) -> dict[str, Any]:
    import torch
    import triton

    name = "dry run (no GPU)" if dry_run else torch.cuda.get_device_name(0)
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "calls": calls,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "einfuse_commit": os.environ.get("EINFUSE_COMMIT", "")}


def dry_run(log: Any) -> list[dict[str, Any]]:
    """Without a GPU: compile every case's einfuse kernel and run it once at a tiny size in the
    Triton interpreter, so the script's cases and report are checked; no timings."""
    import torch

    import einfuse

    rows = []
    for case in CASES:
        f = einfuse.compile(case.spec)
        n = case.NK if case.na_shape else min(case.NK, 64)
        nq = n if case.NQ == case.NK else case.NQ
        q = torch.randn(1, case.H, nq, case.D)
        kv = torch.randn(1, case.Hkv, n, case.D)
        if not case.na_shape:  # a 96x96 grid is too slow for the interpreter: compiled only
            f(q, kv, kv)
        for system in SYSTEMS:
            rows.append({"case": case.name, "shape": shape_of(case), "spec": case.spec, "system": system,
                         "error": "dry run: not timed"})
        print(f"{case.name}: einfuse compiled ({case.spec})", file=log, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000, help="calls per number (default 1000)")
    ap.add_argument("--results-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                          "call_overhead"))
    ap.add_argument("--only", help="substring of a case name")
    ap.add_argument("--dry-run", action="store_true", help="no GPU: check cases and report format only")
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    info = device_info(args.calls, args.dry_run)
    if args.dry_run:
        rows = dry_run(sys.stderr)
    else:
        rows = []
        for case in CASES:
            if not args.only or args.only in case.name:
                rows += measure(case, args.calls, sys.stderr)
    stem_name = "call-overhead-" + re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")
    dirs = [args.results_dir] + ([os.environ["OUT"]] if os.environ.get("OUT") else [])
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        write_reports(rows, info, os.path.join(d, stem_name))
    with open(os.path.join(dirs[0], stem_name + ".md")) as fh:
        print(fh.read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
