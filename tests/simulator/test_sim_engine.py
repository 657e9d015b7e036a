"""Sanity of the cycle model against closed forms: GEMM folds, DRAM-bound streams, MAC counts,
utilisation bounds, and fast-forward equal to a full simulation."""

import math
from dataclasses import replace

import pytest

import einfuse
from einfuse.errors import SimulatorError
from einfuse.simulator import Workload, cascade_macs, load_arch, prepare, simulate, workload

GEMM = """cascade gemm
ranks I, J, K
input A[I,K]
input B[K,J]
output Z[I,J]
Z[i,j] = A[i,k] * B[k,j]
"""

SCALE = """cascade scale
ranks I, J
input X[I,J]
output Y[I,J]
Y[i,j] = X[i,j] * 2.0
"""


def _gemm_arch(dataflow: str, pipelined: bool, window: int = 2):
    a = load_arch("systolic")
    return replace(a, pe_array=replace(a.pe_array, dataflow=dataflow, pipeline_folds=pipelined),
                   dram_bytes_per_s=1e18, dram_latency_cycles=0,
                   mapping=replace(a.mapping, pipeline_window=window))


def _shape(dataflow: str, I: int, J: int, K: int) -> tuple[int, int, int]:
    """(spatial rows extent, spatial cols extent, temporal extent) of SCALE-Sim's dataflows."""
    return {"output_stationary": (I, J, K), "weight_stationary": (K, J, I),
            "input_stationary": (K, I, J)}[dataflow]


@pytest.mark.parametrize("dataflow", ["output_stationary", "weight_stationary", "input_stationary"])
@pytest.mark.parametrize("I, J, K", [(256, 256, 64), (300, 200, 50), (1000, 17, 300)])
def test_gemm_folds_match_the_closed_form(dataflow, I, J, K):
    """Fold by fold (SCALE-Sim's model): folds x (T + R + C - 2 [+ R to preload a stationary tile])."""
    a = _gemm_arch(dataflow, pipelined=False)
    r = simulate(gemm(), a, Workload("gemm", 1, 1, 1, 1, sizes={"I": I, "J": J, "K": K}))
    R, C = a.pe_array.rows, a.pe_array.cols
    sr, sc, t = _shape(dataflow, I, J, K)
    folds = math.ceil(sr / R) * math.ceil(sc / C)
    preload = 0 if dataflow == "output_stationary" else R
    expected = folds * (t + R + C - 2 + preload)
    assert r.per_einsum[0].busy_cycles == expected
    span = r.sim["unit_last_end"]["2d"] - r.sim["unit_first_start"]["2d"]
    assert span == expected                      # fast DRAM: the folds run back to back
    assert r.macs == I * J * K == cascade_macs(gemm(), {"I": I, "J": J, "K": K})
    assert 0 < r.util_2d <= 1


def gemm():
    return einfuse.parse_cascade(GEMM)


@pytest.mark.parametrize("I, J, K", [(256, 256, 64), (384, 128, 256), (128, 512, 128)])
def test_pipelined_gemm_takes_macs_over_pes_plus_fill_and_drain(I, J, K):
    """With folds overlapped, the array is busy MACs/(R*C) cycles and the last result appears
    R + C - 2 cycles after the last fold streamed in (then one store)."""
    a = _gemm_arch("output_stationary", pipelined=True, window=8)
    r = simulate(gemm(), a, Workload("gemm", 1, 1, 1, 1, sizes={"I": I, "J": J, "K": K}))
    R, C = a.pe_array.rows, a.pe_array.cols
    start = r.sim["unit_first_start"]["2d"]
    assert r.per_einsum[0].busy_cycles == I * J * K // (R * C)
    assert r.cycles - start == I * J * K // (R * C) + (R + C - 2) + 1
    assert r.util_2d == pytest.approx(I * J * K / (R * C * r.cycles))


@pytest.mark.parametrize("gbps", [8, 64])
def test_memory_bound_stream_runs_at_dram_bandwidth(gbps):
    a = replace(load_arch("systolic"), dram_bytes_per_s=gbps * 1e9)
    r = simulate(einfuse.parse_cascade(SCALE), a, Workload("x", 1, 1, 1, 1, sizes={"I": 3000, "J": 1000}))
    assert r.dram_bytes == 2 * 3000 * 1000 * a.word_bytes       # read X, write Y, nothing else
    ideal = r.dram_bytes / a.dram_bytes_per_cycle
    assert ideal <= r.cycles <= ideal * 1.002 + 2 * a.dram_latency_cycles
    assert r.busy_dram > 0.99


