"""Fuzzing bad (and odd) input: SPEC strings, text cascades, command lines and kernel inputs.

Whatever comes in, einfuse either works or says what is wrong: the API raises an EinfuseError
subclass (never an AttributeError, IndexError, a NumPy or sympy error...), the command line prints one
line starting ``error:`` and exits with code 2, and nothing hangs (every call runs under an alarm).
Hypothesis runs derandomized (the same examples on every run, so CI is stable); the explicit
``@example`` cases are the inputs that once failed.
"""

from __future__ import annotations

import contextlib
import os
import signal

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import einfuse as ef
from einfuse.catalog import CATALOG
from einfuse.cli import main
from einfuse.errors import EinfuseError

# EINFUSE_FUZZ_EXAMPLES=2000 EINFUSE_FUZZ_RANDOM=1 pytest tests/test_fuzz.py: a longer, random search
FUZZ = settings(max_examples=int(os.environ.get("EINFUSE_FUZZ_EXAMPLES", "60")), deadline=None,
                derandomize=not os.environ.get("EINFUSE_FUZZ_RANDOM"), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SECONDS = 20  # per call: far above any case here, far below a hang


@contextlib.contextmanager
def time_limit(seconds: int = SECONDS):
    def hang(signum, frame):
        raise AssertionError(f"no answer after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def works_or_einfuse_error(fn, *args, **kwargs):
    with time_limit():
        try:
            return fn(*args, **kwargs)
        except EinfuseError as exc:
            assert str(exc) and "Traceback" not in str(exc)
            return exc


# ---- SPEC strings --------------------------------------------------------------------------------

NAMES = [e.name for e in CATALOG]
KEYS = sorted({o.name for e in CATALOG for o in e.options}) + ["foo", "", "Causal", "window "]
VALUES = st.one_of(
    st.sampled_from(["0", "1", "-1", "7", "3x5", "2x2x2", "1x0", "true", "false", "yes", "maybe", "", "nan",
                     "inf", "-inf", "1e9", "0.5", "1/2", "x", "elu1", "relu", "identity", "exp", "7x", "x7",
                     "99999999999999999999", "1_000", " 4 ", "=", ":", ",", "\x00", "é"]),
    st.integers(-10, 300).map(str),
    st.text(max_size=6),
)
OPTION = st.tuples(st.sampled_from(KEYS), st.sampled_from(["=", "", "=="]), VALUES).map("".join)
SPECS = st.one_of(
    st.builds(lambda n, sep, opts: n + sep + ",".join(opts), st.sampled_from(NAMES + ["sofmax", "NA2D", ""]),
              st.sampled_from([":", "", "::", ": "]), st.lists(OPTION, max_size=4)),
    st.text(max_size=30),
)


@given(SPECS)
@example("softmax:causal=true,causal=false")
@example("na2d:shape=0x4")
@example("softmax:head_dim=99999999999999999999")
@example("/")
@example(".")
@example("softmax:scale=nan")
@FUZZ
def test_spec_strings(spec):
    out = works_or_einfuse_error(ef.load_spec, spec)
    if isinstance(out, ef.Cascade):  # what loads must print and parse back
        text = ef.format_cascade(out)
        assert ef.format_cascade(works_or_einfuse_error(ef.parse_cascade, text)) == text


@given(st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.floats(), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)))
@FUZZ
def test_non_string_specs(spec):
    works_or_einfuse_error(ef.load_spec, spec)
    works_or_einfuse_error(ef.compile, spec)


# ---- text cascades -------------------------------------------------------------------------------

BASE_TEXTS = [ef.format_cascade(ef.load_spec(s)) for s in ("causal", "linear:normalize=true", "na2d:shape=4x4,kernel=3")]
TOKENS = ["[", "]", "(", ")", ":", "=", "*", "/", "+", "-", "**", "m", "p", "M", "Q", "QK", "max(m)", "idx(",
          "exp(", "where(", "9**9**9", "__import__('os')", "().__class__", "1e999", "nan", "inf", "empty",
          "#", ",", "ranks", "input", "output", "tensor", "params W = ", "attr x = ", "partition M -> M1, M0",
          "\n", "\x00", "é", "\t", "M1+1", "ceiling(M/M0)", "Mod(", "Abs(", "floor("]


