"""CUTLASS back end without a GPU: sources printed from plans, refusals, the CLI, and nvcc compiles.

The compile tests run nvcc on generated sources (four compiles, one per path: causal bf16 hd128 on
sm90, sliding-window fp16 hd64 on sm90ws and ALiBi bf16 hd128 on sm90pp for sm_90a, a 2-D
neighbourhood fp16 hd64 kernel on sm80 for sm_80), so a broken skeleton or printer fails CI; they
are skipped when nvcc or the nvidia-cutlass headers are missing, and objects are cached by a hash of
the source in the temp dir (a second run is instant).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import einfuse
from einfuse.codegen.cutlass.emit import ALL_CONFIGS, emit_source
from einfuse.errors import CodegenError
from einfuse.lowering import kernel_plan

ONE_PASS = ["softmax", "causal", "sliding_window:window=100", "alibi", "softcap:cap=20,causal=true", "sigmoid",
            "sigmoid:causal=true,bias=-2", "s2attn", "duo:retrieval_heads=1,recent=64", "na1d:kernel=7,dilation=3",
            "na2d:shape=12x20,kernel=5,dilation=2,causal=true", "na3d", "gqa", "decode"]


@pytest.mark.parametrize("spec", ONE_PASS)
def test_every_one_pass_builtin_prints_a_cuda_source(spec):
    plan = einfuse.plan(spec)
    src = emit_source(plan)
    assert "tl." not in src and "float('" not in src  # nothing Triton leaked into the C++
    for dt, d in ALL_CONFIGS:
        assert f"Traits<{'cutlass::bfloat16_t' if dt == 'bf16' else 'cutlass::half_t'}, {d}>" in src
    keep = src.split("EF_FN bool ef_keep(")[1].split("}")[0]
    assert ("return true;" in keep) == (plan.mask is None)
    assert f"kFamily = k{plan.family.capitalize()}" in src


def test_score_and_mask_are_printed_from_the_plan():
    src = emit_source(einfuse.plan("alibi:align=top_left"), configs=(("bf16", 64),))
    assert "exp2f(" in src.split("ef_score(")[1].split("}")[0]  # the ALiBi slope 2**(-8(h+1)/H)
    assert "return (qi >= ki);" in src and "kPlainScale = false" in src
    # bottom-right (the default): query p sits at p + M - P, with the lengths passed at run time
    assert "return ((n_kv + qi - n_q) >= ki);" in emit_source(einfuse.plan("alibi"), configs=(("bf16", 64),))
    na = emit_source(einfuse.plan("na2d:shape=12x20,kernel=5,align=top_left"), configs=(("fp16", 128),))
    assert "(unsigned)(qi) / 20u" in na  # unsigned division of non-negative positions by the grid width
    assert "kPlainScale = true" in emit_source(einfuse.plan("causal:scale=0.125"), configs=(("bf16", 64),))


@pytest.mark.parametrize("spec,family", [("linear", "linear"), ("lightning", "linear")])
def test_unsupported_families_are_refused_by_name(spec, family):
    with pytest.raises(CodegenError, match=f"family is {family}"):
        einfuse.compile(spec, target="cutlass")


def test_staged_and_decode_plans_are_refused_by_name():
    with pytest.raises(CodegenError, match="staged"):
        einfuse.compile("based", target="cutlass")
    with pytest.raises(CodegenError, match="family is decode"):
        emit_source(kernel_plan(einfuse.load_spec("decode"), decode=True))


def test_head_dims_and_dtypes_other_than_64_128_bf16_fp16_are_refused():
    plan = einfuse.plan("causal")
    with pytest.raises(CodegenError, match="head dims 64 or 128"):
        emit_source(plan, configs=(("bf16", 96),))
    with pytest.raises(CodegenError, match="bfloat16 or float16"):
        emit_source(plan, configs=(("fp32", 64),))
    with pytest.raises(CodegenError, match="takes only path="):
        einfuse.compile("causal", target="cutlass", block_m=64)


def test_cli_writes_a_standalone_cu(tmp_path):
    from einfuse.cli import cli

    out = tmp_path / "kernel.cu"
    res = CliRunner().invoke(cli, ["compile", "causal", "--target", "cutlass", "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert 'extern "C" cudaError_t einfuse_attn_fwd' in text and "#ifdef EINFUSE_TORCH_EXTENSION" in text
    assert "QK[m,p]" in text  # the cascade, as comments
    res = CliRunner().invoke(cli, ["compile", "linear", "--target", "cutlass"])
    assert isinstance(res.exception, CodegenError) and "family is linear" in str(res.exception)


def _have_toolchain() -> bool:
    try:
        from einfuse.codegen.cutlass.build import cutlass_include, find_nvcc

        cutlass_include()
        find_nvcc()
    except CodegenError:
        return False
    return True


needs_nvcc = pytest.mark.skipif(not _have_toolchain(), reason="needs nvcc and pip install nvidia-cutlass==4.2.0.0")


@needs_nvcc
@pytest.mark.parametrize("spec,config,arch,path", [
    ("causal", ("bf16", 128), "90a", "sm90"),   # the Hopper path: wgmma
    ("sliding_window:window=100", ("fp16", 64), "90a", "sm90ws"),  # TMA pipeline, warp-specialised
    ("alibi", ("bf16", 128), "90a", "sm90pp"),  # + intra-warpgroup overlap, ping-pong
    ("na2d:shape=12x20,kernel=5,dilation=2,causal=true", ("fp16", 64), "80", "sm80"),
])
def test_generated_source_compiles_with_nvcc(spec, config, arch, path):
    from einfuse.codegen.cutlass.build import compile_object

    obj = compile_object(emit_source(einfuse.plan(spec), configs=(config,), path=path), arch)
    assert obj.stat().st_size > 0


def test_the_hopper_path_is_printed_with_wgmma_and_refused_off_hopper():
    from einfuse.codegen.cutlass.runtime import CutlassAttention
    from einfuse.errors import CodegenError

    src = emit_source(einfuse.plan("causal"), configs=(("bf16", 128),), path="sm90")
    assert "launch90<Traits90<cutlass::bfloat16_t, 128>>" in src and "warpgroup_arrive" in src
    assert "launch<Traits<" not in src.split("extern \"C\"")[1]
    auto = CutlassAttention.build(einfuse.plan("causal"))
    assert auto.path_for("90a") == "sm90" and auto.path_for("80") == "sm80"
    with pytest.raises(CodegenError, match="needs a Hopper GPU"):
        CutlassAttention.build(einfuse.plan("causal"), path="sm90").path_for("80")
    ws = emit_source(einfuse.plan("causal"), configs=(("bf16", 128),), path="sm90ws")
    assert "launch90ws<Traits90ws<cutlass::bfloat16_t, 128>>" in ws and "SM90_TMA_LOAD" in ws
    assert "warpgroup_reg_dealloc" in ws and "arrive_and_expect_tx" in ws
    pp = emit_source(einfuse.plan("causal"), configs=(("bf16", 128),), path="sm90pp")
    assert "launch90ws<Traits90pp<cutlass::bfloat16_t, 128>>" in pp and "turn_wait" in pp
    for path in ("sm90ws", "sm90pp"):
        with pytest.raises(CodegenError, match="needs a Hopper GPU"):
            CutlassAttention.build(einfuse.plan("causal"), path=path).path_for("80")
    with pytest.raises(CodegenError, match="path 'sm70' is unknown"):
        CutlassAttention.build(einfuse.plan("causal"), path="sm70")


def test_missing_toolchain_gives_one_clear_error(monkeypatch):
    from einfuse.codegen.cutlass import build

    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    with pytest.raises(CodegenError, match="needs nvcc"):
        build.find_nvcc()
