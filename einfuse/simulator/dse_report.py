"""The report of a design-space sweep, drawn from its rows only: ``report.md``, ``table.csv`` and one
Pareto PNG per (variant, model).

Groups are (variant, model, length): latencies of different lengths are not comparable, so every
front and every best design is per group. The fronts minimise latency, energy and area together;
the plots show latency and energy against area, with the points of the three-way front ringed and
the two-way (latency, area) front drawn as a staircase.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from einfuse.simulator.area import COMPONENTS, AreaTable
from einfuse.simulator.pareto import CONSTRAINTS, best, best_across, bucket, front_rows, pareto_front
from einfuse.simulator.vary import format_value
from einfuse.simulator.workload import format_seq

Group = tuple[str, str, int]
#: Objectives within about this fraction of each other count as equal on the report's fronts.
FRONT_TOL = 0.01


def groups(rows: Sequence[Mapping[str, Any]]) -> dict[Group, list[Mapping[str, Any]]]:
    out: dict[Group, list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["spec"], r["model"], r["seq"]), []).append(r)
    return out


def params_text(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(k, v)}" for k, v in row["params"].items()) or row["arch"]


def write_dse_report(rows: Sequence[Mapping[str, Any]], folder: str, *, title: str, command: str,
                     area: AreaTable, limits: Mapping[str, float] | None = None, minimize: str = "latency",
                     stats: Mapping[str, Any] | None = None, plots: bool = True) -> list[str]:
    """Write ``report.md``, ``table.csv`` and the plots into ``folder``; return the paths."""
    os.makedirs(folder, exist_ok=True)
    ok = [r for r in rows if "error" not in r]
    paths = [_write_csv(ok, os.path.join(folder, "table.csv"))]
    pngs = plot_fronts(ok, folder) if plots and ok else []
    md = _markdown(rows, ok, title=title, command=command, area=area, limits=dict(limits or {}),
                   minimize=minimize, stats=stats or {}, pngs=[os.path.basename(p) for p in pngs])
    path = os.path.join(folder, "report.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(md)
    return [path] + paths + pngs


def _write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    cols = ["spec", "model", "seq", *names, "latency_s", "energy_pj", "area_mm2", "cycles", "util_2d", "util_1d",
            "busy_dram", "dram_bytes", "bound", "limit", *[f"area_{c}" for c in COMPONENTS]]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([r["spec"], r["model"], r["seq"], *[r["params"].get(n, "") for n in names],
                        r["latency_s"], r["energy_pj"], round(r["area_mm2"], 4), r["cycles"], round(r["util_2d"], 4),
                        round(r["util_1d"], 4), round(r["busy_dram"], 4), r["dram_bytes"], r["bound"], r["limit"],
                        *[round(r["area"][c], 4) for c in COMPONENTS]])
    return path


def _markdown(rows, ok, *, title, command, area, limits, minimize, stats, pngs) -> str:
    from collections import Counter

    lines = [f"# {title}", "", "```bash", command, "```", ""]
    if stats:
        lines += [f"{stats['points']} points ({stats['computed']} simulated, {stats['reused']} reused from the "
                  f"table, {stats['failed']} failed) in {stats['wall_s']:.1f} s on {stats['where']}.", ""]
    params = {k: sorted({r["params"][k] for r in ok}) for r in ok[:1] for k in r["params"]}
    if params:
        lines += ["Parameters: " + "; ".join(f"{k} = {', '.join(format_value(k, v) for v in vs)}"
                                             for k, vs in params.items()) + ".", ""]
    lines += ["Latency and energy are one attention layer (batch x heads problems); area is the whole design. "
              "Every front minimises latency, energy and area together, per (variant, model, length), comparing "
              f"values on a {100 * FRONT_TOL:g} % logarithmic grid (near-ties count as ties).", ""]
    for png in pngs:
        lines += [f"![Pareto fronts]({png})", ""]
    approx = [r for r in ok if r.get("approximate")]
    if approx:
        lines += [f"**{len(approx)} of {len(ok)} points are marked approximate by the simulator** (its "
                  "fast-forward extrapolated a steady state it did not prove; marked * below).", ""]
    for (spec, model, seq), grp in groups(ok).items():
        front = sorted(front_rows(grp, rel_tol=FRONT_TOL), key=lambda r: r["area_mm2"])
        bounds = Counter(r["bound"] for r in grp)
        lines += [f"## {spec}, {model}, {format_seq(seq)} tokens", "",
                  f"{len(grp)} designs, {len(front)} on the latency/energy/area front. Bound by: "
                  + ", ".join(f"{u} {n}" for u, n in bounds.most_common()) + ".", "",
                  "| design | latency (ms) | energy (mJ) | area (mm2) | what limits it |", "|---|---:|---:|---:|---|"]
        lines += [f"| {params_text(r)}{' *' if r.get('approximate') else ''} | {num(1e3 * r['latency_s'])} | {num(r['energy_pj'] / 1e9)} | "
                  f"{r['area_mm2']:.1f} | {r['limit']} |" for r in front]
        choices = [("no limit", {})] + ([(_limits_text(limits), limits)] if limits else [])
        lines += ["", f"Best by {minimize} (within {100 * FRONT_TOL:g} %, then the smallest area):", ""]
        for label, lim in choices:
            b = best(grp, minimize, lim, rel_tol=FRONT_TOL)
            lines.append(f"- {label}: " + (f"**{params_text(b)}**{' *' if b.get('approximate') else ''}: {num(1e3 * b['latency_s'])} ms, "
                                          f"{num(b['energy_pj'] / 1e9)} mJ, {b['area_mm2']:.1f} mm2 ({b['limit']})"
                                          if b else "no design meets the limits"))
        lines.append("")
    if len({r["seq"] for r in ok}) > 1 or len({r["spec"] for r in ok}) > 1:
        lines += [f"## One design for every workload (smallest geometric mean of {minimize})", ""]
        choices = [("no limit", {})] + ([(_limits_text(limits), limits)] if limits else [])
        for label, lim in choices:
            b = best_across(ok, minimize, lim)
            if b is None:
                lines.append(f"- {label}: no design meets the limits at every workload")
                continue
            r = next(x for x in ok if x["design"] == b[0])
            unit = {"latency": (1e3, "ms"), "energy": (1e-9, "mJ"), "area": (1.0, "mm2"), "edp": (1e-9 * 1e3, "mJ ms")}
            scale, name = unit[minimize]
            lines.append(f"- {label}: **{params_text(r)}** ({r['area_mm2']:.1f} mm2), geometric mean {minimize} "
                         f"{num(b[1] * scale)} {name}")
        lines.append("")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["## Points that failed", ""] + [f"- {r['spec']} {params_text(r)} {r['model']} "
                                                  f"{format_seq(r['seq'])}: {r['error']}" for r in errors] + [""]
    lines += [f"## Area model ({area.technology_nm} nm, {area.path})", "",
              "| component | um2 | source |", "|---|---:|---|"]
    lines += [f"| {k} | {v:g} | {area.sources[k]} |" for k, v in area.um2.items()]
    if ok:
        r0 = min(ok, key=lambda r: r["area_mm2"])
        lines += ["", f"Breakdown of the smallest design ({params_text(r0)}): "
                  + ", ".join(f"{c} {r0['area'][c]:.1f}" for c in COMPONENTS) + " mm2.", ""]
    return "\n".join(lines) + "\n"


def num(x: float) -> str:
    """Four significant digits, thousands separated, never an exponent (tables read down a column)."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _limits_text(limits: Mapping[str, float]) -> str:
    return ", ".join(f"{CONSTRAINTS[k][0]} <= {v:g} {CONSTRAINTS[k][2]}" for k, v in limits.items())


