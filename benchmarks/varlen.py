"""Packed variable-length causal prefill: einfuse ``fn.varlen`` against FlexAttention with a document
mask and SDPA run one sequence at a time (issue 14, item 3, and its varlen target).

    python benchmarks/varlen.py                  # H200/H100: 16 sequences of 100..8000 tokens, H16 D128 bf16
    python benchmarks/varlen.py --dry-run        # CPU, Triton interpreter, tiny sizes: checks the script

The batch: ``--seqs`` lengths evenly spaced from ``--min-len`` to ``--max-len`` (100..8000: 64,800
tokens), shuffled with ``--seed``, packed as (total, H, D) with int32 ``cu_seqlens`` (FlashAttention's
convention), causal within each sequence. Rows (every one checked before it is timed):

* ``einfuse varlen`` - ``fn.varlen(q, k, v, cu, cu, max, max)``, cu_seqlens on the CPU (the lengths
  are known on the host, as in vLLM: no device sync per call); ``einfuse varlen (cu on GPU)`` passes
  device offsets, which costs one sync per call to read them;
* ``flex document mask`` - compiled ``flex_attention`` on (1, H, total, D) with
  ``create_block_mask`` built from document ids (``doc[q] == doc[kv] & q >= kv``), the mask built
  once outside the timing (its build time is reported);
* ``sdpa per sequence`` - ``scaled_dot_product_attention(is_causal=True)`` on each sequence in a loop
  (cuDNN backend when it runs, else flash), on views of the packed tensors (no copies);
* ``einfuse per sequence`` - the dense einfuse kernel in the same loop, for reference.

Correctness: each row's output against a float64 reference of three sequences (shortest, median,
longest) on two heads, and against each other. Each row is timed in two separated passes
(``triton.testing.do_bench`` medians); a row whose passes differ by more than 10 % is flagged.
Writes ``benchmarks/results/varlen/<device>.{json,md}`` and, with ``$OUT`` set, the same files there.
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
from pathlib import Path
from typing import Any

TARGETS = {"flex document mask": 1.0, "sdpa per sequence": 0.9}
"""einfuse varlen's speed over each peer that the issue asks for (ratio = peer ms / einfuse ms)."""
REL_TOL = 2e-2  # bf16 operands


def lengths(n: int, lo: int, hi: int, seed: int) -> list[int]:
    import numpy as np

    lens = np.linspace(lo, hi, n).round().astype(int)
    return [int(x) for x in np.random.default_rng(seed).permutation(lens)]


def reference(q, k, v, cu: list[int], seqs: list[int], heads: list[int], scale: float) -> dict:
    """float64 causal attention of the chosen sequences and heads: {seq: (len, heads, D)}."""
    import torch

    out = {}
    for s in seqs:
        a, b = cu[s], cu[s + 1]
        qs, ks, vs = (t[a:b, heads].double().transpose(0, 1) for t in (q, k, v))
        n = b - a
        scores = qs @ ks.transpose(1, 2) * scale
        keep = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        p = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
        out[s] = (p @ vs).transpose(0, 1)
    return out


def rel_err(got, want) -> float:
    g, w = got.double(), want.double()
    return float((g - w).norm() / w.norm().clamp_min(1e-30))


def check(out, ref: dict, cu: list[int], heads: list[int]) -> float:
    """The worst relative error over the reference sequences."""
    return max(rel_err(out[cu[s]:cu[s + 1], heads], r) for s, r in ref.items())


def bench(fn, dry: bool, rep: int) -> float:
    import torch

    if dry:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median"))


def host_us(fn, n: int) -> float:
    """Mean microseconds of CPU per call, launches queued without waiting for the GPU (a call that
    syncs, as device cu_seqlens do, waits here too)."""
    import torch

    fn()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    us = (time.perf_counter() - t) / n * 1e6
    sync()
    return us


