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

    # speedup against the baseline design (with one design there is nothing to compare: no plot)
    sp = speedups(rows)
    base = baseline_of(rows)
    others = [d for d in designs if d != base]
    if others:
        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
        for ax, m in zip(axes[0], models):
            for d in others:
                xs = [s for s in seqs if (d, m, s) in sp]
                ax.plot(xs, [sp[(d, m, s)] for s in xs], "-o", color=colors[d], label=d)
            ax.axhline(1.0, color=colors[base], linestyle=":", linewidth=1, label=f"{base} (1x)")
            _seq_axis(ax, seqs)
            ax.set_yscale("log")
            ax.set_ylabel(f"speedup over {base}")
            ax.set_title(m)
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, folder, "speedup.png"))
        plt.close(fig)

    # energy breakdown: stacked bars per design, grouped by sequence length, relative to the baseline;
    # every bar is labelled with its design below it, the sequence length below the group
    comps = list(dict.fromkeys(k for r in rows for k in r.get("energy_breakdown", {})))
    width = 0.8 / len(designs)
    group_w = max(1.2, 0.45 * len(designs))  # inches per sequence length, so design labels fit
    fig, axes = plt.subplots(1, len(models), figsize=(max(6.0, group_w * len(seqs) + 1.5) * len(models), 4.6),
                             squeeze=False)
    cmap = plt.get_cmap("Set2")
    for ax, m in zip(axes[0], models):
        ticks, labels = [], []
        for si, s in enumerate(seqs):
            ref = by.get((base, m, s), {}).get("energy_pj") or 1.0
            for di, d in enumerate(designs):
                r = by.get((d, m, s))
                if r is None:
                    continue
                x = si + di * width
                bottom = 0.0
                for ci, c in enumerate(comps):
                    v = r.get("energy_breakdown", {}).get(c, 0.0) / ref
                    ax.bar(x, v, width, bottom=bottom, color=cmap(ci % 8), edgecolor="white", linewidth=0.5,
                           label=c if (si, di) == (0, 0) else None)
                    bottom += v
                ticks.append(x)
                labels.append(d)
        ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
        sec = ax.secondary_xaxis("bottom")
        sec.set_xticks([si + (len(designs) - 1) * width / 2 for si in range(len(seqs))],
                       [format_seq(s) for s in seqs])
        sec.tick_params(length=0, pad=8 + 5.5 * max(map(len, designs)))
        sec.set_xlabel("sequence length")
        ax.set_ylabel(f"energy relative to {base}")
        ax.set_title(f"{m}: energy by component", fontsize=10)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
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
