"""Bad command lines: one line on stderr naming what to change, exit code 2, never a traceback.

Run in-process through ``einfuse.cli.main`` (what the console script calls), so each case costs
milliseconds rather than an interpreter start; ``tests/test_cli.py`` keeps a few subprocess runs.
"""

import pytest

from einfuse.cli import main


def cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def assert_one_line_error(code, err, words):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err


@pytest.mark.parametrize("args,words", [
    (["run", "softmax", "--kv-len", "0"], "--kv-len 0"),
    (["run", "softmax", "--kv-len", "-3"], "--kv-len -3"),
    (["passes", "softmax", "--sparsity", "0"], "P = 0"),
])
def test_lengths_below_one_are_rejected(capsys, args, words):
    assert_one_line_error(*cli(capsys, *args)[::2], words)


@pytest.fixture
def bad_files(tmp_path):
    files = {
        "binary": (tmp_path / "bin.ein", b"\x00\x01\x02\xff\xfe binary"),
        "utf16": (tmp_path / "u16.ein", "cascade x\nranks P\n".encode("utf-16")),
        "raises": (tmp_path / "raises.py", b"def cascade():\n    raise RuntimeError('boom')\n"),
        "syntax": (tmp_path / "syntax.py", b"def cascade(:\n"),
        "exits": (tmp_path / "exits.py", b"import sys\nsys.exit(3)\n"),
        "yaml": (tmp_path / "arch.yaml", b"\xff\xfe\x00"),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {k: str(p) for k, (p, _) in files.items()} | {"dir": str(tmp_path)}


@pytest.mark.parametrize("args,words", [
    (["show", "{binary}"], "is not UTF-8 text"),
    (["show", "{utf16}"], "(it looks like UTF-16)"),
    (["simulate", "{binary}", "--no-progress"], "is not UTF-8 text"),
    (["check", "{raises}"], "cascade() raised RuntimeError: boom"),
    (["show", "{syntax}"], "SyntaxError"),
    (["show", "{exits}"], "SystemExit"),
    (["show", "{dir}"], "is a directory"),
    (["simulate", "softmax", "--arch", "{yaml}", "--no-progress"], "is not UTF-8 text"),
])
def test_unreadable_specs_are_one_line(capsys, bad_files, args, words):
    code, _, err = cli(capsys, *(a.format(**bad_files) for a in args))
    assert_one_line_error(code, err, words)


@pytest.mark.parametrize("args,words", [
    (["simulate", "softmax", "--model", ""], "give at least one model"),
    (["simulate", "softmax", "--model", ",", "--no-progress"], "give at least one model"),
    (["simulate", "softmax", "--seq", "inf", "--no-progress"], "is not a number"),
    (["simulate", "softmax", "--seq", "1e400", "--no-progress"], "is not a number"),
    (["simulate", "softmax", "--size", "ZZ=4", "--no-progress"], "has no rank or param ZZ"),
    (["passes", "softmax", "--pipeline", "fuse[", "--print-after-all"], "expected name[key=value,...]"),
    (["passes", "decode", "--pipeline", "split_kv[splits=x]"], "pass split_kv: bad options"),
    (["run", "softmax", "--size", "=3"], "expected NAME=INTEGER"),
    (["run", "softmax", "--size", "ZZ=4"], "softmax has no rank or param ZZ"),
    (["run", "softmax", "--size", "N=2", "--size", "N=3"], "given twice"),
    (["run", "agent", "--size", "N=0"], "expected NAME=INTEGER >= 1"),
    (["compile", "softmax", "--size", "X1=4"], "not a param or rank"),
    (["check", "na3d:shape=100x100x100"], "use a smaller --shape (at most 268,435,456 scores) or grid"),
    (["run", "softmax", "--shape", "1,1,100000,8"], "10,000,000,000 of them"),
    # click's own usage errors are one line too, pointing at the command's help
    (["run", "softmax", "--seed", "-1"], "(see: einfuse run --help)"),
    (["run", "softmax", "--shapex", "1"], "Did you mean '--shape'?"),
    (["nosuchcommand"], "No such command"),
    (["run"], "Missing argument 'SPEC'"),
])
def test_bad_arguments_are_one_line(capsys, args, words):
    code, _, err = cli(capsys, *args)
    assert_one_line_error(code, err, words)


def test_an_internal_error_is_one_line_exit_1_and_traceback_on_request(capsys, monkeypatch):
    import einfuse.frontends

    def broken(spec):
        raise KeyError("internal")

    monkeypatch.setattr(einfuse.frontends, "load_spec", broken)
    code, _, err = cli(capsys, "show", "softmax")
    assert code == 1 and err.startswith("internal error: KeyError") and err.count("\n") == 1
    monkeypatch.setenv("EINFUSE_TRACEBACK", "1")
    with pytest.raises(KeyError):
        main(["show", "softmax"])
