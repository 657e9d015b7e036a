"""The tile-class model of masked layers (einfuse.simulator.classmode) against the exact engine, and
the linear growth of linear attention."""

import pytest

import einfuse
from einfuse.simulator import Workload, load_arch, prepare, simulate, workload
from einfuse.simulator.classmode import TOLERANCE


@pytest.mark.parametrize("spec, n, arch", [
    ("causal", 4096 + 200, "fusemax"),
    ("causal", 4096 + 200, "flat"),
    ("causal", 4096, "unfused"),
    ("causal", 4096, "fusemax-arch"),
    ("sliding_window:window=700", 4096 + 200, "fusemax"),
    ("na2d:shape=64x67,kernel=7", 64 * 67, "fusemax"),
])
def test_tile_classes_equal_the_exact_engine(spec, n, arch):
    """Counts (MACs, DRAM bytes, energy, busy cycles) are exact; cycles within TOLERANCE."""
    a = load_arch(arch)
    c = prepare(einfuse.load_spec(spec), a)
    wl = Workload("x", n, 4, 3, 64)
    fast = simulate(c, a, wl, tile_classes=True)
    exact = simulate(c, a, wl, tile_classes=False)
    assert fast.sim["tile_classes"] and not exact.sim["tile_classes"]
    assert fast.macs == exact.macs and fast.dram_bytes == exact.dram_bytes
    assert fast.energy_pj == pytest.approx(exact.energy_pj, rel=1e-12)
    for e_fast, e_exact in zip(fast.per_einsum, exact.per_einsum):
        assert e_fast.busy_cycles == e_exact.busy_cycles and e_fast.useful_points == e_exact.useful_points
    assert fast.cycles == pytest.approx(exact.cycles, rel=TOLERANCE)
    assert 0 < fast.util_2d <= 1 and 0 < fast.util_1d <= 1


def test_tile_classes_on_a_2d_neighbourhood_at_16k():
    """na2d at 16K: five tiles a column, shifting by a sub-block from column to column (calibrated
    periods of identical columns alone were 7% optimistic; the window and edge calibrations fix it)."""
    a = load_arch("fusemax")
    c = prepare(einfuse.load_spec("na2d:shape=128x128,kernel=7"), a)
    wl = workload("bert-base", 128 * 128)
    fast = simulate(c, a, wl, tile_classes=True)
    exact = simulate(c, a, wl, tile_classes=False)
    assert fast.macs == exact.macs and fast.energy_pj == pytest.approx(exact.energy_pj, rel=1e-12)
    assert fast.cycles == pytest.approx(exact.cycles, rel=TOLERANCE)


def test_long_masked_layers_use_tile_classes_and_stay_consistent():
    """At 1M tokens the default picks the class model; busy never exceeds the makespan, and a
    causal layer does about half a full layer's MACs and a little over half its cycles."""
    c = einfuse.load_spec("causal")
    r = simulate(c, "fusemax", workload("bert-base", 1 << 20))
    full = simulate(einfuse.load_spec("softmax"), "fusemax", workload("bert-base", 1 << 20))
    assert r.sim["tile_classes"] and r.sim["macs_exact"]
    assert r.busy_2d <= 1 and r.busy_1d <= 1 and r.busy_dram <= 1
    assert r.macs == pytest.approx(full.macs / 2, rel=2e-3)
    assert 0.5 < r.cycles / full.cycles < 0.52


def test_lightning_cycles_grow_linearly():
    """Linear attention runs its intra/inter block split: 4x the tokens, about 4x the cycles."""
    c = einfuse.load_spec("lightning")
    small = simulate(c, "fusemax", workload("bert-base", 16384))
    big = simulate(c, "fusemax", workload("bert-base", 65536))
    assert 3.9 < big.cycles / small.cycles < 4.1
