"""The ``einfuse`` command line.

SPEC everywhere is a built-in name with options (``na2d:kernel=7,dilation=2``), a ``.py`` file that
defines ``cascade``, or a text file in the cascade syntax. Bad input prints one line and exits 2.

Heavy modules (sympy, NumPy, torch) are imported inside the commands that need them, so ``--help``
and ``list`` answer at once.
"""

from __future__ import annotations

import importlib
import sys
import time

import click

from einfuse.catalog import SPEC_SYNTAX
from einfuse.commands import COMMAND_MODULES
from einfuse.errors import EinfuseError, SpecError

_HELP = f"""einfuse: attention variants as Einsum cascades -> fused GPU kernels and accelerator estimates.

\b
{SPEC_SYNTAX}

\b
Examples:
  einfuse list                                   built-in variants, their options and defaults
  einfuse show sliding_window:window=128         the cascade in text form
  einfuse run causal --shape 1,8,512,64          float64 reference run on random inputs
  einfuse compile na2d:shape=32x32,kernel=7 -o kernel.py
  einfuse simulate softmax --compare unfused,flat,fusemax --seq 1K,64K
  einfuse demo                                   compile, check and simulate causal attention

Bad input prints one line and exits with code 2. `einfuse COMMAND --help` explains a command.
"""


@click.group(help=_HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="einfuse")
def cli() -> None:
    pass


@cli.command("list")
def list_cmd() -> None:
    """List the built-in variants, what each option means and its default.

    \b
    einfuse list"""
    from einfuse.catalog import format_catalog

    click.echo(format_catalog(), nl=False)


@cli.command()
@click.argument("spec")
@click.option("--dot", is_flag=True, help="print Graphviz source of the dataflow graph instead")
def show(spec: str, dot: bool) -> None:
    """Print the cascade of SPEC in text form (or as a Graphviz graph).

    \b
    einfuse show alibi
    einfuse show na2d:shape=8x8,kernel=3 --dot | dot -Tpng > na2d.png"""
    from einfuse.frontends import load_spec
    from einfuse.ir.printer import format_cascade, to_dot

    c = load_spec(spec)
    click.echo(to_dot(c) if dot else format_cascade(c), nl=False)


FREE_SIZE_DEFAULT = 8
MAX_REFERENCE_SCORES = 2**28  # 2 GiB per float64 score tensor: beyond that run/check/demo refuse


@cli.command()
@click.argument("spec")
@click.option("--size", "sizes", multiple=True,
              help=f"extra size NAME=VALUE (e.g. N=16 agent tokens); others default to {FREE_SIZE_DEFAULT}")
def check(spec: str, sizes: tuple[str, ...]) -> None:
    """Validate SPEC, round-trip its text form and run it once on small random inputs.

    \b
    einfuse check causal
    einfuse check agent --size N=4
    einfuse check my_variant.py"""
    import numpy as np

    from einfuse.codegen.reference import run_cascade
    from einfuse.frontends import load_spec
    from einfuse.ir.parser import parse_cascade
    from einfuse.ir.printer import format_cascade

    c = load_spec(spec)
    text = format_cascade(c)
    if format_cascade(parse_cascade(text)) != text:
        raise SpecError(f"{c.name}: text form does not round-trip (please report this)")
    inputs, bound = random_inputs(c, 1, 2, _grid_or(c, 19), 16, None, parse_sizes(sizes), seed=0,
                                  free_default=FREE_SIZE_DEFAULT)
    out = run_cascade(c, inputs, bound)
    bad = [k for k, v in out.items() if not np.isfinite(v).all()]
    if bad:
        raise SpecError(f"{c.name}: output {bad[0]} has non-finite values on random inputs")
    click.echo(f"ok: {c.name}: {len(c.einsums)} Einsums, inputs {', '.join(c.inputs)}, "
               f"outputs {', '.join(c.outputs)}; text form round-trips; reference run finite{_other_sizes(c, bound)}")


DEFAULT_RUN_SHAPE = "1,2,64,32"
DEFAULT_DEMO_SHAPE = "1,2,77,64"


