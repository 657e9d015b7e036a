"""``einfuse explore``: parameter parsing, the area model, exact Pareto fronts, the resumable results
table, local and Dask execution, and the command line."""

import json
import os
import random
from dataclasses import fields

import pytest

from einfuse.errors import SimulatorError
from einfuse.frontends import load_spec
from einfuse.simulator import load_arch
from einfuse.simulator.area import area_breakdown, load_area_table, pe_units, rf_um2
from einfuse.simulator.explore import ResultTable, explore, make_points
from einfuse.simulator.pareto import best, dominates, pareto_front
from einfuse.simulator.vary import apply_params, format_value, grid, parse_vary

G, M = 2 ** 30, 2 ** 20


# ---- parameters -------------------------------------------------------------------------------------

def test_ranges_step_by_their_rule_and_lists_continue_a_parameter():
    v = parse_vary("pe=64..512,buffer=4M..64M,dram=200G..2T")
    assert v["pe"] == [64, 128, 256, 512]                         # powers of two
    assert v["buffer"] == [4 * M, 8 * M, 16 * M, 32 * M, 64 * M]  # doubling
    assert v["dram"] == [200 * G, 400 * G, 800 * G, 1600 * G, 2048 * G]  # doubling, the end included
    assert [format_value("dram", x) for x in v["dram"]] == ["200G", "400G", "800G", "1600G", "2T"]
    assert parse_vary("dram=200G..1.6T")["dram"] == [200 * G, 400 * G, 800 * G, 1.6 * 2 ** 40]
    assert parse_vary("buffer=4M..4M")["buffer"] == [4 * M]
    v = parse_vary("pe=64,128,256,dram=400G,1T")
    assert v == {"pe": [64, 128, 256], "dram": [400 * G, 2 ** 40]}
    assert len(grid(v)) == 6 and grid(v)[1] == {"pe": 64, "dram": 2 ** 40}


@pytest.mark.parametrize("text,words", [
    ("buf=4M..64M", "unknown parameter 'buf' (did you mean buffer?)"),
    ("banks=4", "buffer (buffers[global].size_bytes)"),
    ("pe=48..512", "48 is not one"),
    ("pe=512..64", "runs backwards"),
    ("buffer=4X", "'4X' is not a number"),
    ("dram=0", "must be > 0"),
    ("pe=", "give a value"),
    ("pe=64,64", "repeated"),
    ("pe=64.5", "whole number"),
    ("64,128", "no parameter name"),
    ("pe=64,rows=128", "vary either pe or those"),
    ("pe=64,pe=128", "given twice"),
])
def test_bad_parameters_name_the_field_or_the_range(text, words):
    with pytest.raises(SimulatorError) as exc:
        parse_vary(text)
    assert words in str(exc.value)


def test_the_base_values_reproduce_the_shipped_design():
    base = load_arch("fusemax")
    same = apply_params(base, {"pe": 256, "buffer": 16 * M, "dram": 400 * G})
    assert same.name == "fusemax[pe=256,buffer=16M,dram=400G]"
    for f in fields(base):
        if f.name != "name":
            assert getattr(same, f.name) == getattr(base, f.name), f.name


def test_parameters_set_their_yaml_fields():
    a = apply_params(load_arch("fusemax"), {"pe": 64, "buffer": 4 * M, "dram": 200 * G, "rf": 40})
    assert (a.pe_array.rows, a.pe_array.cols, a.vector_array.cols) == (64, 64, 64)
    assert a.global_buffer.size_bytes == 4 * M and a.dram_bytes_per_s == 200 * G
    assert a.buffer("rf_2d").size_bytes == 40
    # the buffer's row is one word per column: its bytes per cycle follow the columns
    assert a.global_buffer.read_bytes_per_cycle == load_arch("fusemax").global_buffer.read_bytes_per_cycle / 4


# ---- area ---------------------------------------------------------------------------------------------

