"""The DSE example and its timing: softmax on FuseMax, pe x buffer x dram x 3 lengths (240 points).

Target (issue 13): a 200-point sweep in under 2 minutes on the project's 2-core CPU machine. The
script runs the sweep from scratch into ``benchmarks/results/dse-example/`` (a fresh results table)
and records wall time and the CPU seconds the workers spent, so a run on a machine shared with other
jobs still says what the sweep costs: ``cpu_s / workers`` is the wall time of an idle machine.

    python3 benchmarks/dse_sweep.py                      # 240 points, every core
    python3 benchmarks/dse_sweep.py --vary pe=64,128 --out /tmp/dse   # anything smaller
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from einfuse.frontends import load_spec
from einfuse.simulator.area import load_area_table
from einfuse.simulator.dse_report import write_dse_report
from einfuse.simulator.explore import ResultTable, as_dict, explore, make_points
from einfuse.simulator.vary import grid, parse_vary
from einfuse.simulator.workload import parse_seq

VARY = "pe=64..512,buffer=4M..64M,dram=200G..1.6T"
SEQ = "1K,16K,64K"
LIMITS = {"max_area": 320.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vary", default=VARY)
    ap.add_argument("--seq", default=SEQ)
    ap.add_argument("--spec", default="softmax")
    ap.add_argument("--arch", default="fusemax")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "dse-example"))
    ap.add_argument("--resume", action="store_true", help="keep the results table (default: start afresh)")
    ap.add_argument("--report-only", action="store_true",
                    help="redraw the report from the committed table and timing.json, simulating nothing")
    args = ap.parse_args()
    if args.report_only:
        args.resume = True

    table_path = os.path.join(args.out, "results.jsonl")
    if not args.resume and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    points = make_points([args.spec], args.arch, grid(parse_vary(args.vary)), ["bert-base"], parse_seq(args.seq),
                         resolve=load_spec)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    me = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    rows, stats = explore(points, ResultTable(table_path), workers=args.workers, progress=sys.stderr.isatty())
    if args.report_only:
        if stats.computed:
            raise SystemExit(f"--report-only: {stats.computed} points were missing from {table_path}")
        timing = json.load(open(os.path.join(args.out, "timing.json"), encoding="utf-8"))
        stats = replace(stats, computed=timing["computed"], reused=timing["points"] - timing["computed"],
                        wall_s=timing["wall_s"], where=f"{timing['workers']} local processes")
        return report(args, rows, stats, timing)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    me2 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
           + me2.ru_utime + me2.ru_stime - me.ru_utime - me.ru_stime)
    workers = args.workers or os.cpu_count() or 1
    load = os.getloadavg()[0]
    timing = {"points": stats.points, "computed": stats.computed, "wall_s": wall, "cpu_s": cpu, "workers": workers,
              "idle_machine_wall_s": cpu / workers, "load_average_1min_after": load,
              "per_point_cpu_s": cpu / max(1, stats.computed), "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    with open(os.path.join(args.out, "timing.json"), "w", encoding="utf-8") as fh:
        json.dump(timing, fh, indent=1)
    report(args, rows, stats, timing)


def report(args: argparse.Namespace, rows: list, stats, timing: dict) -> None:
    command = (f"einfuse explore {args.spec} --arch {args.arch} --vary {args.vary} --model bert-base "
               f"--seq {args.seq} --max-area {LIMITS['max_area']:g}")
    write_dse_report(rows, args.out, title=f"DSE example: {args.spec} on {args.arch}, BERT-base", command=command,
                     area=load_area_table(), limits=LIMITS, stats=as_dict(stats))
    wall, cpu, workers, n = timing["wall_s"], timing["cpu_s"], timing["workers"], max(1, timing["computed"])
    with open(os.path.join(args.out, "report.md"), "a", encoding="utf-8") as fh:
        fh.write(f"\n## Timing\n\n{timing['points']} points, {timing['computed']} simulated: {wall:.1f} s wall on "
                 f"{workers} worker processes ({timing['cpus']} cores), {cpu:.1f} CPU seconds in all "
                 f"({cpu / n:.2f} s a point), so {cpu / workers:.1f} s on an otherwise idle machine; 1-minute "
                 f"load average after the run {timing['load_average_1min_after']:.1f} (other jobs shared the "
                 f"cores). Regenerate: `python3 benchmarks/dse_sweep.py`.\n")
    print(json.dumps(timing, indent=1))


if __name__ == "__main__":
    main()