def _grid_or(c, n: int) -> int:
    """The token count of the spec's grid (neighbourhood variants), else ``n``."""
    from einfuse.ir.grid import grid_tokens

    return grid_tokens(c) or n


def shape_for(c, text: str | None, default: str) -> tuple[int, int, int, int]:
    """``--shape`` parsed; without one, ``default`` with N = the grid's token count if the spec has a grid."""
    if text is not None:
        return parse_shape(text)
    B, H, N, D = parse_shape(default)
    return B, H, _grid_or(c, N), D


def _other_sizes(c, bound: dict[str, int]) -> str:
    """`` (other sizes: N=8)`` for sizes beyond P, M, E, F and the cascade's params, else ''."""
    other = [f"{k}={v}" for k, v in bound.items() if k not in ("P", "M", "E", "F") and k not in c.params]
    return f" (other sizes: {', '.join(other)})" if other else ""


def parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        parts = [int(x) for x in text.replace("x", ",").split(",")]
    except ValueError:
        raise SpecError(f"--shape {text!r}: expected B,H,N,D integers") from None
    if len(parts) != 4 or min(parts) < 1:
        raise SpecError(f"--shape {text!r}: expected four positive integers B,H,N,D")
    return parts[0], parts[1], parts[2], parts[3]


def parse_sizes(items: tuple[str, ...]) -> dict[str, int]:
    sizes = {}
    for item in items:
        k, eq, v = item.partition("=")
        k = k.strip()
        if not eq or not v.strip().isdigit() or not k.isidentifier() or int(v) < 1:
            raise SpecError(f"--size {item!r}: expected NAME=INTEGER >= 1, e.g. --size N=16")
        if k in sizes:
            raise SpecError(f"--size {k} is given twice")
        sizes[k] = int(v)
    return sizes


def check_size_names(c, sizes: dict[str, int]) -> None:
    """--size names must be ranks or params of the cascade (a typo would otherwise do nothing)."""
    unknown = [k for k in sizes if k not in c.ranks and k not in c.params and k not in ("B", "H")]
    if unknown:
        names = ", ".join([*c.ranks, *c.params])
        raise SpecError(f"--size {unknown[0]}: {c.name} has no rank or param {unknown[0]} (it has {names})")


def random_inputs(c, B: int, H: int, N: int, D: int, kv_len: int | None, extra: dict[str, int],
                  seed: int, kv_heads: int | None = None, free_default: int | None = None):
    """Random float64 inputs for a cascade: P = N queries, M = kv_len (or N) keys, E = F = D; other
    input extents from ``extra``, the cascade's params, or ``free_default`` (else an error)."""
    import numpy as np
    import sympy

    from einfuse.ir.grid import check_grid

    if kv_len is not None and kv_len < 1:
        raise SpecError(f"--kv-len {kv_len}: the key/value length must be >= 1")
    check_size_names(c, extra)
    check_grid(c, N, kv_len or N, extra, "--shape N and --kv-len")
    scores = B * H * N * (kv_len or N)
    if scores > MAX_REFERENCE_SCORES:
        raise SpecError(f"{c.name}: the float64 reference holds every (query, key) score: B*H*N*N_kv = "
                        f"{scores:,} of them, {scores * 8 / 2**30:.0f} GiB a tensor; use a smaller --shape "
                        f"(at most {MAX_REFERENCE_SCORES:,} scores){' or grid' if c.attrs.get('neighborhood') else ''}")

    sizes = {"P": N, "M": kv_len or N, "E": D, "F": D}
    sizes.update({k: int(v) for k, v in c.params.items() if float(v).is_integer()})
    sizes.update(extra)
    rng = np.random.default_rng(seed)
    inputs = {}
    for name in c.inputs:
        shape = []
        for r in c.tensors[name].ranks:
            ext = c.ranks[r].extent.subs({sympy.Symbol(k, integer=True, positive=True): v
                                          for k, v in sizes.items()})
            if ext.free_symbols and free_default is not None:
                sizes.update({str(s): free_default for s in ext.free_symbols})
                ext = ext.subs({s: free_default for s in ext.free_symbols})
            if ext.free_symbols:
                raise SpecError(f"input {name}: size of rank {r} unknown; give it with --size {r}=...")
            shape.append(int(ext))
        heads = kv_heads if (kv_heads and name != "Q" and "M" in c.tensors[name].ranks) else H
        inputs[name] = rng.standard_normal((B, heads, *shape))
    if c.captures:  # captured tensors declared without a value (a text-form spec): random ones
        from einfuse.lowering.plan_check import check_captures

        inputs.update(check_captures(c, rng, unbound_only=True))
    return inputs, {k: v for k, v in sizes.items()}