@st.composite
def mutated_cascades(draw):
    lines = draw(st.sampled_from(BASE_TEXTS)).splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "insert", "replace", "truncate", "swap"]))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "insert":
            pos = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:pos] + draw(st.sampled_from(TOKENS)) + lines[i][pos:]
        elif op == "replace" and lines[i]:
            pos = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:pos] + draw(st.sampled_from(TOKENS)) + lines[i][pos + 1:]
        elif op == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n"


@given(st.one_of(mutated_cascades(), st.text(max_size=80)))
@example("cascade x\nranks P, M1 = quit()\ninput X[P]\noutput Y[P]\nY[p] = X[p]\n")
@example(BASE_TEXTS[0] + "O[p,f] = A[m,p] * V[m,f]\n")
@example(BASE_TEXTS[0].replace("tensor GM[P]", "tensor GM[P]\ntensor GM[P]"))
@FUZZ
def test_text_cascades(text):
    c = works_or_einfuse_error(ef.parse_cascade, text)
    if isinstance(c, ef.Cascade):
        from einfuse.codegen.reference import run_cascade

        rng = np.random.default_rng(0)
        inputs = {n: rng.standard_normal((1, 1, *(3,) * len(c.tensors[n].ranks))) for n in c.inputs}
        works_or_einfuse_error(run_cascade, c, inputs)


# ---- command lines -------------------------------------------------------------------------------

SMALL_SPECS = ["causal", "softmax:causal=true", "na2d:shape=4x4,kernel=3", "linear", "agent", "sigmoid", "based",
               "decode:causal=true", "na1d:kernel=3", "nosuch", "softmax:foo=1", "na2d:shape=0x0"]
BAD = ["", "x", "-1", "0", "inf", ",", "=3", "\x00"]
POOLS = {  # values per option: mostly plausible, some bad
    "--shape": ["1,1,8,4", "1,2,16,8", "2,1,5,3", "1,1,16,4", "0,1,1,1", "1,2", "a,b,c,d", "1x1x4x4"],
    "--kv-len": ["1", "5", "16", "300"], "--kv-heads": ["1", "2", "3"], "--seed": ["0", "7"],
    "--size": ["N=2", "N=0", "ZZ=4", "X1=4", "P=8", "=3", "N"], "--rank": ["M", "P", "N", "Z"],
    "--tile": ["8", "1"], "--tiles": ["8x8", "4x16", "0x0", "8"], "--pipeline": ["fuse", "fuse[", "split_kv[splits=2]"],
    "--tile-order": ["auto", "flat", "box", "span", "boxy"], "--target": ["triton", "cuda"],
    "--arch": ["fusemax", "flat", "unfused", "systolic", "nosuch"], "--model": ["bert-base", "t5", "gpt", ""],
    "--seq": ["64", "16", "1K", "0", "1e400", "4x"], "--batch": ["1", "2", "0"],
    "--compare": ["unfused,fusemax", ",", "fusemax,nosuch"], "--peers": ["none", "flex", "nosuch"],
    "--dtype": ["bf16", "fp8"], "--sparsity": ["16", "0", "15"],
}
COMMANDS = {
    "show": ["--dot"],
    "check": ["--size"],
    "run": ["--shape", "--kv-len", "--kv-heads", "--size", "--seed"],
    "passes": ["--rank", "--tile", "--tiles", "--size", "--print-after-all", "--pipeline", "--sparsity"],
    "compile": ["--size", "--tile-order", "--target"],
    "simulate": ["--arch", "--compare", "--model", "--seq", "--batch", "--size", "--list"],
    "bench": ["--shape", "--peers", "--dtype"],
    "list": [],
}
FLAGS = {"--dot", "--print-after-all", "--list"}


