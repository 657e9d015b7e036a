"""Deferred division: A = SN/SD; O = sum A*V  ->  SNV = sum SN*V; O = SNV/SD (2-pass)."""

import pytest

import einfuse
from einfuse.errors import PassError
from einfuse.ir import Binary
from einfuse.passes.defer_division import defer_division
from einfuse.passes.pass_analysis import count_passes
from einfuse.passes.verify import check_equivalent, default_sizes


@pytest.mark.parametrize("spec", ["softmax", "causal", "alibi", "agent", "based", "na2d:shape=4x5,kernel=3"])
def test_deferral_preserves_results(spec):
    c = einfuse.load_spec(spec)
    d = defer_division(c)
    check_equivalent(c, d, default_sizes(c, queries=9, keys=12))


def test_softmax_becomes_two_pass_with_one_division_per_output():
    d = defer_division(einfuse.load_spec("softmax"))
    by_name = {e.name: e for e in d.einsums}
    assert "A" not in d.tensors
    o = by_name["O"].expr
    assert isinstance(o, Binary) and o.op == "div" and o.left.tensor == "SNV" and o.right.tensor == "SD"
    assert by_name["SNV"].reduce == "sum"
    assert count_passes(d, "M").passes == 2


def test_nothing_to_defer_is_an_error():
    with pytest.raises(PassError, match="nothing to defer"):
        defer_division(einfuse.load_spec("linear"))
    with pytest.raises(PassError, match="nothing to defer"):
        defer_division(defer_division(einfuse.load_spec("softmax")))
