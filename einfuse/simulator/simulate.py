"""``simulate(cascade, arch, workload) -> SimResult``: lower, map, run the engine, account.

Utilisation is *useful* work over capacity: PE-cycles spent on operations of points inside the
iteration space (masked points of partial tiles excluded) divided by PEs x cycles, so it can never
exceed 1 and it drops for partial folds and masked tiles as well as for stalls. Energy charges every
operation performed (a masked PE still toggles), every register-file access, every byte through
the global buffer and every DRAM byte, with the architecture's energy table.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

from einfuse.errors import EinfuseError, SimulatorError
from einfuse.ir.cascade import Cascade
from einfuse.lowering.plan import KernelPlan
from einfuse.simulator.arch import Arch, load_arch
from einfuse.simulator.classmode import EXACT_TILE_BUDGET, ClassModel, distinct_column_tiles
from einfuse.simulator.engine import UNITS, Engine
from einfuse.simulator.mapping import Plan, describe, make_plan, refine_kv_buffers
from einfuse.simulator.program import Compiler
from einfuse.simulator.tiles import classify
from einfuse.simulator.tree import build_program
from einfuse.simulator.work import resolve_sizes
from einfuse.simulator.workload import Workload

UNIT_TEXT = {"2d": "2-D array", "1d": "1-D array", "dram": "DRAM"}
NO_WORK = "no work bound to this unit then (another pass or phase, or the start/end of the layer)"


@dataclass(frozen=True)
class EinsumStats:
    name: str
    unit: str
    stage: int
    busy_cycles: int
    macs: int
    points: int
    useful_points: int
    dram_bytes: int
    buffer_bytes: int
    energy_pj: float


@dataclass(frozen=True)
class SimResult:
    design: str
    spec: str
    model: str
    seq: int
    batch: int
    heads: int
    head_dim: int
    cycles: int
    latency_s: float
    util_2d: float
    util_1d: float
    busy_2d: float
    busy_1d: float
    busy_dram: float
    dram_bytes: int
    energy_pj: float
    energy_breakdown: dict[str, float]
    buffer_bytes: int
    macs: int
    per_einsum: tuple[EinsumStats, ...]
    stalls: dict[str, dict[str, int]]
    mapping: tuple[str, ...]
    technology_nm: int
    sim: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The JSON row written to ``results.json``."""
        d = asdict(self)
        d["per_einsum"] = [asdict(e) for e in self.per_einsum]
        d["mapping"] = list(self.mapping)
        d["explanation"] = self.explain()
        return d

    def explain(self) -> str:
        return explain(self.stalls, self.cycles, {"2d": self.busy_2d, "1d": self.busy_1d,
                                                 "dram": self.busy_dram})


def explain(stalls: dict[str, dict[str, int]], cycles: int, busy: dict[str, float]) -> str:
    """Which unit idles, and on what, from the engine's stall accounting."""
    parts = []
    for u in ("2d", "1d", "dram"):
        causes = stalls.get(u, {})
        idle = 1.0 - busy[u]
        head = f"{UNIT_TEXT[u]} busy {100 * busy[u]:.1f}%"
        if idle > 0.005 and causes and cycles:
            top = sorted(causes.items(), key=lambda kv: -kv[1])[:3]
            why = "; ".join(f"{100 * v / cycles:.1f}% " + (k if k == NO_WORK else f"waiting for {k}")
                            for k, v in top if v / cycles >= 0.001)
            head += f", idle {100 * idle:.1f}%" + (f" ({why})" if why else "")
        parts.append(head)
    return ". ".join(parts) + "."


def design_plan(cascade: Cascade, arch: Arch) -> KernelPlan | None:
    """The kernel plan of ``cascade`` for this design: the same plan the GPU back ends print, with the
    key tile set to the 2-D array's height (the streamed rank's tile on the array). None when the
    cascade has no plan (the simulator then maps the cascade as written)."""
    from einfuse.lowering import kernel_plan

    per = _PLANS.setdefault(cascade, {})
    rows = arch.pe_array.rows
    if rows not in per:       # lowering is sympy-heavy (~1 s); prepare() and the report both ask
        try:
            per[rows] = kernel_plan(cascade, key_tile=rows, check=False)
        except EinfuseError:
            per[rows] = None
    return per[rows]


