"""PNG plots of a report folder, drawn from its ``results.json`` (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import os

from einfuse.simulator.report import baseline_of, speedups
from einfuse.simulator.workload import format_seq


def plot_report(folder: str) -> list[str]:
    """Utilisation and speedup against sequence length, energy breakdown bars; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
        rows = json.load(fh)
    if not rows:
        return []
    designs = list(dict.fromkeys(r["design"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    seqs = sorted({r["seq"] for r in rows})
    colors = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(designs)}
    by = {(r["design"], r["model"], r["seq"]): r for r in rows}
    paths = []

    # utilisation of both arrays against sequence length, one panel per model
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for d in designs:
            xs = [s for s in seqs if (d, m, s) in by]
            ax.plot(xs, [by[(d, m, s)]["util_2d"] for s in xs], "-o", color=colors[d], label=f"{d} 2-D")
            ax.plot(xs, [by[(d, m, s)]["util_1d"] for s in xs], "--x", color=colors[d], alpha=0.6,
                    label=f"{d} 1-D")
        _seq_axis(ax, seqs)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("utilisation (useful PE-cycles / capacity)")
        ax.set_title(m)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    paths.append(_save(fig, folder, "utilization.png"))
    plt.close(fig)

    # speedup against the baseline design
    sp = speedups(rows)
    base = baseline_of(rows)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        for d in designs:
            xs = [s for s in seqs if (d, m, s) in sp]
            ax.plot(xs, [sp[(d, m, s)] for s in xs], "-o", color=colors[d], label=d)
        _seq_axis(ax, seqs)
        ax.set_yscale("log")
        ax.set_ylabel(f"speedup over {base}")
        ax.set_title(m)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, folder, "speedup.png"))
    plt.close(fig)

    # energy breakdown: stacked bars per design, grouped by sequence length, relative to the baseline
    comps = list(dict.fromkeys(k for r in rows for k in r.get("energy_breakdown", {})))
    fig, axes = plt.subplots(1, len(models), figsize=(max(6, 1.2 * len(seqs) * len(designs)) * len(models) / 2, 4),
                             squeeze=False)
    width = 0.8 / len(designs)
    cmap = plt.get_cmap("Set2")
    for ax, m in zip(axes[0], models):
        for si, s in enumerate(seqs):
            ref = by.get((base, m, s), {}).get("energy_pj") or 1.0
            for di, d in enumerate(designs):
                r = by.get((d, m, s))
                if r is None:
                    continue
                bottom = 0.0
                for ci, c in enumerate(comps):
                    v = r.get("energy_breakdown", {}).get(c, 0.0) / ref
                    ax.bar(si + di * width, v, width, bottom=bottom, color=cmap(ci % 8),
                           edgecolor=colors[d], linewidth=1.2, label=c if (si, di) == (0, 0) else None)
                    bottom += v
        ax.set_xticks([si + 0.4 - width / 2 for si in range(len(seqs))], [format_seq(s) for s in seqs])
        ax.set_ylabel(f"energy relative to {base}")
        ax.set_title(f"{m}: bars left to right = {', '.join(designs)}", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    paths.append(_save(fig, folder, "energy.png"))
    plt.close(fig)
    return paths


def _seq_axis(ax, seqs: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(seqs, [format_seq(s) for s in seqs])
    ax.set_xlabel("sequence length")
    ax.grid(alpha=0.3)


def _save(fig, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    fig.savefig(path, dpi=110)
    return path
