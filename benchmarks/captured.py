"""Captured tensors on the GPU: document masking and Swin relative-position bias, einfuse vs FlexAttention.

    python benchmarks/captured.py                        # the fast set (< 5 min on an H200, Flex compiling)
    python benchmarks/captured.py --set full             # every size (longer; each row still time-limited)
    python benchmarks/captured.py --only swin_w8 --mode fwd
    python benchmarks/captured.py --dry-run              # CPU (Triton interpreter, Flex eager): plumbing

The mods and references are in benchmarks/captured_cases.py. Flex runs compiled
(``torch.compile(flex_attention)``) with a block mask from ``create_block_mask`` built outside the
timing; einfuse with its run-time block tables (built on the first call, cached while the ids are
unchanged). Each row is checked against float32 torch before it is timed with
``triton.testing.do_bench`` (median): the output on a sample of query rows, and for ``fwd+bwd``
(``--mode both``, the default) the gradients of q, k, v and of the learned Swin table. Forward
timings run under ``torch.no_grad()``; ``fwd+bwd`` is one forward and ``torch.autograd.grad``.

Every (case, system) runs in its own process with a time limit (``--case-timeout``) inside a total
budget (``--budget``): a row that runs out (Flex compiling at a large size, say) is killed and
reported as ``timeout`` with the stage it reached and what it measured before; cases the budget
cannot start are reported as ``skipped``. Results (JSON, then a markdown table) are rewritten after
every row into benchmarks/results/captured/ (not for --dry-run), ``--results-dir`` and ``$OUT``.
The target is einfuse >= 1.0x Flex; rows below are flagged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # this checkout's einfuse, whatever is installed

from captured_cases import SETS, Case, find, grad_slice, mods, reference, reference_grads, rel_err  # noqa: E402

TARGET = 1.0
REL_TOL = 2e-2  # bf16 operands (fp32 in the dry run: far below)
SYSTEMS = ("einfuse", "flex")
MARK = "@@ROW "
HANG_ENV = "EINFUSE_CAPTURED_HANG"  # tests: a worker of this system sleeps (exercises the time limit)
RESULTS = os.path.join(HERE, "results", "captured")


# ---- one (case, system): runs in a worker process ---------------------------------------------------

def timer(dry: bool, warmup: int, rep: int) -> Callable[[Callable], float]:
    if not dry:
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))

    def wall(fn: Callable) -> float:  # the interpreter: plumbing, not speed (one call, compiled already)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return wall


def flex_system(case: Case, score_mod, mask_mod, device: str, compiled: bool) -> tuple[Callable, Callable]:
    """(attention call, block-mask build) for FlexAttention, compiled (GPU) or eager (dry run)."""
    import math

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    fa = flex_attention
    if compiled:
        cfg = torch._dynamo.config  # past the recompile limit dynamo silently runs Flex eagerly (bench_peers.py)
        for name, value in (("cache_size_limit", 64), ("recompile_limit", 64),
                            ("accumulated_cache_size_limit", 1024), ("accumulated_recompile_limit", 1024)):
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), value))
        fa = torch.compile(flex_attention, dynamic=False)

    def build():
        if mask_mod is None:
            return None
        return create_block_mask(mask_mod, None, None, case.N, case.N, device=device, _compile=compiled)
    block_mask = build()

    def fn(q, k, v):
        return fa(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1 / math.sqrt(case.D))
    return fn, build


def einfuse_system(case: Case, score_mod, mask_mod, autotune: bool) -> Any:
    import einfuse as ef

    c = ef.attention(case.name, score_mod=score_mod, mask_mod=mask_mod, head_dim=case.D)
    return ef.compile(c, **({"autotune": True} if autotune else {}))


def base_row(case: Case, system: str, dry: bool) -> dict[str, Any]:
    return {"case": case.name, "kind": case.kind, "B": case.B, "H": case.H, "N": case.N, "D": case.D,
            "dtype": "float32" if dry else "bfloat16", "system": system,
            **{f"x_{k}": v for k, v in case.extra.items()},
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def measure(case: Case, system: str, args: argparse.Namespace, row: dict[str, Any],
            emit: Callable[[dict], None]) -> None:
    """Check, then time, one system on one case, filling ``row``; ``emit`` gets the row after every
    stage (the parent keeps the last one if the process is killed)."""
    dry = args.dry_run
    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    timeit = timer(dry, args.warmup, args.rep)

    def stage(name: str) -> None:
        row["stage"] = name
        emit(row)

    stage("inputs")
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (torch.randn(case.B, case.H, case.N, case.D, device=device, dtype=dtype, generator=gen)
                     for _ in range(4))
    score_mod, mask_mod, caps = mods(case, device)
    rows = torch.sort(torch.randperm(case.N, generator=torch.Generator().manual_seed(5))[:1024]).values.to(device)
    bsl = slice(0, min(case.B, 64))  # the forward reference on a slice of the batch (all of it for docs: B=1)
    want = reference(case, q[bsl], k[bsl], v[bsl], caps, rows)

    stage("compile")
    if os.environ.get(HANG_ENV) == system:
        time.sleep(3600)
    if system == "einfuse":
        fn = einfuse_system(case, score_mod, mask_mod, not args.no_autotune and not dry)
        build = None
    else:
        fn, build = flex_system(case, score_mod, mask_mod, device, compiled=not dry)
        row["flex_mode"] = "eager" if dry else "compiled"

    stage("forward")
    t0 = time.perf_counter()
    with torch.no_grad():
        got = fn(q, k, v)
        row["fwd_first_call_s"] = round(time.perf_counter() - t0, 2)
        row["rel_err"] = rel_err(got[bsl][:, :, rows], want)
        row["ok"] = row["rel_err"] < REL_TOL
        row["fwd_ms"] = timeit(lambda: fn(q, k, v))
        tables = getattr(getattr(fn, "kernel", None), "last_tables", None)
        if tables is not None:
            row["tiles_visited"] = round(tables.visited_fraction, 4)
        if case.kind == "docs":  # the mask build for new ids: Flex's create_block_mask, einfuse's tables
            if system == "flex":
                row["mask_build_ms"] = timeit(build)
            else:  # a fresh id tensor every call: tables rebuilt
                ids = caps["doc_ids"]
                row["mask_build_ms"] = timeit(lambda: fn(q, k, v, doc_ids=ids.clone())) - row["fwd_ms"]
    if args.mode == "fwd":
        stage("done")
        return
    if dry and system == "flex":
        row["bwd_skipped"] = "FlexAttention has no CPU backward"
        stage("done")
        return

    stage("backward")
    x = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    inputs = (*x, caps["table"]) if case.kind == "swin" else tuple(x)

    def step():
        return torch.autograd.grad(fn(*x), inputs, dout)
    t0 = time.perf_counter()
    grads = step()
    row["bwd_first_call_s"] = round(time.perf_counter() - t0, 2)
    ref = reference_grads(case, q, k, v, dout, caps)
    bs, hs = grad_slice(case)
    errs = {n: rel_err(g[bs, hs], ref[n]) for n, g in zip(("dq", "dk", "dv"), grads)}
    if case.kind == "swin":
        errs["dtable"] = rel_err(grads[3], ref["dtable"])
    row["grad_rel_err"] = errs
    row["grad_ok"] = max(errs.values()) < REL_TOL
    del grads, ref
    row["fwdbwd_ms"] = timeit(step)
    if system == "einfuse":
        bwd = getattr(fn, "_backward_kernel", None)
        t = getattr(bwd, "last_capture_tables", None)
        if t is not None:
            row["capgrad_tiles_visited"] = round(t.visited_fraction, 4)
    stage("done")


def worker(spec: str, args: argparse.Namespace) -> int:
    """``--worker CASE:SYSTEM``: print the row (``@@ROW {json}``) after each stage."""
    name, system = spec.split(":")
    (case,) = find([name], [])

    def emit(r: dict) -> None:
        print(MARK + json.dumps(r), flush=True)
    row = base_row(case, system, args.dry_run)
    try:
        measure(case, system, args, row, emit)
    except Exception as exc:  # noqa: BLE001 - recorded in the row, with the stage it reached
        import traceback

        traceback.print_exc()
        row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        emit(row)
        return 1
    return 0


# ---- the driver: one process per (case, system), time limits, reports -------------------------------

def run_worker(case: Case, system: str, args: argparse.Namespace, limit: float, log) -> dict[str, Any]:
    """Run one (case, system) in a new process group; kill the group at ``limit`` seconds (Flex's
    compile workers too) and report the last stage reached."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{case.name}:{system}", "--mode", args.mode,
           "--rep", str(args.rep), "--warmup", str(args.warmup)]
    cmd += ["--dry-run"] * args.dry_run + ["--no-autotune"] * args.no_autotune
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, text=True)
        timed_out = False
        try:
            p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        out.seek(0)
        err.seek(0)
        rows = [json.loads(line[len(MARK):]) for line in out.read().splitlines() if line.startswith(MARK)]
        stderr = err.read()
    if stderr.strip():
        print(f"---- {case.name}:{system} stderr ----\n{stderr[-20000:]}", file=log, flush=True)
    row = rows[-1] if rows else base_row(case, system, args.dry_run)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if timed_out:
        row["status"] = "timeout"
        row["error"] = f"time limit {limit:.0f} s reached in stage '{row.get('stage', 'start')}'"
    elif "error" in row or p.returncode != 0:
        row["status"] = "error"
        row.setdefault("error", f"worker exited with {p.returncode}: {stderr.strip()[-300:]}")
    else:
        row["status"] = "ok" if row.get("ok") and row.get("grad_ok", True) else "wrong"
    return row


