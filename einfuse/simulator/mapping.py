"""Mapping a lowered cascade onto an architecture: spatial ranks, binding, fusion, passes, buffers.

Everything is derived from the cascade and the design's :class:`MappingPolicy`:

* **Spatial ranks and binding** (:mod:`einfuse.simulator.roles`). The rank on the rows is
  *streamed*: a loop over key tiles (``M1`` of a partitioned ``M``, or ``M`` cut into array-height
  tiles). The rank on the columns is cut into sub-blocks of the array width, ``P1`` of which form a
  row block that stays on chip (the largest that fits the global buffer).
* **Fusion.** ``row_block`` fuses every Einsum per row block; ``per_unit`` makes each run of Einsums
  bound to the same unit a phase whose outputs go to DRAM; ``none`` makes every Einsum a phase.
* **Passes.** Inside a fused group an Einsum that reads the result of a reduction over the streamed
  rank and itself iterates that rank must wait for the whole loop: it belongs to the next pass. A
  tensor produced in one pass and read in a later one needs its whole key fiber live: it stays on
  chip when the row block's footprint allows, and is spilled to DRAM (written once, read once per
  later pass) otherwise. This is the FuseMax paper's pass argument, evaluated on the IR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from einfuse.errors import SimulatorError
from einfuse.ir.cascade import Cascade
from einfuse.ir.schedule import schedule
from einfuse.simulator.arch import Arch
from einfuse.simulator.roles import Roles, bind, choose_roles, segments
from einfuse.simulator.work import EinsumWork, analyse, extent

MAX_AUTO_WINDOW = 16
#: Largest automatic row block, in sub-blocks: FuseMax's artifact never exceeds 128 (x 256 queries);
#: beyond it K/V reuse gains nothing measurable and simulation cost grows with the row length.
MAX_SUB_BLOCKS = 128


@dataclass(frozen=True)
class Placed:
    """An Einsum inside a fused group: its unit and stage (0 prologue, 2k-1 pass k, 2k after it)."""

    work: EinsumWork
    unit: str
    stage: int

    @property
    def name(self) -> str:
        return self.work.name


@dataclass(frozen=True)
class Group:
    einsums: tuple[Placed, ...]
    roles: Roles
    segment: int                    # attention stage (Einsums sharing spatial roles and mask)
    p1: int                         # sub-blocks per row block
    kv_buffers: int                 # buffers for key-tile inputs
    n_passes: int
    external: frozenset[str]        # tensors read from DRAM
    stored: frozenset[str]          # tensors written to DRAM for later groups / as outputs
    fiber: dict[str, bool]          # tensors live across passes -> kept on chip (True) or spilled
    resident_2d: frozenset[str]     # stay in the PEs' registers between Einsums of a tile
    linked: frozenset[str]          # cross between the arrays over the 2-D -> 1-D links
    producer_stage: dict[str, int] = field(default_factory=dict)
    spill: dict[str, float] = field(default_factory=dict)   # fraction of a key fiber sent to DRAM
    inplace: dict[str, str] = field(default_factory=dict)   # fiber -> dead fiber whose storage it reuses


@dataclass(frozen=True)
class Plan:
    cascade: Cascade
    arch: Arch
    sizes: dict[str, int]
    groups: tuple[Group, ...]
    window: int                      # key tiles in flight
    buffer_bytes: int                # on-chip footprint of the chosen mapping (largest group)
    tensor_vars: dict[str, frozenset[str]]
    notes: tuple[str, ...]

    @property
    def roles(self) -> Roles:
        """Roles of the main group (the one with the most work)."""
        return self.groups[self._main].roles

    @property
    def row_block(self) -> int:
        g = self.groups[self._main]
        return g.p1 * g.roles.cols_tile

    @property
    def kv_buffers(self) -> int:
        return max(g.kv_buffers for g in self.groups)

    @property
    def _main(self) -> int:
        def weight(g: Group) -> int:
            return sum(1 for p in g.einsums if p.work.kind == "contraction") * 1000 + len(g.einsums)
        return max(range(len(self.groups)), key=lambda i: weight(self.groups[i]))

    def unit_of(self, name: str) -> str:
        for g in self.groups:
            for p in g.einsums:
                if p.name == name:
                    return p.unit
        return ""


# ---- fusion groups and stages --------------------------------------------------------------------

def _fusion_groups(c: Cascade, works: list[EinsumWork], units: dict[int, str], fusion: str,
                   seg_of: dict[int, int]) -> list[list[int]]:
    sched = [tuple(i for i in g.einsums if works[i].kind != "init") for g in schedule(c)]
    sched = [g for g in sched if g]
    out: list[list[int]] = []
    cur: tuple | None = None
    for g in sched:
        us = {units[i] for i in g}
        seg = seg_of[g[0]]
        u = us.pop() if len(us) == 1 else None
        key = (seg,) if fusion == "row_block" else (seg, u)
        if out and fusion != "none" and key == cur and (fusion == "row_block" or u is not None):
            out[-1].extend(g)
        else:
            out.append(list(g))
        cur = key
    return out


def _stages(c: Cascade, works: list[EinsumWork], members: list[int], roles: Roles) -> dict[int, int]:
    """Stage of each member: prologue 0, body of pass k at 2k-1, after pass k at 2k."""
    stage: dict[int, int] = {}
    member_set = set(members)
    for i in members:
        w = works[i]
        keyed = any(roles.keyed(v) for v in w.ivars)
        need = 1 if keyed else 0
        for o in w.operands:
            if o.carried:
                continue
            for j in c.producers(o.tensor):
                if j not in member_set or j not in stage or works[j].kind == "init":
                    continue
                sj = stage[j]
                pw = works[j]
                reduces_stream = roles.stream is not None and roles.stream in pw.reduced
                if sj % 2 == 1:  # producer in a pass body
                    if o.final or not keyed:
                        need = max(need, sj + 1)
                    elif reduces_stream:
                        need = max(need, sj + 2)
                    else:
                        need = max(need, sj)
                else:
                    need = max(need, sj + 1 if keyed else sj)
        if keyed and need % 2 == 0:
            need += 1
        stage[i] = need
    return stage


# ---- planning --------------------------------------------------------------------------------------

def tensor_vars(c: Cascade, works: list[EinsumWork]) -> dict[str, frozenset[str]]:
    """Iteration variables spanning each tensor: its producer's output vars, else how it is read."""
    tv: dict[str, frozenset[str]] = {}
    for w in works:
        if w.kind != "init":
            tv.setdefault(w.name, frozenset(w.out_vars))
    for w in works:
        for o in w.operands:
            tv.setdefault(o.tensor, o.vars)
    return tv


