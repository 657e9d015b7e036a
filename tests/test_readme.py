"""Every example in README.md runs here, doctest-style, so the README cannot drift from the code.

* a ```py block is a sketch that needs what CI lacks (a GPU, several processes, a model): it must
  compile (so its syntax cannot drift) but does not run;
* a ```python block runs; when a ```text block follows it, that is its exact output, and a text
  block that starts with ``cascade`` must also parse and print back unchanged;
* every ``einfuse ...`` command in a ```bash block runs (in a temporary folder), except the
  lines in :data:`NOT_RUN`;
* every ``einfuse COMMAND --option`` in the command table names a real command and option.

Without a GPU the examples run at CPU scale through :data:`CPU_SCALE` (same code paths, smaller
sizes); each of its replacements must still match the README, so none of them can go stale.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
import shlex

import pytest
import torch

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)

CPU_SCALE = {
    'device="cuda"': 'device="cpu"',
    "torch.randn(4, 16, 16384, 128,": "torch.randn(1, 2, 128, 128,",
    "--seq 1K,4K,16K,64K,256K,1M": "--seq 1K,4K",
    "einfuse demo ": "einfuse demo --seq 1K ",
}
NOT_RUN = {
    "pip install": "installs the package (the tests already run in the installed checkout)",
    "python3 -m pytest": "runs this test suite",
}


def blocks() -> list[tuple[str, str, int]]:
    """(language, body, index) of every fenced block, in order."""
    return [(m.group(1), m.group(2), i) for i, m in enumerate(FENCE.finditer(README.read_text()))]


def scaled(text: str) -> str:
    if torch.cuda.is_available():
        return text
    for old, new in CPU_SCALE.items():
        text = text.replace(old, new)
    return text


def test_cpu_scale_replacements_all_apply():
    text = README.read_text()
    stale = [old for old in CPU_SCALE if old not in text]
    assert not stale, f"README no longer contains {stale}: update CPU_SCALE in {__file__}"


PYTHON = [(body, nxt) for (lang, body, i), nxt in zip(blocks(), blocks()[1:] + [("", "", -1)])
          if lang == "python"]


@pytest.mark.parametrize("body,following", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_examples_run_and_print_what_the_readme_shows(body, following):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(scaled(body), str(README), "exec"), {"__name__": "__readme__"})
    lang, text, _ = following
    if lang == "text":
        assert out.getvalue().rstrip() == text.rstrip(), "README output block differs from the real output"


def test_text_form_in_the_readme_parses_as_shown():
    import einfuse as ef

    shown = [body for lang, body, _ in blocks() if lang == "text" and body.startswith("cascade ")]
    assert shown
    for text in shown:
        assert ef.format_cascade(ef.parse_cascade(text)) == text


def _commands() -> list[str]:
    cmds = []
    for lang, body, _ in blocks():
        if lang != "bash":
            continue
        for line in body.splitlines():
            line = line.split("  #")[0].strip()
            cmds += [c.strip() for c in line.split("&&") if c.strip()]
    return cmds


COMMANDS = _commands()


def test_every_bash_line_is_run_or_said_why_not():
    for cmd in COMMANDS:
        assert cmd.startswith("einfuse ") or any(cmd.startswith(k) for k in NOT_RUN), cmd


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.startswith("einfuse ")])
def test_bash_examples_run(cmd, tmp_path, monkeypatch, capsys):
    from einfuse.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(shlex.split(scaled(cmd + " "))[1:])
    assert exc.value.code == 0, capsys.readouterr().err


def test_command_table_names_real_commands_and_options():
    from einfuse.cli import cli

    rows = re.findall(r"^\| `einfuse ([a-z][a-z-]*)([^`]*)` \|", README.read_text(), re.M)
    assert len(rows) >= 8
    for name, rest in rows:
        assert name in cli.commands, name
        known = {o for p in cli.commands[name].params for o in getattr(p, "opts", [])}
        for opt in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest):
            assert opt in known, f"einfuse {name} has no option {opt}"


SKETCHES = [body for lang, body, _ in blocks() if lang == "py"]


@pytest.mark.parametrize("body", SKETCHES, ids=[f"sketch-{i}" for i in range(len(SKETCHES))])
def test_sketches_compile(body: str) -> None:
    compile(body, str(README), "exec")
