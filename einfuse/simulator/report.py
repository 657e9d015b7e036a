"""Reports: a rich table, ``results.json``, ``report.md`` (with the stall-based "why") and plots.

Everything after ``results.json`` is derived from it, so a report folder can be re-plotted or
compared later without re-simulating. The "why" paragraphs are generated from each row's stall
accounting (which unit waited, on which producer), never written by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from einfuse.simulator.simulate import SimResult
from einfuse.simulator.workload import format_seq

ROW_KEYS = ("design", "model", "seq", "batch", "cycles", "latency_s", "util_2d", "util_1d", "dram_bytes",
            "energy_pj", "buffer_bytes")


def as_rows(results: Iterable[SimResult | dict]) -> list[dict[str, Any]]:
    return [r.row() if isinstance(r, SimResult) else dict(r) for r in results]


def baseline_of(rows: Sequence[dict]) -> str:
    """The design speedups are measured against: ``unfused`` when present, else the first one."""
    designs = list(dict.fromkeys(r["design"] for r in rows))
    return "unfused" if "unfused" in designs else designs[0]


def speedups(rows: Sequence[dict]) -> dict[tuple, float]:
    base = baseline_of(rows)
    ref = {(r["model"], r["seq"]): r["cycles"] for r in rows if r["design"] == base}
    return {(r["design"], r["model"], r["seq"]): ref[(r["model"], r["seq"])] / r["cycles"]
            for r in rows if (r["model"], r["seq"]) in ref and r["cycles"]}


def table(rows: Sequence[dict], title: str = "simulation") -> Any:
    """A rich Table of the main numbers."""
    from rich.table import Table

    sp = speedups(rows)
    base = baseline_of(rows)
    t = Table(title=title)
    for col in ("design", "model", "seq", "cycles", "latency", "2-D util", "1-D util", "DRAM", "energy",
                "buffer", f"speedup vs {base}"):
        t.add_column(col, justify="left" if col in ("design", "model") else "right")
    for r in rows:
        t.add_row(r["design"], r["model"], format_seq(r["seq"]), f"{r['cycles']:.3e}", _fmt_time(r["latency_s"]),
                  f"{100 * r['util_2d']:.1f}%", f"{100 * r['util_1d']:.1f}%", _fmt_bytes(r["dram_bytes"]),
                  _fmt_energy(r["energy_pj"]), _fmt_bytes(r["buffer_bytes"]),
                  f"{sp.get((r['design'], r['model'], r['seq']), float('nan')):.2f}x")
    return t


def write_report(results: Iterable[SimResult | dict], folder: str, plots: bool = True) -> list[str]:
    """Write ``results.json``, ``report.md`` and the PNG plots into ``folder``; return the paths."""
    rows = as_rows(results)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "results.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(rows, fh, indent=1, default=_json_default)
    written = [path]
    if plots:
        from einfuse.simulator.plots import plot_report

        written += plot_report(folder)
    md = os.path.join(folder, "report.md")
    with open(md, "w", encoding="utf-8") as fh:
        fh.write(markdown(rows, [os.path.basename(p) for p in written if p.endswith(".png")]))
    written.append(md)
    return written


def markdown(rows: Sequence[dict], images: Sequence[str] = ()) -> str:
    sp = speedups(rows)
    base = baseline_of(rows)
    nodes = sorted({r.get("technology_nm", 45) for r in rows})
    specs = sorted({r.get("spec", "") for r in rows})
    out = ["# einfuse simulate report", "",
           (f"Variant(s): {', '.join(specs)}. Energies at {', '.join(f'{n} nm' for n in nodes)} "
           "(the FuseMax artifact's Accelergy/CACTI 45 nm tables, sources in each architecture file). "
           f"Batch {', '.join(sorted({str(r['batch']) for r in rows}))}; speedups against `{base}`."), "",
           ("| design | model | seq | cycles | latency | 2-D util | 1-D util | DRAM | energy | on-chip buffer "
           f"| speedup vs {base} |"),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['design']} | {r['model']} | {format_seq(r['seq'])} | {r['cycles']:.3e} | "
                   f"{_fmt_time(r['latency_s'])} | {100 * r['util_2d']:.1f}% | {100 * r['util_1d']:.1f}% | "
                   f"{_fmt_bytes(r['dram_bytes'])} | {_fmt_energy(r['energy_pj'])} | "
                   f"{_fmt_bytes(r['buffer_bytes'])} | "
                   f"{sp.get((r['design'], r['model'], r['seq']), float('nan')):.2f}x |")
    out += ["", "## Why: where each unit's time goes", "",
            ("From the engine's stall accounting: every idle interval of a unit is charged to the "
            "dependency that was late when the unit next had work (the producing Einsum and the unit "
            "it ran on, a DRAM transfer, or the pipeline window)."), ""]
    for (design, model), group in _by(rows, ("design", "model")).items():
        group = sorted(group, key=lambda r: r["seq"])
        out.append(f"### {design} ({model})")
        out.append("")
        trend = _trend(group)
        if trend:
            out.append(trend)
            out.append("")
        for r in (group[0], group[-1]) if len(group) > 1 else (group[0],):
            out.append(f"- **{format_seq(r['seq'])}**: {r.get('explanation', '')}")
            notes = [m.strip() for m in r.get("mapping", []) if "spilled" in m or m.startswith("pipeline window")]
            for n in notes:
                out.append(f"  - mapping: {n}")
        out.append("")
    last = max(r["seq"] for r in rows)
    first_model = rows[0]["model"]
    out += [f"## Per Einsum at {format_seq(last)} ({first_model})", ""]
    for r in rows:
        if r["seq"] == last and r["model"] == first_model:
            out += [f"**{r['design']}**", "", *einsum_markdown(r), ""]
    out += [f"## Energy breakdown at {format_seq(last)}", "",
            "| design | model | " + " | ".join(_components(rows)) + " | total |",
            "|---|---|" + "---:|" * (len(_components(rows)) + 1)]
    for r in rows:
        if r["seq"] != last:
            continue
        eb = r.get("energy_breakdown", {})
        out.append(f"| {r['design']} | {r['model']} | " +
                   " | ".join(_fmt_energy(eb.get(c, 0.0)) for c in _components(rows)) +
                   f" | {_fmt_energy(r['energy_pj'])} |")
    out.append("")
    for img in images:
        out.append(f"![{img}]({img})")
    out.append("")
    return "\n".join(out)


def _stage_text(stage: int) -> str:
    if stage == 0:
        return "prologue"
    return f"pass {(stage + 1) // 2}" if stage % 2 else f"after pass {stage // 2}"


def einsum_markdown(r: dict) -> list[str]:
    """Per-Einsum table: where it ran, how long its unit was busy with it, its work and traffic."""
    lines = ["| Einsum | unit | when | busy cycles | share of layer | MACs | DRAM | energy |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for e in r.get("per_einsum", []):
        lines.append(f"| {e['name']} | {e['unit']} | {_stage_text(e['stage'])} | {e['busy_cycles']:.3e} | "
                     f"{100 * e['busy_cycles'] / max(r['cycles'], 1):.1f}% | {e['macs']:.3e} | "
                     f"{_fmt_bytes(e['dram_bytes'])} | {_fmt_energy(e['energy_pj'])} |")
    return lines


def einsum_table(r: dict) -> Any:
    """The per-Einsum numbers of one result as a rich Table."""
    from rich.table import Table

    t = Table(title=f"{r['design']} {r['model']} {format_seq(r['seq'])}: per Einsum")
    for col in ("Einsum", "unit", "when", "busy cycles", "share", "MACs", "DRAM", "energy"):
        t.add_column(col, justify="left" if col in ("Einsum", "unit", "when") else "right")
    for e in r.get("per_einsum", []):
        t.add_row(e["name"], e["unit"], _stage_text(e["stage"]), f"{e['busy_cycles']:.3e}",
                  f"{100 * e['busy_cycles'] / max(r['cycles'], 1):.1f}%", f"{e['macs']:.3e}",
                  _fmt_bytes(e["dram_bytes"]), _fmt_energy(e["energy_pj"]))
    return t


def _trend(group: list[dict]) -> str:
    """One sentence on how 2-D utilisation moves with sequence length, and the top stall."""
    if len(group) < 2:
        return ""
    a, b = group[0], group[-1]
    rel = (b["util_2d"] - a["util_2d"]) / max(a["util_2d"], 1e-9)
    move = "stays about the same" if abs(rel) < 0.05 else ("falls" if rel < 0 else "rises")
    top = _top_stall(b, "2d")
    why = f"; at {format_seq(b['seq'])} the 2-D array mostly waits for {top}" if top else ""
    return (f"2-D utilisation {move} from {100 * a['util_2d']:.1f}% at {format_seq(a['seq'])} to "
            f"{100 * b['util_2d']:.1f}% at {format_seq(b['seq'])}{why}. {_bottleneck(b)}")


def _bottleneck(r: dict) -> str:
    """The busiest unit and the Einsums (or transfers) that keep it busy."""
    busy = {"2d": r.get("busy_2d", 0.0), "1d": r.get("busy_1d", 0.0), "dram": r.get("busy_dram", 0.0)}
    unit = max(busy, key=busy.get)
    names = {"2d": "2-D array", "1d": "1-D array", "dram": "DRAM"}
    if unit == "dram":
        movers = sorted(r.get("per_einsum", []), key=lambda e: -e["dram_bytes"])[:3]
        total = sum(e["dram_bytes"] for e in r.get("per_einsum", [])) or 1
        what = ", ".join(f"{e['name']} {100 * e['dram_bytes'] / total:.0f}%" for e in movers if e["dram_bytes"])
        return f"Busiest unit: DRAM ({100 * busy[unit]:.0f}% of the time; bytes moved for {what})."
    mine = [e for e in r.get("per_einsum", []) if e["unit"] == unit]
    total = sum(e["busy_cycles"] for e in mine) or 1
    top = sorted(mine, key=lambda e: -e["busy_cycles"])[:4]
    what = ", ".join(f"{e['name']} {100 * e['busy_cycles'] / total:.0f}%" for e in top)
    return f"Busiest unit: the {names[unit]} ({100 * busy[unit]:.0f}% of the time; {what} of its work)."


def _top_stall(r: dict, unit: str) -> str:
    stalls = {k: v for k, v in r.get("stalls", {}).get(unit, {}).items() if not k.startswith("no work bound")}
    if not stalls or not r["cycles"]:
        return ""
    k, v = max(stalls.items(), key=lambda kv: kv[1])
    if v / r["cycles"] < 0.005:
        return ""
    return f"{k} ({100 * v / r['cycles']:.1f}% of the time)"


def _components(rows: Sequence[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        for k in r.get("energy_breakdown", {}):
            seen[k] = None
    return list(seen)


def _by(rows: Sequence[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"cannot serialise {type(o).__name__}")


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _fmt_energy(pj: float) -> str:
    for unit, scale in (("kJ", 1e15), ("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if pj >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def _fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"
