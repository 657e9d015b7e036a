"""Sweeps over designs, models and sequence lengths, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from einfuse.ir.cascade import Cascade
from einfuse.simulator.arch import Arch, load_arch
from einfuse.simulator.simulate import SimResult, prepare, simulate
from einfuse.simulator.workload import DEFAULT_BATCH, Workload, format_seq, workload


def sweep(cascade: Cascade, designs: Sequence[str | Arch], models: Sequence[str] = ("bert-base",),
          seqs: Iterable[int] = (1024,), batch: int = DEFAULT_BATCH, progress: bool = True,
          sizes: dict[str, int] | None = None, workloads: Sequence[Workload] | None = None) -> list[SimResult]:
    """Simulate ``cascade`` on every design for every (model, sequence length) pair.

    Each design lowers the cascade its own way (FuseMax: the 1-pass cascade), once per design.
    ``workloads`` replaces the (model, seq) grid with explicit shapes.
    """
    from einfuse.errors import SimulatorError
    from einfuse.ir.grid import check_grid

    archs = [load_arch(d) if isinstance(d, str) else d for d in designs]
    wls = list(workloads) if workloads is not None else [
        workload(m, s, batch, sizes) for m in models for s in seqs]
    for w in wls:  # before any lowering: a grid that does not fit is the first thing to say
        check_grid(cascade, w.seq, w.kv_seq or w.seq, w.sizes, "the sequence length (--seq)", SimulatorError)
    lowered = {a.name: prepare(cascade, a) for a in archs}
    jobs = [(a, w) for w in wls for a in archs]
    results: list[SimResult] = []
    if not progress or len(jobs) <= 1:
        return [simulate(lowered[a.name], a, w, lower=False) for a, w in jobs]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]simulate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), transient=True) as bar:
        task = bar.add_task("", total=len(jobs))
        for a, w in jobs:
            bar.update(task, description=f"{a.name} {w.model} {format_seq(w.seq)}")
            results.append(simulate(lowered[a.name], a, w, lower=False))
            bar.advance(task)
    return results
