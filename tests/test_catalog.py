"""`einfuse list` and `einfuse --help` read einfuse/catalog.py, not the library: the table must say what
the library does, every option must be explained, and neither command may import the heavy modules."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

import einfuse
from einfuse.catalog import CATALOG, format_default
from einfuse.cli import cli


def _entry_source(name: str) -> str:
    b = einfuse.BUILTINS[name]
    opts = ", ".join(f"Option({k!r}, {v!r}, '...')" for k, v in b.options().items())
    return f"Entry({name!r}, {b.summary!r}, ({opts},)),"


def test_catalog_matches_the_library():
    table = {e.name: e for e in CATALOG}
    missing = sorted(set(einfuse.BUILTINS) - set(table))
    assert not missing, "add to einfuse/catalog.py CATALOG:\n" + "\n".join(map(_entry_source, missing))
    assert sorted(table) == sorted(einfuse.BUILTINS), "catalog names a built-in the library does not have"
    for name, b in einfuse.BUILTINS.items():
        e = table[name]
        got = [(o.name, o.default) for o in e.options]
        assert e.summary == b.summary and got == list(b.options().items()), \
            f"catalog entry {name} differs from the library; it should read\n{_entry_source(name)}"


def test_every_option_is_explained_with_its_default():
    out = CliRunner().invoke(cli, ["list"]).output
    for e in CATALOG:
        assert f"{e.name}: {e.summary}" in out
        for o in e.options:
            assert len(o.meaning) > 20
            assert f"{o.name}={format_default(o.default)}" in out
    flat = " ".join(out.split())  # meanings wrap
    assert "retrieval_heads=-1" in flat and "R = floor(retrieval_fraction * H)" in flat
    assert "head_dim=0" in flat and "0: the D of the inputs, at call time" in flat


@pytest.mark.parametrize("spec", [e.name for e in CATALOG])
def test_printed_defaults_parse_back_to_the_defaults(spec):
    from einfuse.frontends.library import parse_spec

    e = next(x for x in CATALOG if x.name == spec)
    text = ",".join(f"{o.name}={format_default(o.default)}" for o in e.options if o.default != ())
    assert parse_spec(f"{spec}:{text}")[1] == {o.name: o.default for o in e.options if o.default != ()}


def test_help_explains_spec_syntax_and_every_command_has_an_example():
    out = CliRunner().invoke(cli, ["--help"]).output
    assert "NAME[:KEY=VALUE,...]" in out and "FILE.py" in out and "Examples:" in out
    for name, cmd in cli.commands.items():
        text = CliRunner().invoke(cli, [name, "--help"]).output
        assert f"einfuse {name}" in text.split("Options:")[0].replace("Usage: einfuse " + name, ""), name


HEAVY = ("sympy", "numpy", "torch", "networkx", "triton", "rich")


@pytest.mark.parametrize("args", [["--help"], ["list"], ["run", "--help"]])
def test_help_and_list_start_fast_without_heavy_imports(args):
    code = "\n".join([
        "import resource, sys",
        "from einfuse.cli import main",
        "try:",
        f"    main({args!r})",
        "except SystemExit:",
        "    pass",
        "r = resource.getrusage(resource.RUSAGE_SELF)",
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), r.ru_utime + r.ru_stime, file=sys.stderr)",
    ])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded, cpu = r.stderr.strip().rsplit(" ", 1)
    assert loaded == "[]", f"{args} imported {loaded}"
    assert float(cpu) < 0.5, f"{args} took {cpu} s of CPU"


def test_import_einfuse_is_lazy_but_complete():
    r = subprocess.run([sys.executable, "-c", "import sys, einfuse; print('sympy' in sys.modules); "
                        "print(einfuse.compile.__module__, einfuse.attention.__module__); "
                        "from einfuse import parse_cascade, where; print(sorted(set(einfuse.__all__) - set(dir(einfuse))))"],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.split("\n")[:3] == ["False", "einfuse.api einfuse.frontends.dsl", "[]"], r.stdout + r.stderr
