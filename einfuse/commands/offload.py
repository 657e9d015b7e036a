"""``einfuse offload-plan``: Lamina-style estimate of attention offloading for LLM decode."""

from __future__ import annotations

import json
import os

import click

from einfuse.errors import SimulatorError


def register(cli: click.Group) -> None:
    cli.add_command(offload_plan_cmd)


def _counts(text: str | None, default: tuple[int, ...], option: str) -> tuple[int, ...]:
    if text is None:
        return default
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SimulatorError(f"{option} {text!r}: give comma-separated device counts, e.g. 2 or 1,2,4") from None
    if not counts or min(counts) < 1:
        raise SimulatorError(f"{option} {text!r}: device counts must be >= 1")
    return counts


def _prices(items: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip().lower()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SimulatorError(f"--price {item!r}: write NAME=DOLLARS_PER_HOUR, e.g. h20=1.5")
    return out


@click.command("offload-plan")
@click.option("--model", default="llama-70b", show_default=True, help="llama-8b, llama-70b, llama-405b")
@click.option("--context", default="4K..128K", show_default=True,
              help="context lengths: a doubling range A..B or a list 4K,32K")
@click.option("--devices", default="h100,h20", show_default=True,
              help="COMPUTE,MEMORY device kinds (h100, h200, h20, a100)")
@click.option("--compute-count", default=None, help="compute device counts to try  [default: 1,2,4,8]")
@click.option("--memory-count", default=None, help="memory device counts to try  [default: 1,2,...,64]")
@click.option("--max-batch", type=int, default=1024, show_default=True, help="largest decode batch")
@click.option("--price", "prices", multiple=True, help="override a price, NAME=DOLLARS_PER_HOUR")
@click.option("--serial", is_flag=True, help="no pipelining: offload step = compute + attention + link")
@click.option("--catalogue", default=None, type=click.Path(dir_okay=False), help="a device/model YAML file")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON instead of a table")
@click.option("--plot", "plot_dir", default=None, type=click.Path(file_okay=False),
              help="write results.json and offload.png into this folder")
def offload_plan_cmd(model: str, context: str, devices: str, compute_count: str | None,
                     memory_count: str | None, max_batch: int, prices: tuple[str, ...], serial: bool,
                     catalogue: str | None, as_json: bool, plot_dir: str | None) -> None:
    """Estimate decode throughput per dollar with attention offloaded to memory devices (Lamina)
    against a homogeneous deployment of the compute devices, over context lengths.

    \b
    einfuse offload-plan --model llama-70b --context 4K..128K --devices h100,h20
    einfuse offload-plan --model llama-8b --devices h200,h20 --price h20=2.0 --plot out/
    """
    from einfuse.simulator import offload as om

    cat = catalogue or om._CATALOGUE
    names = [d.strip() for d in devices.split(",") if d.strip()]
    if len(names) != 2:
        raise SimulatorError(f"--devices {devices!r}: give COMPUTE,MEMORY, e.g. h100,h20")
    compute, memory = (om.get_device(n, cat) for n in names)
    price = _prices(prices)
    for n in price:
        om.get_device(n, cat)
    compute = om.with_price(compute, price[compute.name]) if compute.name in price else compute
    memory = om.with_price(memory, price[memory.name]) if memory.name in price else memory
    if max_batch < 1:
        raise SimulatorError(f"--max-batch must be >= 1, got {max_batch}")
    shape = om.get_model(model, cat)
    contexts = om.parse_contexts(context)
    results = om.plan(shape, compute, memory, contexts, max_batch=max_batch, pipelined=not serial,
                      compute_counts=_counts(compute_count, om.DEVICE_COUNTS, "--compute-count"),
                      memory_counts=_counts(memory_count, om.MEMORY_COUNTS, "--memory-count"))
    rows = [{"context": c, "homogeneous": h and h.row(), "offload": o and o.row(),
             "gain": (o.tokens_per_dollar / h.tokens_per_dollar) if h and o else None}
            for c, (h, o) in zip(contexts, results)]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    else:
        from rich.console import Console

        Console(width=200).print(_table(rows, shape.name))
    if plot_dir:
        os.makedirs(plot_dir, exist_ok=True)
        path = os.path.join(plot_dir, "results.json")
        with open(path, "w") as f:
            json.dump({"model": shape.name, "compute": compute.name, "memory": memory.name, "rows": rows}, f,
                      indent=1)
        paths = [path, plot_offload(path, plot_dir)]
        if not as_json:
            click.echo("wrote " + ", ".join(paths))


def _table(rows: list[dict], model: str):
    from rich.table import Table

    from einfuse.simulator.workload import format_seq

    t = Table(title=f"{model} decode: homogeneous vs attention offloaded (roofline, bf16)")
    for col in ("context", "homog. devices", "batch", "tok/s", "tok/$", "offload devices", "batch",
                "non-attn ms", "attn ms", "link ms", "link ok", "tok/s", "tok/$", "tok/$ gain"):
        t.add_column(col, justify="left" if "devices" in col else "right")
    for r in rows:
        h, o = r["homogeneous"], r["offload"]
        left = [h["devices"], str(h["batch"]), f"{h['tokens_per_s']:,.0f}", f"{h['tokens_per_dollar']:,.0f}"] \
            if h else ["does not fit", "-", "-", "-"]
        right = [o["devices"], str(o["batch"]), f"{o['t_nonattention'] * 1e3:.1f}",
                 f"{o['t_attention'] * 1e3:.1f}", f"{o['t_link'] * 1e3:.2f}", "yes" if o["link_ok"] else "NO",
                 f"{o['tokens_per_s']:,.0f}", f"{o['tokens_per_dollar']:,.0f}"] \
            if o else ["does not fit"] + ["-"] * 7
        gain = f"{r['gain']:.2f}x" if r["gain"] else "-"
        t.add_row(format_seq(r["context"]), *left, *right, gain)
    return t


def plot_offload(results_json: str, folder: str) -> str:
    """offload.png from results.json: tokens per dollar and tokens/s against context, both deployments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from einfuse.simulator.workload import format_seq

    with open(results_json) as f:
        data = json.load(f)
    rows = data["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "tokens_per_dollar", "tokens per dollar"), (axes[1], "tokens_per_s", "tokens/s")):
        for mode in ("homogeneous", "offload"):
            pts = [(r["context"], r[mode][key]) for r in rows if r[mode]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{mode}: " + (data["compute"] if mode == "homogeneous"
                                                                     else f"{data['compute']}+{data['memory']}"))
        ctx = [r["context"] for r in rows]
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ctx, [format_seq(c) for c in ctx])
        ax.set_xlabel("context length")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{data['model']} decode, best device counts per point")
    fig.tight_layout()
    path = os.path.join(folder, "offload.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
