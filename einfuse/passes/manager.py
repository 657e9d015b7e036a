"""Pass manager: run a pipeline of passes, record the cascade after each, optionally verify each.

A pipeline is a list of pass names, each optionally with its own options in brackets::

    lower(c, ["split_kv[splits=4]", "fuse[tile=32]", "tile[rank=P,tile=64]"])
    lower(c, ["fuse"], tile=128)          # keyword options go to every pass that takes them

``pipeline=None`` lowers automatically: every pass of ``DEFAULT_PIPELINE`` that applies runs, the
others are recorded in ``skipped`` with the reason (a softmax variant gets ``fuse``, causal linear
attention gets ``lightning``). With ``verify_sizes`` the reference executor checks every step against
the input cascade on random inputs, so a user lowering their own variant sees at once which pass (if
any) changed the result.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from einfuse.errors import PassError
from einfuse.ir.cascade import Cascade
from einfuse.ir.parser import split_top
from einfuse.ir.printer import format_cascade
from einfuse.passes.defer_division import defer_division
from einfuse.passes.fusion import fuse_online_softmax
from einfuse.passes.lightning import split_lightning
from einfuse.passes.offload import split_kv
from einfuse.passes.rewrite import PassOptionError
from einfuse.passes.tiling import tile_rank

PASSES: dict[str, Callable[..., Cascade]] = {
    "defer_division": defer_division,
    "fuse": fuse_online_softmax,
    "tile": tile_rank,
    "lightning": split_lightning,
    "split_kv": split_kv,
}
DEFAULT_PIPELINE: tuple[str, ...] = ("fuse", "lightning")


@dataclass(frozen=True)
class LoweringResult:
    """The lowered cascade, and ``steps``: (pass name, cascade after it) for every pass that ran."""

    source: Cascade
    cascade: Cascade
    steps: list[tuple[str, Cascade]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def passes_run(self) -> list[str]:
        return [name for name, _ in self.steps]

    def format(self, print_after_all: bool = False) -> str:
        lines = []
        for name, c in self.steps:
            err = f" (verified: rel. error {self.errors[name]:.1e})" if name in self.errors else ""
            if print_after_all:
                lines.append(f"# ---- after {name}{err} ----")
                lines.append(format_cascade(c).rstrip("\n"))
            else:
                lines.append(f"ran {name}{err}")
        lines.extend(f"skipped {name}: {why}" for name, why in self.skipped)
        return "\n".join(lines)


def parse_pipeline(items: str | Sequence[str]) -> list[tuple[str, dict[str, object]]]:
    """``"split_kv[splits=4],fuse[tile=32]"`` -> ``[("split_kv", {"splits": 4}), ("fuse", {"tile": 32})]``."""
    if isinstance(items, str):
        items = [x for x in split_top(items) if x]
    out = []
    for item in items:
        item = item.strip()
        name, bracket, rest = item.partition("[")
        name = name.strip()
        if name not in PASSES:
            close = difflib.get_close_matches(name, list(PASSES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise PassError(f"unknown pass {name!r}{hint}; passes: {', '.join(PASSES)}")
        opts: dict[str, object] = {}
        if bracket:
            if not rest.endswith("]"):
                raise PassError(f"pipeline item {item!r}: expected name[key=value,...]")
            for kv in filter(None, (x.strip() for x in split_top(rest[:-1]))):
                key, eq, value = kv.partition("=")
                if not eq:
                    raise PassError(f"pipeline item {item!r}: option {key!r} needs a value (key=value)")
                opts[key.strip()] = _convert(value.strip())
        out.append((name, opts))
    return out


def _convert(text: str) -> object:
    if text.isdigit():
        return int(text)
    if "/" in text and all(x.strip().isdigit() for x in text.split("/")):
        return [int(x) for x in text.split("/")]
    return text


def _accepts(fn: Callable[..., Cascade]) -> set[str]:
    return set(list(inspect.signature(fn).parameters)[1:])


def lower(c: Cascade, pipeline: Sequence[str] | str | None = None, *,
          verify_sizes: Mapping[str, int] | None = None, **options: object) -> LoweringResult:
    """Run ``pipeline`` on ``c`` (see the module docstring); returns every intermediate cascade."""
    auto = pipeline is None
    items = [(n, {}) for n in DEFAULT_PIPELINE] if auto else parse_pipeline(pipeline)
    used: set[str] = set()
    for name, opts in items:
        bad = set(opts) - _accepts(PASSES[name])
        if bad:
            raise PassError(f"pass {name}: unknown option {min(bad)}; options: "
                            f"{', '.join(sorted(_accepts(PASSES[name]))) or 'none'}")
        used |= _accepts(PASSES[name]) & set(options)
    unused = set(options) - used
    if unused:
        raise PassError(f"option {min(unused)} is not taken by any pass of the pipeline "
                        f"({', '.join(n for n, _ in items)})")
    steps: list[tuple[str, Cascade]] = []
    skipped: list[tuple[str, str]] = []
    errors: dict[str, float] = {}
    current = c
    for name, opts in items:
        fn = PASSES[name]
        kwargs = {k: v for k, v in options.items() if k in _accepts(fn)} | opts
        try:
            current = fn(current, **kwargs)
        except PassError as exc:
            if not auto or isinstance(exc, PassOptionError):
                raise
            why = str(exc)
            skipped.append((name, why.split(": ", 1)[1] if why.startswith(f"{name}: ") else why))
            continue
        except (TypeError, ValueError) as exc:  # a missing option, or one of the wrong type ('splits=x')
            if isinstance(exc, ValueError) and not kwargs:
                raise
            raise PassError(f"pass {name}: bad options {kwargs}: {exc}") from None
        steps.append((name, current))
        if verify_sizes is not None:
            from einfuse.passes.verify import check_equivalent

            errors[name] = check_equivalent(c, current, verify_sizes, seeds=(0,))
    return LoweringResult(c, current, steps, skipped, errors)


__all__ = ["DEFAULT_PIPELINE", "PASSES", "LoweringResult", "lower", "parse_pipeline"]
