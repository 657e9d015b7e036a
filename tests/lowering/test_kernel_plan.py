"""The plan layer: every built-in lowers to one kernel plan that the back ends print."""

from __future__ import annotations

import ast
import pathlib

import pytest
import sympy

import einfuse as ef
from einfuse.errors import CodegenError
from einfuse.ir.printer import format_cascade
from einfuse.ir.ranks import KEY_INDEX, QUERY_INDEX, size_symbol
from einfuse.lowering import format_plan, kernel_plan

PACKAGE = pathlib.Path(ef.__file__).parent

EXPECTED_FAMILY = {
    "softmax": "softmax", "causal": "softmax", "sliding_window": "softmax", "alibi": "softmax",
    "softcap": "softmax", "sigmoid": "sigmoid", "linear": "linear", "lightning": "linear",
    "na1d": "softmax", "na2d": "softmax", "agent": "staged", "based": "staged",
}


@pytest.mark.parametrize("spec,family", sorted(EXPECTED_FAMILY.items()))
def test_builtins_lower_to_the_plan_family_their_structure_implies(spec: str, family: str) -> None:
    plan = kernel_plan(ef.load_spec(spec))
    assert plan.family == family
    text = format_plan(plan)
    assert text.startswith(f"kernel plan {plan.name}: {family}")
    if family == "staged":
        assert len(plan.stages) >= 2 and "stage 2:" in text
    else:
        assert "grid" in text and "loop" in text and "finalize" in text


def test_every_builtin_has_a_plan_or_a_clear_error() -> None:
    for name in ef.BUILTINS:
        try:
            plan = kernel_plan(ef.load_spec(name))
        except CodegenError as exc:  # refused: the message names the cascade
            assert str(exc)
            continue
        assert plan.family in ("softmax", "sigmoid", "normsum", "linear", "staged")


def test_softmax_plan_has_running_state_and_a_mask_over_logical_positions() -> None:
    c = ef.load_spec("sliding_window:window=5")
    coarse, fine = kernel_plan(c, key_tile=64), kernel_plan(c, key_tile=16)
    assert [s.name for s in coarse.state] == ["m_i", "l_i", "acc"]
    # the fused cascades differ (M0 = 64 vs 16), the plans' mask and score do not
    assert format_cascade(coarse.cascade) != format_cascade(fine.cascade)
    assert coarse.mask == fine.mask and coarse.score == fine.score
    # logical positions, and the lengths that place queries bottom-right (no tile index m1, m0)
    assert coarse.mask.free_symbols <= {QUERY_INDEX, KEY_INDEX, size_symbol("P"), size_symbol("M")}
    assert coarse.loop.tile == "64" and "partial" in coarse.loop.classes
    dense = kernel_plan(ef.load_spec("softmax"))
    assert dense.mask is None and dense.loop.classes.startswith("every tile full")


def test_decode_plan_has_split_state_and_a_combine_step() -> None:
    plan = kernel_plan(ef.load_spec("causal"), decode=True, splits=4)
    assert plan.family == "decode" and plan.combine
    assert "splits" in " ".join(plan.grid)
    assert plan.mask == sympy.Ge(QUERY_INDEX + size_symbol("M") - size_symbol("P"), KEY_INDEX)  # bottom-right
    with pytest.raises(CodegenError, match="softmax"):
        kernel_plan(ef.load_spec("sigmoid"), decode=True)


def test_linear_plan_carries_the_state_and_decay_for_its_block() -> None:
    plan = kernel_plan(ef.load_spec("lightning"), state_block=64)
    assert plan.family == "linear" and plan.detail.state_block == 64
    assert plan.state[0].name == "S" and "decayed" in plan.state[0].meaning
    plain = kernel_plan(ef.load_spec("linear"))
    assert "decayed" not in plain.state[0].meaning


def test_staged_plan_lists_stages_and_combiners() -> None:
    plan = kernel_plan(ef.load_spec("based"))
    assert [s.family for s in plan.stages] == ["normsum", "softmax"]
    assert plan.combiners and "LO" in plan.combiners[0]


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("package", ["codegen", "simulator", "lowering", "passes", "ir"])
def test_layers_below_the_front_ends_never_import_them(package: str) -> None:
    offenders = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / package).rglob("*.py")
                 if any(m.startswith("einfuse.frontends") for m in _imports(p))]
    assert offenders == []


def test_the_triton_back_end_reads_plans_not_cascades() -> None:
    analysers = {"einfuse.lowering.onepass", "einfuse.lowering.linear", "einfuse.lowering.decode",
                 "einfuse.lowering.stages", "einfuse.passes.fusion", "einfuse.passes.lightning"}
    offenders = {str(p.name): sorted(_imports(p) & analysers)
                 for p in (PACKAGE / "codegen" / "triton").glob("*.py") if _imports(p) & analysers}
    # emitters may read plan types (OnePassPlan, LinearPlan...) only through these two modules
    allowed = {"einfuse.lowering.onepass", "einfuse.lowering.linear", "einfuse.lowering.decode"}
    for name, mods in offenders.items():
        source = (PACKAGE / "codegen" / "triton" / name).read_text(encoding="utf-8")
        assert set(mods) <= allowed, name
        for fn in ("analyze(", "analyse_linear(", "analyse_decode(", "fuse_online_softmax("):
            assert fn not in source, f"{name} calls {fn}"


def test_simulator_maps_the_plans_one_pass_cascade() -> None:
    from einfuse.simulator import load_arch, prepare

    arch = load_arch("fusemax")
    c = ef.load_spec("causal")
    assert format_cascade(prepare(c, arch)) == format_cascade(kernel_plan(c, key_tile=arch.pe_array.rows).cascade)


def test_passes_command_names_the_plan(tmp_path) -> None:
    from click.testing import CliRunner

    from einfuse.cli import cli

    short = CliRunner().invoke(cli, ["passes", "causal"])
    assert short.exit_code == 0 and "kernel plan: softmax, 1-pass over M" in short.output
    full = CliRunner().invoke(cli, ["passes", "based", "--print-after-all"])
    assert full.exit_code == 0 and full.output.rstrip().splitlines()[-1].startswith("  then")
