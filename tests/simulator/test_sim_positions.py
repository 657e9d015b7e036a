"""The simulator follows the query positions written in the cascade (einfuse.ir.positions): fewer
queries than keys skip the key tiles their aligned causal mask hides, and no others."""

import pytest

import einfuse
from einfuse.simulator import Workload, simulate


def _run(spec: str, seq: int, kv_seq: int, **sizes: int):
    wl = Workload("t", seq, batch=1, heads=2, head_dim=64, kv_seq=kv_seq, sizes=sizes)
    return simulate(einfuse.load_spec(spec), "fusemax", wl)


@pytest.mark.parametrize("spec,sizes,visible_keys", [
    ("causal", {}, 4096),                            # 256 newest tokens: every key tile is needed
    ("causal:align=top_left", {}, 256),              # queries 0..255: keys 0..255 only
    ("causal:align=offset", {"QOFF": 2048}, 2304),   # a chunk at 2048: keys 0..2303
])
def test_kv_cache_workload_skips_the_tiles_the_aligned_mask_hides(spec, sizes, visible_keys):
    r = _run(spec, 256, 4096, **sizes)
    assert r.sim["tiles"].startswith(("classify_tiles", "exact tile classes"))   # analytic, not a fallback
    assert r.sim["skipped_tile_fraction"] == pytest.approx(1 - visible_keys / 4096)


def test_alignments_agree_when_queries_and_keys_are_one_sequence():
    rows = [_run(spec, 1024, 1024) for spec in ("causal", "causal:align=top_left")]
    assert rows[0].cycles == rows[1].cycles and rows[0].macs == rows[1].macs
