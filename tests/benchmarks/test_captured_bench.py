"""benchmarks/captured.py runs end to end on the CPU (``--dry-run``: Triton interpreter, Flex eager),
so the GPU run's plumbing (worker processes, time limits, budget, gradient checks, reports) is
exercised before a GPU is booked."""

from __future__ import annotations

import json
import os
import sys

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import captured  # noqa: E402
import captured_cases  # noqa: E402


def _rows(d):
    (js,) = d.glob("captured-*.json")
    return json.loads(js.read_text())["rows"], js.with_suffix(".md").read_text()


def test_dry_run_checks_forward_and_gradients_and_writes_reports(tmp_path):
    rc = captured.main(["--dry-run", "--only", "docs_causal_tiny", "--systems", "einfuse",
                        "--results-dir", str(tmp_path)])
    assert rc == 0
    rows, md = _rows(tmp_path)
    (row,) = rows
    assert row["status"] == "ok" and row["stage"] == "done"
    assert row["rel_err"] < 1e-4 and set(row["grad_rel_err"]) == {"dq", "dk", "dv"}
    assert max(row["grad_rel_err"].values()) < 1e-4
    assert row["fwd_ms"] > 0 and row["fwdbwd_ms"] > 0 and 0 < row["tiles_visited"] < 1
    assert "| docs_causal_tiny |" in md and "| einfuse | ok |" in md


def test_a_row_past_its_time_limit_is_killed_and_reported_with_its_stage(tmp_path, monkeypatch):
    monkeypatch.setenv(captured.HANG_ENV, "flex")
    rc = captured.main(["--dry-run", "--only", "swin_w4_tiny", "--systems", "flex", "--mode", "fwd",
                        "--case-timeout", "25", "--results-dir", str(tmp_path)])
    assert rc == 1
    rows, md = _rows(tmp_path)
    (row,) = rows
    assert row["status"] == "timeout" and "stage 'compile'" in row["error"] and row["wall_s"] < 60
    assert "timeout" in md


def test_rows_the_budget_cannot_start_are_skipped_and_reported(tmp_path):
    assert captured.main(["--dry-run", "--budget", "5", "--results-dir", str(tmp_path)]) == 1
    rows, _ = _rows(tmp_path)
    assert {r["status"] for r in rows} == {"skipped"} and len(rows) == 2 * len(captured_cases.DRY_CASES)


def test_unknown_case_names_are_refused():
    with pytest.raises(ValueError, match="unknown case nope"):
        captured_cases.find(["nope"], [])
    assert captured.main(["--dry-run", "--only", "nope"]) == 2


def test_speed_ups_compare_each_einfuse_row_with_its_cases_flex_row():
    rows = [{"case": "a", "system": "einfuse", "status": "ok", "ok": True, "grad_ok": True, "fwd_ms": 1.0,
             "fwdbwd_ms": 4.0},
            {"case": "a", "system": "flex", "status": "ok", "ok": True, "grad_ok": True, "fwd_ms": 1.5,
             "fwdbwd_ms": 3.0},
            {"case": "b", "system": "einfuse", "status": "ok", "ok": True, "fwd_ms": 1.0},
            {"case": "b", "system": "flex", "status": "timeout"},
            {"case": "c", "system": "einfuse", "status": "ok", "ok": True, "grad_ok": True, "fwd_ms": 1.0,
             "fwdbwd_ms": 2.0},
            {"case": "c", "system": "flex", "status": "error", "ok": True, "fwd_ms": 2.0}]  # Flex backward failed
    captured.compare(rows)
    assert rows[0]["vs_flex"] == 1.5 and rows[0]["vs_flex_fwdbwd"] == 0.75 and rows[0]["meets_target"] is False
    assert "vs_flex" not in rows[2] and "meets_target" not in rows[2]  # no Flex time: no claim
    assert rows[4]["vs_flex"] == 2.0 and "vs_flex_fwdbwd" not in rows[4] and rows[4]["meets_target"] is True
