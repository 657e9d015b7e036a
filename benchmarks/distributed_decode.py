"""Split-KV decode with the KV cache sharded over GPUs (torch.distributed, NCCL) against one GPU
holding all of it, beside the offloading cost model's prediction for the same points.

    python benchmarks/distributed_decode.py --world 2 --results-dir $OUT      # two GPUs (issue 16)
    python benchmarks/distributed_decode.py --world 1 --results-dir $OUT      # one GPU (issue 15)

For every batch x context point (GQA 8:1: 32 query heads, 4 KV heads, D 128, bf16, one new token):

* ``single``: rank 0 runs the plain split-KV decode kernel over the whole cache;
* ``dist1``: the same cache through :class:`einfuse.distributed.DistributedDecode` over a one-rank
  group: the cost of the distributed path itself (status all-gather, output all-gather, combine);
* ``sharded`` (``--world`` >= 2): every rank holds ``context / world`` keys and runs one step of
  ``DistributedDecode`` over the world group; per rank, its kernel alone, an all-gather of the same
  bytes and the combine are timed too.

Each step is timed with CUDA events (median of ``--iters`` after warm-up); a sharded step's time is
the slowest rank's. KV bandwidth per GPU = KV bytes each GPU reads / step time. The prediction is
``einfuse.simulator.offload.attention_time`` for one layer of the same shape on the catalogue's H200
(roofline of the KV read, spread evenly over the GPUs), so ``measured / predicted`` says how far the
cost model's attention term is from the kernel. Outputs are checked: the single-GPU kernel against a
float32 softmax of the first sequence, the sharded and one-rank outputs against the single-GPU one.

Multicast stays off in every process (NCCL_NVLS_ENABLE=0 and friends), as the device notes require.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import socket
import subprocess
import sys
import time
from typing import Any

MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
HEADS, KV_HEADS, HEAD_DIM = 32, 4, 128
SPEC = "decode"  # softmax decode, scale 1/sqrt(D)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().upper()
        mult = {"K": 1024, "M": 1024 * 1024}.get(part[-1:], 1)
        out.append(int(part.rstrip("KM")) * mult)
    return out


def _time(fn, iters: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` with CUDA events around each call (a CPU clock on the CPU)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if not torch.cuda.is_available():
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        return sorted(times)[len(times) // 2]
    torch.cuda.synchronize()
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def _rel(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _predicted_ms(batch: int, context: int, gpus: int) -> float:
    """The cost model's attention time for one layer of this shape on ``gpus`` H200s."""
    from einfuse.simulator.offload import LlamaShape, attention_time, get_device

    layer = LlamaShape("bench-layer", layers=1, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM,
                       hidden=HEADS * HEAD_DIM, intermediate=1, vocab=1)
    return attention_time(layer, get_device("h200"), gpus, batch, context) * 1e3


