"""Decode at serving sizes: einfuse (contiguous and paged KV) against SDPA, batch x context x GQA, one run.

    python benchmarks/decode_grid.py                 # the grid + ragged rows + whole-call times
    python benchmarks/decode_grid.py --tune          # also sweep split counts and tiles per point
    python benchmarks/decode_grid.py --batches 1 --contexts 1024 --sets grid
    python benchmarks/decode_grid.py --dry-run       # CPU (Triton interpreter): tiny points, the code path only
    python benchmarks/decode_grid.py --decode-options '{"fuse_combine": true}' --name h200-fused
    python benchmarks/decode_grid.py --sets '' --host-calls 0 --tune --gqa 8 --tune-fuse 0,1 --rep 20

Points (bf16, one query per sequence, 32 query heads, D 128): batch {1, 8, 64} x context {1K, 8K,
32K, 128K} x GQA {8:1, 4:1} ("grid": every sequence at the context length), and the same with each
sequence's length drawn uniformly from [context/8, context] (one at the context) ("ragged").

Systems, all timed in this run with ``triton.testing.do_bench`` (median, L2 flushed between calls):

* ``einfuse``: ``ef.compile("decode:head_dim=128")`` on the contiguous ``(B, H_kv, N, D)`` cache
  (with ``seq_lens=`` in the ragged set);
* ``einfuse-paged``: the same kernel on a paged cache (pages of 16 keys in shuffled order, vLLM's
  ``(num_pages, page_size, H_kv, D)`` layout, a page table and ``seq_lens``);
* ``sdpa``: ``F.scaled_dot_product_attention(q, k, v, enable_gqa=True)`` on the contiguous cache, the
  fastest of the default choice and the flash / cuDNN / efficient backends that run and agree. In the
  ragged set SDPA has no per-sequence lengths: ``sdpa`` there runs each sequence alone (same output),
  and ``sdpa-padded`` (timed, not the same output) attends to all ``context`` keys of every sequence.

Every einfuse output is checked against SDPA's in the run (relative Frobenius error, bf16 tolerance
2e-2). Targets (issue 14): einfuse and einfuse-paged >= 0.95x SDPA at every grid point; at batch 1
context 1K the whole call (host included: CPU clock over 1000 back-to-back calls, then a sync)
<= 1.2x SDPA's. ``--tune`` times ``build_decode`` over split counts x block_n x warps x stages at
each grid point and reports the best beside the default heuristic.

Results: ``benchmarks/results/decode-grid/<device>.{json,md}`` and ``$OUT`` when set.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's einfuse, not another installed one

import einfuse  # noqa: E402

SPEC = "decode:head_dim=128"
H, D, PAGE = 32, 128, 16
HOST_N = 1024  # the whole-call timing's context
REL_TOL = 2e-2
TARGET, HOST_TARGET = 0.95, 1.2


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def timer(dev: str, warmup: int, rep: int) -> Callable[[Callable[[], Any]], float]:
    """ms per call: do_bench's median on a GPU; on the CPU (dry run) a plain clock, meaningless as speed."""
    if dev == "cuda":
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))

    def cpu(fn: Callable[[], Any]) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return cpu


