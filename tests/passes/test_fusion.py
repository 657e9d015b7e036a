"""Online-softmax fusion: the 1-pass form computes what the naive cascade computes (float64, fresh
random inputs, ragged key tiles) for every softmax built-in and for user score/mask functions."""

import numpy as np
import pytest

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import PassError
from einfuse.ir import format_cascade, parse_cascade
from einfuse.passes.fusion import fuse_online_softmax
from einfuse.passes.pass_analysis import count_passes
from einfuse.passes.verify import check_equivalent, default_sizes, random_inputs

NON_SOFTMAX = {"linear", "lightning", "sigmoid"}


@pytest.mark.parametrize("name", sorted(set(einfuse.BUILTINS) - NON_SOFTMAX))
@pytest.mark.parametrize("tile", [4, 64])
def test_every_softmax_builtin_fuses_to_an_equivalent_cascade(name, tile):
    c = einfuse.load_spec(name)
    fused = fuse_online_softmax(c, tile=tile)
    assert fused.attrs["lowered"] == "online_softmax"
    assert format_cascade(parse_cascade(format_cascade(fused))) == format_cascade(fused)
    check_equivalent(c, fused, default_sizes(c), kv_heads=1 if name == "gqa" else None)


@pytest.mark.parametrize("name", sorted(NON_SOFTMAX))
def test_cascades_without_softmax_are_refused(name):
    with pytest.raises(PassError, match="no softmax normalisation"):
        fuse_online_softmax(einfuse.load_spec(name))


def test_fused_form_has_the_contract_tensors():
    fused = fuse_online_softmax(einfuse.load_spec("causal"), tile=32)
    assert fused.params["M0"] == 32
    assert [(p.parent, p.outer, p.inner) for p in fused.partitions] == [("M", "M1", "M0")]
    want = {"BQK": ("M1", "M0", "P"), "LM": ("M1", "P"), "RM": ("M1", "P"), "SLN": ("M1", "M0", "P"),
            "SLD": ("M1", "P"), "SLNV": ("M1", "P", "F"), "PRM": ("M1", "P"), "SPD": ("M1", "P"),
            "RD": ("M1", "P"), "SPNV": ("M1", "P", "F"), "RNV": ("M1", "P", "F")}
    for name, ranks in want.items():
        assert fused.tensors[name].ranks == ranks
    assert {n for n in want if fused.tensors[n].iterative} == {"RM", "RD", "RNV"}
    text = format_cascade(fused)
    assert "RM[0,p] = empty" in text and "O[p,f] = RNV[M1,p,f] / RD[M1,p]" in text
    assert fused.einsums[0].where is not None  # the mask stays on the score tile


@pytest.mark.parametrize("P,M,tile", [(9, 9, 4), (5, 17, 16), (12, 7, 1), (3, 20, 64)])
def test_ragged_and_oversized_tiles(P, M, tile):
    c = einfuse.load_spec("softmax")
    check_equivalent(c, fuse_online_softmax(c, tile=tile), {"P": P, "M": M, "E": 4, "F": 3})


def test_fully_masked_rows_give_zero_not_nan():
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: kv <= q - 5)
    fused = fuse_online_softmax(c, tile=3)
    sizes = {"P": 11, "M": 11, "E": 4, "F": 4}
    out = run_cascade(fused, random_inputs(c, sizes, seed=7), sizes)["O"]
    assert not np.isnan(out).any()
    assert np.all(out[:, :, :5] == 0) and np.all(out[:, :, 5:] != 0)
    check_equivalent(c, fused, sizes)


def test_large_logits_stay_finite_and_exact():
    c = einfuse.load_spec("causal")
    fused = fuse_online_softmax(c, tile=4)
    check_equivalent(c, fused, {"P": 19, "M": 19, "E": 8, "F": 4}, scale=12.0)  # logits ~ +-400


def test_user_score_and_mask_functions():
    c = einfuse.attention(
        score_mod=lambda s, b, h, q, kv: einfuse.where(kv % 3 == 0, s * 0.5, s + 0.1 * (q - kv)),
        mask_mod=lambda b, h, q, kv: (kv <= q + 2) & ((q + kv) % 4 != 1))
    check_equivalent(c, fuse_online_softmax(c, tile=5), {"P": 14, "M": 17, "E": 3, "F": 2})


def test_both_stages_of_agent_attention_are_fused_with_their_suffixes():
    fused = fuse_online_softmax(einfuse.load_spec("agent"), tile=4)
    assert {"RM1", "RD1", "RNV1", "RM2", "RD2", "RNV2", "BQK1", "BQK2"} <= set(fused.tensors)
    assert not {"GM1", "GM2", "SN1", "SN2"} & set(fused.tensors)
    assert count_passes(fused, "M").passes == 1 and count_passes(fused, "N").passes == 1


def test_refuses_when_normalised_scores_are_an_output():
    text = format_cascade(einfuse.load_spec("softmax"))
    text = text.replace("output O[P,F]", "output O[P,F]\noutput A[M,P]")
    text = text.replace("tensor A[M,P]\n", "")
    with pytest.raises(PassError, match="SN"):
        fuse_online_softmax(parse_cascade(text))


def test_refuses_a_numerator_that_is_not_exp_of_score_minus_max():
    text = format_cascade(einfuse.load_spec("softmax")).replace(
        "exp(QK[m,p] - GM[p])", "exp(QK[m,p] * 2.0 - GM[p])")
    with pytest.raises(PassError, match="GM.*exp"):
        fuse_online_softmax(parse_cascade(text))


def test_refuses_a_nonlinear_use_of_the_numerator():
    text = format_cascade(einfuse.load_spec("softmax")).replace(
        "O[p,f] = A[m,p] * V[m,f]", "O[p,f] = sqrt(A[m,p]) * V[m,f]")
    with pytest.raises(PassError, match="reads SN"):
        fuse_online_softmax(parse_cascade(text))


@pytest.mark.parametrize("tile", [0, -3, 2.5])
def test_bad_tile_is_an_error(tile):
    with pytest.raises(PassError, match="tile"):
        fuse_online_softmax(einfuse.load_spec("softmax"), tile=tile)