@cli.command()
@click.argument("spec")
@click.option("--shape", default=None, help=f"B,H,N,D  [default: {DEFAULT_RUN_SHAPE}; N = the grid's token "
              "count for neighbourhood specs]")
@click.option("--kv-len", type=int, default=None, help="key/value length (cross-attention); default N")
@click.option("--kv-heads", type=int, default=None, help="K/V heads (GQA/MQA); default H")
@click.option("--size", "sizes", multiple=True, help="extra size NAME=VALUE (e.g. N=16 agent tokens)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="random seed (>= 0)")
def run(spec: str, shape: str | None, kv_len: int | None, kv_heads: int | None, sizes: tuple[str, ...],
        seed: int) -> None:
    """Run SPEC with the float64 reference executor on random inputs and summarise the outputs.

    \b
    einfuse run causal --shape 2,4,128,64
    einfuse run softmax --shape 1,8,16,64 --kv-len 1000 --kv-heads 2
    einfuse run agent --size N=16"""
    import numpy as np

    from einfuse.codegen.reference import run_cascade
    from einfuse.frontends import load_spec

    c = load_spec(spec)
    B, H, N, D = shape_for(c, shape, DEFAULT_RUN_SHAPE)
    if kv_heads is not None and (kv_heads < 1 or H % kv_heads):
        raise SpecError(f"--kv-heads {kv_heads} must divide the {H} query heads")
    inputs, sz = random_inputs(c, B, H, N, D, kv_len, parse_sizes(sizes), seed, kv_heads)
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):  # overflow to inf/NaN is reported in the summary below
        out = run_cascade(c, inputs, sz)
    dt = time.perf_counter() - t0
    click.echo(f"{c.name}: reference (float64) in {dt * 1e3:.1f} ms")
    for name, arr in out.items():
        zero_rows = int(np.all(arr == 0, axis=-1).sum()) if arr.ndim > 2 else 0
        click.echo(f"  {name}{list(arr.shape)}: mean {arr.mean():+.6f} std {arr.std():.6f} "
                   f"|max| {np.abs(arr).max():.6f} nan {int(np.isnan(arr).sum())} all-zero rows {zero_rows}")


@cli.command()
@click.argument("spec", default="causal:head_dim=64")
@click.option("--shape", default=None, help=f"B,H,N,D for the kernel check  [default: {DEFAULT_DEMO_SHAPE}; N = "
              "the grid's token count for neighbourhood specs]")
@click.option("--arch", default="fusemax", show_default=True, help="accelerator design to simulate")
@click.option("--model", default="bert-base", show_default=True, help="workload for the simulation")
@click.option("--seq", default=None, help="sequence lengths to simulate  [default: 1K,16K; the grid's token "
              "count for neighbourhood specs]")
@click.option("--size", "sizes", multiple=True,
              help=f"extra size NAME=VALUE (e.g. N=16 agent tokens); others default to {FREE_SIZE_DEFAULT}")
