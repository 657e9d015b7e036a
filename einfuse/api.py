"""The user-facing entry points that accept specs as well as cascades.

Spec strings (``"sliding_window:window=1024"``, a spec file) belong to the front ends, which the
back ends never import; so ``einfuse.compile`` resolves the spec here and hands the cascade on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from einfuse.ir.cascade import Cascade


def compile(spec: str | Cascade, *, target: str = "triton", sizes: Mapping[str, int] | None = None,
            decode: bool = True, decode_options: Mapping[str, Any] | None = None,
            torch_op: bool = True, **options: Any) -> Any:
    """Compile an attention variant to a GPU kernel callable on torch tensors.

    ``spec``: a built-in name with options (``"sliding_window:window=1024"``), a spec file, or a
    :class:`Cascade`; the rest as in :func:`einfuse.codegen.compile.compile`.
    """
    from einfuse.codegen.compile import compile as compile_cascade
    from einfuse.frontends import load_spec

    c = spec if isinstance(spec, Cascade) else load_spec(spec)
    return compile_cascade(c, target=target, sizes=sizes, decode=decode, decode_options=decode_options,
                           torch_op=torch_op, **options)


def plan(spec: str | Cascade, **lowering: Any) -> Any:
    """The kernel plan of a variant (what the back ends print); ``print(ef.format_plan(...))``."""
    from einfuse.frontends import load_spec
    from einfuse.lowering import kernel_plan

    c = spec if isinstance(spec, Cascade) else load_spec(spec)
    return kernel_plan(c, **lowering)