def test_area_of_fusemax_is_the_artifacts_component_sum():
    t = load_area_table()
    assert t.technology_nm == 45 and all(t.sources[k] for k in t.um2)
    a = load_arch("fusemax")
    assert pe_units(a.pe_array) == ("mac", "add", "max")          # exp runs on the MAC: no extra unit
    assert pe_units(a.vector_array) == ("mac", "add", "max", "div")
    b = area_breakdown(a)
    assert b["2-D array PEs"] == pytest.approx(65536 * (1545.0 + 1030.0 + 49.28944) * 1e-6)
    assert b["global buffer"] == pytest.approx(94.176, rel=1e-4)  # CACTI 45 nm, 16 MiB [A]
    # the artifact's 32-entry 16-bit register file: 4255.9342 um2 [A] 2d ART
    assert rf_um2(64, 2, t) == pytest.approx(4255.9342, rel=1e-5)
    assert b["DRAM interface"] == pytest.approx(2 * 10.0)       # 400 GiB/s -> two 256 GB/s interfaces


def test_area_follows_the_parameters():
    base = area_breakdown(load_arch("fusemax"))
    big = area_breakdown(apply_params(load_arch("fusemax"), {"pe": 512, "buffer": 32 * M, "dram": 2048 * G}))
    assert big["2-D array PEs"] == pytest.approx(4 * base["2-D array PEs"])
    assert big["1-D array PEs"] == pytest.approx(2 * base["1-D array PEs"])
    assert big["global buffer"] == pytest.approx(2 * base["global buffer"])
    assert big["DRAM interface"] == pytest.approx(9 * 10.0)     # ceil(2 TiB/s / 256 GB/s) = 9


def test_area_table_must_match_the_designs_node(tmp_path):
    from importlib import resources

    import yaml

    from einfuse.simulator.area import area_mm2

    data = yaml.safe_load(resources.files("einfuse.simulator").joinpath("area_45nm.yaml").read_text())
    data["technology_nm"] = 7
    p = tmp_path / "a7.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(SimulatorError, match="technology_nm is 45 but the area table .* is 7 nm"):
        area_mm2(load_arch("fusemax"), load_area_table(str(p)))
    del data["components"]["div"]
    p = tmp_path / "no-div.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(SimulatorError, match="components.div.um2"):
        load_area_table(str(p))


# ---- Pareto fronts ------------------------------------------------------------------------------------

def test_front_of_hand_made_points():
    pts = [(1, 5, 3),   # 0 front: fastest
           (2, 2, 2),   # 1 front
           (3, 1, 4),   # 2 front: least energy
           (2, 2, 2),   # 3 front: a duplicate does not dominate its twin
           (4, 4, 4),   # 4 dominated by 1
           (1, 5, 4),   # 5 dominated by 0 (equal but for area)
           (5, 5, 1)]   # 6 front: smallest
    assert pareto_front(pts) == [0, 1, 2, 3, 6]
    assert pareto_front([]) == [] and pareto_front([(3, 3)]) == [0]
    assert pareto_front([(1, 2), (2, 1), (0.5, 3), (2, 2)]) == [0, 1, 2]


def test_front_equals_the_definition_on_random_points():
    rng = random.Random(7)
    for n, dims in ((1, 3), (40, 2), (120, 3), (60, 4)):
        pts = [tuple(rng.choice(range(6)) for _ in range(dims)) for _ in range(n)]  # many ties
        brute = [i for i, p in enumerate(pts) if not any(dominates(q, p) for q in pts)]
        assert pareto_front(pts) == brute


def test_best_design_under_constraints():
    rows = [{"latency_s": 1e-3, "energy_pj": 5e9, "area_mm2": 400.0, "id": "fast"},
            {"latency_s": 3e-3, "energy_pj": 2e9, "area_mm2": 150.0, "id": "small"},
            {"latency_s": 2e-3, "energy_pj": 9e9, "area_mm2": 200.0, "id": "mid"}]
    assert best(rows)["id"] == "fast"
    assert best(rows, limits={"max_area": 250})["id"] == "mid"
    assert best(rows, limits={"max_area": 250, "max_energy": 4})["id"] == "small"   # mJ
    assert best(rows, "energy")["id"] == "small"
    assert best(rows, limits={"max_latency": 0.5}) is None                           # ms
    with pytest.raises(SimulatorError, match="unknown objective 'power'"):
        best(rows, "power")


# ---- running and resuming -----------------------------------------------------------------------------

def small_points():
    """Six cheap points: two array sizes x one buffer x three lengths of a batch-1 layer."""
    return make_points(["softmax"], "fusemax", grid(parse_vary("pe=32,64,dram=400G")), ["bert-base"],
                       [128, 256, 384], batch=1, resolve=load_spec)