def make_rows(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    import torch

    import einfuse

    dev = "cpu" if args.dry_run else "cuda"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    lens = lengths(args.seqs, args.min_len, args.max_len, args.seed)
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    total, H, Hkv, D = cu[-1], args.heads, args.kv_heads, args.dim
    scale = 1.0 / math.sqrt(D)
    g = torch.Generator(device=dev).manual_seed(args.seed)
    q = torch.randn(total, H, D, generator=g, device=dev, dtype=dtype)
    k = torch.randn(total, Hkv, D, generator=g, device=dev, dtype=dtype)
    v = torch.randn(total, Hkv, D, generator=g, device=dev, dtype=dtype)
    cu_cpu = torch.tensor(cu, dtype=torch.int32)
    cu_dev = cu_cpu.to(dev)
    order = sorted(range(len(lens)), key=lambda s: lens[s])
    ref_seqs = sorted({order[0], order[len(order) // 2], order[-1]})
    ref_heads = sorted({0, H - 1})
    ref = reference(q, k, v, cu, ref_seqs, ref_heads, scale)
    flops = sum(4 * H * D * n * (n + 1) / 2 for n in lens)  # causal: half the QK^T and PV products
    f = einfuse.compile(f"causal:head_dim={D}")
    mx = max(lens)
    opts = {kk: vv for kk, vv in (("block_m", args.block_m), ("block_n", args.block_n)) if vv}

    def seq_view(t, s):  # (1, heads, len, D) view of sequence s of a packed tensor: no copy
        return t[cu[s]:cu[s + 1]].transpose(0, 1)[None]

    rows: list[dict[str, Any]] = []
    timed: dict[int, Any] = {}  # id(row) -> its callable, for the second pass
    first: dict[str, Any] = {}  # einfuse varlen's output, which every other row is compared with

    def add(name: str, fn, note: str = "", to_packed=None) -> None:
        row: dict[str, Any] = {"name": name, "note": note}
        try:
            out = fn()
            out = to_packed(out) if to_packed else out
            row["rel_err"] = check(out, ref, cu, ref_heads)
            row["ok"] = row["rel_err"] < REL_TOL
            if "out" in first:
                row["rel_diff_to_einfuse"] = rel_err(out, first["out"])
            else:
                first["out"] = out
            if row["ok"]:
                row["ms_pass1"] = bench(fn, args.dry_run, args.rep)
                timed[id(row)] = fn
        except Exception as exc:  # noqa: BLE001 - a peer that fails is a row with an error
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            row["ok"] = False
        rows.append(row)

    add("einfuse varlen", lambda: f.varlen(q, k, v, cu_cpu, cu_cpu, mx, mx, **opts), "cu_seqlens on the CPU")
    for spec in ([] if args.dry_run else [c for c in args.configs.split(",") if c]):
        bm, bn, w, st = (int(x) for x in spec.split("x"))
        add(f"einfuse varlen {spec}", lambda bm=bm, bn=bn, w=w, st=st: f.varlen(
            q, k, v, cu_cpu, cu_cpu, mx, mx, block_m=bm, block_n=bn, num_warps=w, num_stages=st),
            "block_m x block_n x warps x stages, instead of the heuristic")
    add("einfuse varlen (cu on GPU)", lambda: f.varlen(q, k, v, cu_dev, cu_dev, mx, mx, **opts),
        "device offsets: one sync per call reads them")

    # FlexAttention with a document mask over the packed sequence
    if args.dry_run:
        rows.append({"name": "flex document mask", "note": "skipped in --dry-run (needs CUDA)", "ok": False,
                     "error": "skipped"})
    else:
        build_ms = None
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            doc = torch.repeat_interleave(torch.arange(len(lens), device=dev),
                                          torch.tensor(lens, device=dev))

            def doc_causal(b, h, qi, kv):
                return (doc[qi] == doc[kv]) & (qi >= kv)

            t0 = time.perf_counter()
            block_mask = create_block_mask(doc_causal, None, None, total, total, device=dev, _compile=True)
            torch.cuda.synchronize()
            build_ms = (time.perf_counter() - t0) * 1e3
            flex = torch.compile(flex_attention, dynamic=False)
            qf, kf, vf = (t.transpose(0, 1)[None].contiguous() for t in (q, k, v))  # Flex's (B, H, N, D)
            add("flex document mask",
                lambda: flex(qf, kf, vf, block_mask=block_mask, scale=scale, enable_gqa=H != Hkv),
                f"create_block_mask once, outside the timing (first build {build_ms:.1f} ms incl. compile)",
                to_packed=lambda o: o[0].transpose(0, 1))
        except Exception as exc:  # noqa: BLE001
            rows.append({"name": "flex document mask", "ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]})

    # SDPA, one sequence at a time
    import torch.nn.functional as F

    copies: list[tuple] = []  # per-sequence contiguous (1, H, L, D) tensors, made once if views fail

    def sdpa_loop(backend, contiguous: bool):
        from torch.nn.attention import sdpa_kernel

        if contiguous and not copies:
            copies.extend(tuple(seq_view(t, s).contiguous() for t in (q, k, v)) for s in range(len(lens)))

        def run():
            outs = []
            ctx = sdpa_kernel([backend]) if backend is not None else _null()
            with ctx:
                for s in range(len(lens)):
                    qs, ks, vs = copies[s] if contiguous else (seq_view(q, s), seq_view(k, s), seq_view(v, s))
                    outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                               enable_gqa=H != Hkv)[0].transpose(0, 1))
            return outs
        return run

    backends = [(None, False, "default (CPU)")]
    if not args.dry_run:
        from torch.nn.attention import SDPBackend

        backends = [(SDPBackend.CUDNN_ATTENTION, False, "cuDNN"),
                    (SDPBackend.CUDNN_ATTENTION, True, "cuDNN on contiguous per-sequence copies"),
                    (SDPBackend.FLASH_ATTENTION, False, "flash")]
    errors = []
    for backend, contiguous, label in backends:
        before = len(rows)
        add("sdpa per sequence", sdpa_loop(backend, contiguous), f"{label} backend, {len(lens)} calls",
            to_packed=lambda outs: torch.cat(outs))
        if rows[-1].get("ok"):
            break
        errors.append(f"{label}: {rows[-1].get('error') or 'rel err ' + str(rows[-1].get('rel_err'))}")
        del rows[before:]
    else:
        rows.append({"name": "sdpa per sequence", "ok": False, "error": "; ".join(errors)})
    if errors and rows[-1].get("ok"):
        rows[-1]["note"] += f" (fell back: {'; '.join(errors)})"[:300]

    add("einfuse per sequence", lambda: [f(seq_view(q, s), seq_view(k, s), seq_view(v, s))[0].transpose(0, 1)
                                         for s in range(len(lens))],
        f"dense kernel, {len(lens)} calls", to_packed=lambda outs: torch.cat(outs))

    # second timing pass, separated from the first by every other row; then CPU time per call
    for row in rows:
        if id(row) in timed:
            row["ms_pass2"] = bench(timed[id(row)], args.dry_run, args.rep)
            row["host_us"] = host_us(timed[id(row)], 3 if args.dry_run else 50)
    meta = {"lengths": lens, "total_tokens": total, "heads": H, "kv_heads": Hkv, "head_dim": D,
            "dtype": str(dtype).replace("torch.", ""), "causal": True, "tflop": flops / 1e12,
            "ref_sequences": ref_seqs, "ref_heads": ref_heads, "options": opts}
    return rows, meta


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def finish(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Ratios, targets and the repeatability flag."""
    base = next((r for r in rows if r["name"] == "einfuse varlen" and r.get("ok")), None)
    for r in rows:
        times = [t for t in (r.get("ms_pass1"), r.get("ms_pass2")) if t is not None]
        if times:
            r["ms"] = min(times)
            r["tflops"] = meta["tflop"] / (r["ms"] / 1e3)
            r["passes_differ"] = len(times) == 2 and abs(times[0] - times[1]) / min(times) > 0.10
    if base is not None:
        for r in rows:
            if r is not base and r.get("ms"):
                r["einfuse_speedup"] = r["ms"] / base["ms"]
                if r["name"] in TARGETS:
                    r["target"] = TARGETS[r["name"]]
                    r["target_met"] = r["einfuse_speedup"] >= TARGETS[r["name"]]


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], device: str) -> str:
    lines = [f"# varlen prefill on {device}", "",
             f"{len(meta['lengths'])} sequences, {meta['total_tokens']} tokens (lengths {meta['lengths']}), "
             f"H {meta['heads']} (K/V {meta['kv_heads']}), D {meta['head_dim']}, {meta['dtype']}, causal. "
             f"{meta['tflop']:.2f} TFLOP per call. Generated {meta.get('date', '')} by benchmarks/varlen.py.", "",
             "| row | ms (best of 2 passes) | pass 1 | pass 2 | TFLOP/s | einfuse varlen speedup | target | rel err | "
             "CPU us/call | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("ms"):
            lines.append(f"| {r['name']} | - | - | - | - | - | - | {_f(r.get('rel_err'))} | - | "
                         f"{r.get('error', '')} {r.get('note', '')} |")
            continue
        target = ""
        if "target" in r:
            target = f">= {r['target']}x: {'met' if r['target_met'] else '**missed**'}"
        flag = " (passes differ > 10 %)" if r.get("passes_differ") else ""
        lines.append(f"| {r['name']} | {r['ms']:.3f}{flag} | {_f(r.get('ms_pass1'))} | {_f(r.get('ms_pass2'))} | "
                     f"{r['tflops']:.1f} | {_f(r.get('einfuse_speedup'), 'x')} | {target} | {_f(r.get('rel_err'))} | "
                     f"{r.get('host_us', 0):.0f} | {r.get('note', '')} |")
    lines += ["", "Targets (issue 14): " + "; ".join(
        f"einfuse varlen >= {r['target']}x {r['name']}: {r['einfuse_speedup']:.2f}x, "
        f"{'met' if r['target_met'] else 'MISSED'}" for r in rows if "target" in r) or "Targets: no peer row ran"]
    lines += ["", "Speedup = the row's time / einfuse varlen's time (above 1: einfuse is faster). "
              "rel err: against a float64 reference of the shortest, median and longest sequence on the "
              "first and last heads."]
    return "\n".join(lines) + "\n"


def _f(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    return f"{x:.2f}{unit}" if unit else (f"{x:.2e}" if x < 1e-2 else f"{x:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--min-len", type=int, default=100)
    ap.add_argument("--max-len", type=int, default=8000)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=None, help="K/V heads (default: --heads)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rep", type=int, default=200, help="do_bench milliseconds per pass")
    ap.add_argument("--block-m", type=int, default=None)
    ap.add_argument("--block-n", type=int, default=None)
    ap.add_argument("--configs", default="128x64x8x3,128x128x8x2,128x32x4x3,64x64x4x3",
                    help="extra einfuse rows with fixed tiles, BMxBNxWARPSxSTAGES, comma-separated ('' for none)")
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results/varlen")
    ap.add_argument("--dry-run", action="store_true", help="CPU interpreter, tiny sizes, no peers but SDPA")
    args = ap.parse_args()
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        if args.seqs == 16 and args.max_len == 8000:
            args.seqs, args.min_len, args.max_len, args.heads, args.dim = 4, 1, 70, 2, 16
    args.kv_heads = args.kv_heads or args.heads
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    rows, meta = make_rows(args)
    meta["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    device = "cpu-interpreter" if args.dry_run else torch.cuda.get_device_name()
    finish(rows, meta)
    import einfuse

    meta.update({"device": device, "torch": torch.__version__, "python": platform.python_version(),
                 "einfuse": getattr(einfuse, "__version__", "?")})
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    text = markdown(rows, meta, device)
    print(text)
    dirs = [Path(args.out_dir) if args.out_dir else Path(__file__).resolve().parent / "results" / "varlen"]
    if os.environ.get("OUT") and not args.out_dir:
        dirs.append(Path(os.environ["OUT"]))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"varlen-{slug}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        (d / f"varlen-{slug}.md").write_text(text)
        print(f"wrote {d}/varlen-{slug}.{{json,md}}")


if __name__ == "__main__":
    main()
