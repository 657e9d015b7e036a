"""Front ends: the Python DSL, the built-in library, and loading a SPEC from the command line."""

from __future__ import annotations

import os
import runpy

from einfuse.errors import EinfuseError, SpecError
from einfuse.frontends.dsl import attention, linear_attention
from einfuse.frontends.library import BUILTINS, load_builtin, parse_spec
from einfuse.ir.cascade import Cascade
from einfuse.ir.parser import parse_cascade


def load_spec(spec: str) -> Cascade:
    """A cascade from a SPEC: a built-in with options (``na2d:kernel=7``), a ``.py`` file defining
    ``cascade`` (a Cascade or a function returning one), or a text file in the cascade syntax."""
    if os.path.exists(spec) and os.path.isfile(spec):
        if spec.endswith(".py"):
            return _load_python(spec)
        with open(spec, encoding="utf-8") as fh:
            return parse_cascade(fh.read())
    if spec.endswith((".py", ".ein", ".txt")) or os.sep in spec:
        raise SpecError(f"spec file {spec!r} does not exist")
    return load_builtin(spec)


def _load_python(path: str) -> Cascade:
    try:
        namespace = runpy.run_path(path)
    except EinfuseError:
        raise
    except Exception as exc:
        raise SpecError(f"{path}: {type(exc).__name__}: {exc}") from None
    obj = namespace.get("cascade")
    if callable(obj) and not isinstance(obj, Cascade):
        obj = obj()
    if not isinstance(obj, Cascade):
        raise SpecError(f"{path}: define `cascade` as an einfuse Cascade (e.g. cascade = ef.attention(...))")
    return obj


__all__ = ["BUILTINS", "attention", "linear_attention", "load_builtin", "load_spec", "parse_spec"]
