"""Pass manager and the `einfuse passes` command: steps recorded, options routed, errors on one line."""

import pytest
from click.testing import CliRunner

import einfuse
from einfuse.cli import cli
from einfuse.errors import PassError
from einfuse.ir import format_cascade
from einfuse.passes import PASSES, count_passes, lower
from einfuse.passes.manager import parse_pipeline

SIZES = {"P": 9, "M": 11, "E": 3, "F": 2}


def test_auto_pipeline_fuses_softmax_and_splits_linear():
    r = lower(einfuse.load_spec("alibi"), verify_sizes=SIZES)
    assert r.passes_run == ["fuse"] and r.skipped[0][0] == "lightning"
    assert r.errors["fuse"] < 1e-10 and count_passes(r.cascade).passes == 1
    r = lower(einfuse.load_spec("lightning"), verify_sizes=SIZES)
    assert r.passes_run == ["lightning"] and r.cascade.attrs["lowered"] == "lightning"
    assert lower(einfuse.load_spec("sigmoid")).passes_run == []


def test_explicit_pipeline_with_per_pass_options_records_every_step():
    c = einfuse.load_spec("decode:causal=1")
    r = lower(c, "split_kv[splits=2/5/4],fuse[tile=2],tile[rank=P,tile=2]", verify_sizes={**SIZES, "M": 14})
    assert r.passes_run == ["split_kv", "fuse", "tile"]
    assert [s[1].attrs.get("lowered") for s in r.steps] == ["split_kv", "online_softmax", "online_softmax"]
    assert r.steps[-1][1] is r.cascade and r.steps[0][1].attrs["kv_splits"] == [2, 5, 4]
    text = r.format(print_after_all=True)
    for name, step in r.steps:
        assert f"# ---- after {name}" in text and format_cascade(step).rstrip() in text


def test_keyword_options_go_to_the_passes_that_take_them():
    r = lower(einfuse.load_spec("softmax"), ["defer_division", "fuse"], tile=4)
    assert r.cascade.params["M0"] == 4
    assert count_passes(r.steps[0][1]).passes == 2


@pytest.mark.parametrize("pipeline,kw,match", [
    ("fus", {}, "did you mean fuse"), ("fuse[tiles=3]", {}, "unknown option tiles"),
    ("fuse", {"block": 3}, "not taken by any pass"), ("lightning", {}, "lightning"),
    ("fuse[tile=0]", {}, "positive")])
def test_bad_pipelines_are_errors(pipeline, kw, match):
    with pytest.raises(PassError, match=match):
        lower(einfuse.load_spec("softmax"), pipeline, **kw)


def test_bad_option_is_an_error_even_in_auto_mode():
    with pytest.raises(PassError, match="tile"):
        lower(einfuse.load_spec("causal"), tile=0)


def test_registry_and_pipeline_parsing():
    assert set(PASSES) >= {"defer_division", "fuse", "tile", "lightning", "split_kv"}
    assert parse_pipeline("split_kv[splits=4], fuse[tile=32]") == [("split_kv", {"splits": 4}),
                                                                  ("fuse", {"tile": 32})]


def test_cli_prints_reasons_steps_and_sparsity():
    run = CliRunner().invoke
    r = run(cli, ["passes", "causal"])
    assert r.exit_code == 0 and "3 passes over rank M" in r.output and "needs all of GM" in r.output
    r = run(cli, ["passes", "alibi", "--print-after-all", "--tile", "16", "--verify"])
    assert r.exit_code == 0 and "# ---- after fuse (verified" in r.output and "RM[0,p] = empty" in r.output
    assert "after lowering: alibi: 1 pass over rank M" in r.output
    r = run(cli, ["passes", "agent", "--pipeline", "fuse"])
    assert "after lowering: agent: 1 pass over rank N" in r.output
    r = run(cli, ["passes", "sliding_window:window=64", "--sparsity", "512", "--tiles", "64x64"])
    assert r.exit_code == 0 and "block sparsity: 8 x 8 tiles" in r.output and "skipped" in r.output
    r = run(cli, ["passes", "--builtins"])
    assert r.exit_code == 0 and all(name in r.output for name in einfuse.BUILTINS)


def test_cli_errors_are_one_line(capsys):
    from einfuse.cli import main

    for args in (["passes", "softmax", "--pipeline", "fus"], ["passes", "sigmoid", "--pipeline", "fuse"],
                 ["passes", "causal", "--rank", "Z"], ["passes"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1
