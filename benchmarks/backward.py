"""Training-speed benchmark: forward, backward and forward+backward of einfuse beside FlexAttention and SDPA.

    python benchmarks/run_gpu.py --backward                      # every case (this module's main)
    python benchmarks/backward.py --only causal,na2d --rep 50
    python benchmarks/backward.py --only na3d --append           # add cases to the same results file
    TRITON_INTERPRET=1 python benchmarks/backward.py --dry-run   # tiny shapes on the CPU: the plumbing only

The cases are the forward benchmark's (benchmarks/bench_cases.py: softmax and causal B4 H16 N4096
D128, sliding window, GQA, ALiBi, soft-cap, neighbourhood 1-D/2-D/3-D, sigmoid, lightning B4 H16
N8192 D128) whose einfuse variant has a backward; decode gets a row saying so. Peers: FlexAttention
compiled with the same mods and a block mask (benchmarks/bench_peers.py), SDPA flash and cuDNN where
they can express the variant, triton-sigmoid for sigmoid attention, fla ``chunk_simple_gla`` and
lightning_attn2 for lightning (benchmarks/backward_linear.py: its reference and Mtok/s); and einfuse with the other dQ
layout (``einfuse-triton-atomic-dq``: dQ added atomically by the dK/dV kernel), so the layout is
chosen by measurement.

Per (case, system): ``fwd`` is the training forward (inputs require grad: einfuse saves the log-sum-exp),
``bwd`` the backward of one recorded forward (``retain_graph``; if a system refuses that, ``fwd+bwd``
minus ``fwd``, said in the row), ``fwd+bwd`` a forward and its backward. Before timing, every
system's output and ``dq, dk, dv`` are checked against float64 torch autograd of the variant as
FlexAttention's mods define it (independent of einfuse's plan), on the last batch and one K/V head
with its whole query group over all tokens, so GQA sums are checked too. TFLOP/s use the
FlashAttention convention: forward 4 * B * H * pairs * D, backward 2.5x that (five matmuls to two).
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
from dataclasses import replace
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import backward_linear
from bench_cases import CASES, Case
from bench_peers import NATIVE_BTHD, PEERS, Unsupported, flex_mods, peer_versions

import einfuse

REL_TOL = 2e-2  # bf16 gradients against float64: ~3e-3..1e-2 is normal
BWD_FLOP_RATIO = 2.5
NO_BACKWARD = ("decode_gqa",)  # einfuse has no backward for these plans (yet)
TARGETS = {"na1d": 1.0, "na2d": 3.0, "na3d": 3.0}  # fwd+bwd ratio vs Flex; everything else 1.0
SIGMOID_PEERS = ("triton-sigmoid",)
ATOMIC = "einfuse-triton-atomic-dq"
"""einfuse with dQ added atomically by the dK/dV kernel (instead of a dQ kernel): the layouts compared."""


def cases(only: str | None) -> list[Case]:
    """The training cases: the forward benchmark's, minus decode (a single query has nothing to train)."""
    out = [c for c in CASES if c.variant != "decode_gqa"]
    if only:
        wanted = {n.strip() for n in only.split(",")}
        unknown = wanted - {c.variant for c in out}
        if unknown:
            raise SystemExit(f"unknown case(s) {', '.join(sorted(unknown))}; known: {', '.join(c.variant for c in out)}")
        out = [c for c in out if c.variant in wanted]
    return out


