"""``einfuse explore``: design-space sweeps of architecture parameters x variants x lengths."""

from __future__ import annotations

import os
import shlex

import click

from einfuse.errors import SimulatorError


def register(cli: click.Group) -> None:
    cli.add_command(explore_cmd)


@click.command("explore")
@click.argument("specs", nargs=-1, required=True)
@click.option("--arch", default="fusemax", show_default=True, help="the design to vary: built-in name or YAML path")
@click.option("--vary", "vary", required=True,
              help="parameters: pe=64..512 (powers of two), buffer=4M..64M, dram=200G..2T (doubling, end "
                   "included), lists pe=64,128; also rows, cols, lanes, rf, clock")
@click.option("--model", default="bert-base", show_default=True, help="comma-separated models")
@click.option("--seq", default="1K,16K,64K", show_default=True, help="comma-separated sequence lengths")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--size", "sizes", multiple=True, help="extra size NAME=VALUE a variant needs")
@click.option("--out", "out", default="explore-out", show_default=True, type=click.Path(file_okay=False),
              help="folder of results.jsonl (the table a rerun resumes from), report.md, table.csv, PNGs")
@click.option("--workers", type=int, default=None, help="local processes  [default: every core]")
@click.option("--cluster", default=None, help="Dask scheduler address, e.g. tcp://host:8786 (runs there instead)")
@click.option("--max-area", type=float, default=None, help="best design with area <= this (mm2)")
@click.option("--max-energy", type=float, default=None, help="best design with energy <= this (mJ per layer)")
@click.option("--max-latency", type=float, default=None, help="best design with latency <= this (ms per layer)")
@click.option("--minimize", type=click.Choice(["latency", "energy", "area", "edp"]), default="latency",
              show_default=True, help="what the best design minimises")
@click.option("--area-table", default=None, type=click.Path(dir_okay=False),
              help="component areas (YAML like einfuse/simulator/area_45nm.yaml)  [default: the 45 nm table]")
@click.option("--no-fast-forward", is_flag=True,
              help="simulate every tile (slow at long lengths): checks points the report marks approximate")
@click.option("--no-plots", is_flag=True, help="skip the PNGs")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def explore_cmd(specs: tuple[str, ...], arch: str, vary: str, model: str, seq: str, batch: int,
                sizes: tuple[str, ...], out: str, workers: int | None, cluster: str | None,
                max_area: float | None, max_energy: float | None, max_latency: float | None, minimize: str,
                area_table: str | None, no_fast_forward: bool, no_plots: bool, no_progress: bool) -> None:
    """Sweep architecture parameters of a design for the variants SPECS at several lengths.

    Each point is simulated once and appended to OUT/results.jsonl; running the same command again
    simulates only the points missing there (resume after an interrupt, or widen a sweep).

    \b
    einfuse explore softmax --arch fusemax --vary pe=64..512,buffer=4M..64M,dram=200G..2T --seq 1K,16K,64K
    einfuse explore softmax causal --vary pe=128,256 --max-area 250 --out dse/
    einfuse explore softmax --vary buffer=4M..64M --cluster tcp://scheduler:8786
    """
    from rich.console import Console

    from einfuse.cli import check_size_names, parse_sizes
    from einfuse.simulator.area import load_area_table
    from einfuse.simulator.dse_report import FRONT_TOL, groups, num, params_text, write_dse_report
    from einfuse.simulator.explore import ResultTable, as_dict, explore, make_points
    from einfuse.simulator.pareto import best, best_across
    from einfuse.simulator.vary import grid, parse_vary
    from einfuse.simulator.workload import format_seq, get_model, parse_seq

    if batch < 1:
        raise SimulatorError(f"--batch must be >= 1, got {batch}")
    if workers is not None and workers < 1:
        raise SimulatorError(f"--workers must be >= 1, got {workers}")
    limits = {k: v for k, v in (("max_area", max_area), ("max_energy", max_energy),
                                ("max_latency", max_latency)) if v is not None}
    for k, v in limits.items():
        if v <= 0:
            raise SimulatorError(f"--{k.replace('_', '-')} must be > 0, got {v:g}")
    models = [get_model(m.strip()).name for m in model.split(",") if m.strip()]
    if not models:
        raise SimulatorError("--model: give at least one model (bert-base, trxl, t5, xlm)")
    extra = parse_sizes(sizes)
    from einfuse.frontends import load_spec

    for s in specs:
        check_size_names(load_spec(s), extra)
    table_area = load_area_table(area_table)
    points = make_points(list(specs), arch, grid(parse_vary(vary)), models, parse_seq(seq), batch, extra,
                         area_table, fast_forward=not no_fast_forward, resolve=load_spec)
    table = ResultTable(os.path.join(out, "results.jsonl"))
    console = Console(width=160, stderr=True)
    console.print(f"explore: {len(points)} points -> {table.path}")
    rows, stats = explore(points, table, workers=workers, cluster=cluster, progress=not no_progress)
    if table.foreign:
        console.print(f"note: {table.path} holds {table.foreign} line(s) that are not rows of this tool; "
                      "they were left as they are")
    command = " ".join(["einfuse explore", *map(shlex.quote, specs), "--arch", shlex.quote(arch), "--vary",
                        shlex.quote(vary), "--model", shlex.quote(model), "--seq", shlex.quote(seq)]
                       + [f"--{k.replace('_', '-')} {v:g}" for k, v in limits.items()]
                       + ([f"--minimize {minimize}"] if minimize != "latency" else [])
                       + (["--no-fast-forward"] if no_fast_forward else []))
    paths = write_dse_report(rows, out, title=f"Design-space sweep of {arch}: {', '.join(specs)}",
                             command=command,
                             area=table_area, limits=limits, minimize=minimize, stats=as_dict(stats),
                             plots=not no_plots)
    ok = [r for r in rows if "error" not in r]
    for (spec, m, n), grp in groups(ok).items():
        b = best(grp, minimize, limits, rel_tol=FRONT_TOL)
        head = f"{spec} {m} {format_seq(n)}:"
        click.echo(f"{head} best by {minimize}" + (f" within limits: {params_text(b)}, {num(1e3 * b['latency_s'])} ms, "
                                                   f"{num(b['energy_pj'] / 1e9)} mJ, {b['area_mm2']:.1f} mm2 "
                                                   f"({b['limit']})" if b else ": no design meets the limits"))
    across = best_across(ok, minimize, limits) if len(groups(ok)) > 1 else None
    if across is not None:
        r = next(x for x in ok if x["design"] == across[0])
        click.echo(f"one design for every workload (geometric mean of {minimize}): {params_text(r)}, "
                   f"{r['area_mm2']:.1f} mm2")
    failed = len(rows) - len(ok)
    click.echo(f"{stats.points} points: {stats.computed} simulated, {stats.reused} reused, {failed} failed, "
               f"{stats.wall_s:.1f} s on {stats.where}; wrote " + ", ".join(paths))
