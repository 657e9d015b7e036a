"""Reports and the ``einfuse simulate`` command."""

import json
import subprocess
import sys

from click.testing import CliRunner

import einfuse
from einfuse.cli import cli
from einfuse.simulator import sweep, write_report
from einfuse.simulator.report import ROW_KEYS


def test_write_report_folder(tmp_path):
    rows = sweep(einfuse.load_spec("causal"), ["flat", "fusemax"], ["bert-base", "t5"], [1024, 4096],
                 batch=2, progress=False)
    paths = write_report(rows, str(tmp_path / "out"))
    names = {p.rsplit("/", 1)[-1] for p in paths}
    assert {"results.json", "report.md", "utilization.png", "speedup.png", "energy.png"} <= names
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(data) == 8
    for r in data:
        assert set(ROW_KEYS) <= set(r)
        assert r["latency_s"] > 0 and 0 < r["util_2d"] <= 1
        assert abs(sum(r["energy_breakdown"].values()) / r["energy_pj"] - 1) < 1e-9
    for png in ("utilization.png", "speedup.png", "energy.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Why" in md and "waiting for" in md and "45 nm" in md
    # the why comes from the rows' stall accounting, not canned text
    flat = next(r for r in data if r["design"] == "flat" and r["model"] == "t5" and r["seq"] == 4096)
    top = max((k for k in flat["stalls"]["2d"] if not k.startswith("no work")), key=flat["stalls"]["2d"].get)
    assert top in md


def test_cli_compare_sweep_with_report(tmp_path):
    out = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["simulate", "softmax", "--compare", "unfused,flat,fusemax", "--seq", "1K,4K",
                                 "--batch", "2", "--report", str(out), "--no-progress", "--why"])
    assert r.exit_code == 0, r.output
    assert "fusemax" in r.output and "speedup vs unfused" in r.output and "waiting for" in r.output
    rows = json.loads((out / "results.json").read_text())
    assert [(x["design"], x["seq"]) for x in rows] == [
        (d, s) for s in (1024, 4096) for d in ("unfused", "flat", "fusemax")]


def test_cli_json_and_arch_file(tmp_path):
    arch = tmp_path / "mine.yaml"
    arch.write_text("extends: fusemax\nname: mine\nmapping: {pipeline_window: 1, interleave: false}\n")
    r = CliRunner().invoke(cli, ["simulate", "sliding_window:window=128", "--arch", str(arch), "--seq", "2K",
                                 "--model", "xlm", "--batch", "1", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert rows[0]["design"] == "mine" and rows[0]["model"] == "xlm" and rows[0]["head_dim"] == 128


def test_cli_errors_are_one_line_with_exit_code_2():
    for args in (["simulate", "softmax", "--arch", "fusemx"], ["simulate", "softmax", "--seq", "abc"],
                 ["simulate", "softmax", "--model", "gpt5"]):
        p = subprocess.run([sys.executable, "-m", "einfuse.cli", *args], capture_output=True, text=True,
                           check=False)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr.startswith("error:") and p.stderr.count("\n") == 1


def _plots(monkeypatch, rows, tmp_path):
    """plot_report's figures by file name, as (title, x tick labels) per panel."""
    from einfuse.simulator import plots

    seen = {}
    save = plots._save

    def record(fig, folder, name):
        seen[name] = [(ax.get_title(), [t.get_text() for t in ax.get_xticklabels()]) for ax in fig.axes
                      if ax.get_label() != "<colorbar>" and ax.get_title()]
        return save(fig, folder, name)

    monkeypatch.setattr(plots, "_save", record)
    write_report(rows, str(tmp_path))
    return seen


def test_one_design_has_no_flat_speedup_plot_and_energy_bars_are_labelled(tmp_path, monkeypatch):
    rows = sweep(einfuse.load_spec("causal"), ["fusemax"], ["bert-base"], [1024, 2048], batch=1, progress=False)
    seen = _plots(monkeypatch, rows, tmp_path)
    assert "speedup.png" not in seen and not (tmp_path / "speedup.png").exists()
    assert "speedup.png" not in (tmp_path / "report.md").read_text()
    assert seen["energy.png"] == [("bert-base: energy by component", ["fusemax", "fusemax"])]


def test_energy_bars_name_their_design_and_speedup_plots_the_others(tmp_path, monkeypatch):
    rows = sweep(einfuse.load_spec("causal"), ["unfused", "flat", "fusemax"], ["bert-base"], [1024],
                 batch=1, progress=False)
    seen = _plots(monkeypatch, rows, tmp_path)
    assert seen["energy.png"] == [("bert-base: energy by component", ["unfused", "flat", "fusemax"])]
    assert "speedup.png" in seen