def dry_cases() -> list[Case]:
    """Tiny versions of the cases, for ``--dry-run`` on the CPU (Triton interpreter, no peers)."""
    small = {"softmax": "softmax:head_dim=16", "causal": "causal:head_dim=16",
             "sliding_window": "sliding_window:window=16,causal=true,head_dim=16",
             "gqa": "gqa:causal=true,head_dim=16", "alibi": "alibi:causal=true,head_dim=16",
             "softcap": "softcap:cap=30,causal=false,head_dim=16", "na1d": "na1d:kernel=9,head_dim=16",
             "na2d": "na2d:shape=6x8,kernel=3,head_dim=16", "na3d": "na3d:shape=3x4x4,kernel=3,head_dim=16",
             "sigmoid": "sigmoid:bias=-3.0,head_dim=16", "sigmoid_causal": "sigmoid:causal=true,bias=-3.0,head_dim=16",
             "lightning": "lightning"}
    extra = {"sliding_window": {"window": 16}, "na1d": {"shape": (48,), "kernel": 9},
             "na2d": {"shape": (6, 8), "kernel": 3}, "na3d": {"shape": (3, 4, 4), "kernel": 3},
             "sigmoid": {"bias": -3.0}, "sigmoid_causal": {"bias": -3.0}, "softcap": {"cap": 30.0}}
    out = []
    for c in cases(None):
        h, hkv = (4, 2) if c.H != c.Hkv else (2, 2)
        out.append(replace(c, spec=small[c.variant], B=1, H=h, Hkv=hkv, NQ=48, NK=48, D=16,
                           extra=extra.get(c.variant, c.extra)))
    return out


# ---- the float64 reference ------------------------------------------------------------------------

def _ref_head(case: Case, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: int, h: int) -> torch.Tensor:
    """Output of one (batch, query head) in float64 from FlexAttention-style mods (or sigmoid's formula)."""
    dev = q.device
    n_q, n_k = q.shape[0], k.shape[0]
    qi = torch.arange(n_q, device=dev)[:, None]
    ki = torch.arange(n_k, device=dev)[None, :]
    bt, ht = torch.tensor(b, device=dev), torch.tensor(h, device=dev)
    if case.variant == "lightning":
        return backward_linear.ref_head(q, k, v, h, case.H)
    s = (q @ k.T) / math.sqrt(case.D)
    if case.variant.startswith("sigmoid"):
        w = torch.sigmoid(s + float(case.extra["bias"]))
        if case.variant == "sigmoid_causal":
            w = torch.where(ki <= qi, w, 0.0)
        return w @ v
    score_mod, mask_mod = flex_mods(case)
    if score_mod is not None:
        s = score_mod(s, bt, ht, qi, ki)
    keep = torch.ones_like(s, dtype=torch.bool) if mask_mod is None else torch.broadcast_to(
        mask_mod(bt, ht, qi, ki), s.shape)
    s = torch.where(keep, s, float("-inf"))
    mx = s.amax(-1, keepdim=True).detach()
    e = torch.where(keep, torch.exp(s - torch.where(torch.isfinite(mx), mx, 0.0)), 0.0)
    den = e.sum(-1, keepdim=True)
    return (e / torch.where(den == 0, 1.0, den)) @ v


def reference_grads(case: Case, q, k, v, do, b: int, hk: int) -> dict[str, torch.Tensor]:
    """float64 out, dq of the group's query heads, dk and dv of K/V head ``hk`` (batch ``b``)."""
    group = case.H // case.Hkv
    heads = list(range(hk * group, (hk + 1) * group))
    k64, v64 = (t[b, hk].detach().double().requires_grad_() for t in (k, v))
    outs, dqs = [], []
    for h in heads:
        q64 = q[b, h].detach().double().requires_grad_()
        o = _ref_head(case, q64, k64, v64, b, h)
        o.backward(do[b, h].double())
        outs.append(o.detach())
        dqs.append(q64.grad)
    return {"out": torch.stack(outs), "dq": torch.stack(dqs), "dk": k64.grad, "dv": v64.grad, "heads": heads}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b).clamp_min(1e-300))


# ---- systems ----------------------------------------------------------------------------------------

