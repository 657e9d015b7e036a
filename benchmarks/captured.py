"""Captured tensors on the GPU: document masking and Swin relative-position bias, einfuse vs FlexAttention.

    python benchmarks/captured.py                  # H100/H200: all cases -> benchmarks/results/captured-<device>.{json,md}
    python benchmarks/captured.py --dry-run        # CPU (Triton interpreter): tiny sizes, correctness only

Both systems get the same mods, written once as FlexAttention users write them (closures over a
``doc_ids`` tensor and a ``(heads, (2w-1)^2)`` bias table); Flex runs compiled
(``torch.compile(flex_attention)``) with a block mask from ``create_block_mask`` built once outside
the timing, einfuse with its run-time block tables (built on the first call, cached while the ids
are unchanged). Every row is checked against a float32 torch reference (on a slice of the
document-mask problem, in full for Swin) before it is timed with ``triton.testing.do_bench``
(median). The mask build (Flex's ``create_block_mask`` vs einfuse's tables for new ids) is timed
separately. The target is einfuse >= 1.0x Flex on the attention call; rows below are flagged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# this checkout's einfuse, whatever is installed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGET = 1.0
REL_TOL = 2e-2  # bf16 operands


@dataclass
class Case:
    name: str
    B: int
    H: int
    N: int
    D: int
    kind: str  # "docs" | "swin"
    extra: dict[str, Any] = field(default_factory=dict)


GPU_CASES = [
    Case("docs_causal_16k", 1, 16, 16384, 128, "docs", {"causal": True, "docs": 12}),
    Case("docs_full_16k", 1, 16, 16384, 128, "docs", {"causal": False, "docs": 12}),
    Case("docs_causal_32k_d64", 1, 32, 32768, 64, "docs", {"causal": True, "docs": 24}),
    Case("swin_w8", 2048, 8, 64, 32, "swin", {"window": 8}),
    Case("swin_w16", 512, 8, 256, 32, "swin", {"window": 16}),
]
DRY_CASES = [
    Case("docs_causal_tiny", 1, 2, 160, 32, "docs", {"causal": True, "docs": 4}),
    Case("swin_w4_tiny", 6, 2, 16, 16, "swin", {"window": 4}),
]


def doc_ids_for(case: Case, device: str) -> torch.Tensor:
    """Packed documents of random lengths (fixed seed), ids 0..docs-1 in order."""
    g = torch.Generator().manual_seed(1234)
    cuts = torch.sort(torch.randperm(case.N - 1, generator=g)[: case.extra["docs"] - 1] + 1).values
    lengths = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([case.N])]))
    return torch.repeat_interleave(torch.arange(len(lengths)), lengths).to(device)


def mods(case: Case, device: str) -> tuple[Callable | None, Callable | None, dict[str, torch.Tensor]]:
    """(score_mod, mask_mod, captured tensors): one definition for Flex and einfuse."""
    if case.kind == "docs":
        doc_ids = doc_ids_for(case, device)
        if case.extra["causal"]:
            def mask_mod(b, h, q, kv):
                return (doc_ids[q] == doc_ids[kv]) & (q >= kv)
        else:
            def mask_mod(b, h, q, kv):
                return doc_ids[q] == doc_ids[kv]
        return None, mask_mod, {"doc_ids": doc_ids}
    w = case.extra["window"]
    g = torch.Generator().manual_seed(99)
    table = (0.5 * torch.randn(case.H, (2 * w - 1) ** 2, generator=g)).to(device)

    def score_mod(s, b, h, q, kv):
        return s + table[h, (q // w - kv // w + w - 1) * (2 * w - 1) + (q % w - kv % w + w - 1)]
    return score_mod, None, {"table": table}


def reference(case: Case, q, k, v, caps: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """float32 torch attention for query ``rows`` (all batches and heads)."""
    scale = 1 / math.sqrt(case.D)
    qf, kf, vf = q[:, :, rows].float(), k.float(), v.float()
    s = qf @ kf.transpose(-1, -2) * scale
    qi, ki = rows.view(-1, 1), torch.arange(case.N, device=q.device).view(1, -1)
    if case.kind == "docs":
        d = caps["doc_ids"]
        keep = d[qi] == d[ki]
        if case.extra["causal"]:
            keep = keep & (qi >= ki)
        s = s.masked_fill(~keep, -math.inf)
    else:
        w = case.extra["window"]
        idx = (qi // w - ki // w + w - 1) * (2 * w - 1) + (qi % w - ki % w + w - 1)
        s = s + caps["table"][:, idx].unsqueeze(0)
    return torch.softmax(s, -1).nan_to_num(0.0) @ vf


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


def timer(dry: bool, warmup: int, rep: int) -> Callable[[Callable], float]:
    if not dry:
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))

    def wall(fn: Callable) -> float:
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return wall


def flex_system(case: Case, score_mod, mask_mod, device: str) -> tuple[Callable, Callable[[], Any]]:
    """(attention call, block-mask build) for compiled FlexAttention."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    cfg = torch._dynamo.config  # past the recompile limit dynamo silently runs Flex eagerly (bench_peers.py)
    for name, value in (("cache_size_limit", 64), ("recompile_limit", 64),
                        ("accumulated_cache_size_limit", 1024), ("accumulated_recompile_limit", 1024)):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), value))
    fa = torch.compile(flex_attention, dynamic=False)

    def build():
        if mask_mod is None:
            return None
        return create_block_mask(mask_mod, None, None, case.N, case.N, device=device, _compile=True)
    block_mask = build()

    def fn(q, k, v):
        return fa(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1 / math.sqrt(case.D))
    return fn, build


