"""Silicon area of a design, per component, from a table of 45 nm component areas with sources.

The table (``area_45nm.yaml`` beside this module, or any file of the same shape) holds one entry per
component: the PE datapath units (MAC, adder, multiplier, comparator, divider), register-file bits
and address generators, global-buffer bytes and the DRAM interface. A design's area follows from
its YAML alone:

* a PE holds one of each datapath unit its operators' energy actions name (``exp: {actions: {mac:
  6}}`` runs on the MAC, so it costs no extra area); a multiplier is charged only to a PE without a
  MAC, which multiplies already;
* a register file costs ``bits x rf_bit`` plus two address generators of ``ceil(log2(words))`` bits;
* the global buffer costs ``bytes x global_byte`` (CACTI's figure for the 16 MiB buffer, per byte);
* the DRAM interface costs one ``dram_interface`` per ``per_bytes_per_s`` of bandwidth (rounded up:
  a stack's PHY comes whole).

The table's node must match the design's ``technology_nm``: the energy table of the shipped designs
is 45 nm, and mixing nodes would make the area and energy axes of a Pareto front disagree.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from types import MappingProxyType

import yaml

from einfuse.errors import SimulatorError
from einfuse.simulator.arch import Arch, ComputeUnit

DATAPATH = ("mac", "add", "mul", "max", "div")
ENTRIES = DATAPATH + ("rf_bit", "rf_address_bit", "global_byte", "dram_interface")
#: The components an area breakdown reports, in this order.
COMPONENTS = ("2-D array PEs", "2-D register files", "1-D array PEs", "1-D register files", "global buffer",
              "DRAM interface")


@dataclass(frozen=True)
class AreaTable:
    technology_nm: int
    um2: Mapping[str, float]
    dram_bytes_per_s: float          # bandwidth one DRAM interface serves
    sources: Mapping[str, str]
    path: str


def load_area_table(path: str | None = None) -> AreaTable:
    """The shipped 45 nm table (``path=None``) or a YAML file of the same shape, validated (cached
    per file and modification time: a sweep asks once a point)."""
    if path is not None and not os.path.isfile(path):
        raise SimulatorError(f"--area-table {path!r} does not exist")
    return _load(path, os.stat(path).st_mtime_ns if path else 0)


@lru_cache(maxsize=8)
def _load(path: str | None, mtime: int) -> AreaTable:
    if path is None:
        text, where = resources.files("einfuse.simulator").joinpath("area_45nm.yaml").read_text(), "area_45nm.yaml"
    else:
        with open(path, encoding="utf-8") as fh:
            text, where = fh.read(), path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SimulatorError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("components"), dict):
        raise SimulatorError(f"{where}: expected technology_nm and a components mapping")
    comps = data["components"]
    um2, sources = {}, {}
    for key in ENTRIES:
        entry = comps.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("um2"), (int, float)) or entry["um2"] < 0:
            raise SimulatorError(f"{where}: components.{key}.um2 is missing or not a number >= 0")
        um2[key] = float(entry["um2"])
        sources[key] = str(entry.get("source", ""))
    per = comps["dram_interface"].get("per_bytes_per_s")
    if not isinstance(per, (int, float)) or per <= 0:
        raise SimulatorError(f"{where}: components.dram_interface.per_bytes_per_s must be a number > 0")
    unknown = set(comps) - set(ENTRIES)
    if unknown:
        raise SimulatorError(f"{where}: unknown components {sorted(unknown)}; known: {', '.join(ENTRIES)}")
    node = data.get("technology_nm")
    if not isinstance(node, int) or node < 1:
        raise SimulatorError(f"{where}: technology_nm must be a positive integer")
    return AreaTable(node, MappingProxyType(um2), float(per), MappingProxyType(sources), where)


def pe_units(unit: ComputeUnit) -> tuple[str, ...]:
    """The datapath units one PE of ``unit`` holds: one per energy action its operators perform."""
    actions = {a for op in unit.ops.values() for a in op.actions}
    held = [a for a in DATAPATH if a in actions]
    if "mac" in held and "mul" in held:
        held.remove("mul")
    return tuple(held)


def rf_um2(size_bytes: int, word_bytes: int, t: AreaTable) -> float:
    words = max(1, size_bytes // word_bytes)
    return size_bytes * 8 * t.um2["rf_bit"] + 2 * max(1, math.ceil(math.log2(words))) * t.um2["rf_address_bit"]


def area_breakdown(arch: Arch, table: AreaTable | None = None) -> dict[str, float]:
    """Area of each component of ``arch`` in mm^2 (keys: :data:`COMPONENTS`)."""
    t = table or load_area_table()
    if arch.technology_nm != t.technology_nm:
        raise SimulatorError(f"{arch.source}: technology_nm is {arch.technology_nm} but the area table "
                             f"{t.path} is {t.technology_nm} nm; give an --area-table for that node")
    mm2 = 1e-6
    out = {}
    for unit, label, rf in ((arch.pe_array, "2-D", "rf_2d"), (arch.vector_array, "1-D", "rf_1d")):
        pe = sum(t.um2[u] for u in pe_units(unit))
        out[f"{label} array PEs"] = unit.pes * pe * mm2
        level = arch.buffer(rf)
        out[f"{label} register files"] = unit.pes * rf_um2(level.size_bytes, arch.word_bytes, t) * mm2 if level else 0.0
    out["global buffer"] = arch.global_buffer.total_bytes * t.um2["global_byte"] * mm2
    out["DRAM interface"] = math.ceil(arch.dram_bytes_per_s / t.dram_bytes_per_s - 1e-9) * t.um2["dram_interface"] * mm2
    return {k: out[k] for k in COMPONENTS}


def area_mm2(arch: Arch, table: AreaTable | None = None) -> float:
    return sum(area_breakdown(arch, table).values())
