"""Accelerator architectures as data: load and validate the YAML files under ``archs/``.

An architecture is a 2-D PE array, a 1-D vector array, a buffer hierarchy, DRAM, a clock, an energy
table and the *mapping policy* of the design (which lowering, how Einsums are fused and bound, how
many key tiles may be in flight). Keeping the policy in the same file is what lets the ``unfused``,
``flat`` and ``fusemax`` designs differ only in data: the simulator has no per-design code.

Validation is strict because a typo in a hand-written YAML file would otherwise silently fall back
to a default and produce plausible but wrong numbers: unknown keys, negative sizes, ops with unknown
energy actions and ops that no unit supports are all :class:`SimulatorError` naming the key.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from types import MappingProxyType
from typing import Any

import yaml

from einfuse.errors import SimulatorError

#: Operators a unit may declare: the IR's map/unary operators plus ``mac`` (fused multiply-add of a
#: contraction), ``select`` (a ``where``) and ``index`` (an index-valued term such as an ALiBi bias).
KNOWN_OPS = (
    "mac", "add", "sub", "mul", "div", "max", "min", "exp", "log", "neg", "sigmoid", "relu",
    "reciprocal", "tanh", "sqrt", "abs", "elu1", "square", "select", "index",
)
#: Operators every design must support somewhere: without them softmax attention cannot run.
REQUIRED_OPS = ("mac", "add", "max", "exp", "div")
DATAFLOWS = ("output_stationary", "weight_stationary", "input_stationary")
FUSIONS = ("none", "per_unit", "row_block")
LOWERINGS = ("none", "online_softmax")
STORAGE_ENERGY_KEYS = ("rf_2d", "rf_1d", "global", "dram")


@dataclass(frozen=True)
class OpCost:
    """Cost of one operator on one PE/lane: issue ``cycles`` per element (1/throughput), pipeline
    ``latency`` until the result exists, and the energy ``actions`` it performs (exp = 6 MACs)."""

    cycles: int
    latency: int
    actions: Mapping[str, float]


@dataclass(frozen=True)
class ComputeUnit:
    """A PE array: ``rows x cols`` PEs (the 1-D array is ``1 x lanes``)."""

    name: str
    rows: int
    cols: int
    ops: Mapping[str, OpCost]
    chain_ops: bool = False        # an Einsum's operator chain is pipelined: cost = max, not sum
    pipeline_folds: bool = True    # consecutive folds overlap their fill/drain (2-D only)
    dataflow: str = "output_stationary"

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    def supports(self, op: str) -> bool:
        return op in self.ops


@dataclass(frozen=True)
class BufferLevel:
    """One storage level; ``instances`` copies of ``size_bytes`` (per PE for register files)."""

    name: str
    size_bytes: int
    instances: int
    read_bytes_per_cycle: float
    write_bytes_per_cycle: float
    double_buffered: bool

    @property
    def total_bytes(self) -> int:
        return self.size_bytes * self.instances


@dataclass(frozen=True)
class MappingPolicy:
    """How the design maps a cascade (each shipped YAML file comments its choices)."""

    lowering: str                   # none | online_softmax
    fusion: str                     # none | per_unit | row_block
    spatial_rows: tuple[str, ...]   # preferred ranks on the 2-D rows (first one present wins)
    spatial_cols: tuple[str, ...]
    softmax_on_2d: bool             # tile-sized elementwise/reductions may run on the 2-D array
    pipeline_window: int | None     # key tiles in flight (1: each finished before the next; None: auto)
    interleave: bool                # issue tile work software-pipelined (stage by stage) across tiles
    row_block: int | None           # query rows per row block (None: largest that fits)
    link_2d_to_1d: bool             # 2-D bottom row feeds the 1-D array directly


@dataclass(frozen=True)
class Arch:
    name: str
    description: str
    technology_nm: int
    clock_hz: float
    word_bytes: int
    pe_array: ComputeUnit
    vector_array: ComputeUnit
    buffers: tuple[BufferLevel, ...]
    dram_bytes_per_s: float
    dram_latency_cycles: int
    energy_pj: Mapping[str, float]
    mapping: MappingPolicy
    source: str = ""

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_bytes_per_s / self.clock_hz

    def buffer(self, name: str) -> BufferLevel | None:
        for b in self.buffers:
            if b.name == name:
                return b
        return None

    @property
    def global_buffer(self) -> BufferLevel:
        gb = self.buffer("global")
        assert gb is not None  # validated on load
        return gb

    def unit(self, name: str) -> ComputeUnit:
        return self.pe_array if name == "2d" else self.vector_array

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary, stored with every simulation result."""
        return {
            "name": self.name, "technology_nm": self.technology_nm, "clock_hz": self.clock_hz,
            "pe_array": f"{self.pe_array.rows}x{self.pe_array.cols}", "vector_lanes": self.vector_array.cols,
            "global_buffer_bytes": self.global_buffer.total_bytes, "dram_bytes_per_s": self.dram_bytes_per_s,
            "lowering": self.mapping.lowering, "fusion": self.mapping.fusion,
            "softmax_on_2d": self.mapping.softmax_on_2d, "pipeline_window": self.mapping.pipeline_window or "auto",
            "interleave": self.mapping.interleave,
        }


