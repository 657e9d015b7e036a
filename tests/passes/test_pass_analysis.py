"""Pass analysis: 3 passes for the naive softmax, 2 with the deferred division, 1 in the online form,
for every built-in; the reason names the dependency that forces each pass."""

import pytest

import einfuse
from einfuse.errors import PassError
from einfuse.ir import parse_cascade
from einfuse.passes.defer_division import defer_division, defer_division_all
from einfuse.passes.fusion import fuse_online_softmax
from einfuse.passes.pass_analysis import count_passes
from einfuse.passes.softmax_match import softmax_stages


def key_ranks(c):
    """Ranks the softmax stages of ``c`` normalise over."""
    stages, _ = softmax_stages(defer_division_all(c)[0])
    return sorted({c.rank_of_index(v).name for s in stages for v in s.key_vars})


def test_naive_softmax_reasons_name_the_blocking_tensor():
    r = count_passes(einfuse.load_spec("softmax"), "M")
    assert r.passes == 3
    assert r.pass_of == {"QK": 1, "GM": 1, "SN": 2, "SD": 2, "A": 3, "O": 3}
    assert "GM" in r.reasons["SN"] and "max-reduced" in r.reasons["SN"]
    assert "SD" in r.reasons["A"] and "sum-reduced" in r.reasons["A"]
    text = str(r)
    assert text.startswith("softmax: 3 passes over rank M") and "pass 3" in text


def test_cascade_1_of_the_paper_is_two_pass_and_cascade_2_one_pass():
    cascade1 = parse_cascade("""cascade c1
ranks K, J
input A[K,J]
input B[K,J]
output Z[K,J]
tensor Y[J]
Y[j] = A[k,j] * B[k,j]
Z[k,j] = Y[j] * A[k,j]
""")
    assert count_passes(cascade1, "K").passes == 2
    cascade2 = parse_cascade("""cascade c2
ranks K, J
input A[K,J]
input B[K,J]
output Z[J]
tensor Y[J]
tensor X[J]
Y[j] = A[k,j] * B[k,j]
X[j] = A[k,j]
Z[j] = Y[j] * X[j]
""")
    assert count_passes(cascade2, "K").passes == 1


@pytest.mark.parametrize("name", sorted(einfuse.BUILTINS))
def test_pass_count_of_every_builtin_before_and_after_fusion(name):
    c = einfuse.load_spec(name)
    ranks = key_ranks(c)
    if not ranks:  # linear, sigmoid: no normalisation over keys, one traversal of M
        assert count_passes(c, "M").passes == 1
        with pytest.raises(PassError):
            fuse_online_softmax(c)
        return
    deferred, fused = defer_division(c), fuse_online_softmax(c, tile=8)
    for rank in ranks:
        assert count_passes(c, rank).passes == 3, rank
        assert count_passes(deferred, rank).passes == 2, rank
        assert count_passes(fused, rank).passes == 1, rank


def test_partitioned_rank_counts_passes_of_outer_index_and_inner_separately():
    fused = fuse_online_softmax(einfuse.load_spec("causal"), tile=16)
    over_m = count_passes(fused, "M")
    assert over_m.passes == 1 and over_m.traversal == "m1"
    # inside one key tile the tile max must finish before the numerator: 2 passes over M0
    assert count_passes(fused, "M0").passes == 2


def test_unknown_rank_is_an_error():
    with pytest.raises(PassError, match="rank Z"):
        count_passes(einfuse.load_spec("softmax"), "Z")