def skipped(case: Case, system: str, dry: bool, why: str) -> dict[str, Any]:
    return {**base_row(case, system, dry), "status": "skipped", "error": why}


def compare(rows: list[dict[str, Any]]) -> None:
    """Speed-ups of each einfuse row over the Flex row of its case (Flex ms / einfuse ms), per
    measurement whose checks both systems passed (a Flex backward that fails keeps its forward)."""
    flex = {r["case"]: r for r in rows if r["system"] == "flex"}
    for r in rows:
        f = flex.get(r["case"])
        if r["system"] != "einfuse" or f is None:
            continue
        for key, check, out in (("fwd_ms", "ok", "vs_flex"), ("fwdbwd_ms", "grad_ok", "vs_flex_fwdbwd")):
            if r.get(key) and f.get(key) and r.get(check) and f.get(check):
                r[out] = round(f[key] / r[key], 3)
        sp = [r[k] for k in ("vs_flex", "vs_flex_fwdbwd") if k in r]
        if sp:
            r["meets_target"] = min(sp) >= TARGET and r.get("status") == "ok"


def _f(x: Any, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [f"# Captured tensors: einfuse vs FlexAttention ({info['device']})", "",
             f"torch {info['torch']}, triton {info['triton']}, {info['date']}, commit {info['einfuse_commit'] or '?'}. "
             "Times: median ms (`triton.testing.do_bench`); fwd under no_grad, fwd+bwd = forward + "
             "`torch.autograd.grad` of q, k, v (and the Swin table). Errors: relative to float32 torch (the "
             "largest over dq, dk, dv, dtable for gradients). Mask build: Flex's `create_block_mask` vs einfuse's "
             f"tables for new ids. Target: einfuse >= {TARGET:.1f}x Flex (Flex ms / einfuse ms). first call: "
             "seconds of the first forward (compilation included).", "",
             "| case | B | H | N | D | system | status | fwd ms | fwd+bwd ms | rel err | grad err | vs Flex fwd | "
             "vs Flex fwd+bwd | target | tiles visited | mask build ms | first call s | note |",
             "|" + "---|" * 18]
    for r in rows:
        ge = r.get("grad_rel_err")
        flag = "" if "meets_target" not in r else ("met" if r["meets_target"] else "**below**")
        note = r.get("error") or r.get("bwd_skipped") or ""
        lines.append(
            f"| {r['case']} | {r['B']} | {r['H']} | {r['N']} | {r['D']} | {r['system']} | {r.get('status', '')} | "
            f"{_f(r.get('fwd_ms'), '.4f')} | {_f(r.get('fwdbwd_ms'), '.4f')} | {_f(r.get('rel_err'), '.1e')} | "
            f"{_f(max(ge.values()) if ge else None, '.1e')} | {_f(r.get('vs_flex'), '.2f')} | "
            f"{_f(r.get('vs_flex_fwdbwd'), '.2f')} | {flag} | {r.get('tiles_visited', '')} | "
            f"{_f(r.get('mask_build_ms'), '.3f')} | {_f(r.get('fwd_first_call_s'), '.1f')} | "
            f"{note.replace('|', '/')[:160]} |")
    return "\n".join(lines) + "\n"


def device_info(dry: bool) -> dict[str, Any]:
    import triton

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry else "cpu-interpreter"
    commit = os.environ.get("EINFUSE_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "einfuse_commit": commit}


def _previous(path: str) -> list[dict[str, Any]]:
    """Rows of an earlier run on this device (so that ``--only`` runs of a few cases make one table)."""
    try:
        with open(path) as fh:
            return list(json.load(fh).get("rows", []))
    except (OSError, ValueError):
        return []


def write(dirs: list[str], stem: str, info: dict[str, Any], settings: dict[str, Any],
          rows: list[dict[str, Any]]) -> None:
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, stem + ".json"), "w") as fh:
            json.dump({"info": info, "settings": settings, "rows": rows}, fh, indent=1)
        with open(os.path.join(d, stem + ".md"), "w") as fh:
            fh.write(markdown(rows, info))


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes, Flex eager (forward)")
    ap.add_argument("--set", choices=sorted(set(SETS) - {"dry"}), default="fast", help="case set (default: fast)")
    ap.add_argument("--only", help="comma-separated case names (from any set)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: einfuse, flex")
    ap.add_argument("--mode", choices=("fwd", "both"), default="both", help="forward only, or forward and fwd+bwd")
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--no-autotune", action="store_true", help="einfuse's heuristic tiles instead of autotuning")
    ap.add_argument("--case-timeout", type=float, default=150.0, help="seconds per (case, system) process")
    ap.add_argument("--budget", type=float, default=280.0, help="seconds for the whole run; later rows are skipped")
    ap.add_argument("--results-dir", help="also write the results here (besides benchmarks/results/captured and $OUT)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        print("no GPU: use --dry-run", file=sys.stderr)
        return 2
    if args.worker:
        return worker(args.worker, args)
    try:
        cases = find(args.only.split(",") if args.only else [], SETS["dry" if args.dry_run else args.set])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    systems = [s for s in args.systems.split(",") if s]
    if not systems or set(systems) - set(SYSTEMS):
        print(f"--systems: choose from {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    info = device_info(args.dry_run)
    out_dir = os.environ.get("OUT")
    dirs = list(dict.fromkeys(([] if args.dry_run else [RESULTS]) + [d for d in (args.results_dir, out_dir) if d]))
    log = open(os.path.join(out_dir, "captured.log"), "a") if out_dir else sys.stderr  # noqa: SIM115
    stem = "captured-" + re.sub(r"[^a-z0-9]+", "-", info["device"].lower()).strip("-")
    settings = {k: getattr(args, k) for k in ("mode", "rep", "warmup", "no_autotune", "case_timeout", "budget")}
    settings["set"] = "dry" if args.dry_run else args.set
    names = {c.name for c in cases}
    old = _previous(os.path.join(dirs[0], stem + ".json")) if dirs else []
    done: list[dict[str, Any]] = [r for r in old if r["case"] not in names]  # --only runs add up
    start = time.perf_counter()
    now: list[dict[str, Any]] = []
    for case in cases:
        for system in systems:
            left = args.budget - (time.perf_counter() - start)
            if left < 15:
                row = skipped(case, system, args.dry_run, f"budget of {args.budget:.0f} s spent")
            else:
                row = run_worker(case, system, args, min(args.case_timeout, left), log)
            now.append(row)
            print(json.dumps(row), file=log, flush=True)
            compare(now)
            write(dirs, stem, info, settings, done + now)  # after every row: a run cut short keeps what it measured
    print(markdown(done + now, info))
    return 0 if all(r.get("status") == "ok" for r in now) else 1


if __name__ == "__main__":
    raise SystemExit(main())