@st.composite
def command_lines(draw):
    cmd = draw(st.sampled_from(sorted(COMMANDS)))
    args = [cmd]
    if cmd != "list" and draw(st.integers(0, 9)):
        args.append(draw(st.sampled_from(SMALL_SPECS)))
    options = COMMANDS[cmd] + (["--nosuch"] if draw(st.integers(0, 9)) == 0 else [])
    for opt in draw(st.lists(st.sampled_from(options), max_size=3, unique=True)) if options else []:
        args.append(opt)
        if opt not in FLAGS:
            args.append(draw(st.sampled_from(POOLS.get(opt, []) + BAD[:2])))
    if cmd == "run" and "--shape" not in args:
        args += ["--shape", "1,1,8,4"]
    if cmd == "simulate":
        args += ["--no-progress"] + ([] if "--seq" in args else ["--seq", "64"]) + \
            ([] if "--batch" in args else ["--batch", "1"])
    return args


def run_cli(args, capsys):
    with time_limit():
        with pytest.raises(SystemExit) as exc:
            main(args)
    out = capsys.readouterr()
    return exc.value.code, out.err


@given(command_lines())
@example(["simulate", "softmax", "--model", "", "--no-progress"])
@example(["passes", "softmax", "--sparsity", "0"])
@example(["run", "softmax", "--kv-len", "0"])
@example(["run", "na2d", "--shape", "1,2,100,32"])
@example(["compile", "agent"])
@FUZZ
def test_command_lines(capsys, monkeypatch, args):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # bench: the no-GPU error path
    code, err = run_cli(args, capsys)
    if code != 0:
        assert code == 2, f"einfuse {' '.join(args)} exited {code}: {err}"
        assert err.startswith("error: ") and err.count("\n") == 1, f"einfuse {' '.join(args)}: {err!r}"


# ---- kernel inputs -------------------------------------------------------------------------------

KERNELS = {}


def kernel(spec):
    if spec not in KERNELS:
        KERNELS[spec] = ef.compile(spec)
    return KERNELS[spec]


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool, torch.complex64]


@st.composite
def tensors(draw):
    kind = draw(st.sampled_from(["tensor"] * 6 + ["meta", "numpy", "list", "none", "scalar", "noncontig", "grad"]))
    shape = draw(st.lists(st.integers(0, 5), min_size=3, max_size=5))
    if len(shape) == 4:
        shape[3] = draw(st.sampled_from([0, 1, 4, 16, 300]))
    dtype = draw(st.sampled_from(DTYPES[:3] * 3 + DTYPES[3:]))
    if kind == "none":
        return None
    if kind == "scalar":
        return draw(st.sampled_from([0, 1.5, "q"]))
    if kind == "list":
        return np.zeros(shape).tolist()
    if kind == "numpy":
        return np.zeros(shape, np.float32)
    if kind == "meta":
        return torch.zeros(shape, device="meta")
    t = torch.zeros(shape, dtype=dtype) if dtype in (torch.bool, torch.int64) else \
        torch.randn(shape).to(dtype)
    if kind == "noncontig" and t.dim() >= 2:
        t = t.transpose(-1, -2)
    if kind == "grad" and t.is_floating_point():
        t.requires_grad_(True)
    return t


@given(st.sampled_from(["softmax", "causal", "linear", "na2d:shape=2x2,kernel=2", "agent"]),
       tensors(), tensors(), tensors(), st.dictionaries(st.sampled_from(["AG", "bogus", "splits", "block_m"]),
                                                        tensors(), max_size=1))
@FUZZ
def test_kernel_inputs(spec, q, k, v, extra):
    out = works_or_einfuse_error(kernel(spec), q, k, v, **extra)
    if not isinstance(out, EinfuseError):
        assert isinstance(out, torch.Tensor) and out.shape[:3] == q.shape[:3]
