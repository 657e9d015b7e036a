"""A/B timing of one variant from two source trees, alternating fresh processes, on one GPU.

    python benchmarks/ab_trees.py OLD_TREE NEW_TREE [SPEC B,H,N,D] [--repeats 3]

Why: a row of run_gpu.py that moved between two runs may have moved with the machine (host
contention, clocks), not with the code. Alternating the trees in fresh processes on the same machine
separates the two. Prints, per tree, the GPU-timed median (do_bench) and the host microseconds per
eager call of each repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, sys, time, torch, triton.testing, einfuse
spec, shape = sys.argv[1], sys.argv[2]
B, H, N, D = (int(x) for x in shape.split(","))
f = einfuse.compile(spec)
q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
fn = lambda: f(q, k, v)
ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
for _ in range(20): fn()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(300): fn()
host = (time.perf_counter() - t) / 300 * 1e6
torch.cuda.synchronize()
print(json.dumps({"ms": ms, "host_us": host, "module": einfuse.__file__}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("spec", nargs="?", default="na2d:shape=96x96,kernel=13,head_dim=64")
    ap.add_argument("shape", nargs="?", default="4,8,9216,64")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for _ in range(a.repeats):
        for label, tree in (("old", a.old), ("new", a.new)):
            env = {**os.environ, "PYTHONPATH": os.path.abspath(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")}
            out = subprocess.run([sys.executable, "-c", _CHILD, a.spec, a.shape], env=env, capture_output=True,
                                 text=True, check=True, cwd=os.path.abspath(tree))
            results[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for label, rs in results.items():
        print(f"{label:4s} {a.spec} {a.shape}: ms " + " ".join(f"{r['ms']:.4f}" for r in rs)
              + "   host us/call " + " ".join(f"{r['host_us']:.0f}" for r in rs) + f"   ({rs[0]['module']})")


if __name__ == "__main__":
    main()
