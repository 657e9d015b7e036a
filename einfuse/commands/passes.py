"""``einfuse passes SPEC``: pass analysis, lowering pipelines and block sparsity from the command line.

    einfuse passes causal                         # passes over M of each Einsum, with the reason
    einfuse passes alibi --print-after-all        # lower (auto pipeline), print every step and the kernel plan
    einfuse passes decode --pipeline "split_kv[splits=4],fuse[tile=32]" --verify
    einfuse passes na2d:shape=64x64,kernel=7 --sparsity 4096 --tiles 128x128
    einfuse passes --builtins                     # pass counts of every built-in before/after lowering
    einfuse passes softcap --backward             # the backward plan: ds/dx, tables, kernels
"""

from __future__ import annotations

import click


def _ranks(c, requested: tuple[str, ...]) -> list[str]:
    """Ranks to analyse: those asked for, else M and every rank a softmax normalises over."""
    if requested:
        return list(requested)
    from einfuse.passes.defer_division import defer_division_all
    from einfuse.passes.softmax_match import softmax_stages

    stages, _ = softmax_stages(defer_division_all(c)[0])
    keys = [c.rank_of_index(v).name for s in stages for v in s.key_vars]
    out = ["M"] if "M" in c.ranks else []
    return out + [r for r in dict.fromkeys(keys) if r not in out] or list(c.ranks)[:1]


def _summary_line(c, rank: str) -> str:
    from einfuse.errors import PassError
    from einfuse.passes.pass_analysis import count_passes

    try:
        return str(count_passes(c, rank)).splitlines()[0]
    except PassError as exc:
        return f"{c.name}: {exc}"


def _builtins_table() -> str:
    import einfuse
    from einfuse.errors import PassError
    from einfuse.passes import count_passes, defer_division, lower

    rows = [("variant", "rank", "naive", "deferred", "lowered", "pipeline")]
    for name in sorted(einfuse.BUILTINS):
        c = einfuse.load_spec(name)
        try:
            deferred = defer_division(c)
        except PassError:
            deferred = None
        low = lower(c)
        for rank in _ranks(c, ()):
            rows.append((name, rank, str(count_passes(c, rank).passes),
                         str(count_passes(deferred, rank).passes) if deferred else "-",
                         str(count_passes(low.cascade, rank).passes), ",".join(low.passes_run) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def _plan_text(c, full: bool) -> str:
    """The kernel plan the back ends would print (in full), or one line naming the lowering chosen."""
    from einfuse.errors import EinfuseError
    from einfuse.lowering import format_plan, kernel_plan

    try:
        plan = kernel_plan(c)
    except EinfuseError as exc:
        return f"kernel plan: none ({exc})"
    if full:
        return format_plan(plan)
    stages = f", {len(plan.stages)} stages ({', '.join(s.family for s in plan.stages)})" if plan.stages else ""
    after = ""
    if not plan.stages and "M" in plan.cascade.ranks:
        try:
            from einfuse.passes.pass_analysis import count_passes

            after = f", {count_passes(plan.cascade, 'M').passes}-pass over M"
        except EinfuseError:
            pass
    return (f"kernel plan: {plan.family}{stages}{after}; {plan.lowering}. "
            "--print-after-all shows the plan in full")


def _backward_text(c) -> str:
    """The backward plan (score derivative, tables, kernels), or one line saying why there is none."""
    from einfuse.errors import EinfuseError
    from einfuse.lowering import kernel_plan
    from einfuse.lowering.backward import backward_plan, format_backward_plan

    try:
        return format_backward_plan(backward_plan(kernel_plan(c)))
    except EinfuseError as exc:
        return f"backward plan: none ({exc})"


def _tiles(text: str) -> tuple[int, int]:
    from einfuse.errors import SpecError

    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise SpecError(f"--tiles {text!r}: expected QUERYxKEY tile sizes, e.g. 128x64")
    return int(parts[0]), int(parts[1])


def register(cli: click.Group) -> None:
    @cli.command("passes")
    @click.argument("spec", required=False)
    @click.option("--rank", "ranks", multiple=True,
                  help="rank to analyse (repeatable; default M and the softmax key ranks)")
    @click.option("--pipeline", default=None,
                  help='passes to run, e.g. "split_kv[splits=4],fuse[tile=32]" (default: automatic)')
    @click.option("--print-after-all", is_flag=True, help="print the cascade after every pass")
    @click.option("--tile", type=int, default=None, help="key tile size for fuse (default 64)")
    @click.option("--verify", is_flag=True, help="check every step against the reference on random inputs")
    @click.option("--sparsity", type=int, default=None, help="classify tiles for P = M = this many tokens")
    @click.option("--tiles", default="64x64", show_default=True, help="query x key tile sizes for --sparsity")
    @click.option("--size", "sizes", multiple=True,
                  help="extra size NAME=VALUE (e.g. H=8 for per-head masks)")
    @click.option("--builtins", is_flag=True,
                  help="table of pass counts of every built-in, before/after lowering")
    @click.option("--backward", is_flag=True, help="print the backward plan (score derivative, kernels)")
    def passes_cmd(spec: str | None, ranks: tuple[str, ...], pipeline: str | None, print_after_all: bool,
                   tile: int | None, verify: bool, sparsity: int | None, tiles: str,
                   sizes: tuple[str, ...], builtins: bool, backward: bool) -> None:
        """Pass analysis of SPEC (FuseMax lower bound per rank, reason per Einsum) and its lowering.

        \b
        einfuse passes causal
        einfuse passes alibi --print-after-all
        einfuse passes softcap --backward
        einfuse passes na2d:shape=64x64,kernel=7 --sparsity 4096 --tiles 128x128"""
        from einfuse.cli import parse_sizes
        from einfuse.errors import SpecError
        from einfuse.frontends import load_spec
        from einfuse.passes import classify_tiles, count_passes, lower
        from einfuse.passes.verify import default_sizes

        if builtins:
            click.echo(_builtins_table())
            if spec is None:
                return
        if spec is None:
            raise SpecError("einfuse passes: give a SPEC (e.g. causal) or --builtins")
        c = load_spec(spec)
        extra = parse_sizes(sizes)
        analysed = _ranks(c, ranks)
        for rank in analysed:
            click.echo(str(count_passes(c, rank)))
        if pipeline is not None or print_after_all or verify or tile is not None:
            options = {} if tile is None else {"tile": tile}
            check = {**default_sizes(c), **extra} if verify else None
            result = lower(c, pipeline, verify_sizes=check, **options)
            click.echo("")
            click.echo(result.format(print_after_all))
            for rank in analysed:
                click.echo("after lowering: " + _summary_line(result.cascade, rank))
        click.echo("")
        click.echo(_plan_text(c, print_after_all))
        if backward:
            click.echo("")
            click.echo(_backward_text(c))
        if sparsity is not None:
            tq, tk = _tiles(tiles)
            from einfuse.ir.grid import check_grid

            check_grid(c, sparsity, sparsity, extra, "--sparsity")
            tm = classify_tiles(c, {"P": sparsity, "M": sparsity, **extra}, tq, tk)
            click.echo("")
            click.echo(f"block sparsity: {tm}")
            if tm.kinds.shape[2] <= 64:
                click.echo(tm.render())
