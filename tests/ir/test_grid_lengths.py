"""A neighbourhood grid must match the sequence length: kernels, the simulator and the CLI refuse
other lengths (one line, exit 2 on the CLI); commands without an explicit length use the grid's."""

import pytest
import torch

import einfuse
from einfuse.cli import main
from einfuse.errors import CodegenError, SimulatorError
from einfuse.ir.grid import check_grid, declared_grid, grid_tokens
from einfuse.simulator import simulate, workload


def cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_declared_grid_follows_rebound_sizes_and_1d_without_shape_has_none():
    c = einfuse.load_spec("na2d:shape=6x9,kernel=3")
    assert declared_grid(c) == (6, 9) and grid_tokens(c, {"X1": 4}) == 24
    assert grid_tokens(einfuse.load_spec("na1d")) is None
    assert grid_tokens(einfuse.load_spec("na1d:shape=40")) == 40
    check_grid(c, 54, 54)
    with pytest.raises(einfuse.EinfuseError, match="6x9 grid has 54 tokens, but there are 55 keys"):
        check_grid(c, 54, 55)


def test_compiled_kernel_refuses_a_length_that_is_not_the_grid():
    f = einfuse.compile("na2d:shape=4x4,kernel=3")
    ok = torch.randn(1, 1, 16, 16)
    assert f(ok, ok, ok).shape == (1, 1, 16, 16)
    bad = torch.randn(1, 1, 20, 16)
    with pytest.raises(CodegenError, match="4x4 grid has 16 tokens, but there are 20 queries"):
        f(bad, bad, bad)
    with pytest.raises(CodegenError, match="20 keys"):
        f(ok, bad, bad)


def test_simulator_refuses_a_sequence_that_is_not_the_grid():
    with pytest.raises(SimulatorError, match="32x32 grid has 1024 tokens, but there are 4096 queries"):
        simulate(einfuse.load_spec("na2d:shape=32x32"), "fusemax", workload("bert-base", 4096))


@pytest.mark.parametrize("args,words", [
    (["run", "na2d", "--shape", "1,2,100,32"], "16x16 grid has 256 tokens, but there are 100 queries"),
    (["run", "na2d:shape=4x4,kernel=3", "--kv-len", "20"], "there are 20 keys"),
    (["simulate", "na2d:shape=32x32", "--seq", "4K", "--no-progress"], "there are 4096 queries"),
    (["demo", "na2d:shape=4x4,kernel=3", "--shape", "1,2,77,16"], "there are 77 queries"),
    (["passes", "na2d", "--sparsity", "100"], "there are 100 queries"),
])
def test_cli_grid_mismatch_is_one_line_exit_2(capsys, args, words):
    code, _, err = cli(capsys, *args)
    assert code == 2 and words in err and err.count("\n") == 1


def test_cli_without_a_length_uses_the_grid(capsys):
    code, out, _ = cli(capsys, "run", "na2d:shape=4x6,kernel=3")
    assert code == 0 and "O[1, 2, 24, 32]" in out
    code, out, _ = cli(capsys, "check", "na2d:shape=4x6,kernel=3")
    assert code == 0 and out.startswith("ok: na2d")
    code, out, _ = cli(capsys, "simulate", "na2d:shape=4x4,kernel=3", "--no-progress", "--json")
    assert code == 0 and '"seq": 16' in out
