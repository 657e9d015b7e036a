"""benchmarks/tuned_defaults.py covers the rows it says, searches what it says, writes a table the
runtime accepts, and (in the interpreter, at tiny sizes) runs end to end."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import tuned_defaults as bench  # noqa: E402
from bench_cases import CASES  # noqa: E402

from einfuse.codegen import tuned_defaults as td  # noqa: E402
from einfuse.codegen.autotune import candidates  # noqa: E402


def test_rows_are_run_gpus_triton_rows_and_lightning_at_three_head_dims() -> None:
    names = [r.name for r in bench.rows()]
    assert set(names) == {c.variant for c in CASES if c.owner == "Triton-A"} | {
        "lightning_d64", "lightning_d96", "lightning_d128"}
    assert {r.case.D for r in bench.rows() if r.kind == "linear"} == {64, 96, 128}
    with pytest.raises(SystemExit, match="unknown row"):
        bench.rows(only="decode_gqa")


def test_search_spaces_start_with_the_tuners_candidates_and_have_no_repeats() -> None:
    space = bench.attention_space(128, "bf16", False, 36)
    prior = [c.__dict__ for c in candidates(128, "bf16")]
    assert space[:len(prior)] == prior and len(space) == 36
    assert len({json.dumps(s, sort_keys=True) for s in space}) == 36
    lin = bench.linear_space(100)
    assert lin[0] == bench.linear_space(1)[0] and len({json.dumps(s, sort_keys=True) for s in lin}) == len(lin)
    assert {(c["chunk"], c["state_chunk"]) for c in lin} >= {(64, 64), (64, 128), (64, 256), (128, 256)}


def _result(row: str, default: float, tuned: float, key: dict) -> dict:
    return {"row": row, "default_ms": default, "heuristic_ms": default, "tuned_ms": tuned,
            "default_over_tuned": default / tuned, "heuristic_over_tuned": default / tuned,
            "default_config": {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 3},
            "tuned_config": {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3},
            "table_key": key, "trials": {"a": 1.0, "b": "OutOfResources"}}


def test_report_flags_rows_past_ten_percent_and_the_table_entries_load(tmp_path: Path) -> None:
    key = dict(kernel="attention", variant="na2d", layout="box", dtype="bf16", head_dim=64, value_dim=64,
               group=1, n_q=16384, n_kv=16384)
    results = [_result("na2d", 0.25, 0.18, key), _result("causal", 0.60, 0.58, {**key, "variant": "softmax_causal",
                                                                                "layout": "flat"})]
    md = bench.markdown(results, {"device": "NVIDIA H200"})
    na2d, causal = (line for line in md.splitlines() if line.startswith("| na2d") or line.startswith("| causal"))
    assert "**>1.10**" in na2d and "**>1.10**" not in causal and "1/2" in na2d
    info = {"date": "d", "triton": "t", "torch": "t"}
    entries = bench.table_entries(results + [{**results[0], "row": "bad", "error": "wrong result"}],
                                  "sm90", "NVIDIA H200", info)
    assert len(entries) == 2
    path = tmp_path / "table.json"
    td.merge_table(path, entries)
    table = td.load_table(path, strict=True)
    hit = td.lookup(table, device="sm90", device_name="NVIDIA H100", **{**key, "n_q": 9216, "n_kv": 9216})
    assert hit is not None and hit.config["block_m"] == 64


def test_interpreter_run_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("the end-to-end check here is the interpreter's; on a GPU run the script itself")
    for var in ("EINFUSE_CACHE_DIR", "TRITON_CACHE_DIR"):  # main() points these at fresh dirs: restore after
        monkeypatch.setenv(var, os.environ.get(var, str(tmp_path / var)))
    monkeypatch.delenv(td.ENV, raising=False)
    assert bench.main(["--interpret", "--only", "na2d,lightning_d64", "--max-configs", "2",
                       "--results-dir", str(tmp_path)]) in (0, 1)
    data = json.loads((tmp_path / "triton-interpreter.json").read_text())
    rows = {r["row"]: r for r in data["rows"]}
    assert set(rows) == {"na2d", "lightning_d64"}
    for r in rows.values():
        assert not r.get("error"), r.get("error")
        assert r["rel_err_default"] < 2e-2 and r["rel_err_tuned"] < 2e-2
        assert r["default_ms"] > 0 and r["tuned_config"] and len(r["trials"]) == 2
    assert (tmp_path / "triton-interpreter.md").read_text().count("\n| ") == 3  # header + two rows
    # (d) after --write-table: the new default beside the tuned configuration
    res = rows["na2d"]
    bench.retime_new_default(bench.rows(True, "na2d")[0], res, argparse.Namespace(rep=10, rounds=1))
    assert res["new_default_config"] == res["default_config"]  # the interpreter reads no table
    assert res["new_default_ms"] > 0 and res["new_default_over_tuned"] > 0
    assert "new default/tuned" in bench.markdown([res], data["info"])