def plot_fronts(rows: Sequence[Mapping[str, Any]], folder: str) -> list[str]:
    """One PNG per (variant, model): latency (top) and energy (bottom) against area, a column per
    length, colour = the other objective; ringed = on the three-way front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    pairs = list(dict.fromkeys((r["spec"], r["model"]) for r in rows))
    for spec, model in pairs:
        seqs = sorted({r["seq"] for r in rows if (r["spec"], r["model"]) == (spec, model)})
        fig, axes = plt.subplots(2, len(seqs), figsize=(4.6 * len(seqs), 7.6), squeeze=False)
        for col, seq in enumerate(seqs):
            grp = [r for r in rows if (r["spec"], r["model"], r["seq"]) == (spec, model, seq)]
            on = {id(r) for r in front_rows(grp, rel_tol=FRONT_TOL)}
            area = [r["area_mm2"] for r in grp]
            lat = [1e3 * r["latency_s"] for r in grp]
            en = [r["energy_pj"] / 1e9 for r in grp]
            for ax, y, c, ylabel, clabel in ((axes[0][col], lat, en, "latency (ms)", "energy (mJ)"),
                                             (axes[1][col], en, lat, "energy (mJ)", "latency (ms)")):
                wide = max(c) > 10 * min(c) > 0
                sc = ax.scatter(area, y, c=c, cmap="viridis", s=18,
                                norm=matplotlib.colors.LogNorm() if wide else None)
                rough = [i for i, r in enumerate(grp) if r.get("approximate")]
                if rough:
                    ax.scatter([area[i] for i in rough], [y[i] for i in rough], marker="x", s=30, color="black",
                               linewidths=0.8, label="approximate (simulator fast-forward)")
                ring = [i for i, r in enumerate(grp) if id(r) in on]
                ax.scatter([area[i] for i in ring], [y[i] for i in ring], s=70, facecolors="none",
                           edgecolors="crimson", linewidths=1.2, label="latency/energy/area front")
                two = sorted(pareto_front([[bucket(a, FRONT_TOL), bucket(v, FRONT_TOL)] for a, v in zip(area, y)]),
                             key=lambda i: area[i])
                ax.step([area[i] for i in two], [y[i] for i in two], where="post", color="crimson", alpha=0.5,
                        linewidth=1, label=f"{ylabel.split()[0]}/area front")
                if max(y) > 10 * min(y) > 0:
                    ax.set_yscale("log")
                ax.set_xlabel("area (mm2, 45 nm)")
                ax.set_ylabel(ylabel)
                ax.set_title(f"{model} {format_seq(seq)}", fontsize=10)
                fig.colorbar(sc, ax=ax, label=clabel)
        legend = {}
        for ax in axes.flat:
            for h, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, h)
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(legend), fontsize=8)
        fig.suptitle(f"{spec}: design-space sweep", fontsize=11)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        name = "pareto-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{spec}-{model}") + ".png"
        path = os.path.join(folder, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
