"""Re-render a results file after the fact: mark rows whose timing is invalid, add notes.

    python benchmarks/rewrite_report.py results/X.json --invalid "na3d/flex=reason" --note "..."

A marked row keeps its measured time as ``ms_invalid`` and gets an ``error``, so the targets that
depended on it say "unknown" instead of claiming a ratio against a broken measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_cases import CASES
from bench_report import write_reports

METRICS = ("ms", "tflops", "mtok_s", "tb_s", "ratio_vs", "target")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a <device>.json written by run_gpu.py")
    ap.add_argument("--invalid", action="append", default=[], help="VARIANT/SYSTEM=reason")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)
    with open(args.results) as fh:
        data = json.load(fh)
    rows, info = data["rows"], data["info"]
    for spec in args.invalid:
        key, _, reason = spec.partition("=")
        variant, _, system = key.partition("/")
        hit = [r for r in rows if r["variant"] == variant and r["system"] == system]
        if not hit:
            raise SystemExit(f"no row {key}")
        for r in hit:
            if "ms" in r:
                r["ms_invalid"] = r["ms"]
            for k in METRICS:
                r.pop(k, None)
            r["error"] = f"invalid timing: {reason}"
    for r in rows:  # ratios and targets are recomputed from the remaining rows
        r.pop("ratio_vs", None)
        r.pop("target", None)
    info["notes"] = list(info.get("notes", [])) + args.note
    variants = {r["variant"] for r in rows}
    write_reports(rows, info, [c for c in CASES if c.variant in variants], args.results[: -len(".json")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
