"""``einfuse simulate``: cycle-level estimates of a variant on spatial-array accelerator designs."""

from __future__ import annotations

import json

import click

from einfuse.errors import SimulatorError


def register(cli: click.Group) -> None:
    cli.add_command(simulate_cmd)


@click.command("simulate")
@click.argument("spec", required=False)
@click.option("--arch", "arch", default="fusemax", show_default=True,
              help="built-in design (fusemax, flat, unfused, fusemax-cascade, fusemax-arch, systolic) or a YAML path")
@click.option("--compare", default=None, help="comma-separated designs to compare (replaces --arch)")
@click.option("--model", default="bert-base", show_default=True,
              help="comma-separated models: bert-base, trxl, t5, xlm")
@click.option("--seq", default=None, help="comma-separated sequence lengths, e.g. 1K,4K,1M  [default: 1K; the "
              "grid's token count for neighbourhood specs]")
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--size", "sizes", multiple=True, help="extra size NAME=VALUE a variant needs")
@click.option("--report", "report", default=None, type=click.Path(file_okay=False),
              help="write results.json, report.md and PNG plots into this folder")
@click.option("--json", "as_json", is_flag=True, help="print the result rows as JSON instead of a table")
@click.option("--why", is_flag=True, help="print which unit stalls on what for every result")
@click.option("--per-einsum", is_flag=True, help="print a per-Einsum table for every result")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option("--list", "list_", is_flag=True, help="list the built-in designs and models")
def simulate_cmd(spec: str | None, arch: str, compare: str | None, model: str, seq: str | None, batch: int,
                 sizes: tuple[str, ...], report: str | None, as_json: bool, why: bool, per_einsum: bool,
                 no_progress: bool, list_: bool) -> None:
    """Simulate SPEC (a built-in variant, .py or cascade file) on accelerator designs.

    \b
    einfuse simulate --list
    einfuse simulate softmax --arch fusemax --model bert-base --seq 1K,4K,16K,64K,256K,1M --report out/
    einfuse simulate causal --compare unfused,flat,fusemax --seq 1K,64K
    """
    from rich.console import Console

    from einfuse.simulator.arch import builtin_arch_names
    from einfuse.simulator.workload import MODELS, parse_seq

    console = Console(width=160)
    if list_:
        console.print("designs: " + ", ".join(builtin_arch_names()))
        for m in MODELS.values():
            console.print(f"model {m.name}: {m.heads} heads, head dim {m.head_dim}, hidden {m.hidden}")
        return
    if not spec:
        raise SimulatorError("give a SPEC to simulate (e.g. softmax, causal, sliding_window:window=256)")
    from einfuse.frontends import load_spec
    from einfuse.simulator.report import einsum_table, table, write_report
    from einfuse.simulator.sweep import sweep

    designs = [d.strip() for d in (compare or arch).split(",") if d.strip()]
    if not designs:
        raise SimulatorError("--compare needs at least one design")
    models = [m.strip() for m in model.split(",") if m.strip()]
    if not models:
        raise SimulatorError(f"--model {model!r}: give at least one model (bert-base, trxl, t5, xlm)")
    from einfuse.cli import check_size_names, parse_sizes

    extra = parse_sizes(sizes)
    if batch < 1:
        raise SimulatorError(f"--batch must be >= 1, got {batch}")
    cascade = load_spec(spec)
    check_size_names(cascade, extra)
    from einfuse.ir.grid import grid_tokens

    seqs = parse_seq(seq) if seq is not None else [grid_tokens(cascade, extra) or 1024]
    results = sweep(cascade, designs, models, seqs, batch=batch, progress=not no_progress,
                    sizes=extra)
    rows = [r.row() for r in results]
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=float))
    else:
        console.print(table(rows, title=f"{cascade.name}: simulated attention layer (batch {batch})"))
        for r, row in zip(results, rows):
            if per_einsum:
                console.print(einsum_table(row))
            if why:
                console.print(f"[bold]{r.design} {r.model} {r.seq}[/bold]: {r.explain()}")
    if report:
        paths = write_report(results, report)
        if not as_json:
            console.print("wrote " + ", ".join(paths))