# ---- loading -------------------------------------------------------------------------------------

def builtin_arch_names() -> list[str]:
    """Names of the designs shipped in ``einfuse/simulator/archs``."""
    files = resources.files("einfuse.simulator").joinpath("archs")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_arch(name_or_path: str) -> Arch:
    """Load a built-in design by name (``fusemax``) or any YAML file by path, validated."""
    data, source = _load_raw(name_or_path, ())
    return arch_from_dict(data, source)


def _load_raw(name_or_path: str, chain: tuple[str, ...]) -> tuple[dict, str]:
    """Parsed YAML with ``extends: BASE`` resolved (a deep merge of the file over its base)."""
    if os.path.isfile(name_or_path):
        try:
            with open(name_or_path, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise SimulatorError(f"architecture file {name_or_path!r} is not UTF-8 text (a YAML design)") from None
        source = name_or_path
    else:
        names = builtin_arch_names()
        if name_or_path not in names:
            if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
                raise SimulatorError(f"architecture file {name_or_path!r} does not exist")
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; built-in designs: {', '.join(names)}"
            raise SimulatorError(f"unknown architecture {name_or_path!r}{hint}")
        text = resources.files("einfuse.simulator").joinpath("archs", f"{name_or_path}.yaml").read_text()
        source = f"builtin:{name_or_path}"
    if source in chain:
        raise SimulatorError(f"{source}: 'extends' loops back to itself ({' -> '.join(chain)})")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SimulatorError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SimulatorError(f"{source}: expected a mapping at the top level")
    base = data.pop("extends", None)
    if base is None:
        return data, source
    if not isinstance(base, str):
        raise SimulatorError(f"{source}: extends must name a built-in design or a YAML path")
    if not os.path.isabs(base) and base.endswith((".yaml", ".yml")) and os.path.isfile(source):
        base = os.path.join(os.path.dirname(source), base)
    base_data, _ = _load_raw(base, chain + (source,))
    return _merge(base_data, data), source


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def arch_from_dict(data: Any, source: str = "<dict>") -> Arch:
    """Build and validate an :class:`Arch` from parsed YAML."""
    r = _Reader(source)
    top = r.mapping(data, "")
    r.keys(top, "", required=("name", "clock_hz", "word_bytes", "pe_array", "vector_array", "buffers",
                              "dram", "energy_pj", "mapping"),
           optional=("description", "technology_nm"))
    energy = r.mapping(top["energy_pj"], "energy_pj")
    energy_pj = {}
    for k, v in energy.items():
        energy_pj[str(k)] = r.number(v, f"energy_pj.{k}", minimum=0.0)
    for k in STORAGE_ENERGY_KEYS:
        if k not in energy_pj:
            raise SimulatorError(f"{source}: energy_pj.{k} is missing (pJ per byte of that storage level)")
    pe = _unit(r, top["pe_array"], "pe_array", "2d", energy_pj)
    vec = _unit(r, top["vector_array"], "vector_array", "1d", energy_pj)
    for op in REQUIRED_OPS:
        if not pe.supports(op) and not vec.supports(op):
            raise SimulatorError(
                f"{source}: op {op!r} is not supported by any unit (add it to pe_array.ops or "
                "vector_array.ops); softmax attention needs " + ", ".join(REQUIRED_OPS))
    buffers = tuple(
        replace(b, instances=(pe.pes if b.name == "rf_2d" else vec.pes)) if b.instances < 0 else b
        for b in _buffers(r, top["buffers"]))
    if buffers[[b.name for b in buffers].index("global")].instances != 1:
        raise SimulatorError(f"{source}: buffers: the global level is one array-wide buffer (per: array)")
    dram = r.mapping(top["dram"], "dram")
    r.keys(dram, "dram", required=("bandwidth_bytes_per_s",), optional=("latency_cycles",))
    mapping = _mapping(r, top["mapping"])
    clock = r.number(top["clock_hz"], "clock_hz", minimum=1.0)
    word = r.integer(top["word_bytes"], "word_bytes", minimum=1)
    return Arch(
        name=r.string(top["name"], "name"), description=str(top.get("description", "")).strip(),
        technology_nm=r.integer(top.get("technology_nm", 45), "technology_nm", minimum=1),
        clock_hz=clock, word_bytes=word, pe_array=pe, vector_array=vec, buffers=buffers,
        dram_bytes_per_s=r.number(dram["bandwidth_bytes_per_s"], "dram.bandwidth_bytes_per_s", minimum=1.0),
        dram_latency_cycles=r.integer(dram.get("latency_cycles", 0), "dram.latency_cycles", minimum=0),
        energy_pj=MappingProxyType(energy_pj), mapping=mapping, source=source)


def _unit(r: _Reader, data: Any, where: str, name: str, energy: dict[str, float]) -> ComputeUnit:
    d = r.mapping(data, where)
    if name == "2d":
        r.keys(d, where, required=("rows", "cols", "ops"),
               optional=("dataflow", "pipeline_folds", "chain_ops"))
        rows = r.integer(d["rows"], f"{where}.rows", minimum=1)
        cols = r.integer(d["cols"], f"{where}.cols", minimum=1)
    else:
        r.keys(d, where, required=("lanes", "ops"), optional=("chain_ops",))
        rows, cols = 1, r.integer(d["lanes"], f"{where}.lanes", minimum=1)
    dataflow = str(d.get("dataflow", "output_stationary"))
    if dataflow not in DATAFLOWS:
        raise SimulatorError(f"{r.source}: {where}.dataflow {dataflow!r} is not one of {', '.join(DATAFLOWS)}")
    ops: dict[str, OpCost] = {}
    for op, spec in r.mapping(d["ops"], f"{where}.ops").items():
        op = str(op)
        if op not in KNOWN_OPS:
            raise SimulatorError(f"{r.source}: {where}.ops: unknown op {op!r}{_suggest(op, KNOWN_OPS)}; "
                                 f"known ops: {', '.join(KNOWN_OPS)}")
        s = r.mapping(spec, f"{where}.ops.{op}")
        r.keys(s, f"{where}.ops.{op}", required=("cycles",), optional=("latency", "actions"))
        cycles = r.integer(s["cycles"], f"{where}.ops.{op}.cycles", minimum=1)
        latency = r.integer(s.get("latency", cycles), f"{where}.ops.{op}.latency", minimum=0)
        actions = {}
        for a, n in r.mapping(s.get("actions", {op: 1}), f"{where}.ops.{op}.actions").items():
            if str(a) not in energy:
                raise SimulatorError(f"{r.source}: {where}.ops.{op}.actions: action {a!r} has no entry "
                                     f"in energy_pj{_suggest(str(a), list(energy))}")
            actions[str(a)] = r.number(n, f"{where}.ops.{op}.actions.{a}", minimum=0.0)
        ops[op] = OpCost(cycles, latency, MappingProxyType(actions))
    return ComputeUnit(name, rows, cols, MappingProxyType(ops),
                       chain_ops=r.boolean(d.get("chain_ops", False), f"{where}.chain_ops"),
                       pipeline_folds=r.boolean(d.get("pipeline_folds", True), f"{where}.pipeline_folds"),
                       dataflow=dataflow)


def _buffers(r: _Reader, data: Any) -> tuple[BufferLevel, ...]:
    if not isinstance(data, list) or not data:
        raise SimulatorError(f"{r.source}: buffers must be a non-empty list of levels")
    out = []
    for i, item in enumerate(data):
        d = r.mapping(item, f"buffers[{i}]")
        r.keys(d, f"buffers[{i}]", required=("name", "size_bytes"),
               optional=("per", "read_bytes_per_cycle", "write_bytes_per_cycle", "double_buffered"))
        name = r.string(d["name"], f"buffers[{i}].name")
        if name not in ("rf_2d", "rf_1d", "global"):
            raise SimulatorError(f"{r.source}: buffers[{i}].name {name!r} must be rf_2d, rf_1d or global")
        per = str(d.get("per", "array"))
        if per not in ("array", "pe"):
            raise SimulatorError(f"{r.source}: buffers[{i}].per must be 'array' or 'pe', got {per!r}")
        out.append(BufferLevel(
            name=name, size_bytes=r.integer(d["size_bytes"], f"buffers[{i}].size_bytes", minimum=1),
            instances=1 if per == "array" else -1,  # resolved below (PE counts)
            read_bytes_per_cycle=r.number(d.get("read_bytes_per_cycle", 1e18),
                                          f"buffers[{i}].read_bytes_per_cycle", minimum=1e-9),
            write_bytes_per_cycle=r.number(d.get("write_bytes_per_cycle", 1e18),
                                           f"buffers[{i}].write_bytes_per_cycle", minimum=1e-9),
            double_buffered=r.boolean(d.get("double_buffered", True), f"buffers[{i}].double_buffered")))
    names = [b.name for b in out]
    if "global" not in names:
        raise SimulatorError(f"{r.source}: buffers needs a level named 'global' (the on-chip buffer)")
    if len(set(names)) != len(names):
        raise SimulatorError(f"{r.source}: buffers: duplicate level names {names}")
    return tuple(out)


def _mapping(r: _Reader, data: Any) -> MappingPolicy:
    d = r.mapping(data, "mapping")
    r.keys(d, "mapping", required=("fusion",),
           optional=("lowering", "spatial", "softmax_on_2d", "pipeline_window", "row_block", "link_2d_to_1d",
                     "interleave"))
    fusion = str(d["fusion"])
    if fusion not in FUSIONS:
        raise SimulatorError(f"{r.source}: mapping.fusion {fusion!r} is not one of {', '.join(FUSIONS)}")
    lowering = str(d.get("lowering", "none"))
    if lowering not in LOWERINGS:
        raise SimulatorError(f"{r.source}: mapping.lowering {lowering!r} is not one of {', '.join(LOWERINGS)}")
    spatial = r.mapping(d.get("spatial", {}), "mapping.spatial")
    r.keys(spatial, "mapping.spatial", required=(), optional=("rows", "cols"))
    rows = tuple(str(x) for x in (spatial.get("rows") or []))
    cols = tuple(str(x) for x in (spatial.get("cols") or []))
    rb = d.get("row_block", "auto")
    pw = d.get("pipeline_window", "auto")
    row_block = None if rb == "auto" else r.integer(rb, "mapping.row_block", minimum=1)
    return MappingPolicy(
        lowering=lowering, fusion=fusion, spatial_rows=rows, spatial_cols=cols,
        softmax_on_2d=r.boolean(d.get("softmax_on_2d", False), "mapping.softmax_on_2d"),
        pipeline_window=None if pw == "auto" else r.integer(pw, "mapping.pipeline_window", minimum=1),
        interleave=r.boolean(d.get("interleave", False), "mapping.interleave"),
        row_block=row_block,
        link_2d_to_1d=r.boolean(d.get("link_2d_to_1d", False), "mapping.link_2d_to_1d"))


def _suggest(name: str, options: Any) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class _Reader:
    """Typed accessors that name the offending key in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def err(self, where: str, msg: str) -> SimulatorError:
        return SimulatorError(f"{self.source}: {where or 'top level'}: {msg}")

    def mapping(self, v: Any, where: str) -> dict:
        if not isinstance(v, dict):
            raise self.err(where, f"expected a mapping, got {type(v).__name__}")
        return v

    def keys(self, d: dict, where: str, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
        allowed = set(required) | set(optional)
        for k in d:
            if k not in allowed:
                raise self.err(where, f"unknown key {k!r}{_suggest(str(k), allowed)}; "
                                      f"allowed: {', '.join(sorted(allowed))}")
        for k in required:
            if k not in d:
                raise self.err(where, f"missing key {k!r}")

    def number(self, v: Any, where: str, minimum: float) -> float:
        if isinstance(v, str):  # YAML 1.1 reads 940.0e6 (no exponent sign) as a string
            try:
                v = float(v)
            except ValueError:
                pass
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(where, f"expected a number, got {v!r}")
        if v < minimum:
            raise self.err(where, f"must be >= {minimum:g}, got {v!r}" + (" (negative)" if v < 0 else ""))
        return float(v)

    def integer(self, v: Any, where: str, minimum: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(where, f"expected an integer, got {v!r}")
        if v < minimum:
            raise self.err(where, f"must be >= {minimum}, got {v}" + (" (negative)" if v < 0 else ""))
        return v

    def boolean(self, v: Any, where: str) -> bool:
        if not isinstance(v, bool):
            raise self.err(where, f"expected true or false, got {v!r}")
        return v

    def string(self, v: Any, where: str) -> str:
        if not isinstance(v, str) or not v:
            raise self.err(where, f"expected a non-empty string, got {v!r}")
        return v