def lengths(B: int, N: int, ragged: bool, seed: int) -> list[int]:
    """Every sequence at N, or uniform in [N/8, N] with the first one at N (so N is the longest)."""
    if not ragged:
        return [N] * B
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(max(N // 8, 1), N + 1, (B,), generator=g).tolist()
    lens[0] = N
    return lens


def paginate(k: torch.Tensor, page: int, perm: torch.Tensor) -> torch.Tensor:
    """(B, H_kv, N, D) -> pages (num_pages, page, H_kv, D) with sequence b's j-th page at perm[...]."""
    B, Hkv, N, Dh = k.shape
    pages = torch.empty((perm.numel(), page, Hkv, Dh), dtype=k.dtype, device=k.device)
    n_pages = N // page
    pages[perm[: B * n_pages]] = k.view(B, Hkv, n_pages, page, Dh).permute(0, 2, 3, 1, 4).reshape(-1, page, Hkv, Dh)
    return pages


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.float(), ref.float()
    return float(torch.linalg.vector_norm(a - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def sdpa_backends(dev: str) -> dict[str, Any]:
    """The SDPA choices timed: the default dispatch, then each fused backend forced."""
    from torch.nn.attention import SDPBackend

    out: dict[str, Any] = {"default": None}
    if dev == "cuda":
        out.update({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                    "efficient": SDPBackend.EFFICIENT_ATTENTION})
    return out


def sdpa_call(q, k, v, backend) -> Callable[[], Any]:
    from torch.nn.attention import sdpa_kernel

    if backend is None:
        return lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    def run():
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return run


def run_point(attn, gqa: int, B: int, N: int, ragged: bool, dev: str, bench, log) -> dict[str, Any]:
    Hkv = H // gqa
    lens = lengths(B, N, ragged, seed=B * 7 + N)
    g = torch.Generator(device=dev).manual_seed(B + N + gqa)
    mk = lambda *s: torch.randn(*s, generator=g, device=dev, dtype=DTYPE)  # noqa: E731
    q, k, v = mk(B, H, 1, D), mk(B, Hkv, N, D), mk(B, Hkv, N, D)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=dev)
    row: dict[str, Any] = {"set": "ragged" if ragged else "grid", "gqa": f"{gqa}:1", "B": B, "H": H,
                           "Hkv": Hkv, "context": N, "D": D, "tokens": sum(lens),
                           "kv_bytes": 2 * sum(lens) * Hkv * D * q.element_size()}
    if ragged:  # SDPA has no lengths: one sequence at a time gives the same output
        def per_seq():
            return torch.cat([F.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                                             enable_gqa=True) for b, n in enumerate(lens)])
        ref = per_seq()
        peers = {"sdpa": per_seq, "sdpa-padded": sdpa_call(q, k, v, None)}
    else:
        ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        peers = {f"sdpa-{name}": sdpa_call(q, k, v, be) for name, be in sdpa_backends(dev).items()}
    sdpa_ms: dict[str, float] = {}
    for name, fn in peers.items():
        try:
            out = fn()
            err = rel_err(out, ref)
            if name != "sdpa-padded" and err > REL_TOL:
                raise RuntimeError(f"rel_err {err:.2e}")
            sdpa_ms[name] = bench(fn)
        except Exception as exc:  # noqa: BLE001 - a backend that refuses the shape gets a note, not a speed
            row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    real = {n: ms for n, ms in sdpa_ms.items() if n != "sdpa-padded"}
    row["sdpa_ms_by_backend"] = sdpa_ms
    if real:
        best = min(real, key=real.get)
        row["sdpa_backend"], row["sdpa_ms"] = best, real[best]
    lens_kw = {"seq_lens": seq_lens} if ragged else {}
    systems: dict[str, Callable[[], Any]] = {"einfuse": lambda: attn(q, k, v, **lens_kw)}
    n_pages = B * (N // PAGE)
    perm = torch.randperm(n_pages, generator=torch.Generator().manual_seed(N)).to(dev)
    kc = paginate(k, PAGE, perm)
    vc = paginate(v, PAGE, perm)
    table = perm.view(B, N // PAGE).to(torch.int32)
    systems["einfuse-paged"] = lambda: attn(q, kc, vc, page_table=table, seq_lens=seq_lens)
    for name, fn in systems.items():
        try:
            err = rel_err(fn(), ref)
            row[f"{name}_rel_err"] = err
            if err > REL_TOL:
                raise RuntimeError(f"output differs from SDPA: rel_err {err:.2e} > {REL_TOL}")
            ms = bench(fn)
            row[f"{name}_ms"] = ms
            row[f"{name}_tb_s"] = row["kv_bytes"] / ms / 1e9
            if "sdpa_ms" in row:
                row[f"{name}_vs_sdpa"] = row["sdpa_ms"] / ms
                if not ragged:
                    row[f"{name}_target_met"] = row[f"{name}_vs_sdpa"] >= TARGET
        except Exception as exc:  # noqa: BLE001 - recorded as the row's error, the run goes on
            row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    dec = attn.decode_kernel()
    row["splits"] = dec.split_plan(B, Hkv, 1, N, q.device)[0] if dec is not None else None
    print(json.dumps(row), file=log, flush=True)
    return row


def release(dev: str) -> None:
    """Hand a point's tensors back (called after its function returned, so they are unreferenced)."""
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()


def host_time(attn, gqa: int, dev: str, calls: int) -> dict[str, Any]:
    """Whole-call microseconds at batch 1 context 1K: CPU clock over ``calls`` back-to-back calls
    (launch queue included) and one synchronisation at the end."""
    Hkv, N = H // gqa, HOST_N
    q = torch.randn(1, H, 1, D, device=dev, dtype=DTYPE)
    k, v = (torch.randn(1, Hkv, N, D, device=dev, dtype=DTYPE) for _ in range(2))
    perm = torch.randperm(N // PAGE).to(dev)
    kc, vc = paginate(k, PAGE, perm), paginate(v, PAGE, perm)
    table, lens = perm.view(1, -1).to(torch.int32), torch.tensor([N], dtype=torch.int32, device=dev)
    fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
           "einfuse": lambda: attn(q, k, v),
           "einfuse-paged": lambda: attn(q, kc, vc, page_table=table, seq_lens=lens)}
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    out: dict[str, Any] = {"gqa": f"{gqa}:1", "B": 1, "context": N, "calls": calls}
    for name, fn in fns.items():
        for _ in range(max(calls // 20, 1)):
            fn()
        sync()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        out[f"{name}_us"] = (time.perf_counter() - t) / calls * 1e6
    for name in ("einfuse", "einfuse-paged"):
        out[f"{name}_over_sdpa"] = out[f"{name}_us"] / out["sdpa_us"]
        out[f"{name}_target_met"] = out[f"{name}_over_sdpa"] <= HOST_TARGET
    return out


_TUNE_KERNELS: dict[tuple, Any] = {}
TUNE_AXES = {"block_n": (64, 128), "num_warps": (4, 8), "num_stages": (2, 3, 4), "fuse_combine": (False,)}
"""What --tune sweeps (--tune-block-n, --tune-warps, --tune-stages, --tune-fuse narrow or widen it)."""


def tune_point(gqa: int, B: int, N: int, dev: str, bench, sms: int) -> list[dict[str, Any]]:
    """Every (block_n, num_warps, num_stages, fuse_combine) of TUNE_AXES x split count on the
    contiguous and paged caches."""
    from einfuse.codegen.triton.decode import build_decode

    Hkv = H // gqa
    q = torch.randn(B, H, 1, D, device=dev, dtype=DTYPE)
    k, v = (torch.randn(B, Hkv, N, D, device=dev, dtype=DTYPE) for _ in range(2))
    perm = torch.randperm(B * (N // PAGE)).to(dev)
    kc, vc = paginate(k, PAGE, perm), paginate(v, PAGE, perm)
    table, lens = perm.view(B, -1).to(torch.int32), torch.full((B,), N, dtype=torch.int32, device=dev)
    cascade = einfuse.load_spec(SPEC if D == 128 else "decode")  # dry run: D 32, the spec's default scale
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    rows = []
    for bn, warps, stages, fuse in itertools.product(*TUNE_AXES.values()):
        if (bn, warps, stages, fuse) not in _TUNE_KERNELS:  # built once per run, reused at every point
            _TUNE_KERNELS[bn, warps, stages, fuse] = build_decode(cascade, block_n=bn, num_warps=warps,
                                                                  num_stages=stages, fuse_combine=fuse)
        fn = _TUNE_KERNELS[bn, warps, stages, fuse]
        cap = -(-N // bn)
        for splits in sorted({s for s in (1, 2, 4, 8, 16, 32, 64, 128, 256)
                              if s <= cap and B * Hkv * s <= 16 * sms} | {0}):
            for layout, call in (("contiguous", lambda s: fn(q, k, v, splits=s or None)),
                                 ("paged", lambda s: fn(q, kc, vc, page_table=table, seq_lens=lens,
                                                        splits=s or None))):
                err = None
                try:
                    rel = rel_err(call(splits), ref)  # every configuration is checked, not only timed
                    if rel > REL_TOL:
                        raise RuntimeError(f"output differs from SDPA: rel_err {rel:.2e}")
                    ms = bench(lambda: call(splits))
                except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                    ms, err = None, f"{type(exc).__name__}: {str(exc)[:80]}"
                used = fn.split_plan(B, Hkv, 1, N, q.device, splits or None)[0]
                rows.append({"gqa": f"{gqa}:1", "B": B, "context": N, "layout": layout, "block_n": bn,
                             "num_warps": warps, "num_stages": stages, "fuse_combine": fuse,
                             "splits_asked": splits, "splits": used, "ms": ms, "error": err})
    return rows


def device_info(dev: str) -> dict[str, Any]:
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "einfuse_commit": os.environ.get("EINFUSE_COMMIT", ""), "spec": SPEC, "page_size": PAGE,
            "dtype": str(DTYPE)}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), sms=p.multi_processor_count, cuda=torch.version.cuda)
    else:
        info.update(device="cpu-interpreter-dry-run", sms=4)
    return info


def markdown(info: dict[str, Any], rows: list[dict], host: list[dict], tune: list[dict]) -> str:
    def f(x: Any, d: int = 3) -> str:
        return "-" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))

    def e(x: float | None) -> str:
        return "-" if x is None else f"{x:.1e}"

    def cell(r: dict, s: str) -> str:
        if f"{s}_error" in r:
            return "error: " + r[f"{s}_error"][:60]
        return f"{f(r.get(f'{s}_ms'), 4)} ({f(r.get(f'{s}_tb_s'), 2)})"

    def ratio(r: dict, s: str) -> str:
        x = r.get(f"{s}_vs_sdpa")
        if x is None:
            return "-"
        return f"{x:.2f}x" + ("" if r["set"] == "ragged" else (" met" if x >= TARGET else " **MISSED**"))

    out = [f"# Decode grid: {info['device']} ({info['dtype']}, {SPEC}, pages of {PAGE})", "",
           f"torch {info['torch']}, triton {info['triton']}, {info['date']}, commit {info['einfuse_commit'] or '?'}."
           f" ms = do_bench median (TB/s of K+V read). Ratio = SDPA ms / einfuse ms; target >= {TARGET}x "
           "at every grid point. Ragged: SDPA one sequence at a time (same output); sdpa-padded attends to "
           "every key up to the context (not the same output, shown for scale).", "",
           "| set | GQA | B | context | splits | einfuse ms (TB/s) | paged ms (TB/s) | SDPA ms (backend) "
           "| sdpa-padded ms | einfuse/SDPA | paged/SDPA | rel err (contig, paged) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pad = r.get("sdpa_ms_by_backend", {}).get("sdpa-padded")
        out.append(f"| {r['set']} | {r['gqa']} | {r['B']} | {r['context']} | {f(r.get('splits'))} "
                   f"| {cell(r, 'einfuse')} | {cell(r, 'einfuse-paged')} "
                   f"| {f(r.get('sdpa_ms'), 4)} ({r.get('sdpa_backend', '-')}) | {f(pad, 4)} "
                   f"| {ratio(r, 'einfuse')} | {ratio(r, 'einfuse-paged')} "
                   f"| {e(r.get('einfuse_rel_err'))}, {e(r.get('einfuse-paged_rel_err'))} |")
    grid = [r for r in rows if r["set"] == "grid"]
    missed = [f"{s} {r['gqa']} B{r['B']} N{r['context']}" for r in grid for s in ("einfuse", "einfuse-paged")
              if not r.get(f"{s}_target_met")]
    out += ["", f"Grid points meeting >= {TARGET}x SDPA: {2 * len(grid) - len(missed)}/{2 * len(grid)}"
            + (f"; missed: {', '.join(missed)}" if missed else "")]
    if host:
        out += ["", f"## Whole call at batch 1, context {host[0]['context']} (CPU clock, {host[0]['calls']} calls; target <= "
                f"{HOST_TARGET}x SDPA)", "", "| GQA | SDPA us | einfuse us | paged us | einfuse/SDPA | paged/SDPA |",
                "|---|---|---|---|---|---|"]
        for h in host:
            out.append(f"| {h['gqa']} | {h['sdpa_us']:.1f} | {h['einfuse_us']:.1f} | {h['einfuse-paged_us']:.1f} | "
                       f"{h['einfuse_over_sdpa']:.2f}x{'' if h['einfuse_target_met'] else ' **MISSED**'} | "
                       f"{h['einfuse-paged_over_sdpa']:.2f}x{'' if h['einfuse-paged_target_met'] else ' **MISSED**'} |")
    if tune:
        out += ["", "## Sweep (--tune): best configuration per point vs the default heuristic", "",
                "| GQA | B | context | layout | default ms (splits) | best ms | best block_n/warps/stages/splits/fused |",
                "|---|---|---|---|---|---|---|"]
        keys = sorted({(t["gqa"], t["B"], t["context"], t["layout"]) for t in tune})
        for key in keys:
            pts = [t for t in tune if (t["gqa"], t["B"], t["context"], t["layout"]) == key and t["ms"] is not None]
            if not pts:
                continue
            best = min(pts, key=lambda t: t["ms"])
            dflt = [t for t in pts if t["splits_asked"] == 0 and t["block_n"] == 128 and t["num_warps"] == 4
                    and t["num_stages"] == 3 and not t.get("fuse_combine")]
            d = f"{dflt[0]['ms']:.4f} ({dflt[0]['splits']})" if dflt else "-"
            out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {d} | {best['ms']:.4f} | "
                       f"{best['block_n']}/{best['num_warps']}/{best['num_stages']}/{best['splits']}/"
                       f"{'yes' if best.get('fuse_combine') else 'no'} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    global DTYPE, H, D, PAGE, HOST_N
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--contexts", default="1024,8192,32768,131072")
    ap.add_argument("--gqa", default="8,4", help="query heads per KV head (32 query heads)")
    ap.add_argument("--sets", default="grid,ragged",
                    help="grid (uniform lengths), ragged (varying lengths); '' for none (e.g. a --tune run)")
    ap.add_argument("--ragged-batches", default="8,64")
    ap.add_argument("--host-calls", type=int, default=1000, help="0: skip the whole-call timing")
    ap.add_argument("--tune", action="store_true", help="sweep splits x block_n x warps x stages per grid point")
    ap.add_argument("--tune-block-n", default="64,128")
    ap.add_argument("--tune-warps", default="4,8")
    ap.add_argument("--tune-stages", default="2,3,4")
    ap.add_argument("--tune-fuse", default="0", help="fuse_combine values swept: 0, 1 or 0,1")
    ap.add_argument("--decode-options", default="{}", help="JSON decode_options of the compiled variant, "
                    'e.g. \'{"fuse_combine": true}\'')
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny sizes: checks the code path")
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results", "decode-grid"))
    ap.add_argument("--name", help="results file stem (default: the device name)")
    args = ap.parse_args(argv)
    DTYPE = torch.bfloat16
    dev = "cuda"
    ints = lambda text: tuple(int(x) for x in text.split(","))  # noqa: E731
    TUNE_AXES.update(block_n=ints(args.tune_block_n), num_warps=ints(args.tune_warps),
                     num_stages=ints(args.tune_stages), fuse_combine=tuple(bool(x) for x in ints(args.tune_fuse)))
    decode_options = json.loads(args.decode_options)
    batches, contexts = [int(x) for x in args.batches.split(",")], [int(x) for x in args.contexts.split(",")]
    ragged_batches = [int(x) for x in args.ragged_batches.split(",")]
    if args.dry_run:  # the code path on tiny sizes (kernels in the interpreter); no speed is measured
        os.environ.setdefault("TRITON_INTERPRET", "1")
        dev, H, D, PAGE, DTYPE, HOST_N = "cpu", 8, 32, 16, torch.float32, 64
        batches, contexts, ragged_batches = [1, 3], [80], [3]
        args.host_calls = min(args.host_calls, 3)
        if args.results_dir == ap.get_default("results_dir"):
            import tempfile

            args.results_dir = tempfile.mkdtemp(prefix="decode-grid-dry-run-")
    elif not torch.cuda.is_available():
        print("no CUDA device: use --dry-run on a CPU", file=sys.stderr)
        return 2
    sets = [x for x in args.sets.split(",") if x]
    if set(sets) - {"grid", "ragged"}:
        ap.error(f"--sets takes grid, ragged or '', got {args.sets!r}")
    gqas = [int(x) for x in args.gqa.split(",")]
    info = device_info(dev)
    tune_only = "-tune-gqa" + "-".join(map(str, gqas)) if args.tune and not sets else ""
    stem = args.name or slug(info["device"]) + tune_only
    out_dir = os.environ.get("OUT")
    dirs = [args.results_dir] + ([out_dir] if out_dir else [])
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    log = open(os.path.join(dirs[-1], f"{stem}.log"), "a")  # noqa: SIM115 - one log for the whole run
    print(json.dumps(info), file=log, flush=True)
    bench = timer(dev, args.warmup, args.rep)
    attn = einfuse.compile(SPEC if not args.dry_run else "decode",
                           decode_options={**decode_options, "block_n": 16} if args.dry_run else decode_options)
    info["decode_options"] = decode_options
    rows: list[dict] = []
    host: list[dict] = []
    tune: list[dict] = []

    def save() -> None:
        doc = {"info": info, "rows": rows, "host": host, "tune": tune}
        for d in dirs:
            with open(os.path.join(d, f"{stem}.json"), "w") as fh:
                json.dump(doc, fh, indent=1)
            with open(os.path.join(d, f"{stem}.md"), "w") as fh:
                fh.write(markdown(info, rows, host, tune))

    if args.host_calls:
        for gqa in gqas:
            host.append(host_time(attn, gqa, dev, args.host_calls))
            print(json.dumps(host[-1]), flush=True)
    for ragged in [x == "ragged" for x in sets]:
        for gqa in gqas:
            for B in (ragged_batches if ragged else batches):
                for N in contexts:
                    rows.append(run_point(attn, gqa, B, N, ragged, dev, bench, log))
                    release(dev)
                    r = rows[-1]
                    print(f"{r['set']:6s} {r['gqa']} B{B:<3d} N{N:<7d} einfuse {r.get('einfuse_vs_sdpa', 0):.2f}x "
                          f"paged {r.get('einfuse-paged_vs_sdpa', 0):.2f}x sdpa {r.get('sdpa_ms', 0):.4f} ms "
                          f"{r.get('einfuse_error', '')}{r.get('einfuse-paged_error', '')}", flush=True)
                    save()
    if args.tune:
        for gqa in gqas:
            for B in batches:
                for N in contexts:
                    tune += tune_point(gqa, B, N, dev, bench, info["sms"])
                    release(dev)
                    save()
    save()
    print(markdown(info, rows, host, tune))
    return 0


DTYPE = torch.bfloat16

if __name__ == "__main__":
    sys.exit(main())