def test_a_sweep_resumes_from_its_table_and_keeps_what_a_user_wrote(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("# my notes on this sweep\n")
    pts = small_points()

    class Stop(Exception):
        pass

    seen = []

    def interrupt(row):
        seen.append(row["key"])
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        explore(pts, ResultTable(str(path)), workers=1, on_row=interrupt)
    lines = path.read_text().splitlines()
    assert lines[0] == "# my notes on this sweep" and len(lines) == 3
    with open(path, "a") as fh:           # a write torn by a kill: no newline at the end
        fh.write('{"schema": "einfuse-explore/1", "key": "')
    done = []
    rows, stats = explore(pts, ResultTable(str(path)), workers=1, on_row=lambda r: done.append(r["key"]))
    assert (stats.reused, stats.computed) == (2, 4)
    assert set(done) == {p.key for p in pts} - set(seen)            # only the missing points ran
    assert [r["key"] for r in rows] == [p.key for p in pts]
    text = path.read_text()
    assert text.startswith("# my notes on this sweep\n") and '"key": "\n' in text  # both left as written
    table = ResultTable(str(path)).load()
    assert len(table.rows) == 6 and table.foreign == 2
    _, again = explore(pts, ResultTable(str(path)), workers=1)
    assert (again.reused, again.computed) == (6, 0)
    r = rows[0]
    assert r["latency_s"] > 0 and r["energy_pj"] > 0 and r["area_mm2"] > 0 and "bound" in r["limit"]
    assert r["bound"] in ("2-D array", "1-D array", "DRAM")


def test_local_processes_give_the_same_rows(tmp_path):
    pts = small_points()[:3]
    serial, _ = explore(pts, ResultTable(str(tmp_path / "a.jsonl")), workers=1)
    par, stats = explore(pts, ResultTable(str(tmp_path / "b.jsonl")), workers=2)
    assert stats.where == "2 local processes"
    assert [(r["key"], r["cycles"], r["energy_pj"]) for r in par] == [(r["key"], r["cycles"], r["energy_pj"])
                                                                      for r in serial]


def test_a_local_dask_cluster_runs_a_sweep(tmp_path):
    distributed = pytest.importorskip("distributed")
    pts = small_points()
    serial, _ = explore(pts[:2], ResultTable(str(tmp_path / "serial.jsonl")), workers=1)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        rows, stats = explore(pts, ResultTable(str(tmp_path / "dask.jsonl")), cluster=cluster.scheduler_address)
    assert stats.where.startswith("dask tcp://") and (stats.computed, stats.failed) == (6, 0)
    assert [r["cycles"] for r in rows[:2]] == [r["cycles"] for r in serial]
    assert len(ResultTable(str(tmp_path / "dask.jsonl")).load().rows) == 6
    pids = {int(r["worker"].rsplit(":", 1)[1]) for r in rows}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2          # ran on the cluster's two workers


def test_an_unreachable_cluster_is_one_error(tmp_path):
    pytest.importorskip("distributed")
    with pytest.raises(SimulatorError, match="cannot reach a Dask scheduler"):
        explore(small_points()[:1], ResultTable(str(tmp_path / "r.jsonl")), cluster="tcp://127.0.0.1:9",
                connect_timeout=2)


# ---- the command --------------------------------------------------------------------------------------

def test_command_writes_table_report_and_plot(tmp_path, capsys):
    from einfuse.cli import main

    out = tmp_path / "dse"
    args = ["explore", "softmax", "--vary", "pe=32,64", "--seq", "128,256", "--batch", "1", "--workers", "1",
            "--out", str(out), "--no-progress", "--max-area", "125"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    said = capsys.readouterr().out
    assert "4 points: 4 simulated, 0 reused" in said and "best by latency within limits: pe=32" in said
    assert sorted(os.listdir(out)) == ["pareto-softmax-bert-base.png", "report.md", "results.jsonl", "table.csv"]
    md = (out / "report.md").read_text()
    assert "## softmax, bert-base, 128 tokens" in md and "area <= 125 mm2: **pe=32" in md and "| mac | 1545 |" in md
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["area_mm2"] > 0 for r in rows)
    with pytest.raises(SystemExit):
        main(args)
    assert "4 points: 0 simulated, 4 reused" in capsys.readouterr().out


def test_command_errors_are_one_line(tmp_path, capsys):
    from einfuse.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["explore", "softmax", "--vary", "bufer=4M", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "unknown parameter 'bufer' (did you mean buffer?)" in err and "buffers[global].size_bytes" in err
    with pytest.raises(SystemExit) as exc:
        main(["explore", "softmax", "--vary", "pe=64", "--max-area", "-1", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--max-area must be > 0" in capsys.readouterr().err


def test_one_design_for_every_workload():
    from einfuse.simulator.pareto import best_across

    def row(design, seq, lat, area):
        return {"design": design, "spec": "s", "model": "m", "seq": seq, "latency_s": lat, "energy_pj": 1.0,
                "area_mm2": area}

    rows = [row("a", 1, 1.0, 100), row("a", 2, 100.0, 100),    # geomean 10
            row("b", 1, 4.0, 50), row("b", 2, 16.0, 50),       # geomean 8: best, though slower at 1
            row("c", 1, 0.5, 10)]                              # not simulated at 2: not a candidate
    assert best_across(rows) == ("b", pytest.approx(8.0))
    assert best_across(rows, limits={"max_area": 60}) == ("b", pytest.approx(8.0))
    assert best_across(rows, limits={"max_area": 40}) is None
    assert best_across(rows, "area") == ("b", pytest.approx(50.0))


def test_editing_the_design_yaml_starts_its_points_afresh(tmp_path):
    design = tmp_path / "mine.yaml"
    design.write_text("extends: fusemax\nname: mine\n")
    before = make_points(["softmax"], str(design), [{"pe": 64}], ["bert-base"], [1024], resolve=load_spec)
    assert before == make_points(["softmax"], str(design), [{"pe": 64}], ["bert-base"], [1024], resolve=load_spec)
    design.write_text("extends: fusemax\nname: mine\nclock_hz: 1.0e+9\n")
    os.utime(design, ns=(1, 10 ** 18))          # a new modification time even on a coarse clock
    after = make_points(["softmax"], str(design), [{"pe": 64}], ["bert-base"], [1024], resolve=load_spec)
    assert after[0].key != before[0].key


def test_near_ties_are_ties_on_a_tolerance_grid():
    from einfuse.simulator.pareto import front_rows

    def row(lat, area):
        return {"latency_s": lat, "energy_pj": 1.0, "area_mm2": area}

    rows = [row(29.7100, 51.8), row(29.7099, 61.8), row(7.88, 102.7), row(7.8799, 162.7)]
    assert front_rows(rows) == rows                                  # exact: every point is optimal
    assert front_rows(rows, rel_tol=0.01) == [rows[0], rows[2]]      # 0.0003 % apart is the same latency
    assert front_rows([row(1.0, 5.0), row(1.5, 4.0)], rel_tol=0.01) == [row(1.0, 5.0), row(1.5, 4.0)]


def test_points_without_fast_forward_are_separate_rows(tmp_path):
    fast = make_points(["softmax"], "fusemax", [{"pe": 32}], ["bert-base"], [256], batch=1, resolve=load_spec)
    slow = make_points(["softmax"], "fusemax", [{"pe": 32}], ["bert-base"], [256], batch=1, fast_forward=False,
                       resolve=load_spec)
    assert fast[0].key != slow[0].key
    rows, stats = explore(fast + slow, ResultTable(str(tmp_path / "r.jsonl")), workers=1)
    assert stats.computed == 2 and [r["fast_forward"] for r in rows] == [True, False]
    assert not rows[0]["approximate"] and rows[0]["cycles"] == rows[1]["cycles"]   # exact fast-forward agrees


def test_points_carry_their_cascade_text_and_bare_names_are_refused():
    """The simulator layer does not load specs (the front ends sit above it): points carry the text."""
    from einfuse.simulator.explore import run_point

    (p,) = make_points(["causal"], "fusemax", [{"pe": 32}], ["bert-base"], [128], batch=1, resolve=load_spec)
    assert "cascade" in p.cascade_text and p.key == make_points(["causal"], "fusemax", [{"pe": 32}],
                                                                ["bert-base"], [128], batch=1)[0].key
    (bare,) = make_points(["causal"], "fusemax", [{"pe": 32}], ["bert-base"], [128], batch=1)
    with pytest.raises(SimulatorError, match="resolve=einfuse.load_spec"):
        run_point(bare)