def einfuse_system(case: Case, score_mod, mask_mod, autotune: bool) -> tuple[Any, Callable]:
    import einfuse as ef

    c = ef.attention(case.name, score_mod=score_mod, mask_mod=mask_mod, head_dim=case.D)
    fn = ef.compile(c, **({"autotune": True} if autotune else {}))
    return fn, c


def run_case(case: Case, dry: bool, timeit: Callable, autotune: bool, log) -> list[dict[str, Any]]:
    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    torch.manual_seed(0)
    q, k, v = (torch.randn(case.B, case.H, case.N, case.D, device=device, dtype=dtype) for _ in range(3))
    score_mod, mask_mod, caps = mods(case, device)
    g = torch.Generator().manual_seed(5)
    rows = torch.sort(torch.randperm(case.N, generator=g)[: min(case.N, 1024)]).values.to(device)
    bsl = slice(0, min(case.B, 64))  # the reference on a slice of the batch (all of it for docs: B=1)
    want = reference(case, q[bsl], k[bsl], v[bsl], caps, rows)
    base = {"case": case.name, "kind": case.kind, "B": case.B, "H": case.H, "N": case.N, "D": case.D,
            "dtype": str(dtype).replace("torch.", ""), **{f"x_{k}": v for k, v in case.extra.items()}}
    out: list[dict[str, Any]] = []

    ef_fn, _ = einfuse_system(case, score_mod, mask_mod, autotune and not dry)
    row = {**base, "system": "einfuse"}
    try:
        got = ef_fn(q, k, v)
        row["rel_err"] = rel_err(got[bsl][:, :, rows], want)
        row["ok"] = row["rel_err"] < REL_TOL
        row["ms"] = timeit(lambda: ef_fn(q, k, v))
        tables = getattr(ef_fn.kernel, "last_tables", None)
        if tables is not None:
            row["tiles_visited"] = round(tables.visited_fraction, 4)
            row["tables"] = tables.method
        if case.kind == "docs":  # tables for new ids (what a new packing costs): a fresh tensor each call
            ids = caps["doc_ids"]
            row["mask_build_ms"] = timeit(lambda: ef_fn(q, k, v, doc_ids=ids.clone())) - row["ms"]
    except Exception as exc:  # noqa: BLE001 - recorded as an error row
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    out.append(row)
    print(json.dumps(row), file=log, flush=True)

    if dry and not torch.cuda.is_available():
        return out
    row = {**base, "system": "flex"}
    try:
        fx, build = flex_system(case, score_mod, mask_mod, device)
        got = fx(q, k, v)
        row["rel_err"] = rel_err(got[bsl][:, :, rows], want)
        row["ok"] = row["rel_err"] < REL_TOL
        row["ms"] = timeit(lambda: fx(q, k, v))
        if mask_mod is not None:
            row["mask_build_ms"] = timeit(build)
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
    out.append(row)
    print(json.dumps(row), file=log, flush=True)
    ef_row = out[0]
    if "ms" in ef_row and "ms" in row:
        ef_row["vs_flex"] = round(row["ms"] / ef_row["ms"], 3)
        ef_row["meets_target"] = ef_row["vs_flex"] >= TARGET and ef_row.get("ok", False)
    return out


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [f"# Captured tensors: einfuse vs FlexAttention ({info['device']})", "",
             f"torch {info['torch']}, triton {info['triton']}, {info['date']}. Times: median ms of the attention "
             "call; mask build: Flex's create_block_mask vs einfuse's run-time block tables for new ids. "
             f"Target: einfuse >= {TARGET:.1f}x Flex (speed-up = Flex ms / einfuse ms).", "",
             "| case | B | H | N | D | system | ms | rel err | ok | speed-up vs Flex | target | tiles visited | "
             "mask build ms |", "|" + "---|" * 13]
    for r in rows:
        sp = r.get("vs_flex")
        flag = "" if sp is None else ("met" if r.get("meets_target") else "**below**")
        build = "" if "mask_build_ms" not in r else f"{r['mask_build_ms']:.3f}"
        lines.append(
            f"| {r['case']} | {r['B']} | {r['H']} | {r['N']} | {r['D']} | {r['system']} | "
            f"{r.get('ms', float('nan')):.4f} | {r.get('rel_err', float('nan')):.1e} | {r.get('ok', '')} | "
            f"{'' if sp is None else f'{sp:.2f}x'} | {flag} | {r.get('tiles_visited', '')} | "
            f"{build} |"
            + (f" error: {r['error']}" if "error" in r else ""))
    return "\n".join(lines) + "\n"


