"""Attention on the shipped designs: FuseMax keeps its 2-D array busy as sequences grow while FLAT
and the unfused baseline fall, for reasons the stall accounting names; 1M tokens simulate fast;
every kind of DSL variant simulates."""


import pytest

import einfuse
from einfuse.simulator import Workload, cascade_macs, load_arch, prepare, simulate, sweep, workload

SEQS = [1024, 16384, 262144]


@pytest.fixture(scope="module")
def bert_rows():
    rows = sweep(einfuse.load_spec("softmax"), ["unfused", "flat", "fusemax"], ["bert-base"], SEQS,
                 progress=False)
    return {(r.design, r.seq): r for r in rows}


def test_fusemax_2d_utilisation_stays_near_full(bert_rows):
    u = [bert_rows[("fusemax", s)].util_2d for s in SEQS]
    assert u[0] > 0.8                 # 1K: 4 key tiles per head, the divide epilogue shows
    assert min(u[1:]) > 0.97 and u[-1] >= u[0]
    r = bert_rows[("fusemax", SEQS[-1])]
    assert r.util_2d <= 1 and r.util_1d <= 1
    assert sum(v for k, v in r.stalls["2d"].items()) / r.cycles < 0.03
    # only the Einsums FuseMax binds to the 1-D array run there (M1 x P and M1 x F x P work)
    units = {e.name: e.unit for e in r.per_einsum}
    assert {n for n, u_ in units.items() if u_ == "2d"} == {"BQK", "LM", "SLN", "SLD", "SLNV"}


def test_flat_and_unfused_fall_and_the_report_says_why(bert_rows):
    for d in ("flat", "unfused"):
        first, last = bert_rows[(d, SEQS[0])], bert_rows[(d, SEQS[-1])]
        assert last.util_2d < 0.95 * first.util_2d
        assert last.util_2d < 0.15 and bert_rows[("fusemax", SEQS[-1])].cycles < last.cycles / 5
    # FLAT: softmax on the 1-D array (4 cycles per score) starves the 2-D array; at long sequences
    # QK and SN no longer fit on chip and are spilled, so the 1-D array waits on DRAM as well
    flat = bert_rows[("flat", SEQS[-1])]
    top2d = max(flat.stalls["2d"], key=flat.stalls["2d"].get)
    assert "1d array" in top2d or "no work bound" in top2d
    assert any("on the 1d array" in k for k in flat.stalls["2d"])
    assert any("DRAM load of QK" in k or "DRAM load of SN" in k for k in flat.stalls["1d"])
    assert any("spilled" in m for m in flat.mapping)
    assert not any("spilled" in m for m in bert_rows[("flat", SEQS[0])].mapping)
    # unfused: every phase boundary goes through DRAM
    unf = bert_rows[("unfused", SEQS[-1])]
    assert unf.dram_bytes > 10 * bert_rows[("fusemax", SEQS[-1])].dram_bytes
    assert any(k.startswith("DRAM load") for k in unf.stalls["2d"])
    assert "waiting for" in unf.explain() and "2-D array busy" in unf.explain()


def test_fusemax_row_block_follows_the_artifact():
    """P1 = largest row block whose Q, RM, RD, RNV fit 16 MiB: 4 at 1K, 16 at 4K, 128 from 64K on."""
    c = prepare(einfuse.load_spec("softmax"), load_arch("fusemax"))
    for seq, p1 in [(1024, 4), (4096, 16), (65536, 128), (1 << 20, 128)]:
        r = simulate(c, "fusemax", workload("bert-base", seq, batch=1))
        assert r.sim["row_block"] == 256 * p1
        assert r.buffer_bytes <= 16 * 2**20


def test_one_million_tokens_simulate_only_a_few_rows():
    """Fast-forward: the work done (tasks placed) grows with tile classes, not sequence length; wall
    time lives in benchmarks/sim_speed.py, not in a unit test."""
    a = load_arch("fusemax")
    c = prepare(einfuse.load_spec("softmax"), a)
    r = simulate(c, a, workload("bert-base", 1 << 20))
    assert r.sim["tasks_placed"] < 100_000
    n_tiles = 64 * 12 * ((1 << 20) // 256) ** 2
    assert r.sim["tile_iterations"] == n_tiles        # every (key tile, query sub-block) accounted
    assert r.sim["tasks_placed"] < n_tiles / 100_000  # ... but only a few rows of them simulated
    assert r.util_2d > 0.97


@pytest.mark.parametrize("spec, sizes", [
    ("na2d:kernel=7,shape=16x32", {}), ("lightning", {}), ("sigmoid", {}), ("linear", {}),
    ("sliding_window:window=100", {}), ("alibi", {}), ("softcap", {}), ("agent", {"N": 16}),
    ("gqa", {}), ("s2attn", {}), ("duo", {}),
])
def test_dsl_variants_simulate_on_every_design(spec, sizes):
    c0 = einfuse.load_spec(spec)
    for design in ("fusemax", "flat", "unfused"):
        a = load_arch(design)
        c = prepare(c0, a)
        wl = Workload("x", 512, 1, 2, 8, sizes=sizes)
        r = simulate(c, a, wl)
        assert r.cycles > 0 and 0 < r.util_2d <= 1 and 0 <= r.util_1d <= 1
        assert r.energy_pj > 0 and r.dram_bytes > 0
        if r.sim["macs_exact"]:
            assert r.macs == cascade_macs(c, wl.size_map()) * wl.batch


@pytest.mark.parametrize("design", ["fusemax", "flat"])
def test_lightning_cycles_grow_linearly_with_the_sequence(design):
    """Linear attention runs its kernel plan's intra/inter block split on every design, so 4x the
    tokens cost ~4x the cycles (the quadratic cascade as written grew 3293x for 64x)."""
    a = load_arch(design)
    c = prepare(einfuse.load_spec("lightning"), a)
    assert c.attrs.get("lowered") == "lightning"
    seqs = [1024, 4096, 16384, 65536]
    cycles = [simulate(c, a, workload("bert-base", s, batch=1)).cycles for s in seqs]
    for short, long in zip(cycles, cycles[1:]):
        assert 3.5 < long / short < 4.5


def test_elementwise_binding_follows_operator_cost_not_the_variant():
    """On FuseMax sigmoid and softcap's tanh run as series on the 2-D array's MACs (as exp does), so
    they cost about what softmax costs (they were bound to the 1-D array and ran 14-26x slower)."""
    a = load_arch("fusemax")
    wl = workload("bert-base", 4096, batch=1)
    cyc = {}
    for spec in ("softmax", "sigmoid", "softcap"):
        r = simulate(prepare(einfuse.load_spec(spec), a), a, wl)
        cyc[spec] = r.cycles
        if spec != "softmax":
            assert all(e.unit == "2d" for e in r.per_einsum if e.name in ("A", "BQK"))
    assert cyc["sigmoid"] < 1.2 * cyc["softmax"] and cyc["softcap"] < 1.4 * cyc["softmax"]
    # FLAT keeps its elementwise work on the 1-D array (its 2-D array has no exp)
    f = load_arch("flat")
    r = simulate(prepare(einfuse.load_spec("sigmoid"), f), f, wl)
    assert {e.name: e.unit for e in r.per_einsum}["A"] == "1d"
