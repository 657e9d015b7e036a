"""Distributed split-KV decode over gloo ranks on the CPU (Triton interpreter), against float64."""

from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest
import torch

import einfuse as ef
from einfuse.errors import CodegenError

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(B: int, H: int, Hkv: int, NQ: int, lengths: list[int], D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, NQ, D, generator=g, dtype=torch.float64) * 2.0
    k = torch.randn(B, Hkv, sum(lengths), D, generator=g, dtype=torch.float64) * 2.0
    v = torch.randn(B, Hkv, sum(lengths), D, generator=g, dtype=torch.float64)
    return q, k, v


def _reference(q, k, v, scale: float) -> np.ndarray:
    """Softmax attention over the whole cache in float64, K/V heads repeated for GQA."""
    rep = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = torch.einsum("bhpe,bhme->bhpm", q, kk) * scale
    return torch.einsum("bhpm,bhmf->bhpf", torch.softmax(s, -1), vv).numpy()


def _paged_shards(case: dict):
    """Per rank r: its keys of every sequence b (``shard_lens[r][b]`` of them), contiguous and padded,
    and the same keys as a shuffled page pool with a page table; the float64 whole-cache keys per
    sequence (the concatenation of its shards) for the reference."""
    B, Hkv, D, ps = case["B"], case["Hkv"], case["D"], case["page_size"]
    g = torch.Generator().manual_seed(7)
    shards = []
    for r, lens in enumerate(case["shard_lens"]):
        n = max(max(lens), 1)
        k = torch.randn(B, Hkv, n, D, generator=g, dtype=torch.float64) * 2.0
        v = torch.randn(B, Hkv, n, D, generator=g, dtype=torch.float64)
        per = [-(-x // ps) for x in lens]
        order = torch.randperm(sum(per) + 2, generator=g).tolist()   # pages in any order, two spare
        kc = torch.zeros(len(order), ps, Hkv, D, dtype=torch.float64)
        vc = torch.zeros_like(kc)
        table = torch.full((B, max(max(per), 1)), -1, dtype=torch.int32)
        for b, x in enumerate(lens):
            for j in range(per[b]):
                page = order.pop()
                table[b, j] = page
                lo, hi = j * ps, min((j + 1) * ps, x)
                kc[page, : hi - lo] = k[b, :, lo:hi].transpose(0, 1)
                vc[page, : hi - lo] = v[b, :, lo:hi].transpose(0, 1)
        shards.append((k, v, kc, vc, table, torch.tensor(lens, dtype=torch.int32)))
    return shards


def _paged_reference(case: dict, q, shards) -> np.ndarray:
    out = np.zeros((case["B"], case["H"], case["NQ"], case["D"]))
    for b in range(case["B"]):
        kb = torch.cat([k[b:b + 1, :, : lens[b]] for k, _, _, _, _, lens in shards], dim=2)
        vb = torch.cat([v[b:b + 1, :, : lens[b]] for _, v, _, _, _, lens in shards], dim=2)
        out[b] = _reference(q[b:b + 1], kb, vb, case["scale"])[0]
    return out


def _paged_worker(rank: int, world: int, port: int, case: dict, out_dir: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import datetime

    import torch.distributed as dist

    from einfuse.distributed import DistributedDecode

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        q = _data(case["B"], case["H"], case["Hkv"], case["NQ"], [0], case["D"])[0].float()
        k, v, kc, vc, table, lens = _paged_shards(case)[rank]
        fn = DistributedDecode(f"decode:scale={case['scale']}", block_n=16)
        if case["layout"] == "paged":
            out = fn(q, kc.float(), vc.float(), page_table=table, seq_lens=lens)
        else:  # contiguous shards padded to the rank's longest, with per-sequence lengths
            out = fn(q, k.float(), v.float(), seq_lens=lens)
        np.save(os.path.join(out_dir, f"out{rank}.npy"), out.double().numpy())
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world: int, port: int, case: dict, out_dir: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    import datetime

    import torch.distributed as dist

    from einfuse.distributed import DistributedDecode

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        q, k, v = _data(case["B"], case["H"], case["Hkv"], case["NQ"], case["lengths"], case["D"])
        starts = np.cumsum([0] + case["lengths"])
        ks = k[:, :, starts[rank]:starts[rank + 1]].float().contiguous()
        vs = v[:, :, starts[rank]:starts[rank + 1]].float().contiguous()
        fn = DistributedDecode(f"decode:scale={case['scale']}", block_n=16)
        qq = q.float()
        if case.get("bad_rank") == rank:
            qq = qq[..., :-1].contiguous()  # a head dim that does not match K: this rank's kernel raises
        src = case.get("src")
        if src is not None and rank != src:
            qq = None
        try:
            out = fn(qq, ks, vs, src=src)
            np.save(os.path.join(out_dir, f"out{rank}.npy"), out.double().numpy())
        except Exception as exc:  # noqa: BLE001 - the test reads what each rank saw
            with open(os.path.join(out_dir, f"err{rank}.txt"), "w", encoding="utf-8") as fh:
                fh.write(f"{type(exc).__name__}: {exc}")
    finally:
        dist.destroy_process_group()


def _spawn(case: dict, world: int, tmp_path, worker=_worker) -> None:
    import torch.multiprocessing as mp

    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    sys.path.insert(0, HERE)
    mp.start_processes(worker, args=(world, _free_port(), case, str(tmp_path)), nprocs=world,
                       start_method="spawn", join=True)


CASES = {
    "uneven_gqa": dict(B=2, H=4, Hkv=2, NQ=1, lengths=[37, 5, 70], D=24, scale=0.3),
    "empty_shard": dict(B=1, H=2, Hkv=1, NQ=3, lengths=[40, 0], D=16, scale=0.25),
    "queries_from_rank_0": dict(B=1, H=2, Hkv=2, NQ=2, lengths=[19, 33], D=16, scale=0.25, src=0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sharded_decode_matches_the_whole_cache(name: str, tmp_path) -> None:
    case = CASES[name]
    world = len(case["lengths"])
    _spawn(case, world, tmp_path)
    q, k, v = _data(case["B"], case["H"], case["Hkv"], case["NQ"], case["lengths"], case["D"])
    want = _reference(q, k, v, case["scale"])
    for r in range(world):
        assert not (tmp_path / f"err{r}.txt").exists(), (tmp_path / f"err{r}.txt").read_text()
        got = np.load(tmp_path / f"out{r}.npy")
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 1e-5, (r, err)


# per rank, per sequence: how many of that sequence's keys the rank holds (ragged, some empty)
PAGED = dict(B=3, H=8, Hkv=1, NQ=1, D=24, scale=0.3, page_size=16,
             shard_lens=[[30, 0, 17], [5, 41, 0], [0, 9, 33]])


@pytest.mark.parametrize("layout,Hkv", [("paged", 1), ("contiguous", 2)])
def test_paged_and_ragged_shards_match_the_whole_cache(layout: str, Hkv: int, tmp_path) -> None:
    case = {**PAGED, "layout": layout, "Hkv": Hkv}   # GQA 8:1 paged, 4:1 contiguous with lengths
    world = len(case["shard_lens"])
    _spawn(case, world, tmp_path, _paged_worker)
    q = _data(case["B"], case["H"], case["Hkv"], case["NQ"], [0], case["D"])[0]
    want = _paged_reference(case, q.float().double(), _paged_shards(case))
    for r in range(world):
        got = np.load(tmp_path / f"out{r}.npy")
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 1e-5, (r, err)


def test_a_failing_rank_fails_every_rank_without_a_hang(tmp_path) -> None:
    case = dict(B=1, H=2, Hkv=1, NQ=1, lengths=[20, 20], D=16, scale=0.25, bad_rank=1)
    _spawn(case, 2, tmp_path)
    own = (tmp_path / "err1.txt").read_text()
    other = (tmp_path / "err0.txt").read_text()
    assert own.startswith("CodegenError") and "do not match" in own
    assert other.startswith("EinfuseError") and "rank(s) 1" in other


def test_key_position_masks_are_refused() -> None:
    with pytest.raises(CodegenError, match="key position"):
        from einfuse.distributed import DistributedDecode

        DistributedDecode(ef.load_spec("causal"))


def test_combine_of_shards_equals_softmax_over_the_union() -> None:
    from einfuse.distributed import combine

    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 5, 40, generator=g, dtype=torch.float64) * 4  # 3 shards, 5 rows, 40 keys each
    v = torch.randn(3, 40, 6, generator=g, dtype=torch.float64)
    outs = torch.einsum("srm,smf->srf", torch.softmax(s, -1), v)
    lse = torch.logsumexp(s, -1)
    lse[1, 2] = float("-inf")  # shard 1 sees nothing for row 2
    s[1, 2] = float("-inf")
    outs[1, 2] = 0
    whole = torch.softmax(s.permute(1, 0, 2).reshape(5, 120), -1) @ v.reshape(120, 6)
    assert torch.allclose(combine(outs, lse), whole, atol=1e-12)
