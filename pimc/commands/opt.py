"""`pimc opt`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc opt' is not implemented yet")
