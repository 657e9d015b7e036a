"""Lightning split: intra-block (masked, quadratic) + inter-block (running KV state) equals the
quadratic causal linear attention, with and without decay, feature maps and normalisation."""

import pytest

import einfuse
from einfuse.errors import PassError
from einfuse.ir import format_cascade, parse_cascade
from einfuse.passes.lightning import split_lightning
from einfuse.passes.pass_analysis import count_passes
from einfuse.passes.verify import check_equivalent

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
    c = einfuse.load_spec("lightning")
    s = split_lightning(c, block=4)
    for P, M in [(13, 9), (6, 17)]:
        check_equivalent(c, s, {"P": P, "M": M, "E": 3, "F": 2}, heads=2, seeds=(P,))
    assert count_passes(s, "M").passes == 1
    assert {"KV", "KB", "OI", "OX"} <= set(s.tensors) and s.tensors["KV"].iterative == {"P1"}


def test_decay_of_the_wrong_form_is_refused():
    text = format_cascade(einfuse.load_spec("lightning")).replace("(-m + p)", "(-m + p)**2")
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
