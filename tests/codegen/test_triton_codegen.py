"""The generator's parts without (or with tiny) kernel runs: analysis, printers, generated source,
block tables, tile orders, the kernel cache, autotuning cache, input checks and the CLI."""

import importlib.util
import json
import math
import threading

import numpy as np
import pytest
import sympy
import torch
from click.testing import CliRunner

import einfuse
from einfuse.cli import cli
from einfuse.codegen import autotune
from einfuse.codegen.reference import run_cascade
from einfuse.codegen.triton.index_printer import IndexPrinter
from einfuse.codegen.triton.loader import load_module
from einfuse.errors import CodegenError
from einfuse.frontends.dsl import m, p
from einfuse.ir.expr import Access
from einfuse.lowering.blocks import EMPTY, FULL, PARTIAL, build_tables
from einfuse.lowering.onepass import DOT, analyze
from einfuse.lowering.tile_order import FLAT, TileOrder, box_for

# ---- analysis ------------------------------------------------------------------------------------


def test_analysis_reads_score_and_mask_of_naive_and_fused_forms():
    from einfuse.passes.fusion import fuse_online_softmax

    naive = einfuse.load_spec("alibi:head_dim=64")
    for c in (naive, fuse_online_softmax(naive, tile=16)):
        plan = analyze(c)
        assert plan.family == "softmax"
        # the fused form's `m < M` bound is dropped; query p sits at p + M - P (bottom-right)
        qpos = p + sympy.Symbol("M", integer=True, positive=True) - sympy.Symbol("P", integer=True, positive=True)
        assert plan.mask in (sympy.Le(m, qpos), sympy.Ge(qpos, m))
        assert Access(DOT, (m, p)) in [n for n in _walk(plan.score)]
        assert plan.plain_scale is None
    assert analyze(einfuse.load_spec("causal:head_dim=64")).plain_scale == pytest.approx(0.125)
    assert analyze(einfuse.load_spec("sigmoid:bias=-2")).family == "sigmoid"


def _walk(e):
    from einfuse.ir.expr import walk

    return list(walk(e))


def test_analysis_rejects_what_the_skeleton_cannot_run():
    with pytest.raises(CodegenError, match="one value tensor"):
        analyze(einfuse.load_spec("agent"))  # two chained softmax stages
    with pytest.raises(CodegenError):
        einfuse.compile("lightning:feature_map=identity", chunk=3)  # linear builder validates its options


# ---- printers and generated source ---------------------------------------------------------------

def test_index_printer_keeps_integer_arithmetic_exact():
    pr = IndexPrinter({p: "qi", m: "ki"})
    assert pr.predicate(sympy.floor(p / 96) >= 2) == "(qi >= 192)"  # no float division in bounds
    assert pr.value(sympy.floor(p / 96)) == "(qi // 96)"
    assert "_floordiv" in pr.value(sympy.floor((p - m) / 4))  # may be negative: floor semantics
    assert pr.value(sympy.Mod(m, 7)) == "(ki % 7)"
    assert "_floormod" in pr.value(sympy.Mod(p - m, 7))
    with pytest.raises(CodegenError, match="symbol W"):
        pr.predicate(p - m < sympy.Symbol("W", integer=True, positive=True))


def test_generated_source_prints_each_einsum_above_its_code():
    src = einfuse.compile("alibi:head_dim=64", torch_op=False).source
    lines = src.splitlines()
    tile = lines[next(i for i, ln in enumerate(lines) if ln.startswith("def _tile")):]
    body = "\n".join(tile)
    for einsum in ("# BQK[m1,m0,p] = BQKR[m1,m0,p] + idx(", "# RM[m1+1,p] = max(RM[m1,p], LM[m1,p])",
                   "# SLN[m1,m0,p] = exp(BQK[m1,m0,p] - RM[m1+1,p])", "# RD[m1+1,p] = SLD[m1,p] + SPD[m1,p]",
                   "# RNV[m1+1,p,f] = SLNV[m1,p,f] + SPNV[m1,p,f]"):
        assert einsum in body, einsum
    assert body.index("# SLN[") < body.index("p = tl.math.exp2(")
    assert "return (qi >= ki)" in src  # the mask predicate, printed from the constraint
    assert "tl.exp2(" in src and "(ki - qi)" in src  # the ALiBi slope and distance from idx(...)


