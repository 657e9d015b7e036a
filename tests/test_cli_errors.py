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