def make_system(system: str, case: Case, options: dict[str, Any]) -> tuple[Any, Any, bool]:
    """(fn(q, k, v) -> out in (B, H, N, D), to_native(q, k, v), native_bthd) for one system."""
    if system.startswith("einfuse-triton"):
        f = einfuse.compile(case.spec, **options)
        if not getattr(f, "has_backward", False):
            raise Unsupported(f"einfuse has no backward for {case.variant} ({f.family} plans) yet")
        if system == ATOMIC:  # the other dQ layout, measured beside the default in the same run
            from einfuse.codegen.autograd import backward_kernel
            from einfuse.codegen.triton.backward import build_backward

            f._backward_kernel = build_backward(f.kernel, backward_kernel(f).plan, dq_layout="atomic")
        return f, lambda *x: x, False
    prep: dict[str, Any] = {}
    if case.variant == "lightning":
        prep["rates"] = backward_linear.rates(case.H, "cuda")
    if case.variant == "sigmoid_causal":
        prep["causal_mask"] = torch.ones(case.NQ, case.NK, device="cuda", dtype=torch.bool).triu(1)
    fn, to_native = PEERS[system](case, prep)
    return fn, to_native, system in NATIVE_BTHD


def _timer(dev: str, warmup: int, rep: int):
    if dev == "cuda":
        import triton

        def bench(fn, grads):
            return triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grads, return_mode="median")
        return bench

    def once(fn, grads):  # the CPU dry run: one call, wall time (the interpreter: plumbing, not speed)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return once


