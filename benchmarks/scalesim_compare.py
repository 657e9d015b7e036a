"""GEMM cycle counts of einfuse's simulator against SCALE-Sim, same array and dataflow, in one go.

SCALE-Sim (``pip install scalesim``, 3.0.0) runs in its own virtual environment because it needs an
older numpy than the project (numpy 2.2.6 works)::

    python3 -m venv /tmp/scalesim-venv && /tmp/scalesim-venv/bin/pip install scalesim numpy==2.2.6
    python benchmarks/scalesim_compare.py --scalesim-python /tmp/scalesim-venv/bin/python

For every layer shape, array size and dataflow the script simulates ``Z[i,j] = A[i,k] * B[k,j]``
(SCALE-Sim's GEMM ``M, N, K``: ifmap ``M x K``, filter ``K x N``) on the ``systolic`` design with
fold-by-fold timing and a DRAM too fast to stall, runs SCALE-Sim with SRAMs and bandwidth large
enough not to stall either, and compares compute cycles. SCALE-Sim reports one cycle less than the
cycles its own demand matrices span (a known reporting quirk); the table shows both the raw and the
quirk-corrected difference. Results go to ``benchmarks/results/scalesim-gemm.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

SHAPES = [  # name, M, N, K
    ("bert_qk_head_512", 512, 512, 64),
    ("bert_av_head_512", 512, 64, 512),
    ("bert_qkv_proj_128tok", 128, 768, 768),
    ("bert_ffn_up_64tok", 64, 3072, 768),
    ("ragged_100x37x300", 100, 37, 300),
    ("tall_skinny_1000x17x64", 1000, 17, 64),
]
ARRAYS = [(32, 32), (16, 64)]
DATAFLOWS = {"os": "output_stationary", "ws": "weight_stationary", "is": "input_stationary"}

GEMM = """cascade gemm
ranks I, J, K
input A[I,K]
input B[K,J]
output Z[I,J]
Z[i,j] = A[i,k] * B[k,j]
"""

CFG = """[general]
run_name = {name}

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: 65536
FilterSramSzkB: 65536
OfmapSramSzkB: 65536
IfmapOffset: 0
FilterOffset: 100000000
OfmapOffset: 200000000
Bandwidth: 100000
Dataflow: {df}
MemoryBanks: 1
ReadRequestBuffer: 512
WriteRequestBuffer: 512

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: USER
UseRamulatorTrace: False
"""


def einfuse_cycles(M: int, N: int, K: int, rows: int, cols: int, dataflow: str) -> dict:
    """Compute cycles of the 2-D array (first fold start to last fold end) and the MAC count."""
    import einfuse
    from einfuse.simulator import Workload, load_arch, simulate

    a = load_arch("systolic")
    a = replace(a, pe_array=replace(a.pe_array, rows=rows, cols=cols, dataflow=DATAFLOWS[dataflow],
                                    pipeline_folds=False),
                dram_bytes_per_s=1e18, dram_latency_cycles=0)
    t0 = time.perf_counter()
    r = simulate(einfuse.parse_cascade(GEMM), a, Workload("gemm", 1, 1, 1, 1, sizes={"I": M, "J": N, "K": K}))
    wall = time.perf_counter() - t0
    span = r.sim["unit_last_end"]["2d"] - r.sim["unit_first_start"]["2d"]
    return {"compute_cycles": span, "total_cycles": r.cycles, "macs": r.macs, "util_2d": r.util_2d,
            "wall_s": wall}


def scalesim_cycles(python: str, M: int, N: int, K: int, rows: int, cols: int, dataflow: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "run.cfg")
        with open(cfg, "w") as fh:
            fh.write(CFG.format(name="cmp", rows=rows, cols=cols, df=dataflow))
        topo = os.path.join(tmp, "topo.csv")
        with open(topo, "w") as fh:
            fh.write(f"Layer, M, N, K,\ngemm, {M}, {N}, {K},\n")
        layout = os.path.join(tmp, "layout.csv")   # required by the CLI; unused without custom layouts
        with open(layout, "w") as fh:
            fh.write("Layer name," + ",".join(f"x{i}" for i in range(20)) + ",\n")
            fh.write("gemm, 1,1,1,1,1,1,0,1,2,1,2,0,0,1,2,3,0,1,2,3,\n")
        t0 = time.perf_counter()
        p = subprocess.run([python, "-m", "scalesim.scale", "-c", cfg, "-t", topo, "-l", layout, "-p",
                            os.path.join(tmp, "out"), "-i", "gemm", "-s", "N"],
                           capture_output=True, text=True, cwd=tmp, check=False)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"SCALE-Sim failed: {p.stderr[-2000:]}")
        report = os.path.join(tmp, "out", "cmp", "COMPUTE_REPORT.csv")
        with open(report) as fh:
            row = next(csv.DictReader(fh, skipinitialspace=True))
    return {"compute_cycles": int(float(row["Total Cycles"])), "stall_cycles": int(float(row["Stall Cycles"])),
            "cycles_incl_prefetch": int(float(row["Total Cycles (incl. prefetch)"])),
            "compute_util": float(row["Compute Util %"]) / 100, "wall_s": wall}


def compare(python: str, shapes=SHAPES, arrays=ARRAYS, dataflows=tuple(DATAFLOWS)) -> list[dict]:
    rows = []
    for name, M, N, K in shapes:
        for r, c in arrays:
            for df in dataflows:
                ours = einfuse_cycles(M, N, K, r, c, df)
                theirs = scalesim_cycles(python, M, N, K, r, c, df)
                diff = ours["compute_cycles"] - theirs["compute_cycles"]
                rows.append({"layer": name, "M": M, "N": N, "K": K, "array": f"{r}x{c}", "dataflow": df,
                             "einfuse_cycles": ours["compute_cycles"], "scalesim_cycles": theirs["compute_cycles"],
                             "scalesim_stall_cycles": theirs["stall_cycles"],
                             "difference": diff, "difference_quirk_corrected": diff - 1,
                             "relative_difference": diff / theirs["compute_cycles"],
                             "einfuse_util": ours["util_2d"], "scalesim_compute_util": theirs["compute_util"],
                             "einfuse_wall_s": ours["wall_s"], "scalesim_wall_s": theirs["wall_s"]})
                print(f"{name:24s} {r}x{c} {df}: einfuse {ours['compute_cycles']:>9d}  scalesim "
                      f"{theirs['compute_cycles']:>9d}  diff {diff:+d}", flush=True)
    return rows


def write(rows: list[dict], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "scalesim-gemm.json"), "w") as fh:
        json.dump(rows, fh, indent=1)
    worst = max(abs(r["relative_difference"]) for r in rows)
    lines = ["# GEMM cycles: einfuse simulator vs SCALE-Sim 3.0.0", "",
             "Same array and dataflow; `Z[i,j] = A[i,k] * B[k,j]` on the `systolic` design with fold-by-fold "
             "timing (`pipeline_folds: false`), SCALE-Sim with SRAMs and DRAM bandwidth large enough not to "
             "stall (its stall cycles column confirms it). Cycles are compute cycles: from the first fold to "
             "the end of the last one. SCALE-Sim reports one cycle less than its demand matrices span, so a "
             "difference of +1 means identical timing.", "",
             f"{len(rows)} comparisons; largest relative difference {100 * worst:.4f}%; "
             f"quirk-corrected differences: {sorted({r['difference_quirk_corrected'] for r in rows})}.", "",
             "| layer | M | N | K | array | dataflow | einfuse | SCALE-Sim | SCALE-Sim stalls | difference "
             "| corrected | einfuse s | SCALE-Sim s |",
             "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['M']} | {r['N']} | {r['K']} | {r['array']} | {r['dataflow']} | "
                     f"{r['einfuse_cycles']} | {r['scalesim_cycles']} | {r['scalesim_stall_cycles']} | "
                     f"{r['difference']:+d} | {r['difference_quirk_corrected']:+d} | {r['einfuse_wall_s']:.3f} | "
                     f"{r['scalesim_wall_s']:.2f} |")
    lines.append("")
    with open(os.path.join(out, "scalesim-gemm.md"), "w") as fh:
        fh.write("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scalesim-python", default=os.environ.get("SCALESIM_PYTHON", "/tmp/scalesim-venv/bin/python"),
                    help="a python that can import scalesim (its own venv)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--quick", action="store_true", help="two small shapes, one array (for tests)")
    args = ap.parse_args(argv)
    shapes, arrays = (SHAPES[-2:], ARRAYS[:1]) if args.quick else (SHAPES, ARRAYS)
    rows = compare(args.scalesim_python, shapes, arrays)
    write(rows, args.out)
    print(f"wrote {args.out}/scalesim-gemm.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
