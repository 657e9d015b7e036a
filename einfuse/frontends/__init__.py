"""Front ends: the Python DSL, the built-in library, and loading a SPEC from the command line."""

from __future__ import annotations

import os
import runpy

from einfuse.errors import EinfuseError, SpecError
from einfuse.frontends.dsl import attention, linear_attention
from einfuse.frontends.library import BUILTINS, load_builtin, parse_spec
from einfuse.ir.cascade import Cascade
from einfuse.ir.parser import parse_cascade


def load_spec(spec: str | os.PathLike) -> Cascade:
    """A cascade from a SPEC: a built-in with options (``na2d:kernel=7``), a ``.py`` file defining
    ``cascade`` (a Cascade or a function returning one), or a text file in the cascade syntax (UTF-8)."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise SpecError(f"a SPEC is a built-in name with options (e.g. 'sliding_window:window=128'), the path "
                        f"of a .py or text file, or an einfuse Cascade; got {type(spec).__name__} {spec!r:.40}")
    if os.path.isdir(spec):
        raise SpecError(f"spec {spec!r} is a directory; give a .py or text file in it, or a built-in name")
    if os.path.isfile(spec):
        if spec.endswith(".py"):
            return _load_python(spec)
        return parse_cascade(_read_text(spec))
    if os.path.exists(spec):
        raise SpecError(f"spec {spec!r} is not a regular file")
    if spec.endswith((".py", ".ein", ".txt")) or os.sep in spec:
        raise SpecError(f"spec file {spec!r} does not exist")
    return load_builtin(spec)


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise SpecError(f"spec file {path!r} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise SpecError(f"spec file {path!r} is not UTF-8 text{hint}: byte {exc.start} cannot be decoded; "
                        "save the cascade as UTF-8") from None
    if "\x00" in text:
        raise SpecError(f"spec file {path!r} holds NUL bytes: it is a binary file, not a cascade in text form")
    return text


def _load_python(path: str) -> Cascade:
    try:
        namespace = runpy.run_path(path)
    except EinfuseError:
        raise
    except BaseException as exc:  # SystemExit, KeyboardInterrupt from a user's file: report, do not exit
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise SpecError(f"{path}: {type(exc).__name__}: {_one_line(exc)}") from None
    obj = namespace.get("cascade")
    if callable(obj) and not isinstance(obj, Cascade):
        try:
            obj = obj()
        except EinfuseError:
            raise
        except Exception as exc:
            raise SpecError(f"{path}: cascade() raised {type(exc).__name__}: {_one_line(exc)}") from None
    if not isinstance(obj, Cascade):
        raise SpecError(f"{path}: define `cascade` as an einfuse Cascade (e.g. cascade = ef.attention(...))")
    return obj


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or "(no message)"


__all__ = ["BUILTINS", "attention", "linear_attention", "load_builtin", "load_spec", "parse_spec"]
