"""Split-KV / offloading: per-split partial (max, sum, output) + combine equals the unsplit cascade,
for n = 1..8 splits, uneven lengths, masks that empty whole splits, and every softmax built-in."""

import numpy as np
import pytest

import einfuse
from einfuse.codegen.reference import run_cascade
from einfuse.errors import PassError
from einfuse.ir import format_cascade, parse_cascade
from einfuse.passes.fusion import fuse_online_softmax
from einfuse.passes.offload import split_kv
from einfuse.passes.pass_analysis import count_passes
from einfuse.passes.verify import check_equivalent, default_sizes, random_inputs


@pytest.mark.parametrize("n", range(1, 9))
def test_n_even_splits_for_decode(n):
    c = einfuse.load_spec("decode:causal=1")
    s = split_kv(c, n)
    assert s.params["S"] == n and s.attrs["kv_splits"] == n
    assert {"PM", "PL", "PO"} <= set(s.tensors) and s.tensors["PO"].ranks == ("S", "P", "F")
    for M in (1, 7, 2 * n + 1, 23):  # fewer keys than splits leaves splits empty
        check_equivalent(c, s, {"P": 2, "M": M, "E": 4, "F": 3}, seeds=(M,))


@pytest.mark.parametrize("lengths", [[5, 1, 9], [0, 4, 3], [1, 1, 1, 1, 1, 1, 1, 8], [15], [2, 13]])
def test_uneven_split_lengths(lengths):
    c = einfuse.load_spec("decode")
    s = split_kv(c, lengths)
    assert s.attrs["kv_splits"] == lengths and not s.partitions
    assert format_cascade(parse_cascade(format_cascade(s))) == format_cascade(s)
    for M in (sum(lengths), 4, 21):  # the last split takes what is past the sum
        check_equivalent(c, s, {"P": 3, "M": M, "E": 4, "F": 2}, seeds=(M,))


@pytest.mark.parametrize("name", sorted(set(einfuse.BUILTINS) - {"linear", "lightning", "sigmoid"}))
def test_every_softmax_builtin_splits(name):
    c = einfuse.load_spec(name)
    check_equivalent(c, split_kv(c, 3), default_sizes(c), seeds=(5,), kv_heads=1 if name == "gqa" else None)


def test_fully_masked_rows_and_empty_splits_give_zero():
    c = einfuse.attention(mask_mod=lambda b, h, q, kv: kv <= q - 6)
    s = split_kv(c, 4)
    sizes = {"P": 10, "M": 10, "E": 3, "F": 3}
    out = run_cascade(s, random_inputs(c, sizes, seed=2), sizes)["O"]
    assert not np.isnan(out).any() and np.all(out[:, :, :6] == 0)
    check_equivalent(c, s, sizes, scale=10.0)


def test_split_then_fuse_is_flash_decoding():
    c = einfuse.load_spec("causal")
    s = fuse_online_softmax(split_kv(c, 3), tile=2)
    check_equivalent(c, s, {"P": 9, "M": 14, "E": 3, "F": 2})
    assert count_passes(s, "MS").passes == 1  # one pass over the keys of each split


def test_refusals():
    with pytest.raises(PassError, match="nothing to split"):
        split_kv(einfuse.load_spec("linear"), 2)
    with pytest.raises(PassError, match="already partitioned"):
        split_kv(fuse_online_softmax(einfuse.load_spec("softmax"), 4), 2)
    with pytest.raises(PassError, match=">= 1"):
        split_kv(einfuse.load_spec("softmax"), 0)
    with pytest.raises(PassError, match="lengths"):
        split_kv(einfuse.load_spec("softmax"), [0, 0])
