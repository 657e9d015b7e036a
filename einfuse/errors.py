"""Errors einfuse raises on bad input.

Every user-facing failure is an :class:`EinfuseError` so the CLI can print it on one line and exit 2.
Messages name the offending Einsum, rank, tensor or option, because that is what a user must change.
"""


class EinfuseError(Exception):
    """Base class of every error caused by what a user wrote or asked for."""


class SpecError(EinfuseError):
    """A variant specification (built-in name, options, DSL call, spec file) is invalid."""


class ParseError(EinfuseError):
    """The text form of a cascade could not be parsed."""


class ValidationError(EinfuseError):
    """A cascade is structurally invalid (undefined tensor, rank mismatch, cycle, ...)."""


class ExecutionError(EinfuseError):
    """Inputs given to the reference executor do not fit the cascade."""


class PassError(EinfuseError):
    """A rewrite pass cannot be applied to this cascade."""


class CodegenError(EinfuseError):
    """A back end cannot generate code for this cascade or these options."""


class SimulatorError(EinfuseError):
    """An architecture, mapping or simulation request is invalid."""