@pytest.mark.parametrize("spec", ["softmax", "causal", "sliding_window:window=300"])
@pytest.mark.parametrize("arch", ["fusemax", "fusemax-arch", "flat", "unfused"])
def test_mac_count_equals_the_cascades(spec, arch):
    """Useful MACs the simulator accounts equal the cascade's own count (enumerated, exact), on
    ragged sizes (1000 is not a multiple of 256) and with masks removing whole and partial tiles."""
    a = load_arch(arch)
    c = prepare(einfuse.load_spec(spec), a)
    wl = Workload("x", 1000, 2, 3, 16)
    r = simulate(c, a, wl)
    assert r.sim["macs_exact"]
    assert r.macs == cascade_macs(c, wl.size_map()) * wl.batch
    assert 0 < r.util_2d <= 1 and 0 <= r.util_1d <= 1
    assert r.busy_2d <= 1 and r.busy_1d <= 1 and r.busy_dram <= 1


@pytest.mark.parametrize("spec", ["softmax", "causal"])
@pytest.mark.parametrize("arch", ["fusemax", "fusemax-arch", "fusemax-cascade", "flat", "unfused", "systolic"])
def test_fast_forward_equals_full_simulation(spec, arch):
    a = load_arch(arch)
    c = prepare(einfuse.load_spec(spec), a)
    wl = Workload("x", 2048 + 200, 2, 3, 64)
    fast = simulate(c, a, wl)
    full = simulate(c, a, wl, fast_forward=False)
    assert fast.sim["skipped_iterations"] > 0 and full.sim["skipped_iterations"] == 0
    assert fast.sim["tasks_placed"] < full.sim["tasks_placed"]
    assert fast.cycles == full.cycles
    assert fast.dram_bytes == full.dram_bytes and fast.macs == full.macs
    assert fast.energy_pj == pytest.approx(full.energy_pj, rel=1e-12)
    for u in ("2d", "1d", "dram"):
        assert sum(fast.stalls[u].values()) == sum(full.stalls[u].values())


def test_energy_breakdown_adds_up_and_scales_with_work():
    c = einfuse.load_spec("softmax")
    small = simulate(c, "fusemax", workload("bert-base", 4096, batch=1))
    big = simulate(c, "fusemax", workload("bert-base", 4096, batch=4))
    assert sum(small.energy_breakdown.values()) == pytest.approx(small.energy_pj)
    assert sum(e.energy_pj for e in small.per_einsum) == pytest.approx(small.energy_pj)
    assert big.energy_pj == pytest.approx(4 * small.energy_pj, rel=1e-9)
    assert big.dram_bytes == 4 * small.dram_bytes
    # divides are the most expensive op in the table: FuseMax does F*P of them, FLAT M*P
    flat = simulate(c, "flat", workload("bert-base", 4096, batch=1))
    assert flat.energy_breakdown["1d compute"] > 10 * small.energy_breakdown["1d compute"]


def test_a_tile_that_does_not_fit_is_an_error():
    a = load_arch("fusemax")
    tiny = replace(a, buffers=tuple(replace(b, size_bytes=4096) if b.name == "global" else b
                                    for b in a.buffers))
    with pytest.raises(SimulatorError, match="global buffer holds 4096 B"):
        simulate(einfuse.load_spec("softmax"), tiny, workload("bert-base", 1024, batch=1))


def test_an_operator_no_unit_supports_is_an_error():
    a = load_arch("flat")
    ops = {k: v for k, v in a.vector_array.ops.items() if k != "tanh"}
    no_tanh = replace(a, vector_array=replace(a.vector_array, ops=ops))
    with pytest.raises(SimulatorError, match="Einsum S: operator 'tanh'"):
        simulate(einfuse.load_spec("softcap"), no_tanh, workload("bert-base", 1024, batch=1))


def test_forced_extrapolation_of_an_unsettled_schedule_stays_close_to_the_engine():
    """A wide array (pe=512) never repeats exactly at 1K: the forced rate must come from the whole
    history (a single last step extrapolated 425K cycles against the engine's 809K)."""
    from einfuse.frontends import load_spec
    from einfuse.simulator import load_arch, simulate, workload
    from einfuse.simulator.vary import apply_params

    arch = apply_params(load_arch("fusemax"), {"pe": 512, "buffer": 4 << 20, "dram": 800 * 2**30})
    fast = simulate(load_spec("softmax"), arch, workload("bert-base", 1024))
    exact = simulate(load_spec("softmax"), arch, workload("bert-base", 1024), fast_forward=False)
    assert abs(fast.cycles / exact.cycles - 1) < 0.02
