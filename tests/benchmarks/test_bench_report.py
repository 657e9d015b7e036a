"""The GPU benchmark's report flags einfuse rows whose two timing passes differ by more than 10 %,
and benchmarks/call_overhead.py's report computes its ratios against SDPA (no GPU needed)."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from bench_cases import select
from bench_report import REPEAT_TOL, pass_spread, write_reports

INFO = {"device": "Test GPU", "date": "today", "torch": "t", "triton": "tr", "cuda": "c", "cudnn": 1,
        "python": "3", "sms": 1, "peers": {}}


def _row(variant, ms, ms2=None, system="einfuse-triton"):
    case = next(c for c in select(variant))
    row = {"variant": variant, "shape": case.shape, "system": system, "tflops": 1.0, "ms": ms}
    if ms2 is not None:
        row["ms_pass2"] = ms2
    return row


def test_rows_whose_passes_differ_by_more_than_ten_percent_are_flagged(tmp_path):
    rows = [_row("causal", 1.0, 1.05), _row("na2d", 0.18, 0.378), _row("softmax", 2.0)]
    assert abs(pass_spread(rows[1]) - 1.1) < 1e-9 and pass_spread(rows[2]) is None
    write_reports(rows, INFO, select("causal,na2d,softmax"), str(tmp_path / "r"))
    md = (tmp_path / "r.md").read_text()
    section = md.split("## Repeatability")[1]
    assert "| causal |" in section and "| stable |" in section.split("| na2d |")[0]
    assert "| na2d |" in section and "110.0% | **unstable** |" in section
    assert "| softmax |" not in section  # timed once: nothing to compare
    saved = {r["variant"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert saved["na2d"]["unstable"] and not saved["causal"]["unstable"] and "unstable" not in saved["softmax"]
    assert REPEAT_TOL == 0.10


def test_single_pass_reports_have_no_repeatability_section(tmp_path):
    write_reports([_row("causal", 1.0)], INFO, select("causal"), str(tmp_path / "r"))
    assert "Repeatability" not in (tmp_path / "r.md").read_text()


def test_call_overhead_report_ratios_against_sdpa(tmp_path):
    from call_overhead import write_reports as overhead_reports

    rows = [{"case": "decode", "shape": "s", "system": "einfuse", "host_us": 12.0, "wall_us": 24.0},
            {"case": "decode", "shape": "s", "system": "sdpa", "host_us": 16.0, "wall_us": 20.0},
            {"case": "na2d", "shape": "s", "system": "sdpa", "error": "unsupported: no mask"}]
    overhead_reports(rows, {"device": "Test GPU", "date": "d", "torch": "t", "triton": "t", "python": "3",
                            "calls": 1000}, str(tmp_path / "o"))
    md = (tmp_path / "o.md").read_text()
    assert "# Host cost per eager call: Test GPU" in md
    assert "| decode | s | einfuse | 12.0 | 24.0 | - | 0.75 | 1.20 |" in md
    assert "unsupported: no mask" in md