# kernel plans per cascade (immutable, compared by identity) and key tile; dropped with the cascade
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare(cascade: Cascade, arch: Arch) -> Cascade:
    """The cascade the design maps.

    Linear attention (every design): the kernel plan's intra/inter block split (``split_lightning``),
    the same lowering the GPU back end runs, so the cost is linear in the sequence length. Softmax
    with the design's ``online_softmax`` lowering (FuseMax): the kernel plan's one-pass cascade (key
    tile = array rows). Otherwise the cascade as written."""
    if cascade.attrs.get("lowered") or cascade.partitions:
        return cascade
    if cascade.attrs.get("family") == "linear":
        plan = design_plan(cascade, arch)
        return plan.cascade if plan is not None and plan.family == "linear" else cascade
    if arch.mapping.lowering != "online_softmax":
        return cascade
    if cascade.attrs.get("family") == "sigmoid":
        return cascade            # no softmax: nothing to lower, simulate as written
    plan = design_plan(cascade, arch)
    if plan is not None and plan.family == "softmax":
        # the report describes the plan of what was lowered; remember it for the lowered cascade
        _PLANS.setdefault(plan.cascade, {})[arch.pe_array.rows] = plan
        return plan.cascade
    from einfuse.lowering.lower import one_pass_cascade

    try:  # several stages (agent, based): fuse what the pass recognises, as a whole
        return one_pass_cascade(cascade, arch.pe_array.rows)[0]
    except EinfuseError:
        return cascade            # no softmax normalisation the pass recognises: simulate as written


def plan_lines(cascade: Cascade, arch: Arch) -> list[str]:
    """What the kernel plan says of this design's mapping: tile, state kept on chip, passes."""
    plan = design_plan(cascade, arch)
    if plan is None:
        return ["kernel plan: none (the cascade is mapped as written)"]
    plans = plan.stages or (plan,)
    out = []
    for p in plans:
        state = ", ".join(f"{v.name}[{v.shape}]" for v in p.state) or "none"
        out.append(f"kernel plan {p.name}: {p.family}, loop over {p.loop.rank} in tiles of {p.loop.tile}, "
                   f"state on chip {state}")
    return out


def simulate(cascade: Cascade, arch: Arch | str, workload: Workload, lower: bool = True,
             fast_forward: bool = True, tile_classes: bool | None = None) -> SimResult:
    """Cycle-level estimate of one attention layer (``batch x heads`` problems) on ``arch``.

    ``tile_classes``: compose masked layers from per-tile-class engine calibrations
    (:mod:`einfuse.simulator.classmode`: exact counts, cycles within its ``TOLERANCE``) instead of
    placing every distinct key-tile column. None (default) does so when the distinct columns hold
    more than ``EXACT_TILE_BUDGET`` tiles, i.e. when the exact engine would take seconds."""
    from einfuse.ir.grid import check_grid

    t0 = time.perf_counter()
    if cascade.captures:
        raise SimulatorError(f"{cascade.name}: reads captured tensors ({', '.join(cascade.captures)}); the "
                             "simulator does not model masks or scores that depend on tensor values yet")
    check_grid(cascade, workload.seq, workload.kv_seq or workload.seq, workload.sizes,
               f"the workload ({workload.model}, seq)", SimulatorError)
    if isinstance(arch, str):
        arch = load_arch(arch)
    c = prepare(cascade, arch) if lower else cascade
    sizes = resolve_sizes(c, workload.size_map())
    plan = make_plan(c, arch, sizes)
    # a mask removes the same tiles from every Einsum of its attention stage (presence semantics)
    stage_members = {g.segment: [p.work.index for h in plan.groups if h.segment == g.segment for p in h.einsums]
                     for g in plan.groups}
    tiles = [classify(c, g.roles, sizes, workload.heads, stage_members[g.segment]) for g in plan.groups]
    plan = refine_kv_buffers(plan, [t.min_row_tiles(g.p1) for t, g in zip(tiles, plan.groups)])
    comp = Compiler(plan, tiles)
    if tile_classes is None:
        tile_classes = fast_forward and distinct_column_tiles(comp) > EXACT_TILE_BUDGET
    if tile_classes:
        run = ClassModel(comp, plan.kv_buffers).run(workload.batch, workload.heads)
        cycles = run.tail[0]
        res = _account(plan, comp, run, cycles, tiles, cascade, workload, time.perf_counter() - t0)
        res.sim["tile_classes"] = True
        return res
    prog = build_program(comp, workload.batch, workload.heads)
    eng = Engine(comp.counters.size, comp.window_keys, comp.causes, comp.compile, comp.release_keys, comp.keys,
                 fast_forward=fast_forward, row_buffers=plan.kv_buffers)
    eng.run(prog)
    cycles = eng.finish()
    res = _account(plan, comp, eng, cycles, tiles, cascade, workload, time.perf_counter() - t0)
    res.sim["tile_classes"] = False
    return res


