"""einfuse: declare an attention variant once as an Einsum cascade; get a fused GPU kernel and a
cycle-level estimate of the same variant on a spatial-array accelerator.

The public names below are imported on first use (PEP 562), so ``import einfuse`` and the command
line's ``--help`` and ``list`` do not pay for sympy, networkx and NumPy before they need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# functions of scores and indices for score_mod / mask_mod (einfuse.frontends.symbolic)
SYMBOLIC = ("abs", "clamp", "cos", "eq", "exp", "log", "maximum", "minimum", "ne", "reciprocal", "relu",
            "sigmoid", "sin", "sqrt", "tan", "tanh", "where")

# public name -> module that defines it
_LAZY = {
    "compile": "einfuse.api",  # einfuse.compile(spec, **options)
    "plan": "einfuse.api",  # einfuse.plan(spec): the kernel plan
    "format_plan": "einfuse.lowering",
    "EinfuseError": "einfuse.errors",
    "BUILTINS": "einfuse.frontends",
    "attention": "einfuse.frontends",
    "linear_attention": "einfuse.frontends",
    "load_spec": "einfuse.frontends",
    "Cascade": "einfuse.ir",
    "format_cascade": "einfuse.ir",
    "parse_cascade": "einfuse.ir",
    "tensor": "einfuse.frontends.captured",  # ef.tensor("bias", ndim=2): a captured tensor placeholder
    **{name: "einfuse.frontends.symbolic" for name in SYMBOLIC},
}

# (compile is public but not in __all__: `from einfuse import *` must not shadow the builtin)
__all__ = [
    "BUILTINS", "Cascade", "EinfuseError", "attention", "format_cascade", "format_plan", "linear_attention",
    "load_spec", "parse_cascade", "plan", "tensor", *SYMBOLIC,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'einfuse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports this module stands for
    from einfuse.api import compile as compile
    from einfuse.api import plan as plan
    from einfuse.errors import EinfuseError as EinfuseError
    from einfuse.frontends import BUILTINS as BUILTINS
    from einfuse.frontends import attention as attention
    from einfuse.frontends import linear_attention as linear_attention
    from einfuse.frontends import load_spec as load_spec
    from einfuse.frontends.captured import tensor as tensor
    from einfuse.frontends.symbolic import (  # noqa: F401
        abs,
        clamp,
        cos,
        eq,
        exp,
        log,
        maximum,
        minimum,
        ne,
        reciprocal,
        relu,
        sigmoid,
        sin,
        sqrt,
        tan,
        tanh,
        where,
    )
    from einfuse.ir import Cascade as Cascade
    from einfuse.ir import format_cascade as format_cascade
    from einfuse.ir import parse_cascade as parse_cascade
    from einfuse.lowering import format_plan as format_plan