def demo(spec: str, shape: str | None, arch: str, model: str, seq: str | None, sizes: tuple[str, ...]) -> None:
    """The main job on one variant: lower it, compile it to Triton, check the kernel against the
    float64 reference (in the Triton interpreter when there is no GPU), and simulate it.

    \b
    einfuse demo                                  # causal attention, head dim 64
    einfuse demo sliding_window:window=16 --shape 1,2,45,32 --seq 1K
    einfuse demo agent --size N=4"""
    import os

    import numpy as np

    from einfuse.frontends import load_spec

    c = load_spec(spec)
    click.echo(f"[1/3] {c.name}: {len(c.einsums)} Einsums as written")
    try:
        from einfuse.passes.pass_analysis import count_passes

        click.echo(f"      {count_passes(c, 'M').passes}-pass over keys as written")
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        raise SpecError("the kernel check needs torch: pip install torch") from None
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from einfuse.api import compile as compile_variant
    from einfuse.codegen.reference import run_cascade

    fn = compile_variant(c)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    B, H, N, D = shape_for(c, shape, DEFAULT_DEMO_SHAPE)
    inputs, bound = random_inputs(c, B, H, N, D, None, parse_sizes(sizes), seed=1, free_default=FREE_SIZE_DEFAULT)
    t = {k: torch.tensor(v, dtype=torch.float32, device=device) for k, v in inputs.items()}
    qkv = [n for n in ("Q", "K", "V") if n in c.inputs]
    qkv = qkv if len(qkv) == 3 else list(c.inputs[:3])
    out = fn(*(t[n] for n in qkv), **{n: t[n] for n in c.inputs if n not in qkv}).double().cpu().numpy()
    ref = run_cascade(c, inputs, bound)[c.outputs[0]]
    err = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))
    mode = "GPU" if device == "cuda" else "Triton interpreter (CPU)"
    lowered = getattr(fn, "lowered", c)
    stages = lowered if isinstance(lowered, tuple) else (lowered,)  # multi-stage: one cascade per stage
    passes_after = ""
    try:
        from einfuse.passes.pass_analysis import count_passes

        counts = [f"{count_passes(s, 'M').passes}-pass" for s in stages]
        passes_after = ", " + (counts[0] if len(counts) == 1 else f"stages {', '.join(counts)}")
    except (ImportError, EinfuseError):
        pass
    size_note = _other_sizes(c, bound)
    click.echo(f"[2/3] compiled to Triton ({sum(len(s.einsums) for s in stages)} Einsums after lowering"
               f"{' in ' + str(len(stages)) + ' stages' if len(stages) > 1 else ''}{passes_after}); ran on {mode} "
               f"at B,H,N,D={B},{H},{N},{D}{size_note}: rel err vs float64 reference {err:.2e}")
    if not err < 1e-3:
        raise SpecError(f"{c.name}: generated kernel differs from the reference (rel err {err:.2e})")
    from einfuse.simulator import parse_seq, simulate, workload

    tokens = _grid_or(c, 0)
    seqs = parse_seq(seq) if seq is not None else [tokens] if tokens else [1024, 16384]
    for n in seqs:
        r = simulate(c, arch, workload(model, n, sizes={k: v for k, v in bound.items() if k not in "PMEF"}))
        click.echo(f"[3/3] simulated on {r.design}, {r.model} seq {n}: {r.cycles:,} cycles "
                   f"({r.latency_s * 1e3:.3f} ms), 2-D util {r.util_2d:.1%}, 1-D util {r.util_1d:.1%}, "
                   f"DRAM {r.dram_bytes / 2**20:.1f} MiB, energy {r.energy_pj / 1e9:.2f} mJ")


def _register_command_modules() -> None:
    for name in COMMAND_MODULES:
        modname = f"einfuse.commands.{name}"
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                continue  # that command is not built yet
            raise
        module.register(cli)


_register_command_modules()


def _line(exc: object) -> str:
    """An error message on one line (messages quoting user input may hold newlines)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad input -> one line on stderr, exit code 2; anything else is a bug in
    einfuse -> one line asking for a report, exit code 1 (EINFUSE_TRACEBACK=1 shows the traceback)."""
    import os

    try:
        cli.main(args=argv, prog_name="einfuse", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.exceptions.NoArgsIsHelpError as exc:  # `einfuse` alone: the help text
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # a bad option or argument: one line, with where to find help
        ctx = exc.ctx
        where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        click.echo(f"error: {_line(exc.format_message())}{where}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except EinfuseError as exc:
        click.echo(f"error: {_line(exc)}", err=True)
        sys.exit(2)
    except OSError as exc:  # a file that cannot be read or written (-o, --report, --json)
        click.echo(f"error: {_line(exc)}", err=True)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("EINFUSE_TRACEBACK"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {_line(exc)} (a bug in einfuse: please report "
                   "it with the command; EINFUSE_TRACEBACK=1 shows the traceback)", err=True)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