def _account(plan: Plan, comp: Compiler, eng: Engine, cycles: int, tiles_list, cascade: Cascade,
             wl: Workload, wall: float) -> SimResult:
    arch = plan.arch
    ix, vec = comp.counters.index, eng.counters
    e = arch.energy_pj
    per = []
    breakdown = {"2d compute": 0.0, "1d compute": 0.0, "register files": 0.0, "global buffer": 0.0,
                 "dram": 0.0}
    useful_pe = {"2d": 0.0, "1d": 0.0}
    macs_total = 0
    for g, tiles in zip(plan.groups, tiles_list):
        for p in g.einsums:
            n = p.name
            pts = vec[ix[(n, "points")]]
            useful = pts - vec[ix[(n, "partial_points")]] * (1.0 - tiles.density)
            frac = useful / pts if pts else 1.0
            macs = vec[ix[(n, "macs")]] * frac
            useful_pe[p.unit] += vec[ix[(n, "pe_cycles")]] * frac
            comp_e = sum(vec[ix[(n, "act", a)]] * e[a] for a in comp.counters.actions)
            rf_e = vec[ix[(n, "rf_bytes")]] * e["rf_2d" if p.unit == "2d" else "rf_1d"]
            gb_bytes = vec[ix[(n, "gb_rd")]] + vec[ix[(n, "gb_wr")]]
            gb_e = vec[ix[(n, "gb_rd")]] * e["global"] + vec[ix[(n, "gb_wr")]] * e.get("global_write", e["global"])
            dram_bytes = vec[ix[(n, "dram_rd")]] + vec[ix[(n, "dram_wr")]]
            breakdown[f"{p.unit} compute"] += comp_e
            breakdown["register files"] += rf_e
            breakdown["global buffer"] += gb_e
            breakdown["dram"] += dram_bytes * e["dram"]
            macs_total += round(macs)
            per.append(EinsumStats(n, p.unit, p.stage, int(vec[ix[(n, "busy")]]), round(macs),
                                   int(pts), round(useful), int(dram_bytes), int(gb_bytes),
                                   float(comp_e + rf_e + gb_e + dram_bytes * e["dram"])))
    busy = {u: vec[ix[("unit", u)]] for u in UNITS}
    stalls: dict[str, dict[str, int]] = {u: {} for u in UNITS}
    for (u, cause), v in eng.stalls.items():
        name = str(comp.causes.names[cause])
        stalls[UNITS[u]][name] = stalls[UNITS[u]].get(name, 0) + int(v)
    for u in UNITS:
        rest = cycles - busy[u] - sum(stalls[u].values())
        if rest > 0:
            stalls[u][NO_WORK] = int(rest)
    pe2, pe1 = arch.pe_array.pes, arch.vector_array.pes
    main_tiles = max(tiles_list, key=lambda t: t.skipped_fraction())
    dram_total = int(sum(p.dram_bytes for p in per))
    cyc = max(cycles, 1)
    return SimResult(
        design=arch.name, spec=cascade.name, model=wl.model, seq=wl.seq, batch=wl.batch, heads=wl.heads,
        head_dim=wl.head_dim, cycles=int(cycles), latency_s=cycles / arch.clock_hz,
        util_2d=useful_pe["2d"] / (pe2 * cyc), util_1d=useful_pe["1d"] / (pe1 * cyc),
        busy_2d=busy["2d"] / cyc, busy_1d=busy["1d"] / cyc, busy_dram=busy["dram"] / cyc,
        dram_bytes=dram_total, energy_pj=float(sum(breakdown.values())), energy_breakdown=breakdown,
        buffer_bytes=int(plan.buffer_bytes), macs=int(macs_total), per_einsum=tuple(per), stalls=stalls,
        mapping=tuple(describe(plan)) + tuple(plan_lines(cascade, arch)), technology_nm=arch.technology_nm,
        sim={"wall_s": wall, "segments_run": eng.stats.segments_run, "tasks_placed": eng.stats.tasks_placed,
             "skipped_iterations": eng.stats.skipped_iterations, "memo_hits": eng.stats.memo_hits,
             "tile_iterations": int(vec[ix[("iterations",)]]),
             "approximate": eng.stats.approximate, "tiles": main_tiles.method,
             "skipped_tile_fraction": main_tiles.skipped_fraction(), "partial_density": main_tiles.density,
             "macs_exact": all(t.exact for t in tiles_list), "row_block": plan.row_block, "window": plan.window,
             "unit_first_start": {u: int(eng.first[i]) for i, u in enumerate(UNITS)},
             "unit_last_end": {u: int(eng.tail[i]) for i, u in enumerate(UNITS)},
             "arch": arch.to_dict()})
