"""Paged and ragged decode on a real GPU (``pytest -m gpu``): bf16 at serving-like sizes (32 query
heads, D 128, GQA 8:1 and 4:1, thousands of keys, shuffled pages), against a float32 torch formula
per sequence (the float64 reference is too slow at these lengths; the interpreter tests cover it)."""

from __future__ import annotations

import pytest
import torch

import einfuse

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _reference(q, k, v, lens: list[int], causal: bool) -> torch.Tensor:
    """Softmax attention of each sequence over its first lens[b] keys, float32, bottom-right."""
    B, H, NQ, D = q.shape
    out = torch.zeros(B, H, NQ, v.shape[-1], device=q.device)
    rep = H // k.shape[1]
    for b, n in enumerate(lens):
        if not n:
            continue
        kk = k[b, :, :n].float().repeat_interleave(rep, 0)
        vv = v[b, :, :n].float().repeat_interleave(rep, 0)
        s = torch.einsum("hpd,hmd->hpm", q[b].float(), kk) / D ** 0.5
        if causal:  # query i at position n - NQ + i
            pos = torch.arange(NQ, device=q.device)[:, None] + n - NQ
            s = s.masked_fill(torch.arange(n, device=q.device)[None, :] > pos, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        out[b] = torch.einsum("hpm,hmf->hpf", p, vv)
    return out


@pytest.mark.parametrize("Hkv,page_size,NQ,spec", [(4, 16, 1, "decode:head_dim=128"),
                                                   (8, 16, 1, "decode:head_dim=128"),
                                                   (8, 48, 4, "decode:causal=true,head_dim=128")])
def test_paged_and_ragged_decode_bf16(Hkv: int, page_size: int, NQ: int, spec: str) -> None:
    lens = [4099, 0, 1, 2500, 777, 3]
    B, H, D, N = len(lens), 32, 128, 4099
    g = torch.Generator(device="cuda").manual_seed(Hkv + page_size)
    q = torch.randn(B, H, NQ, D, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, N, D, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(B, Hkv, N, D, device="cuda", generator=g, dtype=torch.bfloat16)
    per = [-(-n // page_size) for n in lens]
    perm = torch.randperm(sum(per) + 5, device="cuda")
    kc = torch.zeros(perm.numel(), page_size, Hkv, D, device="cuda", dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    table = torch.zeros(B, max(per), dtype=torch.int32, device="cuda")
    nxt = 0
    for b, n in enumerate(lens):
        for j in range(per[b]):
            page, lo, hi = int(perm[nxt]), j * page_size, min((j + 1) * page_size, n)
            nxt += 1
            table[b, j] = page
            kc[page, : hi - lo] = k[b, :, lo:hi].transpose(0, 1)
            vc[page, : hi - lo] = v[b, :, lo:hi].transpose(0, 1)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    fn = einfuse.compile(spec)
    want = _reference(q, k, v, lens, causal="causal" in spec)
    for out in (fn(q, kc, vc, page_table=table, seq_lens=seq_lens), fn(q, k, v, seq_lens=seq_lens)):
        assert torch.isfinite(out).all()
        assert torch.all(out[1] == 0)
        err = float(torch.linalg.vector_norm(out.float() - want) / torch.linalg.vector_norm(want))
        assert err < 1e-2, err


def test_paged_decode_replays_in_a_cuda_graph_with_new_lengths_and_pages() -> None:
    """A serving loop captures the decode step once and replays it: lengths and the page table are
    read on the device, so changing their contents between replays changes what is attended to."""
    B, H, Hkv, D, ps, pages = 3, 32, 8, 128, 16, 64
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(B, H, 1, D, device="cuda", generator=g, dtype=torch.bfloat16)
    kc = torch.randn(pages, ps, Hkv, D, device="cuda", generator=g, dtype=torch.bfloat16)
    vc = torch.randn(pages, ps, Hkv, D, device="cuda", generator=g, dtype=torch.bfloat16)
    table = torch.randperm(pages, device="cuda")[: B * 20].view(B, 20).to(torch.int32)
    lens = torch.tensor([300, 17, 0], dtype=torch.int32, device="cuda")
    fn = einfuse.compile("decode:head_dim=128")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(q, kc, vc, page_table=table, seq_lens=lens)   # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(q, kc, vc, page_table=table, seq_lens=lens)
    lens.copy_(torch.tensor([5, 320, 64], dtype=torch.int32))
    table.copy_(table.flip(1))
    graph.replay()
    torch.cuda.synchronize()
    want = fn(q, kc, vc, page_table=table, seq_lens=lens)
    assert torch.equal(out, want)


@pytest.mark.parametrize("Hkv,N,splits", [(4, 8192, None), (8, 32768, 128), (4, 1008, 7)])
def test_fused_combine_agrees_with_the_two_kernel_path_every_call(Hkv: int, N: int, splits: int | None) -> None:
    """fuse_combine=True: the last split program (atomic ticket) merges. A race (a partial read
    before it is written, a counter not back at zero) would show as a call that differs: 50 calls
    back to back, contiguous and paged, on two streams, and replayed from a CUDA graph."""
    lens = [N, 0, N // 3, 17, N - 5, 1, N // 2, 200]
    B, H, D, ps = len(lens), 32, 128, 16
    g = torch.Generator(device="cuda").manual_seed(N)
    q = torch.randn(B, H, 1, D, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(B, Hkv, N, D, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(B, Hkv, N, D, device="cuda", generator=g, dtype=torch.bfloat16)
    pages = B * -(-N // ps)
    perm = torch.randperm(pages, device="cuda")
    kc = k.view(B, Hkv, -1, ps, D).permute(0, 2, 3, 1, 4).reshape(pages, ps, Hkv, D)[perm.argsort()].contiguous()
    vc = v.view(B, Hkv, -1, ps, D).permute(0, 2, 3, 1, 4).reshape(pages, ps, Hkv, D)[perm.argsort()].contiguous()
    table = perm.view(B, -1).to(torch.int32)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    fused = einfuse.compile("decode:head_dim=128", decode_options={"fuse_combine": True})
    plain = einfuse.compile("decode:head_dim=128")
    kw = {} if splits is None else {"splits": splits}
    for args in ((q, k, v, None), (q, kc, vc, table)):
        extra = {"seq_lens": seq_lens, **kw, **({} if args[3] is None else {"page_table": args[3]})}
        want = plain(*args[:3], **extra)
        torch.testing.assert_close(want.float(), _reference(q, k, v, lens, False), atol=2e-2, rtol=2e-2)
        outs = [fused(*args[:3], **extra) for _ in range(50)]
        for out in outs:
            assert torch.equal(out, outs[0])
        torch.testing.assert_close(outs[0].float(), want.float(), atol=1e-2, rtol=1e-2)
        streams = [torch.cuda.Stream() for _ in range(2)]
        results = []
        for s in streams:  # concurrent streams: each gets its own counters
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                results += [fused(*args[:3], **extra) for _ in range(10)]
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)
        for out in results:
            assert torch.equal(out, outs[0])
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = fused(*args[:3], **extra)
        for _ in range(5):
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(captured, outs[0])
