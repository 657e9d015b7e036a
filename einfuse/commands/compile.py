"""``einfuse compile SPEC --target triton -o kernel.py`` (or ``--target cutlass -o kernel.cu``): write the
generated kernel and its launcher.

The written module is self-contained apart from einfuse's runtime helpers: it holds the Triton
kernel (each Einsum of the lowered cascade as a comment above its code), the cascade text, and
``attention(q, k, v)``, which builds block tables and launches the kernel.
"""

from __future__ import annotations

import click


def _parse_sizes(items: tuple[str, ...]) -> dict[str, int]:
    from einfuse.cli import parse_sizes

    return parse_sizes(items)


def kernel_source(spec: str, sizes: dict[str, int], tile_order: str, target: str = "triton") -> str:
    """Source of the module ``einfuse compile`` writes for SPEC (a .cu file for ``cutlass``)."""
    import einfuse

    if target == "cutlass":
        from einfuse.codegen.cutlass.emit import emit_source
        from einfuse.frontends import load_spec
        from einfuse.lowering import kernel_plan
        from einfuse.lowering.stages import is_multistage

        c = load_spec(spec)
        if is_multistage(c):
            from einfuse.errors import CodegenError

            raise CodegenError(f"{c.name}: the CUTLASS back end has no kernel for staged plans (several "
                               "score products); use --target triton")
        return emit_source(kernel_plan(c), sizes)
    from einfuse.codegen.triton.runtime import AttentionKernel
    from einfuse.lowering.tile_order import FLAT, SpanBoxes, TileOrder

    compiled = einfuse.compile(spec, sizes=sizes, torch_op=False)
    kern = getattr(compiled, "kernel", None)  # a multi-stage variant (agent, based) has one per stage
    if isinstance(kern, AttentionKernel):
        grid = kern.grid_hint
        if tile_order in ("box", "span") and not grid:
            from einfuse.errors import CodegenError

            raise CodegenError(f"{compiled.name}: --tile-order {tile_order} needs a token grid "
                               "(neighbourhood specs)")
        order = TileOrder(tuple(grid)) if grid and tile_order != "flat" else FLAT
        # the file holds one layout; its launcher generates another if a call picks it
        return kern.source(order, SpanBoxes(tuple(grid)) if tile_order == "span" else None)
    from einfuse.ir.printer import format_cascade

    # another generator (linear attention) or several stages: their source plus a launcher that rebuilds
    # the variant from the cascade (extra inputs of a multi-stage variant go as keywords, e.g. AG=...)
    return (compiled.source.rstrip() + "\n\n\nCASCADE_TEXT = r\"\"\"\n" + format_cascade(compiled.cascade)
            + "\"\"\"\n\n\ndef attention(q, k, v, **runtime):\n"
            + "    \"\"\"Run the variant on (B, H, N, D) tensors (rebuilt from CASCADE_TEXT by einfuse).\"\"\"\n"
            + "    import einfuse\n\n"
            + "    return einfuse.compile(einfuse.parse_cascade(CASCADE_TEXT), torch_op=False)(q, k, v, **runtime)\n")


def register(cli: click.Group) -> None:
    @cli.command("compile")
    @click.argument("spec")
    @click.option("--target", type=click.Choice(["triton", "cutlass"]), default="triton", show_default=True,
                  help="code generator")
    @click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
                  help="write the kernel module to this file (default: print it)")
    @click.option("--size", "sizes", multiple=True, help="bind a cascade param, NAME=VALUE (e.g. X1=64)")
    @click.option("--tile-order", type=click.Choice(["auto", "flat", "box", "span"]), default="auto",
                  show_default=True, help="tiles as contiguous runs or boxes of the token grid "
                  "(span: key boxes laid over each query tile's key span)")
    def compile_cmd(spec: str, target: str, output: str | None, sizes: tuple[str, ...], tile_order: str) -> None:
        """Generate the kernel for SPEC (with a launcher, attention(q, k, v)).

        \b
        einfuse compile causal                        # print the generated Triton module
        einfuse compile na2d:shape=32x32,kernel=7 -o na2d_kernel.py
        einfuse compile agent -o agent_kernel.py      # then agent_kernel.attention(q, k, v, AG=agents)
        einfuse compile causal --target cutlass -o causal.cu"""
        source = kernel_source(spec, _parse_sizes(sizes), tile_order, target)
        if output is None:
            click.echo(source, nl=False)
            return
        from pathlib import Path

        from einfuse.codegen.triton.loader import write_atomic
        from einfuse.frontends import load_spec

        write_atomic(Path(output), source)
        extra = "".join(f", {name}=..." for name in load_spec(spec).inputs[3:])  # agent: AG=...
        how = ("nvcc -std=c++20 -arch=sm_90a -I<cutlass include> -c it, or load it as a torch extension with "
               "-DEINFUSE_TORCH_EXTENSION" if target == "cutlass" else f"import it and call attention(q, k, v{extra})")
        click.echo(f"wrote {output} ({len(source.splitlines())} lines, target {target}); {how}")