def make_plan(c: Cascade, arch: Arch, sizes: dict[str, int]) -> Plan:
    works = analyse(c)
    seg_of, seg_roles = segments(c, works, arch, sizes)
    units = {w.index: bind(w, seg_roles[seg_of[w.index]], arch) for w in works if w.kind != "init"}
    members_list = _fusion_groups(c, works, units, arch.mapping.fusion, seg_of)
    tv = tensor_vars(c, works)
    group_of = {i: gi for gi, ms in enumerate(members_list) for i in ms}
    notes: list[str] = []
    proto = []
    for gi, ms in enumerate(members_list):
        roles = seg_roles[seg_of[ms[0]]]
        st = _stages(c, works, ms, roles)
        placed = tuple(Placed(works[i], units[i], st[i]) for i in ms)
        n_passes = max([(p.stage + 1) // 2 for p in placed] + [1])
        names = {p.name for p in placed}
        external = set()
        for p in placed:
            for o in p.work.operands:
                prods = [j for j in c.producers(o.tensor) if works[j].kind != "init"]
                if not prods or any(group_of[j] != gi for j in prods):
                    external.add(o.tensor)
        stored = {n for n in names if n in c.outputs or any(
            group_of.get(j) not in (None, gi) for j in c.consumers(n))}
        pstage = {p.name: p.stage for p in placed}
        fiber: dict[str, bool] = {}
        for p in placed:
            for o in p.work.operands:
                if o.tensor in pstage and not o.carried and p.stage % 2 == 1 and \
                        pstage[o.tensor] % 2 == 1 and pstage[o.tensor] < p.stage and \
                        any(roles.keyed(v) for v in tv[o.tensor]):
                    fiber[o.tensor] = True
        for t in external:
            stages = {p.stage for p in placed if p.stage % 2 == 1 and any(o.tensor == t for o in p.work.operands)}
            if len(stages) > 1 and roles.cols in tv[t] and any(roles.keyed(v) for v in tv[t]):
                fiber[t] = True       # read from DRAM in several passes: keep it or read it again
        resident, linked = _homes(c, placed, roles, arch, tv)
        inplace = _in_place(placed, fiber, tv, set(external))
        proto.append({"einsums": placed, "roles": roles, "segment": seg_of[ms[0]], "n_passes": n_passes, "external": frozenset(external),
                      "stored": frozenset(stored), "fiber": fiber, "resident_2d": resident, "linked": linked,
                      "producer_stage": pstage, "inplace": inplace, "spill": {}})
    window = arch.mapping.pipeline_window
    rf = arch.buffer("rf_2d")
    n_res = max([_live_registers(g["einsums"], g["resident_2d"]) for g in proto] + [0])
    entries = rf.size_bytes // arch.word_bytes if rf else 0
    if n_res and entries < n_res:
        for g in proto:
            g["resident_2d"] = frozenset()
        notes.append(f"2-D register file holds {entries} words < {n_res} resident tiles: "
                     "tiles go through the global buffer")
        n_res = 0
    auto = window is None
    if auto:
        # the same rule for every design: tiles kept in the PEs' registers are bounded by the
        # register file; tiles staged through the global buffer by the buffer (each in-flight tile
        # has its own slot in the footprint below), up to MAX_AUTO_WINDOW
        window = max(1, min(MAX_AUTO_WINDOW, entries // n_res)) if n_res else MAX_AUTO_WINDOW
    elif n_res and entries < n_res * window:
        window = max(1, entries // n_res)
        notes.append(f"pipeline window clamped to {window} by the 2-D register file "
                     f"({entries} words, {n_res} resident tiles per key tile)")
    while True:
        trial: list[str] = []
        try:
            groups, worst = [], 0
            for g in proto:
                gd = dict(g, fiber=dict(g["fiber"]))
                p1, fp = _choose_row_block(c, arch, sizes, gd, tv, window, trial)
                worst = max(worst, fp)
                groups.append(Group(p1=p1, kv_buffers=kv_buffers(window, p1), **gd))
            break
        except SimulatorError:
            if not auto or n_res or window == 1:
                raise
            window //= 2          # fewer tiles in flight, so the row block's footprint fits
    if auto:
        why = (f"{entries}-word PE register file, {n_res} resident word(s) per tile" if n_res else
               "tiles staged through the global buffer, one slot each")
        notes.append(f"pipeline window {window} key tiles (auto: {why})")
    notes.extend(trial)
    return Plan(c, arch, sizes, tuple(groups), window, worst, tv, tuple(notes))


def _in_place(placed: tuple[Placed, ...], fiber: dict[str, bool], tv: dict[str, frozenset[str]],
              external: set[str]) -> dict[str, str]:
    """Key fibers that overwrite a dead one in place: ``T = f(U, ...)`` where ``U`` is a fiber of the
    same shape read by nobody after ``T``'s producer (SN = exp(QK - GM) reuses QK's storage)."""
    last_read: dict[str, int] = {}
    for p in placed:
        for o in p.work.operands:
            last_read[o.tensor] = max(last_read.get(o.tensor, -1), p.stage)
    out: dict[str, str] = {}
    taken: set[str] = set()
    for p in placed:
        t = p.name
        if t not in fiber or t in external:
            continue
        for o in p.work.operands:
            u = o.tensor
            if u in fiber and u not in external and u not in taken and u != t and tv[u] == tv[t] \
                    and last_read.get(u, -1) <= p.stage:
                out[t] = u
                taken.add(u)
                break
    return out


def _homes(c: Cascade, placed: tuple[Placed, ...], roles: Roles, arch: Arch,
           tv: dict[str, frozenset[str]]) -> tuple[frozenset[str], frozenset[str]]:
    """Tensors that stay in the 2-D PEs between Einsums of a tile, and those crossing on links."""
    by_name = {p.name: p for p in placed}
    consumers: dict[str, list[Placed]] = {}
    for p in placed:
        for o in p.work.operands:
            if o.tensor in by_name and not o.final:
                consumers.setdefault(o.tensor, []).append(p)
    resident, linked = set(), set()
    for name, cons in consumers.items():
        prod = by_name[name]
        v = tv[name]
        if prod.unit == "2d" and roles.rows in v and roles.cols in v and \
                all(q.unit == "2d" and q.stage == prod.stage for q in cons) and arch.buffer("rf_2d"):
            resident.add(name)
        elif arch.mapping.link_2d_to_1d and all(q.unit != prod.unit for q in cons):
            if prod.unit == "2d" and roles.rows in prod.work.reduced:
                linked.add(name)       # leaves the bottom row of the array into the 1-D array
            elif prod.unit == "1d" and roles.rows not in v:
                linked.add(name)       # broadcast from the 1-D array up the columns
    return frozenset(resident), frozenset(linked)


def _live_registers(placed: tuple[Placed, ...], resident: frozenset[str]) -> int:
    """Registers per PE one key tile needs: resident tiles live at once, a result overwriting an
    operand that dies in the same Einsum (SLN = exp(BQK - RM) reuses BQK's register)."""
    order = [p.name for p in placed]
    pos = {n: i for i, n in enumerate(order)}
    spans = []
    for t in resident:
        last = max([pos[p.name] for p in placed if any(o.tensor == t for o in p.work.operands)] + [pos[t]])
        spans.append((pos[t], last))
    return max([sum(1 for b, d in spans if b <= k < d or b == k == d) for k in range(len(order))] + [0])


def _elems(vars_: frozenset[str], c: Cascade, sizes: dict[str, int], roles: Roles, block: int,
           fiber: bool = False) -> int:
    """Elements of a tensor's footprint: one key tile (or the whole key fiber) by one row block."""
    n = 1
    for v in vars_:
        if v == roles.cols:
            n *= block
        elif v == roles.rows:
            n *= roles.stream_elems if fiber else roles.rows_tile
        elif v == roles.stream:
            n *= 1
        else:
            n *= extent(c, v, sizes)
    return n


def footprint(c: Cascade, arch: Arch, sizes: dict[str, int], g: dict,
              tv: dict[str, frozenset[str]], p1: int, window: int, spilled: set[str],
              kv: int | None = None) -> dict[str, int]:
    """Bytes each tensor of a group occupies in the global buffer for a row block of ``p1`` sub-blocks
    (``kv``: key-tile buffers, default enough for full rows of ``p1`` tiles)."""
    roles = g["roles"]
    w = arch.word_bytes
    dbl = 2 if arch.global_buffer.double_buffered else 1
    block = p1 * roles.cols_tile
    out: dict[str, int] = {}
    internal = {p.name for p in g["einsums"]}
    for t in sorted(set(g["external"]) | internal):
        v = tv[t]
        keyed = any(roles.keyed(x) for x in v)
        if t in g["resident_2d"] or t in g["linked"]:
            continue
        spill = g.get("spill", {}).get(t, 0.0)
        if not keyed:
            out[t] = _elems(v, c, sizes, roles, block) * w
        elif t in g["fiber"] and t not in spilled and g.get("inplace", {}).get(t, t) not in spilled | {t}:
            continue                  # overwrites a dead fiber in place: no storage of its own
        elif t in g["fiber"] and t not in spilled and spill > 0:
            # the kept part of the fiber, plus staging slots for the spilled tiles
            out[t] = math.ceil(_elems(v, c, sizes, roles, block, fiber=True) * w * (1 - spill)) + \
                _elems(v, c, sizes, roles, roles.cols_tile) * w * max(dbl, window)
        elif t in g["fiber"] and t not in spilled:
            out[t] = _elems(v, c, sizes, roles, block, fiber=True) * w
        elif t in g["external"] and roles.cols not in v:
            out[t] = _elems(v, c, sizes, roles, roles.cols_tile) * w * max(dbl, kv or kv_buffers(window, p1))
        else:
            out[t] = _elems(v, c, sizes, roles, roles.cols_tile) * w * max(dbl, window)
    return out


def _choose_row_block(c, arch, sizes, g, tv, window, notes) -> tuple[int, int]:
    """The largest row block (a divisor of the sub-blocks, to avoid a ragged block, at most
    ``MAX_SUB_BLOCKS``) whose footprint fits the global buffer; if even one sub-block does not fit,
    spill the largest cross-pass tensors."""
    roles = g["roles"]
    cap = arch.global_buffer.total_bytes
    n_sub = roles.n_sub
    if arch.mapping.row_block is not None:
        candidates = [max(1, min(n_sub, arch.mapping.row_block // max(1, roles.cols_tile)))]
    else:
        candidates = [d for d in range(min(n_sub, MAX_SUB_BLOCKS), 0, -1) if n_sub % d == 0]

    def size(p1: int, spilled: set[str]) -> int:
        return sum(footprint(c, arch, sizes, g, tv, p1, window, spilled).values())

    for p1 in candidates:
        if size(p1, set()) <= cap:
            return p1, size(p1, set())
    found = _partial_spill(c, arch, sizes, g, tv, window, candidates, cap)
    if found is not None:
        p1, f = found
        notes.append(f"partly spilled to DRAM (whole key fiber does not fit {cap} B on chip): "
                     f"{100 * f:.1f}% of {', '.join(sorted(g['spill']))}")
        return p1, size(p1, set())
    g["spill"] = {}
    fiber_sizes = footprint(c, arch, sizes, g, tv, candidates[-1], window, set())
    spilled: set[str] = set()
    for t in sorted(g["fiber"], key=lambda k: -fiber_sizes.get(k, 0)):
        spilled.add(t)
        for p1 in candidates:
            if size(p1, spilled) <= cap:
                g["fiber"] = {k: k not in spilled for k in g["fiber"]}
                g["spill"] = {k: 1.0 for k in spilled if k not in g["external"]}
                notes.append(f"spilled to DRAM (whole key fiber does not fit {cap} B on chip): "
                             f"{', '.join(sorted(spilled))}")
                return p1, size(p1, spilled)
    parts = footprint(c, arch, sizes, g, tv, candidates[-1], window, spilled)
    detail = ", ".join(f"{k} {v} B" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:4])
    raise SimulatorError(
        f"mapping of Einsum {g['einsums'][0].name} on {arch.name}: tiles need {sum(parts.values())} B "
        f"but the global buffer holds {cap} B ({detail})")


def _partial_spill(c, arch, sizes, g, tv, window, candidates, cap) -> tuple[int, float] | None:
    """Partial spilling: keep the largest fraction of the group's internal key fibers that fits and
    send the rest to DRAM (written once, read back by the later passes), choosing among row blocks
    the one that moves the fewest DRAM bytes (spilled bytes plus the key-tile inputs, which every
    row block reads again). Sets ``g['spill']`` and ``g['fiber']``; None when nothing fits."""
    roles = g["roles"]
    internal = sorted(t for t in g["fiber"] if t not in g["external"])
    if not internal:
        return None
    w = arch.word_bytes
    kv = sum(_elems(tv[t], c, sizes, roles, 1, fiber=True) * w for t in g["external"]
             if any(roles.keyed(x) for x in tv[t]) and roles.cols not in tv[t])
    best = None
    for p1 in candidates:
        g["spill"] = {t: 1.0 for t in internal}
        base = sum(footprint(c, arch, sizes, g, tv, p1, window, set()).values())
        block = p1 * roles.cols_tile
        full = sum(_elems(tv[t], c, sizes, roles, block, fiber=True) * w for t in internal
                   if g["inplace"].get(t) not in internal)
        if base > cap or not full:
            continue
        f = min(1.0, max(0.0, 1.0 - (cap - base) / full))
        for _ in range(200):          # ceil rounding of the kept part: nudge until it fits
            g["spill"] = {t: f for t in internal}
            if sum(footprint(c, arch, sizes, g, tv, p1, window, set()).values()) <= cap or f >= 1.0:
                break
            f = min(1.0, f + 0.001)
        blocks = math.ceil(roles.n_sub / p1)
        traffic = blocks * (2 * f * full + kv)
        if best is None or traffic < best[0]:
            best = (traffic, p1, f)
    if best is None:
        g["spill"] = {}
        return None
    _, p1, f = best
    g["spill"] = {t: f for t in internal}
    g["fiber"] = {t: (t in g["external"] and kept) or (t not in g["external"] and f < 1.0)
                  for t, kept in g["fiber"].items()}
    return p1, f


def kv_buffers(window: int, p1: int) -> int:
    """Buffers for key-tile inputs (K, V): enough that loading a key tile never waits for a buffer
    while the window still lets its tiles start: ``(n - 1) * P1 >= window - 1``, at least two."""
    return max(2, 1 + math.ceil((window - 1) / max(p1, 1)))


def refine_kv_buffers(plan: Plan, min_row_tiles: list[int]) -> Plan:
    """More key-tile buffers where masks leave rows of only a few tiles (a causal diagonal): loading
    the next key tiles must not wait while the window would let their tiles start. Capped by what
    the global buffer still holds."""
    cap = plan.arch.global_buffer.total_bytes
    groups, worst = [], 0
    for g, n in zip(plan.groups, min_row_tiles):
        gd = {f: getattr(g, f) for f in g.__dataclass_fields__}
        kv = max(g.kv_buffers, kv_buffers(plan.window, max(1, n)))
        while kv > g.kv_buffers and sum(footprint(plan.cascade, plan.arch, plan.sizes, gd, plan.tensor_vars, g.p1,
                                                  plan.window, _spilled(g), kv).values()) > cap:
            kv -= 1
        fp = sum(footprint(plan.cascade, plan.arch, plan.sizes, gd, plan.tensor_vars, g.p1, plan.window,
                           _spilled(g), kv).values())
        worst = max(worst, fp)
        groups.append(replace(g, kv_buffers=kv))
    return replace(plan, groups=tuple(groups), buffer_bytes=worst)


def _spilled(g: Group) -> set[str]:
    return {t for t, kept in g.fiber.items() if not kept}


def describe(plan: Plan) -> list[str]:
    """Human-readable lines about the mapping (for reports)."""
    lines = []
    for gi, g in enumerate(plan.groups):
        r = g.roles
        parts = []
        for p in g.einsums:
            where = "pro" if p.stage == 0 else (f"pass {(p.stage + 1) // 2}" if p.stage % 2 else
                                                f"after pass {p.stage // 2}")
            parts.append(f"{p.name}@{p.unit}/{where}")
        lines.append(f"group {gi + 1}: " + ", ".join(parts))
        lines.append(f"  rows (streamed key rank): {r.rows} (tile {r.rows_tile}, {r.n_stream} key tiles); "
                     f"columns: {r.cols} (sub-block {r.cols_tile}, row block {g.p1 * r.cols_tile} = "
                     f"{g.p1} sub-blocks); {g.kv_buffers} key-tile buffers")
        if g.fiber:
            def where(t: str, kept: bool) -> str:
                f = g.spill.get(t, 0.0 if kept else 1.0)
                text = "on chip" if f == 0 else ("spilled" if f >= 1 else f"{100 * f:.1f}% spilled")
                return text + (f", in place of {g.inplace[t]}" if t in g.inplace and f < 1 else "")
            lines.append("  live across passes: " + ", ".join(f"{t} ({where(t, k)})" for t, k in g.fiber.items()))
    lines.append(f"window: {plan.window} key tiles in flight")
    lines.extend(plan.notes)
    return lines


__all__ = ["Group", "Placed", "Plan", "Roles", "bind", "choose_roles", "describe", "footprint", "make_plan"]
