"""`pimc run`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc run' is not implemented yet")