def _reference_first_sequence(q: Any, k: Any, v: Any) -> Any:
    """float32 softmax attention of sequence 0 (all heads), K/V heads repeated for GQA."""
    import torch

    rep = q.shape[1] // k.shape[1]
    qq = q[0].float()                                          # (H, 1, D)
    out = []
    for h in range(q.shape[1]):
        kk, vv = k[0, h // rep].float(), v[0, h // rep].float()  # (N, D)
        s = (qq[h] @ kk.T) / math.sqrt(q.shape[-1])
        out.append(torch.softmax(s, -1) @ vv)
    return torch.stack(out)                                    # (H, 1, D)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, path: str) -> None:
    os.environ.update(MULTICAST_OFF)
    import torch
    import torch.distributed as dist

    import einfuse
    from einfuse.distributed import DistributedDecode, combine

    if args.cpu_dry_run:  # gloo ranks on the CPU, kernels in the Triton interpreter: checks the script
        dev = torch.device("cpu")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=5))
    else:
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(minutes=5), device_id=dev)
    solo = dist.new_group([0])  # every rank must create it; only rank 0 uses it
    kernel = einfuse.compile(SPEC)  # the split-KV decode kernel
    dist_world = DistributedDecode(SPEC, group=None)
    dist_solo = DistributedDecode(SPEC, group=solo) if rank == 0 else None
    rows: list[dict[str, Any]] = []
    for batch in args.batches:
        for context in args.contexts:
            kv_bytes = 2 * batch * KV_HEADS * context * HEAD_DIM * 2
            row: dict[str, Any] = dict(batch=batch, context=context, heads=HEADS, kv_heads=KV_HEADS,
                                       head_dim=HEAD_DIM, kv_gb=kv_bytes / 1e9, world=world)
            gen = torch.Generator(device=dev).manual_seed(batch * 1_000_003 + context)
            q = torch.randn(batch, HEADS, 1, HEAD_DIM, generator=gen, device=dev, dtype=torch.bfloat16)
            capacity = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else 1 << 30
            fits = kv_bytes < 0.8 * capacity
            single_out = None
            if rank == 0 and fits:
                k = torch.randn(batch, KV_HEADS, context, HEAD_DIM, generator=gen, device=dev,
                                dtype=torch.bfloat16)
                v = torch.randn(k.shape, generator=gen, device=dev, dtype=torch.bfloat16)
                single_out = kernel(q, k, v)
                row["single_err_vs_fp32"] = _rel(single_out[0], _reference_first_sequence(q, k, v))
                row["single_ms"] = _time(lambda: kernel(q, k, v), args.iters)
                row["single_pred_ms"] = _predicted_ms(batch, context, 1)
                row["single_tbps"] = kv_bytes / row["single_ms"] / 1e9
                row["dist1_ms"] = _time(lambda: dist_solo(q, k, v), args.iters)
                row["dist1_err_vs_single"] = _rel(dist_solo(q, k, v), single_out)
                del k, v
                torch.cuda.empty_cache()
            elif rank == 0:
                row["single_skipped"] = "the whole cache does not fit one GPU"
            dist.barrier()
            if world > 1:
                lo, hi = context * rank // world, context * (rank + 1) // world
                # the same keys as the single-GPU run: regenerate the whole cache's stream, keep a slice
                gen = torch.Generator(device=dev).manual_seed(batch * 1_000_003 + context)
                torch.randn(batch, HEADS, 1, HEAD_DIM, generator=gen, device=dev, dtype=torch.bfloat16)
                if fits:
                    k = torch.randn(batch, KV_HEADS, context, HEAD_DIM, generator=gen, device=dev,
                                    dtype=torch.bfloat16)
                    v = torch.randn(k.shape, generator=gen, device=dev, dtype=torch.bfloat16)
                    ks, vs = k[:, :, lo:hi].contiguous(), v[:, :, lo:hi].contiguous()
                    del k, v
                else:  # a shard of a cache that only exists sharded: fresh values, no cross-check
                    ks = torch.randn(batch, KV_HEADS, hi - lo, HEAD_DIM, generator=gen, device=dev,
                                     dtype=torch.bfloat16)
                    vs = torch.randn(ks.shape, generator=gen, device=dev, dtype=torch.bfloat16)
                torch.cuda.empty_cache()
                out = dist_world(q, ks, vs)
                step = _time(lambda: dist_world(q, ks, vs), args.iters)
                local = _time(lambda: kernel(q, ks, vs, return_lse=True), args.iters)
                o, lse = kernel(q, ks, vs, return_lse=True)
                packed = torch.cat([o.float(), lse.unsqueeze(-1)], dim=-1).reshape(-1)
                flat = packed.new_empty(world * packed.numel())
                gather = _time(lambda: dist.all_gather_into_tensor(flat, packed), args.iters)
                stacked = flat.view(world, *o.shape[:-1], o.shape[-1] + 1)
                comb = _time(lambda: combine(stacked[..., :-1], stacked[..., -1]), args.iters)
                mine = torch.tensor([step, local, gather, comb], device=dev, dtype=torch.float64)
                every = [torch.empty_like(mine) for _ in range(world)]
                dist.all_gather(every, mine)
                if rank == 0:
                    table = torch.stack(every).cpu()
                    row["sharded_ms"] = float(table[:, 0].max())
                    row["sharded_local_kernel_ms"] = [float(x) for x in table[:, 1]]
                    row["sharded_allgather_ms"] = float(table[:, 2].max())
                    row["sharded_combine_ms"] = float(table[:, 3].max())
                    row["sharded_pred_ms"] = _predicted_ms(batch, context, world)
                    row["sharded_tbps_per_gpu"] = kv_bytes / world / row["sharded_ms"] / 1e9
                    if single_out is not None:
                        row["sharded_err_vs_single"] = _rel(out, single_out)
                    if "single_ms" in row:
                        row["speedup_vs_single"] = row["single_ms"] / row["sharded_ms"]
                del ks, vs, out, packed, flat, stacked
                torch.cuda.empty_cache()
            if rank == 0:
                for key in ("single", "sharded"):
                    if f"{key}_ms" in row:
                        row[f"{key}_measured_over_predicted"] = row[f"{key}_ms"] / row[f"{key}_pred_ms"]
                rows.append(row)
                print(json.dumps(row), flush=True)
            dist.barrier()
    if rank == 0:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(rows, fh)
    dist.destroy_process_group()


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, list):
        return "/".join(_fmt(v, digits) for v in x)
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def write_markdown(rows: list[dict[str, Any]], info: dict[str, Any], path: str) -> None:
    world = info["world"]
    lines = [f"# Distributed split-KV decode: {world} x {info['device']}", "",
             f"{info['date']}, einfuse {info['commit']}, torch {info['torch']}, NCCL {info['nccl']}; "
             f"bf16, {HEADS} query heads / {KV_HEADS} KV heads (GQA 8:1), D {HEAD_DIM}, one new token; "
             "median of CUDA-event times; `pred` = offload cost model (one layer on the catalogue's H200: "
             "KV read at 4.8 TB/s per GPU); ratio = measured / predicted.", ""]
    lines += ["| batch | context | KV GB | 1 GPU ms | 1 GPU TB/s | pred ms | ratio | 1-rank dist ms | "
              f"{world} GPUs ms | TB/s per GPU | local kernels ms | all-gather ms | combine ms | pred ms "
              "| ratio | speedup | max err |",
              "|" + "---|" * 17]
    for r in rows:
        errs = [r.get(k) for k in ("single_err_vs_fp32", "dist1_err_vs_single", "sharded_err_vs_single")]
        lines.append("| " + " | ".join(_fmt(x) for x in (
            r["batch"], r["context"], r["kv_gb"], r.get("single_ms"), r.get("single_tbps"),
            r.get("single_pred_ms"), r.get("single_measured_over_predicted"), r.get("dist1_ms"),
            r.get("sharded_ms"), r.get("sharded_tbps_per_gpu"), r.get("sharded_local_kernel_ms"),
            r.get("sharded_allgather_ms"), r.get("sharded_combine_ms"), r.get("sharded_pred_ms"),
            r.get("sharded_measured_over_predicted"), r.get("speedup_vs_single"),
            max((e for e in errs if e is not None), default=None))) + " |")
    ratios = [r[k] for r in rows for k in ("single_measured_over_predicted", "sharded_measured_over_predicted")
              if k in r]
    if ratios:
        lines += ["", f"measured / predicted over all points: min {min(ratios):.2f}, "
                  f"geomean {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}, max {max(ratios):.2f}"]
    overhead = [r["dist1_ms"] - r["single_ms"] for r in rows if "dist1_ms" in r and "single_ms" in r]
    if overhead:
        lines += [f"distributed path over one rank minus the plain kernel: {min(overhead) * 1e3:.0f}.."
                  f"{max(overhead) * 1e3:.0f} us per step"]
    if info.get("topology"):
        lines += ["", "GPU topology (`nvidia-smi topo -m`):", "", "```", info["topology"].rstrip(), "```"]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--contexts", default="32K,128K,512K")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--name", default=None)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="gloo ranks on the CPU with the Triton interpreter at tiny sizes (checks the script)")
    args = ap.parse_args()
    args.batches, args.contexts = _parse_sizes(args.batches), _parse_sizes(args.contexts)
    os.environ.update(MULTICAST_OFF)
    import torch
    import torch.multiprocessing as mp

    if args.cpu_dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    elif torch.cuda.device_count() < args.world:
        sys.exit(f"--world {args.world} needs that many GPUs; {torch.cuda.device_count()} visible")
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    name = args.name or f"distributed-decode-x{args.world}"
    out_dirs = [os.path.join(here, "results", name)] + ([args.results_dir] if args.results_dir else [])
    if args.cpu_dry_run:  # nothing of a dry run lands in benchmarks/results
        out_dirs = [args.results_dir or os.path.join("/tmp", name)]
    for d in out_dirs:
        os.makedirs(d, exist_ok=True)
    raw = os.path.join(out_dirs[-1], f"{name}.rows.json")
    t0 = time.time()
    mp.start_processes(_worker, args=(args.world, _free_port(), args, raw), nprocs=args.world,
                       start_method="spawn", join=True)
    with open(raw, encoding="utf-8") as fh:
        rows = json.load(fh)
    os.remove(raw)

    def _run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    gpu = torch.cuda.is_available() and not args.cpu_dry_run
    info = dict(device=torch.cuda.get_device_name(0) if gpu else "CPU (dry run)", world=args.world,
                torch=torch.__version__, nccl=".".join(map(str, torch.cuda.nccl.version())) if gpu else "-",
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=_run(["git", "rev-parse", "--short", "HEAD"]).strip() or "unknown",
                topology=_run(["nvidia-smi", "topo", "-m"]), seconds=round(time.time() - t0, 1))
    for d in out_dirs:
        with open(os.path.join(d, f"{name}.json"), "w", encoding="utf-8") as fh:
            json.dump(dict(info=info, rows=rows), fh, indent=1)
        write_markdown(rows, info, os.path.join(d, f"{name}.md"))
    print(open(os.path.join(out_dirs[0], f"{name}.md"), encoding="utf-8").read())


if __name__ == "__main__":
    main()
