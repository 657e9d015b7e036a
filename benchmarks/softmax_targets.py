"""Time the softmax/sigmoid-family target shapes of the Triton generator on this GPU.

    python benchmarks/softmax_targets.py [--out results.json] [--only NAME ...] [--no-autotune]

Each target is timed with ``einfuse bench`` (autotuned configuration, median of repeated runs,
random bf16 inputs, FLOPs = 4 * D per kept (query, key) pair and head) beside the peers listed,
and compared with the anchors measured on an H100 (FlexAttention, cuDNN, triton-sigmoid).
"""

from __future__ import annotations

import argparse
import json
import time

# name, spec, (B, H, N, D), peers, anchor TFLOP/s of the reference peer, goal (x anchor)
TARGETS = [
    ("softmax", "softmax:head_dim=128", (4, 16, 4096, 128), ("flex", "cudnn"), ("flex", 483.0), 1.0),
    ("causal", "causal:head_dim=128", (4, 16, 4096, 128), ("cudnn",), ("flex", 370.0), 1.0),
    ("swa1024", "sliding_window:window=1024,head_dim=128", (4, 16, 16384, 128), (), ("flex", 333.0), 1.0),
    ("na2d", "na2d:shape=96x96,kernel=13,head_dim=64", (4, 8, 9216, 64), (), ("flex", 21.0), 3.0),
    ("sigmoid", "sigmoid:head_dim=128", (4, 16, 4096, 128), (), ("triton-sigmoid", 445.0), 1.0),
    ("sigmoid_causal", "sigmoid:causal=true,head_dim=128", (4, 16, 4096, 128), (), ("triton-sigmoid", 228.0), 1.8),
    ("na3d", "na3d:shape=16x32x32,kernel=7,head_dim=64", (2, 8, 16384, 64), (), ("flex", 20.0), 3.0),
]


def main() -> None:
    from einfuse.commands.bench import run_bench

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--no-autotune", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    records, summary = [], []
    for name, spec, shape, peers, (anchor_impl, anchor), goal in TARGETS:
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        try:
            rec = run_bench(spec, shape, None, None, "bf16", () if args.no_peers else peers,
                            not args.no_autotune, {}, log=print)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next target
            print(f"{name}: FAILED {type(exc).__name__}: {exc}")
            summary.append((name, None, anchor_impl, anchor, goal))
            continue
        ours = next(r for r in rec["results"] if r.get("impl") == "einfuse")
        rec.update(name=name, anchor={anchor_impl: anchor}, goal=goal, seconds=time.time() - t0)
        records.append(rec)
        summary.append((name, ours["tflops"], anchor_impl, anchor, goal))
        print(flush=True)
    print(f"{'target':<16}{'einfuse TF/s':>13}{'anchor':>24}{'ratio':>8}{'goal':>7}")
    for name, tf, impl, anchor, goal in summary:
        ratio = f"{tf / anchor:.2f}x" if tf else "-"
        print(f"{name:<16}{(f'{tf:.1f}' if tf else 'failed'):>13}{f'{impl} {anchor:.0f}':>24}{ratio:>8}{goal:>6.1f}x")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
