"""einfuse: declare an attention variant once as an Einsum cascade; get a fused GPU kernel and a
cycle-level estimate of the same variant on a spatial-array accelerator."""

from einfuse.api import compile as compile  # einfuse.compile(spec, **options)
from einfuse.api import plan as plan  # einfuse.plan(spec): the kernel plan
from einfuse.errors import EinfuseError
from einfuse.frontends import BUILTINS, attention, linear_attention, load_spec
from einfuse.frontends.symbolic import (
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
from einfuse.ir import Cascade, format_cascade, parse_cascade
from einfuse.lowering import format_plan

__version__ = "0.1.0"

__all__ = [
    "BUILTINS", "Cascade", "EinfuseError", "abs", "attention", "clamp", "cos", "eq", "exp", "format_cascade",
    "format_plan", "linear_attention", "load_spec", "log", "maximum", "minimum", "ne", "parse_cascade", "plan",
    "reciprocal", "relu", "sigmoid", "sin", "sqrt", "tan", "tanh", "where",
]