def device_info(dry: bool) -> dict[str, Any]:
    import triton

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry else "cpu-interpreter"
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "einfuse_commit": os.environ.get("EINFUSE_COMMIT", "")}


def _previous(dirs: list[str], stem: str) -> list[dict[str, Any]]:
    """Rows of an earlier run on this device (so that runs of a few cases each make one table)."""
    for d in dirs:
        path = os.path.join(d, stem + ".json")
        if os.path.exists(path):
            with open(path) as fh:
                return list(json.load(fh).get("rows", []))
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes, einfuse only")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--no-autotune", action="store_true", help="einfuse's heuristic tiles instead of autotuning")
    ap.add_argument("--results-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        ap.error("no GPU: use --dry-run")
    cases = DRY_CASES if args.dry_run else GPU_CASES
    if args.only:
        cases = [c for c in cases if c.name in args.only.split(",")]
    info = device_info(args.dry_run)
    out_dir = os.environ.get("OUT")
    log = open(os.path.join(out_dir, "captured.log"), "a") if out_dir else sys.stderr  # noqa: SIM115
    stem = "captured-" + re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")
    dirs = ([] if args.dry_run else [args.results_dir]) + ([out_dir] if out_dir else [])
    timeit = timer(args.dry_run, args.warmup, args.rep)
    names = {c.name for c in cases}
    rows: list[dict[str, Any]] = [r for r in _previous(dirs, stem) if r["case"] not in names]  # --only runs add up
    for case in cases:
        rows += run_case(case, args.dry_run, timeit, not args.no_autotune, log)
        for d in dirs:  # after every case: a run cut short keeps what it measured
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, stem + ".json"), "w") as fh:
                json.dump({"info": info, "rows": rows}, fh, indent=1)
            with open(os.path.join(d, stem + ".md"), "w") as fh:
                fh.write(markdown(rows, info))
    print(markdown(rows, info))
    bad = [r for r in rows if r["case"] in names and ("error" in r or not r.get("ok", False))]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
