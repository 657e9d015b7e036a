"""Bad calls of the Python API raise an EinfuseError subclass that says what to pass, never an
internal AttributeError, IndexError or a NumPy/torch error from deep inside."""

import numpy as np
import pytest
import torch

import einfuse as ef
from einfuse.codegen.reference import run_cascade
from einfuse.errors import CodegenError, EinfuseError, ExecutionError, ParseError, SpecError

QKV = {k: np.ones((1, 1, 4, 4)) for k in "QKV"}


@pytest.mark.parametrize("spec", [42, 0, None, b"softmax", 1.5, ["softmax"]])
def test_compile_and_load_spec_name_what_a_spec_is(spec):
    for fn in (ef.compile, ef.load_spec):
        with pytest.raises(SpecError, match="a SPEC is a built-in name"):
            fn(spec)


def test_spec_may_be_a_path(tmp_path):
    path = tmp_path / "v.ein"
    path.write_text(ef.format_cascade(ef.load_spec("causal")))
    assert ef.load_spec(path).name == "softmax_causal"


@pytest.mark.parametrize("sizes,words", [
    ({"X1": "x"}, "must be an integer >= 1"), ({"X1": 2.5}, "must be an integer >= 1"),
    ({"X1": -1}, "must be an integer >= 1"), ({"X1": True}, "must be an integer >= 1"),
    ([1, 2], "sizes must be a dict"), ({"ZZ": 3}, "not a param or rank"),
])
def test_compile_sizes_are_checked(sizes, words):
    with pytest.raises(CodegenError, match=words):
        ef.compile("na2d:shape=4x4,kernel=3", sizes=sizes)


@pytest.mark.parametrize("options,words", [
    ({"block_m": "a"}, "block_m='a' must be an integer"), ({"block_m": 3}, "power of two"),
    ({"num_warps": 0}, "num_warps=0 must be a power of two from 1 to 32"),
    ({"num_stages": 0}, "num_stages=0 must be >= 1"), ({"fast_math": "yes"}, "True or False"),
    ({"precision": 3}, "must be a string"), ({"foo": 1}, "unknown option foo"),
    ({"decode_options": {"x": 1}}, "unknown decode option"),
    ({"decode_options": {"splits": -1}}, "splits=-1"),
])
def test_kernel_options_are_checked_at_compile_time(options, words):
    with pytest.raises(CodegenError, match=words):
        ef.compile("softmax", **options)


@pytest.mark.parametrize("options,words", [
    ({"chunk": "x"}, "chunk='x' must be an integer"), ({"num_warps_output": 3}, "power of two"),
    ({"state_dtype": 16}, "must be a string"),
])
def test_linear_options_are_checked(options, words):
    with pytest.raises(CodegenError, match=words):
        ef.compile("linear", **options)


@pytest.mark.parametrize("text,words", [
    (b"cascade x", r"takes the text form as a str, got bytes \(decode it first"),
    (None, "got NoneType"), (42, "got int"),
])
def test_parse_cascade_takes_text(text, words):
    with pytest.raises(ParseError, match=words):
        ef.parse_cascade(text)


@pytest.mark.parametrize("call,words", [
    (lambda: run_cascade("softmax", QKV), "takes a Cascade"),
    (lambda: run_cascade(ef.load_spec("softmax"), None), "inputs must be a dict"),
    (lambda: run_cascade(ef.load_spec("softmax"), [1, 2]), "inputs must be a dict"),
    (lambda: run_cascade(ef.load_spec("softmax"), {"Q": "abc", "K": "x", "V": "y"}), "input Q is not an array"),
    (lambda: run_cascade(ef.load_spec("softmax"), {**QKV, "Q": [[1], [1, 2]]}), "input Q is not an array"),
    (lambda: run_cascade(ef.load_spec("softmax"), {k: np.ones((1, 1, 0, 4)) for k in "QKV"}), "input Q is empty"),
    (lambda: run_cascade(ef.load_spec("softmax"), QKV, sizes={"P": "x"}), "must be an integer >= 1"),
])
def test_reference_executor_inputs_are_checked(call, words):
    with pytest.raises(ExecutionError, match=words):
        call()


@pytest.mark.parametrize("kwargs,words", [
    ({"head_dim": 0}, "head_dim must be a positive integer"), ({"bias": float("nan")}, "bias"),
    ({"params": {"x": 1}}, "upper case"), ({"params": {"W": "a"}}, "finite number"),
    ({"params": [1]}, "params must be a dict"), ({"score_mod": 42}, "score_mod"),
    ({"mask_mod": 42}, "mask_mod"), ({"mask_mod": lambda b, h, q, kv: 3}, "predicate"),
    ({"score_mod": lambda s, b, h, q, kv: "x"}, "not a score"), ({"normalization": "relu"}, "normalization"),
])
def test_attention_arguments_are_checked(kwargs, words):
    with pytest.raises(SpecError, match=words):
        ef.attention(**kwargs)


def test_cascade_names_are_one_word():
    with pytest.raises(SpecError, match="one word"):
        ef.attention(42)
    with pytest.raises(SpecError, match="one word"):
        ef.linear_attention("two words")


def test_every_api_error_is_an_einfuse_error():
    assert issubclass(CodegenError, EinfuseError) and issubclass(ParseError, EinfuseError)
    f = ef.compile("softmax")
    with pytest.raises(EinfuseError):
        f(torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16).half(), torch.randn(1, 1, 4, 16))
