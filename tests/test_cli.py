"""The CLI: each command works on a built-in, and bad input is one line on stderr with exit code 2."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from einfuse.cli import cli


def run_main(*args):
    return subprocess.run([sys.executable, "-m", "einfuse.cli", *args], capture_output=True, text=True)


def test_list_names_every_builtin():
    import einfuse

    out = CliRunner().invoke(cli, ["list"]).output
    for name in einfuse.BUILTINS:
        assert name in out


def test_show_prints_parseable_text_and_dot():
    from einfuse.ir import parse_cascade

    out = CliRunner().invoke(cli, ["show", "sliding_window:window=16"]).output
    assert parse_cascade(out).name == "sliding_window"
    dot = CliRunner().invoke(cli, ["show", "causal", "--dot"]).output
    assert dot.startswith("digraph") and '"QK" -> "GM"' in dot


def test_check_and_run():
    r = CliRunner().invoke(cli, ["check", "alibi"])
    assert r.exit_code == 0 and r.output.startswith("ok: alibi")
    r = CliRunner().invoke(cli, ["run", "causal", "--shape", "1,2,9,4", "--kv-heads", "1"])
    assert r.exit_code == 0 and "O[1, 2, 9, 4]" in r.output and "nan 0" in r.output


def test_spec_files(tmp_path):
    py = tmp_path / "my_variant.py"
    py.write_text("import einfuse as ef\ncascade = ef.attention(mask_mod=lambda b, h, q, kv: q - kv < 3)\n")
    r = CliRunner().invoke(cli, ["check", str(py)])
    assert r.exit_code == 0, r.output
    txt = tmp_path / "v.ein"
    txt.write_text(CliRunner().invoke(cli, ["show", "softcap"]).output)
    r = CliRunner().invoke(cli, ["run", str(txt), "--shape", "1,1,5,3"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, words", [
    (["show", "sliding_windw"], "did you mean sliding_window"),
    (["run", "softmax:foo=1"], "unknown option 'foo'"),
    (["run", "sliding_window:window=x"], "window='x'"),
    (["run", "softmax", "--shape", "1,2"], "--shape"),
    (["show", "missing_file.py"], "does not exist"),
    (["run", "causal", "--kv-heads", "3", "--shape", "1,4,8,4"], "--kv-heads"),
])
def test_errors_are_one_line_exit_2(args, words):
    r = run_main(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and words in r.stderr and "Traceback" not in r.stderr


def test_bad_text_spec_is_one_line(tmp_path):
    bad = tmp_path / "bad.ein"
    bad.write_text("cascade x\nranks M, P\ninput X[M,P]\noutput Y[P]\nY[p] = max(m) Z[m,p]\n")
    r = run_main("check", str(bad))
    assert r.returncode == 2 and "undefined tensor Z" in r.stderr and r.stderr.count("\n") == 1


def test_demo_runs_the_main_job_end_to_end():
    r = CliRunner().invoke(cli, ["demo", "sliding_window:window=16,head_dim=32", "--shape", "1,2,45,32",
                                 "--seq", "1K"])
    assert r.exit_code == 0, r.output
    assert "rel err vs float64 reference" in r.output and "simulated on fusemax" in r.output


@pytest.mark.parametrize("spec", ["agent", "based"])
def test_compile_writes_a_multistage_module_that_runs(tmp_path, monkeypatch, spec):
    import importlib

    import torch

    out = tmp_path / f"k_{spec}.py"
    r = CliRunner().invoke(cli, ["compile", spec, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "stage 1/2" in out.read_text() and ("AG=..." in r.output) == (spec == "agent")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(out.stem)
    q, k, v = (torch.randn(1, 2, 12, 16) for _ in range(3))
    extra = {"AG": torch.randn(1, 2, 4, 16)} if spec == "agent" else {}
    assert mod.attention(q, k, v, **extra).shape == (1, 2, 12, 16)


@pytest.mark.parametrize("args", [["demo", "based"], ["demo", "agent"], ["demo", "agent", "--size", "N=3"]])
def test_demo_runs_multistage_variants(args):
    r = CliRunner().invoke(cli, [*args, "--shape", "1,1,20,16", "--seq", "256"])
    assert r.exit_code == 0, r.output
    assert "in 2 stages, stages 1-pass, 1-pass" in r.output and "simulated on fusemax" in r.output


def test_check_fills_sizes_it_cannot_infer_and_takes_size():
    r = CliRunner().invoke(cli, ["check", "agent"])
    assert r.exit_code == 0 and "(other sizes: N=8)" in r.output, r.output
    r = CliRunner().invoke(cli, ["check", "agent", "--size", "N=3"])
    assert r.exit_code == 0 and "(other sizes: N=3)" in r.output, r.output
