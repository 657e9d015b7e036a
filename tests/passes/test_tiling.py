"""tile_rank: any rank, any tile size, ragged last tiles; interface tensors keep their layout."""

import pytest

import einfuse
from einfuse.errors import PassError
from einfuse.ir import format_cascade, parse_cascade
from einfuse.passes.fusion import fuse_online_softmax
from einfuse.passes.tiling import tile_rank
from einfuse.passes.verify import check_equivalent

SIZES = {"P": 10, "M": 13, "E": 6, "F": 3}


@pytest.mark.parametrize("spec", ["softmax", "alibi:causal=0", "sliding_window:window=3", "linear",
                                  "lightning", "softcap:causal=1", "sigmoid:causal=1"])
@pytest.mark.parametrize("rank,tile", [("M", 4), ("P", 3), ("E", 4), ("F", 2), ("M", 13), ("P", 32)])
def test_tiling_any_rank_preserves_results(spec, rank, tile):
    c = einfuse.load_spec(spec)
    t = tile_rank(c, rank, tile)
    assert t.params[f"{rank}0"] == tile and t.partitions[-1].parent == rank
    assert t.inputs == c.inputs and t.outputs == c.outputs
    assert all(t.tensors[n].ranks == c.tensors[n].ranks for n in c.inputs + c.outputs)
    assert format_cascade(parse_cascade(format_cascade(t))) == format_cascade(t)
    check_equivalent(c, t, SIZES, seeds=(3,))


def test_tiling_twice_and_after_fusion():
    c = einfuse.load_spec("alibi")
    t = tile_rank(tile_rank(c, "M", 4), "P", 5)
    check_equivalent(c, t, SIZES, seeds=(1,))
    f = tile_rank(fuse_online_softmax(c, 4), "P", 3)
    check_equivalent(c, f, SIZES, seeds=(2,))


def test_bound_is_added_only_where_a_value_could_appear_past_the_end():
    t = tile_rank(einfuse.load_spec("alibi:causal=0"), "M", 4)
    by_name = {e.name: e for e in t.einsums}
    bound = "M0*m1 + m0 < M"
    assert bound in str(by_name["S"].where)  # QK + idx(...) is present where QK is not
    assert by_name["QK"].where is None and by_name["SN"].where is None  # reads past the end are absent


def test_iterative_and_unknown_ranks_are_refused():
    fused = fuse_online_softmax(einfuse.load_spec("softmax"), 4)
    with pytest.raises(PassError, match="iterative"):
        tile_rank(fused, "M1", 2)
    with pytest.raises(PassError, match="rank X"):
        tile_rank(fused, "X", 2)
    with pytest.raises(PassError, match="positive"):
        tile_rank(fused, "P", 0)
