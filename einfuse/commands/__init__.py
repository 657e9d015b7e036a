"""CLI sub-command modules. Each module here defines ``register(cli: click.Group) -> None``;
:mod:`einfuse.cli` imports every module named in ``COMMAND_MODULES`` that exists."""

COMMAND_MODULES = ("passes", "compile", "bench", "simulate", "offload", "explore")
