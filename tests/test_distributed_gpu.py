"""Distributed split-KV decode over 2 NCCL ranks (one GPU each) at real sizes, against float64.

Needs two GPUs (the ``nvidia-h200-x2`` machine); skipped otherwise. Multicast stays off in every
process (NCCL_NVLS_ENABLE=0 and friends), as the device notes require.
"""

from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu
HERE = os.path.dirname(os.path.abspath(__file__))
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

CASES = {
    # uneven shards, GQA 8:1, a context that is no multiple of any tile
    "uneven_gqa8": dict(B=3, H=32, Hkv=4, NQ=1, lengths=[20011, 7003], D=128, dtype="bfloat16"),
    # GQA 4:1, several new tokens, odd head dim, one shard much smaller than a split
    "gqa4_multi_token_d96": dict(B=2, H=16, Hkv=4, NQ=4, lengths=[33, 65536], D=96, dtype="float16"),
    # one rank holds nothing of the cache
    "empty_shard": dict(B=1, H=8, Hkv=8, NQ=1, lengths=[4096, 0], D=64, dtype="float32"),
    # queries produced on rank 1 only (Lamina's compute device), sent to both attention ranks
    "queries_from_rank_1": dict(B=2, H=8, Hkv=2, NQ=1, lengths=[3000, 5000], D=128, dtype="bfloat16",
                                src=1),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(case: dict, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = sum(case["lengths"])
    q = torch.randn(case["B"], case["H"], case["NQ"], case["D"], generator=g, dtype=torch.float64) * 2
    k = torch.randn(case["B"], case["Hkv"], n, case["D"], generator=g, dtype=torch.float64) * 2
    v = torch.randn(case["B"], case["Hkv"], n, case["D"], generator=g, dtype=torch.float64)
    return q, k, v


def _reference(q, k, v) -> np.ndarray:
    rep = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.einsum("bhpe,bhme->bhpm", q, kk) / q.shape[-1] ** 0.5
    return torch.einsum("bhpm,bhmf->bhpf", torch.softmax(s, -1), vv).numpy()


def _worker(rank: int, world: int, port: int, case: dict, out_dir: str) -> None:
    os.environ.update(MULTICAST_OFF)
    import datetime

    import torch.distributed as dist

    from einfuse.distributed import DistributedDecode

    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120), device_id=dev)
    try:
        dtype = getattr(torch, case["dtype"])
        q, k, v = _data(case)
        starts = np.cumsum([0] + case["lengths"])
        ks = k[:, :, starts[rank]:starts[rank + 1]].to(dev, dtype).contiguous()
        vs = v[:, :, starts[rank]:starts[rank + 1]].to(dev, dtype).contiguous()
        src = case.get("src")
        qq = q.to(dev, dtype) if src is None or rank == src else None
        out = DistributedDecode("decode")(qq, ks, vs, src=src)
        np.save(os.path.join(out_dir, f"out{rank}.npy"), out.double().cpu().numpy())
    except Exception as exc:  # noqa: BLE001 - the test reads what each rank saw
        with open(os.path.join(out_dir, f"err{rank}.txt"), "w", encoding="utf-8") as fh:
            fh.write(f"{type(exc).__name__}: {exc}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("name", sorted(CASES))
def test_two_gpu_sharded_decode_matches_float64(name: str, tmp_path) -> None:
    import torch.multiprocessing as mp

    os.environ.update(MULTICAST_OFF)
    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, HERE)
    case = CASES[name]
    mp.start_processes(_worker, args=(2, _free_port(), case, str(tmp_path)), nprocs=2,
                       start_method="spawn", join=True)
    want = _reference(*_data(case))
    # fp32 tl.dot runs in TF32 on the GPU
    tol = {"bfloat16": 2e-2, "float16": 4e-3, "float32": 5e-3}[case["dtype"]]
    for r in range(2):
        assert not (tmp_path / f"err{r}.txt").exists(), (tmp_path / f"err{r}.txt").read_text()
        got = np.load(tmp_path / f"out{r}.npy")
        assert np.isfinite(got).all()
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < tol, (r, err)
