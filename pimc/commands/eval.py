"""`pimc eval`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc eval' is not implemented yet")