def test_unmasked_variant_has_no_tables_and_no_mask_code_on_full_tiles():
    src = einfuse.compile("softmax:head_dim=64", torch_op=False).source
    assert "return True" in src
    assert "m_new = tl.maximum(m_i, tl.max(qk, 1) * 0.18033688011112042)" in src  # 0.125 * log2(e) folded


# ---- block tables --------------------------------------------------------------------------------

def _dense_kinds(mask, n_q, n_kv, bm, bn):
    qi, ki = np.arange(n_q)[:, None], np.arange(n_kv)[None, :]
    keep = np.broadcast_to(sympy.lambdify((p, m), mask, "numpy")(qi, ki), (n_q, n_kv))
    kinds = np.zeros((-(-n_q // bm), -(-n_kv // bn)), np.int8)
    for i in range(kinds.shape[0]):
        for j in range(kinds.shape[1]):
            blk = keep[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
            full = blk.all() and (j + 1) * bn <= n_kv
            kinds[i, j] = FULL if full else PARTIAL if blk.any() else EMPTY
    return kinds


@pytest.mark.parametrize("spec,n_q,n_kv", [("causal", 100, 100), ("sliding_window:window=24", 90, 90),
                                           ("decode:causal=true", 40, 100)])
def test_block_tables_list_exactly_the_full_and_partial_tiles(spec, n_q, n_kv):
    plan = analyze(einfuse.load_spec(spec))
    t = build_tables(einfuse.load_spec(spec), plan.mask, {"P": n_q, "M": n_kv, "H": 1, "B": 1}, n_q, n_kv, 1,
                     16, 32, FLAT, FLAT, "cpu")
    want = _dense_kinds(plan.mask.subs({sympy.Symbol("M", integer=True, positive=True): n_kv,
                                        sympy.Symbol("P", integer=True, positive=True): n_q}), n_q, n_kv, 16, 32)
    for i in range(want.shape[0]):
        full = t.full_idx[0, i, :int(t.full_num[0, i])].tolist()
        part = t.part_idx[0, i, :int(t.part_num[0, i])].tolist()
        assert full == list(np.flatnonzero(want[i] == FULL)), (i, full)
        assert part == list(np.flatnonzero(want[i] == PARTIAL)), (i, part)
    assert t.visited_fraction < 1.0


def test_causal_tables_are_contiguous_runs():
    plan = analyze(einfuse.load_spec("causal"))
    t = build_tables(einfuse.load_spec("causal"), plan.mask, {"P": 256, "M": 256, "H": 1, "B": 1}, 256, 256, 1, 64, 32, FLAT, FLAT, "cpu")
    assert t.full_contig and t.part_contig


def test_box_tiles_cover_the_grid_once_and_visit_fewer_tiles_than_runs():
    order = TileOrder((12, 16))
    pos, ok = order.positions(192, 32)
    assert sorted(pos[ok].tolist()) == list(range(192))
    assert box_for((96, 96), 128) == (8, 16) and box_for((16, 32, 32), 128) == (4, 4, 8)
    # 96x96 grid, 13x13 windows: 8x16-token query boxes need half the keys that 128-token runs do
    c = einfuse.load_spec("na2d:shape=96x96,kernel=13")
    plan = analyze(c)
    sizes = {"P": 9216, "M": 9216, "H": 1, "B": 1, "X0": 96, "X1": 96}
    wide = TileOrder((96, 96))
    runs = build_tables(c, plan.mask, sizes, 9216, 9216, 1, 128, 64, FLAT, FLAT, "cpu")
    boxes = build_tables(c, plan.mask, sizes, 9216, 9216, 1, 128, 64, wide, wide, "cpu")
    assert boxes.cost(64) < 0.6 * runs.cost(64)


# ---- kernel cache, autotune cache ----------------------------------------------------------------

def test_kernels_are_written_atomically_and_imported_once(tmp_path, monkeypatch):
    monkeypatch.setenv("EINFUSE_CACHE_DIR", str(tmp_path))
    src = "VALUE = 41 + 1\n"
    a, b = load_module(src, "probe"), load_module(src, "probe")
    assert a is b and a.VALUE == 42
    files = list((tmp_path / "kernels").glob("*.py"))
    assert len(files) == 1 and files[0].read_text() == src
    assert not list((tmp_path / "kernels").glob(".*tmp"))


def test_autotune_cache_merges_concurrent_writers(tmp_path):
    path = tmp_path / "tune.json"
    cfgs = [autotune.KernelConfig(64 << (i % 2), 32, 4, 2) for i in range(8)]
    threads = [threading.Thread(target=lambda i=i: autotune.TuneCache(path).put(f"k{i}", cfgs[i], 0.1 * i))
               for i in range(8)]
    for t in threads:
        t.start()
        t.join()  # sequential writers, each from a fresh reader: nothing is lost in the merge
    data = json.loads(path.read_text())
    assert sorted(data) == [f"k{i}" for i in range(8)]
    assert autotune.TuneCache(path).get("k3") == cfgs[3]
    assert autotune.TuneCache(path).get("missing") is None


def test_heuristic_and_shape_classes():
    cfg = autotune.heuristic(96, "bf16", 4096, 4096, interpreter=False)
    assert cfg.block_m & (cfg.block_m - 1) == 0 and cfg.block_n & (cfg.block_n - 1) == 0
    assert autotune.heuristic(64, "bf16", 20, 20, interpreter=False).block_m <= 32  # short sequences
    assert autotune.shape_class("bf16", 128, 128, 3000, 4096, 1) == autotune.shape_class("bf16", 128, 128, 4096,
                                                                                          2100, 1)
    assert all(c.block_n <= 64 for c in autotune.candidates(128, "fp32"))


# ---- input checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    (lambda q, k, v: (q.int(), k.int(), v.int()), "dtype"),  # (float64 runs in the interpreter: gradcheck)
    (lambda q, k, v: (q, k.half(), v), "dtypes differ"),
    (lambda q, k, v: (q[0], k, v), "shape"),
    (lambda q, k, v: (q, k[:, :1].expand(-1, 3, -1, -1), v[:, :1].expand(-1, 3, -1, -1)), "divide"),
    (lambda q, k, v: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v), "contiguous"),
    (lambda q, k, v: (q, k[:, :, :5], v), "share"),
    (lambda q, k, v: (q[..., :8], k, v), "head dim"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    f = einfuse.compile("causal", torch_op=False)
    q, k, v = (torch.randn(1, 4, 8, 16) for _ in range(3))  # 8 queries: checked before the decode dispatch
    with pytest.raises(CodegenError, match=message):
        f(*change(q, k, v))


def test_unknown_option_is_named():
    with pytest.raises(CodegenError, match="block_q"):
        einfuse.compile("causal", block_q=64)


# ---- CLI -----------------------------------------------------------------------------------------

def test_cli_compile_writes_an_importable_kernel_with_launcher(tmp_path):
    out = tmp_path / "kernel.py"
    res = CliRunner().invoke(cli, ["compile", "sliding_window:window=9", "--target", "triton", "-o", str(out)])
    assert res.exit_code == 0, res.output
    spec = importlib.util.spec_from_file_location("standalone_kernel", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    q, k, v = (torch.randn(1, 2, 30, 16) for _ in range(3))
    ref = run_cascade(einfuse.load_spec("sliding_window:window=9"), {"Q": q, "K": k, "V": v})["O"]
    assert np.abs(mod.attention(q, k, v).numpy() - ref).max() < 1e-5


def test_cli_bench_without_gpu_fails_with_one_line(monkeypatch):
    from einfuse.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "causal", "--shape", "1,1,64,16"])
    assert exc.value.code == 2


def test_flex_peer_mods_match_the_reference():
    from einfuse.codegen import peers

    c = einfuse.load_spec("softcap:cap=4,causal=true,scale=1")
    plan = analyze(c)
    sizes = {"P": 20, "M": 20, "H": 2, "B": 1}
    idx = torch.arange(20)
    keep = peers.mask_fn(plan, sizes)(torch.tensor(0), torch.tensor(0), idx[:, None], idx[None, :])
    assert torch.equal(keep, idx[None, :] <= idx[:, None])
    s = torch.randn(20, 20)
    modded = peers.score_fn(plan, sizes)(s, torch.tensor(0), torch.tensor(0), idx[:, None], idx[None, :])
    assert torch.allclose(modded, 4 * torch.tanh(s / 4))
    assert peers.kept_pairs(plan, sizes, 20, 20, 2) == 2 * 20 * 21 // 2
    assert math.isclose(peers.attention_flops(210, 3, 64, 64), 4 * 64 * 210 * 3)
