"""Architecture parameters a design-space sweep varies: ``--vary pe=64..512,buffer=4M..64M``.

Each parameter names the YAML field(s) it overrides, so an error can say what it would have changed
and a user can reproduce any point by editing a copy of the design's YAML. Values are parsed with
binary multipliers (K = 2**10, M = 2**20, G = 2**30, T = 2**40), the same convention as ``--seq``
and as the shipped designs' DRAM bandwidth (``400 GB/s`` is written ``400 * 2**30`` B/s there), so
``dram=400G`` reproduces ``fusemax`` exactly.

Ranges step the way designers sweep each kind of parameter:

* ``pe=64..512``: powers of two (both ends must be powers of two): 64, 128, 256, 512;
* sizes and rates (``buffer``, ``rf``, ``dram``, ``clock``): doubling from the low end, the high end
  always included: ``dram=200G..2T`` is 200G, 400G, 800G, 1600G, 2T (a doubling within 5 % of the high
  end is the high end: ``dram=200G..1.6T`` is 200G, 400G, 800G, 1.6T);
* explicit lists: ``pe=64,128,256`` (a comma followed by a value continues the current parameter).
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from einfuse.errors import SimulatorError
from einfuse.simulator.arch import Arch

_MULT = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]?)(?:i?B(?:/s)?|Hz)?\s*$", re.I)


@dataclass(frozen=True)
class Param:
    """One sweepable parameter: what it means, the YAML field(s) it overrides and how it steps."""

    name: str
    fields: str                    # the YAML field(s), as a user would look them up
    meaning: str
    step: str                      # "pow2" (powers of two) or "double" (doubling, end included)
    integer: bool
    apply: Callable[[Arch, float], Arch]


def _set_global(a: Arch, v: float) -> Arch:
    return replace(a, buffers=tuple(replace(b, size_bytes=int(v)) if b.name == "global" else b
                                    for b in a.buffers))


def _set_rf(a: Arch, v: float) -> Arch:
    if a.buffer("rf_2d") is None:
        raise SimulatorError(f"{a.source}: --vary rf: the design has no buffers[rf_2d] level to resize")
    return replace(a, buffers=tuple(replace(b, size_bytes=int(v)) if b.name == "rf_2d" else b
                                    for b in a.buffers))


def _set_cols(a: Arch, cols: int) -> Arch:
    """Resize the 2-D columns; the global buffer's row (one word per column per bank, as FuseMax's
    4096-bit rows feed 256 columns) and so its bytes per cycle scale with them."""
    scale = cols / a.pe_array.cols
    bufs = tuple(replace(b, read_bytes_per_cycle=b.read_bytes_per_cycle * scale,
                         write_bytes_per_cycle=b.write_bytes_per_cycle * scale) if b.name == "global" else b
                 for b in a.buffers)
    return replace(a, pe_array=replace(a.pe_array, cols=cols), buffers=bufs)


def _set_pe(a: Arch, v: float) -> Arch:
    n = int(v)
    a = _set_cols(a, n)
    return replace(a, pe_array=replace(a.pe_array, rows=n), vector_array=replace(a.vector_array, cols=n))


PARAMS: Mapping[str, Param] = {p.name: p for p in (
    Param("pe", "pe_array.rows, pe_array.cols, vector_array.lanes",
          "side of the square 2-D array; the 1-D array keeps one lane per column", "pow2", True, _set_pe),
    Param("rows", "pe_array.rows", "2-D array rows (keys of a tile)", "pow2", True,
          lambda a, v: replace(a, pe_array=replace(a.pe_array, rows=int(v)))),
    Param("cols", "pe_array.cols", "2-D array columns (queries of a tile)", "pow2", True,
          lambda a, v: _set_cols(a, int(v))),
    Param("lanes", "vector_array.lanes", "1-D array lanes", "pow2", True,
          lambda a, v: replace(a, vector_array=replace(a.vector_array, cols=int(v)))),
    Param("buffer", "buffers[global].size_bytes", "global buffer bytes", "double", True, _set_global),
    Param("rf", "buffers[rf_2d].size_bytes", "register file bytes per 2-D PE", "double", True, _set_rf),
    Param("dram", "dram.bandwidth_bytes_per_s", "DRAM bandwidth, bytes per second", "double", False,
          lambda a, v: replace(a, dram_bytes_per_s=float(v))),
    Param("clock", "clock_hz", "clock frequency, Hz", "double", False,
          lambda a, v: replace(a, clock_hz=float(v))),
)}


def param_help() -> str:
    return "; ".join(f"{p.name} ({p.fields})" for p in PARAMS.values())


def parse_value(text: str, where: str) -> float:
    """``4M`` -> 4194304, ``1.6T`` -> 1.6 * 2**40, ``200GB/s`` -> 200 * 2**30."""
    m = _NUMBER.match(text)
    if not m:
        raise SimulatorError(f"--vary {where}: {text!r} is not a number (use e.g. 256, 4M, 400G, 1.6T)")
    value = float(m.group(1)) * _MULT[m.group(2).upper()]
    if value <= 0:
        raise SimulatorError(f"--vary {where}: {text!r} must be > 0")
    return value


def _ladder(p: Param, lo_text: str, hi_text: str) -> list[float]:
    where = f"{p.name}={lo_text}..{hi_text}"
    lo, hi = parse_value(lo_text, where), parse_value(hi_text, where)
    if hi < lo:
        raise SimulatorError(f"--vary {where}: the range runs backwards (write {p.name}={hi_text}..{lo_text})")
    if p.step == "pow2":
        for v, t in ((lo, lo_text), (hi, hi_text)):
            if v != int(v) or int(v) & (int(v) - 1):
                raise SimulatorError(f"--vary {where}: {p.name} ranges step through powers of two and {t} is "
                                     f"not one; give a list instead ({p.name}=48,96,192)")
        out, v = [], lo
        while v <= hi:
            out.append(v)
            v *= 2
        return out
    out, v = [], lo
    while v <= hi * (1 + 1e-9):
        out.append(v)
        v *= 2
    if out[-1] >= hi * 0.95:      # 200G..1.6T: 1600G is the 1.6T the user meant, not a second point
        return out[:-1] + [hi]
    return out + [hi]


def parse_vary(text: str) -> dict[str, list[float]]:
    """``"pe=64..512,buffer=4M..64M,dram=400G,800G"`` -> ``{"pe": [64, ..], "buffer": [..], ...}``."""
    out: dict[str, list[float]] = {}
    current: str | None = None
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if "=" in item:
            name, _, value = (s.strip() for s in item.partition("="))
            if name not in PARAMS:
                close = difflib.get_close_matches(name, list(PARAMS), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise SimulatorError(f"--vary: unknown parameter {name!r}{hint}; parameters and the YAML "
                                     f"fields they set: {param_help()}")
            if name in out:
                raise SimulatorError(f"--vary: {name} is given twice")
            current, out[name] = name, []
            if not value:
                raise SimulatorError(f"--vary {name}=: give a value, a list or a range LO..HI")
        elif current is None:
            raise SimulatorError(f"--vary: {item!r} has no parameter name (write NAME=VALUES, e.g. pe=64..512)")
        else:
            value = item
        p = PARAMS[current]
        if ".." in value:
            lo, _, hi = value.partition("..")
            out[current] += _ladder(p, lo.strip(), hi.strip())
        else:
            v = parse_value(value, f"{current}={value}")
            if p.integer and v != int(v):
                raise SimulatorError(f"--vary {current}={value}: {p.fields} must be a whole number")
            out[current].append(v)
    for name, values in out.items():
        if not values:
            raise SimulatorError(f"--vary {name}=: give a value, a list or a range LO..HI")
        if len(set(values)) != len(values):
            raise SimulatorError(f"--vary {name}: a value is repeated ({', '.join(format_value(name, v) for v in values)})")
    if "pe" in out and ({"rows", "cols", "lanes"} & set(out)):
        raise SimulatorError("--vary: pe sets rows, cols and lanes together; vary either pe or those")
    return out


def grid(vary: Mapping[str, list[float]]) -> list[dict[str, float]]:
    """Every combination, first parameter slowest."""
    names = list(vary)
    return [dict(zip(names, combo)) for combo in itertools.product(*(vary[n] for n in names))]


def apply_params(arch: Arch, params: Mapping[str, float]) -> Arch:
    """``arch`` with the parameters overridden and a name saying which (``fusemax[pe=128,buffer=8M]``)."""
    for name, value in params.items():
        if name not in PARAMS:
            raise SimulatorError(f"unknown parameter {name!r}; parameters: {param_help()}")
        arch = PARAMS[name].apply(arch, value)
    return replace(arch, name=design_name(arch.name.split("[")[0], params))


def design_name(base: str, params: Mapping[str, float]) -> str:
    if not params:
        return base
    return base + "[" + ",".join(f"{k}={format_value(k, v)}" for k, v in params.items()) + "]"


def format_value(name: str, v: float) -> str:
    """The inverse of :func:`parse_value` for display: 4194304 -> ``4M``, 1.6 * 2**40 -> ``1.6T``."""
    if name in ("pe", "rows", "cols", "lanes"):
        return str(int(v))
    for suffix in ("T", "G", "M", "K"):      # a whole number of the largest unit that gives one
        q = v / _MULT[suffix]
        if q >= 1 and abs(q - round(q)) < 1e-9:
            return f"{q:.0f}{suffix}"
    for suffix in ("T", "G", "M", "K"):
        q = v / _MULT[suffix]
        if q >= 1:
            return f"{q:.3g}{suffix}"
    return f"{v:g}"
