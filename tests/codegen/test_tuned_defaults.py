"""The shipped tuned-defaults table: lookup rules, bad entries, the writer, and the calls that read it.

The table (einfuse/codegen/tuned_defaults.json) is consulted when the tune cache has no entry and no
option was given; these tests point ``$EINFUSE_TUNED_DEFAULTS`` at small tables of their own, and
stand a fake CUDA device in for the CPU where a call path needs one (the interpreter runs the kernel).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from _helpers import rel_err

from einfuse.codegen import tuned_defaults as td
from einfuse.codegen.autotune import KernelConfig
from einfuse.codegen.tuned_defaults import TunedDefaultsError, TunedDefaultsWarning

ATTN = {"device": "sm90", "kernel": "attention", "variant": "na2d", "layout": "box", "dtype": "bf16",
        "head_dim": 64, "value_dim": 64, "group": 1, "n_q": 16384, "n_kv": 16384,
        "config": {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}}
SHAPE = dict(kernel="attention", variant="na2d", layout="box", dtype="bf16", head_dim=64, value_dim=64,
             group=1, n_q=9216, n_kv=9216)


def _write(path: Path, entries: list) -> Path:
    path.write_text(json.dumps({"version": 1, "entries": entries}))
    return path


def test_the_shipped_table_loads_strictly() -> None:
    """A bad committed entry would silently fall back to the heuristic: catch it here instead."""
    entries = td.load_table(td.TABLE_PATH, strict=True)
    assert len({e.key() for e in entries}) == len(entries)  # no two entries for the same shapes


def test_lookup_matches_family_and_length_bucket(tmp_path: Path) -> None:
    table = td.load_table(_write(tmp_path / "t.json", [ATTN]), strict=True)
    e = td.lookup(table, device="sm90", device_name="NVIDIA H100 80GB HBM3", **SHAPE)
    assert e is not None and e.config["block_n"] == 32
    # an unknown GPU family, another variant, tile order or head dim: no entry (the heuristic runs)
    assert td.lookup(table, device="sm80", device_name="NVIDIA A100", **SHAPE) is None
    for field, value in (("variant", "na3d"), ("layout", "flat"), ("head_dim", 128), ("dtype", "fp16")):
        assert td.lookup(table, device="sm90", device_name=None, **{**SHAPE, field: value}) is None


def test_lookup_prefers_the_same_gpu_then_the_nearest_lengths(tmp_path: Path) -> None:
    h200 = {**ATTN, "device_name": "NVIDIA H200", "config": {**ATTN["config"], "num_warps": 8}}
    near = {**ATTN, "n_q": 8192, "n_kv": 8192, "config": {**ATTN["config"], "num_stages": 3}}
    table = td.load_table(_write(tmp_path / "t.json", [ATTN, h200, near]), strict=True)
    assert td.lookup(table, device="sm90", device_name="NVIDIA H200", **SHAPE).config["num_warps"] == 8
    # on an H100 the family entries count; 9216 -> bucket 16384: the 16384 entry, not the 8192 one
    assert td.lookup(table, device="sm90", device_name="other", **SHAPE).config["num_stages"] == 2
    assert td.lookup(table, device="sm90", device_name="other",
                     **{**SHAPE, "n_q": 5000, "n_kv": 5000}).config["num_stages"] == 3
    # more than MAX_OCTAVES away in lengths: no entry
    assert td.lookup(table, device="sm90", device_name="other", **{**SHAPE, "n_q": 1000, "n_kv": 1000}) is None


@pytest.mark.parametrize("bad,why", [
    ({**ATTN, "config": {**ATTN["config"], "block_m": 48}}, "block_m"),
    ({**ATTN, "config": {"block_m": 64, "block_n": 64}}, "missing"),
    ({**ATTN, "config": {**ATTN["config"], "chunk": 64}}, "unknown"),
    ({**ATTN, "kernel": "cutlass"}, "kernel"),
    ({**ATTN, "n_q": 9216}, "power of two"),
    ({k: v for k, v in ATTN.items() if k != "layout"}, "layout"),
    ({**ATTN, "device": "H100"}, "device"),
    ({**ATTN, "kernel": "linear", "config": {"chunk": 48}}, "chunk"),
    ("not an object", "object"),
])
def test_a_bad_entry_is_skipped_with_a_warning_or_raises_when_strict(tmp_path: Path, bad: object,
                                                                     why: str) -> None:
    path = _write(tmp_path / "t.json", [ATTN, bad])
    with pytest.warns(TunedDefaultsWarning, match=rf"entry 1 .*ignored.*{why}"):
        table = td.load_table(path)
    assert [e.variant for e in table] == ["na2d"]  # the good entry stays usable
    with pytest.raises(TunedDefaultsError, match=why):
        td.load_table(path, strict=True)


def test_an_unreadable_table_warns_and_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text("{not json")
    with pytest.warns(TunedDefaultsWarning, match="unreadable"):
        assert td.load_table(path) == []
    path.write_text("[]")
    with pytest.warns(TunedDefaultsWarning, match="entries"):
        assert td.load_table(path) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert td.load_table(tmp_path / "missing.json") == []  # no table: nothing to say


def test_merge_replaces_same_shapes_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.json", [ATTN, {**ATTN, "variant": "na3d"}])
    new = td.parse_entry({**ATTN, "config": {**ATTN["config"], "block_n": 64}})
    data = td.merge_table(path, [(new, {"tuned_ms": 0.18})])
    assert len(data["entries"]) == 2
    entries = {e.variant: e for e in td.load_table(path, strict=True)}
    assert entries["na2d"].config["block_n"] == 64 and entries["na3d"].config["block_n"] == 32
    assert json.loads(path.read_text())["entries"][0]["measured"] == {"tuned_ms": 0.18}


def test_attention_config_reads_the_active_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = {**ATTN, "n_q": 64, "n_kv": 32, "config": {**ATTN["config"], "block_m": 128, "block_n": 64}}
    path = _write(tmp_path / "t.json", [{**ATTN, "config": {**ATTN["config"], "block_m": 128}}, short])
    monkeypatch.setenv(td.ENV, str(path))
    monkeypatch.setattr(td, "device_of", lambda dev: ("sm90", "NVIDIA H200"))
    args = dict(variant="na2d", layout="box", dtype="bf16", head_dim=64, value_dim=64, group=1)
    assert td.attention_config("cuda:0", **args, n_q=9216, n_kv=9216) == KernelConfig(128, 32, 4, 2)
    assert td.attention_config("cuda:0", **args, n_q=5000, n_kv=5000) == KernelConfig(128, 32, 4, 2)  # nearby
    # short sequences: tiles clamped to their lengths, as the heuristic clamps them
    assert td.attention_config("cuda:0", **args, n_q=50, n_kv=20) == KernelConfig(64, 32, 4, 2)
    monkeypatch.setenv(td.ENV, "off")
    assert td.attention_config("cuda:0", **args, n_q=9216, n_kv=9216) is None
    monkeypatch.setenv(td.ENV, str(path))
    monkeypatch.setattr(td, "device_of", lambda dev: None)  # not CUDA (the interpreter)
    assert td.attention_config("cpu", **args, n_q=9216, n_kv=9216) is None


def test_linear_calls_take_table_options_but_never_over_given_ones(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A table entry with another state block rebuilds the plan (a sibling kernel); the result is the
    same attention. Options given to compile are the user's: the table leaves them alone."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    import einfuse
    from einfuse.codegen.reference import run_cascade

    B, H, N, D = 1, 2, 45, 16
    entry = {**ATTN, "kernel": "linear", "variant": "lightning", "layout": "flat", "dtype": "fp32", "head_dim": D,
             "value_dim": D,
             "n_q": 64, "n_kv": 64, "config": {"chunk": 16, "state_chunk": 64, "block_k": 16, "block_v": 16}}
    monkeypatch.setenv(td.ENV, str(_write(tmp_path / "t.json", [entry])))
    monkeypatch.setattr(td, "device_of", lambda dev: ("sm90", "NVIDIA H200"))
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, H, N, D, generator=gen) for _ in range(3))
    ref = run_cascade(einfuse.load_spec("lightning"), {"Q": q, "K": k, "V": v})["O"]

    fn = einfuse.compile("lightning", torch_op=False)
    out = fn(q, k, v)
    kern = fn.kernel
    assert (kern.options.chunk, kern.options.state_chunk) == (64, 0)  # built at the defaults
    assert list(kern._siblings) == [(16, 64)]  # the call ran the table's chunk sizes
    assert kern._siblings[(16, 64)].options.block_k == 16
    assert rel_err(out, ref) < 2e-5

    given = einfuse.compile("lightning", torch_op=False, chunk=32, block_k=32)
    opts = given.kernel.tuned_options(q, k, v)
    assert (opts.chunk, opts.state_chunk, opts.block_k, opts.block_v) == (32, 0, 32, 16)
    out = given(q, k, v)
    assert not given.kernel._siblings and rel_err(out, ref) < 2e-5


@pytest.mark.gpu
def test_a_fresh_call_uses_the_table_entry_on_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tune cache, no options: the configuration comes from the table on this GPU's family, and
    from the heuristic when the table only knows another family."""
    import torch

    import einfuse
    from einfuse.codegen import autotune

    monkeypatch.setenv("EINFUSE_CACHE_DIR", str(tmp_path / "cache"))
    major, minor = torch.cuda.get_device_capability()
    fam = f"sm{major}{minor}"
    entry = {**ATTN, "device": fam, "variant": "softmax_causal", "layout": "flat", "n_q": 1024, "n_kv": 1024,
             "config": {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 2}}
    q, k, v = (torch.randn(1, 2, 1000, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    for device, want in ((fam, KernelConfig(64, 32, 4, 2)),
                         ("sm10", autotune.heuristic(64, "bf16", 1000, 1000, interpreter=False))):
        monkeypatch.setenv(td.ENV, str(_write(tmp_path / f"{device}.json", [{**entry, "device": device}])))
        fn = einfuse.compile("causal:head_dim=64", torch_op=False)
        out = fn(q, k, v)
        assert fn.kernel.last_config == want
        assert float((out.float() - ref.float()).norm() / ref.float().norm()) < 2e-2
