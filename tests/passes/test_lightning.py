"""Lightning split: intra-block (masked, quadratic) + inter-block (running KV state) equals the
quadratic causal linear attention, with and without decay, feature maps and normalisation."""

import pytest
import sympy

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import ExecutionError, PassError
from einfuse.ir import format_cascade, parse_cascade
from einfuse.passes.lightning import split_lightning
from einfuse.passes.pass_analysis import count_passes
from einfuse.passes.verify import check_equivalent, random_inputs

CASES = {
    "lightning": lambda: einfuse.load_spec("lightning"),
    "lightning-elu1": lambda: einfuse.load_spec("lightning:feature_map=elu1"),
    "linear": lambda: einfuse.load_spec("linear"),
    "linear-identity": lambda: einfuse.load_spec("linear:feature_map=identity"),
    "linear-normalised": lambda: einfuse.load_spec("linear:normalize=1"),
    "decay-normalised": lambda: einfuse.linear_attention(feature_map="elu1", decay=True, normalize=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("block", [1, 4, 5, 16])
def test_split_matches_quadratic_form(case, block):
    c = CASES[case]()
    s = split_lightning(c, block=block)
    assert s.attrs["lowered"] == "lightning" and s.params["P0"] == block
    assert format_cascade(parse_cascade(format_cascade(s))) == format_cascade(s)
    check_equivalent(c, s, {"P": 13, "M": 13, "E": 4, "F": 3}, heads=4, seeds=(block,))


def test_cross_lengths_and_one_pass():
    c = einfuse.load_spec("lightning:align=top_left")  # query p at position p: any two lengths
    s = split_lightning(c, block=4)
    for P, M in [(13, 9), (6, 17)]:
        check_equivalent(c, s, {"P": P, "M": M, "E": 3, "F": 2}, heads=2, seeds=(P,))
    assert count_passes(s, "M").passes == 1
    assert {"KV", "KB", "OI", "OX"} <= set(s.tensors) and s.tensors["KV"].iterative == {"P1"}


def test_bottom_right_split_is_for_one_sequence():
    """Query p at position p + M - P: the blocks walk keys with the query block index, which is exact
    for that position only when M = P, so the lowered cascade ties M to P (and the check, by
    tied_sizes, runs at M = P; another key length is refused by the executor, never computed wrong)."""
    c = einfuse.load_spec("lightning")
    s = split_lightning(c, block=4)
    assert s.ranks["M"].extent == sympy.Symbol("P", integer=True, positive=True)
    check_equivalent(c, s, {"P": 13, "M": 9, "E": 3, "F": 2}, heads=2, seeds=(1, 2))
    x = random_inputs(c, {"P": 6, "M": 9, "E": 3, "F": 2})
    with pytest.raises(ExecutionError, match="rank M"):
        run_cascade(s, x)


def test_decay_of_the_wrong_form_is_refused():
    text = format_cascade(einfuse.load_spec("lightning:align=top_left")).replace("(-m + p)", "(-m + p)**2")
    with pytest.raises(PassError, match="decay"):
        split_lightning(parse_cascade(text))


@pytest.mark.parametrize("spec,match", [("softmax", "neither a score"), ("linear:causal=0", "not causal"),
                                        ("based", "neither a score"), ("sigmoid", "neither a score")])
def test_refusals_say_why(spec, match):
    with pytest.raises(PassError, match=match):
        split_lightning(einfuse.load_spec(spec))


def test_sliding_window_linear_attention_is_refused():
    c = einfuse.linear_attention(mask_mod=lambda b, h, q, kv: (kv <= q) & (q - kv < 8))
    with pytest.raises(PassError, match="causal constraint"):
        split_lightning(c)