def run_system(case: Case, system: str, inputs, ref, pairs: int, bench, options: dict[str, Any]) -> dict[str, Any]:
    q0, k0, v0, do0 = inputs
    fn, to_native, bthd = make_system(system, case, options)
    q, k, v = (t.detach().requires_grad_() for t in to_native(q0, k0, v0))
    do = do0.transpose(1, 2).contiguous() if bthd else do0
    row: dict[str, Any] = {}

    def forward():
        out = fn(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    out = forward()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    if bthd:
        out, dq, dk, dv = (t.transpose(1, 2) for t in (out, dq, dk, dv))
    b, hk, heads = case.B - 1, 0, ref["heads"]
    errs = {"out": rel(out[b, heads], ref["out"]), "dq": rel(dq[b, heads], ref["dq"]),
            "dk": rel(dk[b, hk], ref["dk"]), "dv": rel(dv[b, hk], ref["dv"])}
    row["rel_err"] = errs
    finite = all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    bad = {n: e for n, e in errs.items() if not e <= REL_TOL}
    if not finite or bad:
        row["error"] = "wrong result: " + ("non-finite values; " if not finite else "") + ", ".join(
            f"{n} rel_err {e:.3g}" for n, e in bad.items())
    del out, dq, dk, dv
    grads = [q, k, v]
    row["fwd_ms"] = bench(forward, grads)
    row["fwdbwd_ms"] = bench(lambda: forward().backward(do), grads)
    try:
        out = forward()
        row["bwd_ms"] = bench(lambda: out.backward(do, retain_graph=True), grads)
        row["bwd_method"] = "retain_graph"
    except RuntimeError as exc:  # e.g. a compiled backward that frees its saved tensors
        row["bwd_ms"] = max(row["fwdbwd_ms"] - row["fwd_ms"], 0.0)
        row["bwd_method"] = f"fwd+bwd minus fwd ({str(exc).splitlines()[0][:80]})"
    if case.variant == "lightning":  # chunked: quadratic FLOPs would overstate it; tokens per second
        for key in ("fwd", "bwd", "fwdbwd"):
            row[f"{key}_mtok_s"] = backward_linear.mtok_s(case.B, case.NQ, row[f"{key}_ms"])
        return row
    flops = 4.0 * case.B * case.H * pairs * case.D
    for key, mult in (("fwd", 1.0), ("bwd", BWD_FLOP_RATIO), ("fwdbwd", 1.0 + BWD_FLOP_RATIO)):
        row[f"{key}_tflops"] = flops * mult / (row[f"{key}_ms"] * 1e-3) / 1e12
    return row


def run_case(case: Case, systems: list[str], dev: str, bench, options: dict[str, Any], log) -> list[dict[str, Any]]:
    from bench_reference import visible_pairs

    if case.variant in NO_BACKWARD:
        return [{"variant": case.variant, "shape": case.shape, "system": "einfuse-triton", "spec": case.spec,
                 "error": "unsupported: einfuse has no backward for this plan yet (forward only)"}]
    gen = torch.Generator(device=dev).manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen, device=dev, dtype=torch.bfloat16)  # noqa: E731
    q, k, v = mk(case.B, case.H, case.NQ, case.D), mk(case.B, case.Hkv, case.NK, case.D), mk(case.B, case.Hkv, case.NK, case.D)
    do = mk(case.B, case.H, case.NQ, case.D)
    t0 = time.time()
    try:
        ref = reference_grads(case, q, k, v, do, case.B - 1, 0)
        pairs = visible_pairs(einfuse.load_spec(case.spec), case.NQ, case.NK, device=dev)
    except Exception as exc:  # noqa: BLE001 - the case's rows say why, the run goes on
        traceback.print_exc(file=log)
        return [{"variant": case.variant, "shape": case.shape, "system": s, "spec": case.spec,
                 "error": f"reference failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                for s in systems]
    print(f"[{case.variant}] reference gradients + pair count {time.time() - t0:.1f}s", file=log, flush=True)
    rows = []
    for system in systems:
        row: dict[str, Any] = {"variant": case.variant, "shape": case.shape, "system": system, "spec": case.spec,
                               "pairs": pairs}
        t0 = time.time()
        try:
            row.update(run_system(case, system, (q, k, v, do), ref, pairs, bench, options.get(case.variant, {})))
        except Unsupported as exc:
            row["error"] = f"unsupported: {exc}"
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            traceback.print_exc(file=log)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps(row), file=log, flush=True)
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()
    return rows


def peers_for(case: Case) -> tuple[str, ...]:
    if case.variant.startswith("sigmoid"):
        return SIGMOID_PEERS
    if case.variant in NO_BACKWARD:
        return ()
    if case.variant == "lightning":
        return tuple(p for p in case.peers if p in backward_linear.PEERS)
    return tuple(p for p in case.peers if p in ("flex", "sdpa-flash", "sdpa-cudnn"))


# ---- report -----------------------------------------------------------------------------------------

def summarise(rows: list[dict[str, Any]], done: list[Case]) -> list[dict[str, Any]]:
    """Per case: einfuse's fwd / bwd / fwd+bwd ratios over each peer that ran correctly, and the target."""
    out = []
    for case in done:
        mine = {r["system"]: r for r in rows if r["variant"] == case.variant}
        ours = mine.get("einfuse-triton")
        ok = lambda r: r is not None and "error" not in r and "fwdbwd_ms" in r  # noqa: E731
        atomic = mine.get(ATOMIC)
        ratios: dict[str, dict[str, float]] = {}
        for system, r in mine.items():
            if system != "einfuse-triton" and ok(r) and ok(ours):
                ratios[system] = {k: r[f"{k}_ms"] / ours[f"{k}_ms"] for k in ("fwd", "bwd", "fwdbwd")
                                  if ours[f"{k}_ms"] > 0}
        peer = "triton-sigmoid" if case.variant.startswith("sigmoid") else "fla" if case.variant == "lightning" \
            else "flex"
        need = TARGETS.get(case.variant, 1.0)
        got = ratios.get(peer, {}).get("fwdbwd")
        status = ("missed (einfuse row failed)" if not ok(ours) else f"unknown ({peer} row failed)" if got is None
                  else "met" if got >= need else "missed")
        entry = {"variant": case.variant, "shape": case.shape, "ratio_vs": ratios,
                 "target": {"peer": peer, "ratio_needed": need, "ratio": got, "status": status}}
        if ok(atomic) and ok(ours):
            entry["dq_layout"] = {"separate_bwd_ms": ours["bwd_ms"], "atomic_bwd_ms": atomic["bwd_ms"],
                                  "faster": "atomic" if atomic["bwd_ms"] < ours["bwd_ms"] else "separate"}
        cudnn = ratios.get("sdpa-cudnn", {}).get("fwdbwd")
        if cudnn is not None:
            entry["aim_sdpa_cudnn"] = {"ratio_wanted": 0.9, "ratio": cudnn, "status": "met" if cudnn >= 0.9 else "missed"}
        out.append(entry)
    return out


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"


def write_reports(rows: list[dict[str, Any]], info: dict[str, Any], done: list[Case], stem: str) -> None:
    summary = summarise(rows, done)
    with open(stem + ".json", "w") as fh:
        json.dump({"info": info, "rows": rows, "summary": summary}, fh, indent=1)
    lines = [f"# einfuse training benchmark (forward + backward): {info['device']}", "",
             f"- date: {info['date']}; torch {info['torch']}, triton {info['triton']}, CUDA {info['cuda']}, "
             f"cuDNN {info['cudnn']}; peers: {', '.join(f'{k} {v}' for k, v in info['peers'].items())}",
             "- bf16; time = median of triton.testing.do_bench; fwd = training forward (inputs require grad), "
             "bwd = backward of one recorded forward, fwd+bwd = both",
             "- every row's output and dq/dk/dv checked against float64 torch autograd of the variant as "
             "FlexAttention's mods define it (last batch, K/V head 0 and its query group, all tokens); "
             f"rows above {REL_TOL} fail",
             "- TFLOP/s: forward 4 * B * H * visible pairs * D, backward 2.5x that, fwd+bwd 3.5x (lightning: "
             "Mtok/s = B * N / time instead, in the note column)", "",
             "## Targets (fwd+bwd time)", "",
             "| variant | shape | target | ratio | status | vs SDPA cuDNN (aim >= 0.9x) | faster dQ layout (bwd) |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        t, c, lay = s["target"], s.get("aim_sdpa_cudnn"), s.get("dq_layout")
        lay_text = f"{lay['faster']} ({_f(lay['separate_bwd_ms'])} vs {_f(lay['atomic_bwd_ms'])} ms)" if lay else "-"
        lines.append(f"| {s['variant']} | {s['shape']} | >= {t['ratio_needed']}x {t['peer']} | {_f(t['ratio'])} | "
                     f"**{t['status']}** | {_f(c['ratio']) + ' (' + c['status'] + ')' if c else '-'} | {lay_text} |")
    lines += ["", "## All rows", "",
              "| variant | shape | system | fwd ms | bwd ms | fwd+bwd ms | fwd TFLOP/s | bwd TFLOP/s | "
              "fwd+bwd TFLOP/s | einfuse speed-up fwd / bwd / fwd+bwd | max grad rel_err | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_case = {s["variant"]: s for s in summary}
    for r in rows:
        ratio = by_case.get(r["variant"], {}).get("ratio_vs", {}).get(r["system"])
        rs = " / ".join(_f(ratio.get(k)) for k in ("fwd", "bwd", "fwdbwd")) if ratio else "-"
        errs = r.get("rel_err")
        err = _f(max(errs.values()), 2) if errs else "-"
        note = r.get("error", "")
        if "fwdbwd_mtok_s" in r:
            note = (note + "; " if note else "") + "Mtok/s fwd / bwd / fwd+bwd: " + " / ".join(
                _f(r[f"{k}_mtok_s"]) for k in ("fwd", "bwd", "fwdbwd"))
        if r.get("bwd_method", "retain_graph") != "retain_graph":
            note = (note + "; " if note else "") + f"bwd = {r['bwd_method']}"
        lines.append(f"| {r['variant']} | {r['shape']} | {r['system']} | {_f(r.get('fwd_ms'))} | {_f(r.get('bwd_ms'))} | "
                     f"{_f(r.get('fwdbwd_ms'))} | {_f(r.get('fwd_tflops'))} | {_f(r.get('bwd_tflops'))} | "
                     f"{_f(r.get('fwdbwd_tflops'))} | {rs} | {err} | {note.replace('|', '/')} |")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


def device_info(dev: str) -> dict[str, Any]:
    import triton

    return {"device": torch.cuda.get_device_name(0) if dev == "cuda" else f"cpu (Triton interpreter, {platform.machine()})",
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if dev == "cuda" else None, "python": platform.python_version(),
            "peers": peer_versions(), "einfuse_commit": os.environ.get("EINFUSE_COMMIT", ""),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated case variants (default: all)")
    ap.add_argument("--systems", help="comma-separated systems (default: einfuse-triton + the case's peers)")
    ap.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up time, ms")
    ap.add_argument("--results-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", help="results file stem (default: <device>-backward)")
    ap.add_argument("--einfuse-options", default="{}", help='JSON {"variant": {option: value}}')
    ap.add_argument("--append", action="store_true",
                    help="keep the rows of other cases already in the results file (run the cases in batches)")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny shapes, einfuse only, on the CPU in the Triton interpreter (checks the plumbing)")
    args = ap.parse_args(argv)
    dev = "cpu" if args.dry_run else "cuda"
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --dry-run (TRITON_INTERPRET=1) to check the plumbing")
    info = device_info(dev)
    out_dir = os.environ.get("OUT")
    log = open(os.path.join(out_dir, "backward.log"), "a") if out_dir else sys.stderr  # noqa: SIM115
    print(json.dumps(info), file=log, flush=True)
    opts = json.loads(args.einfuse_options)
    stem = args.name or re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-") + "-backward"
    dirs = [os.path.join(args.results_dir, "backward")] + ([out_dir] if out_dir else [])
    todo = [c for c in dry_cases() if not args.only or c.variant in args.only.split(",")] if args.dry_run \
        else cases(args.only)
    bench = _timer(dev, args.warmup, args.rep)
    rows: list[dict[str, Any]] = []
    done: list[Case] = []
    previous = os.path.join(dirs[0], stem + ".json")
    if args.append and os.path.exists(previous):  # earlier batches of this device's run
        with open(previous) as fh:
            kept = [r for r in json.load(fh)["rows"] if r["variant"] not in {c.variant for c in todo}]
        known = {c.variant: c for c in (dry_cases() if args.dry_run else cases(None))}
        rows = kept
        done = [known[v] for v in dict.fromkeys(r["variant"] for r in kept) if v in known]
    for case in todo:
        systems = ["einfuse-triton", *([] if case.variant in NO_BACKWARD or case.variant == "lightning" else [ATOMIC]),
                   *([] if args.dry_run else peers_for(case))]
        if args.systems:
            systems = [s for s in args.systems.split(",") if s in systems]
        new = run_case(case, systems, dev, bench, opts, log)
        rows += new
        done.append(case)
        for d in dirs:  # after every case, so a run cut short still leaves its results
            os.makedirs(d, exist_ok=True)
            write_reports(rows, info, done, os.path.join(d, stem))
        for r in new:
            print(f"{r['variant']:15s} {r['system']:15s} fwd={r.get('fwd_ms', float('nan')):.3f} "
                  f"bwd={r.get('bwd_ms', float('nan')):.3f} fwd+bwd={r.get('fwdbwd_ms', float('nan')):.3f} ms "
                  f"{r.get('error', '')[:90]}", flush=True)
    with open(os.path.join(dirs[-1], stem + ".md")) as fh:
        print(fh.read())
    failed = [r for r in rows if "error" in r and not r["error"].startswith("unsupported")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
