"""``einfuse bench SPEC --shape B,H,N,D``: time the generated kernel on this GPU beside its peers.

Peers: FlexAttention (score_mod and mask_mod derived from the same cascade), SDPA with the flash
and cuDNN back ends (unmasked or causal only). Every peer's output is compared with einfuse's
before timing. Rates count 4 * D FLOPs per kept (query, key) pair and head (exact pair count), so
causal counts half and windows count window pairs. ``--json`` writes the numbers for plots.
"""

from __future__ import annotations

import json

import click

PEERS = ("flex", "sdpa", "cudnn", "cutlass")  # cutlass: einfuse's own second back end


def run_bench(spec: str, shape: tuple[int, int, int, int], kv_len: int | None, kv_heads: int | None,
              dtype: str, peers: tuple[str, ...], autotune: bool, sizes: dict[str, int],
              log=click.echo) -> dict:
    """Time SPEC and its peers; returns a JSON-ready record (also printed as a table)."""
    import torch

    import einfuse
    from einfuse.codegen import peers as peer_mod
    from einfuse.codegen.autotune import time_config
    from einfuse.codegen.triton.runtime import AttentionKernel
    from einfuse.errors import CodegenError

    if not torch.cuda.is_available():
        raise CodegenError("einfuse bench times kernels on a CUDA GPU; none is visible here")
    B, H, N, D = shape
    Nkv, Hkv = kv_len or N, kv_heads or H
    if H % Hkv:
        raise CodegenError(f"--kv-heads {Hkv} must divide the {H} query heads")
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    compiled = einfuse.compile(spec, sizes=sizes, autotune=autotune) if autotune else \
        einfuse.compile(spec, sizes=sizes)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, N, D, device="cuda", dtype=tdt, generator=gen)
    k = torch.randn(B, Hkv, Nkv, D, device="cuda", dtype=tdt, generator=gen)
    v = torch.randn(B, Hkv, Nkv, D, device="cuda", dtype=tdt, generator=gen)
    ours = compiled.run(q, k, v)
    torch.cuda.synchronize()
    record: dict = {"spec": spec, "shape": [B, H, N, D], "kv_len": Nkv, "kv_heads": Hkv, "dtype": dtype,
                    "device": torch.cuda.get_device_name(), "results": []}
    flops = None
    if isinstance(compiled.kernel, AttentionKernel):
        kern = compiled.kernel
        pairs = peer_mod.kept_pairs(kern.plan, kern.sizes, N, Nkv, H, device="cuda")
        flops = peer_mod.attention_flops(pairs, B, D, D)
        record["kept_pairs_per_batch"] = pairs
        record["config"] = str(kern.last_config)
        record["tables"] = kern.last_tables.method if kern.last_tables else None
        record["visited_tile_fraction"] = kern.last_tables.visited_fraction if kern.last_tables else None
    rows = [("einfuse", lambda: compiled.run(q, k, v), None)]
    for name in peers:
        if not isinstance(compiled.kernel, AttentionKernel):
            break
        try:
            if name == "cutlass":
                fn = _cutlass_runner(spec, sizes, q, k, v)
            elif name == "flex":
                fn = peer_mod.flex_runner(compiled.kernel.plan, compiled.kernel.sizes, q, k, v)
            else:
                fn = peer_mod.sdpa_runner(compiled.kernel.plan, "flash" if name == "sdpa" else name, q, k, v)
            theirs = fn()
            err = float((theirs.float() - ours.float()).norm() / theirs.float().norm().clamp_min(1e-30))
            rows.append((name, fn, err))
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run this variant is reported, not fatal
            record["results"].append({"impl": name, "skipped": f"{type(exc).__name__}: {exc}"[:200]})
    for name, fn, err in rows:
        ms = time_config(fn)
        entry = {"impl": name, "ms": ms, "tflops": (flops / ms / 1e9) if flops else None}
        if err is not None:
            entry["rel_err_vs_einfuse"] = err
        record["results"].append(entry)
    base = next(r["ms"] for r in record["results"] if r.get("impl") == "einfuse")
    log(f"{spec}  B={B} H={H} N={N} D={D} kv_len={Nkv} kv_heads={Hkv} {dtype} on {record['device']}"
        + (f"  [{record.get('config')}, tables: {record.get('tables')}]" if record.get("config") else ""))
    log(f"{'impl':<10}{'ms':>10}{'TFLOP/s':>10}{'einfuse x':>11}{'rel err':>10}")
    for r in record["results"]:
        if "skipped" in r:
            log(f"{r['impl']:<10}  skipped: {r['skipped']}")
            continue
        tf = f"{r['tflops']:.1f}" if r["tflops"] else "-"
        err = f"{r['rel_err_vs_einfuse']:.1e}" if "rel_err_vs_einfuse" in r else ""
        log(f"{r['impl']:<10}{r['ms']:>10.4f}{tf:>10}{r['ms'] / base:>10.2f}x{err:>10}")
    return record


def _cutlass_runner(spec: str, sizes: dict[str, int], q, k, v):
    """The same variant printed by the CUTLASS back end (built with nvcc on first use)."""
    import einfuse

    kern = einfuse.compile(spec, target="cutlass", sizes=sizes, torch_op=False)
    return lambda: kern.run(q, k, v)


def register(cli: click.Group) -> None:
    @cli.command("bench")
    @click.argument("spec")
    @click.option("--shape", default="4,16,4096,128", show_default=True, help="B,H,N,D")
    @click.option("--kv-len", type=int, default=None, help="key/value length (default N)")
    @click.option("--kv-heads", type=int, default=None, help="K/V heads for GQA (default H)")
    @click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
    @click.option("--peers", default="flex,sdpa,cudnn", show_default=True,
                  help="comma-separated peers to time beside einfuse's Triton kernel (flex, sdpa, cudnn, cutlass: "
                       "the CUTLASS back end) or 'none'")
    @click.option("--autotune/--no-autotune", default=True, show_default=True,
                  help="time candidate tile configurations first (cached on disk)")
    @click.option("--size", "sizes", multiple=True, help="bind a cascade param, NAME=VALUE")
    @click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                  help="also write the numbers to this JSON file")
    def bench_cmd(spec: str, shape: str, kv_len: int | None, kv_heads: int | None, dtype: str, peers: str,
                  autotune: bool, sizes: tuple[str, ...], json_path: str | None) -> None:
        """Time SPEC's kernel on this GPU beside FlexAttention and SDPA.

        \b
        einfuse bench causal:head_dim=128 --shape 4,16,4096,128
        einfuse bench na2d:shape=96x96,kernel=13 --shape 4,8,9216,64 --peers flex --json na2d.json"""
        from einfuse.cli import parse_shape, parse_sizes
        from einfuse.errors import SpecError

        names = tuple(p.strip() for p in peers.split(",") if p.strip() and p.strip() != "none")
        bad = [p for p in names if p not in PEERS]
        if bad:
            raise SpecError(f"--peers: unknown peer {bad[0]!r}; choose from {', '.join(PEERS)} or none")
        record = run_bench(spec, parse_shape(shape), kv_len, kv_heads, dtype, names, autotune,
                           parse_sizes(sizes))
        if json_path:
            with open(json_path, "w", encoding="utf-8") as fh:
                json.dump(record, fh, indent=1)
