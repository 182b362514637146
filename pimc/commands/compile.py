"""`pimc compile`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc compile' is not implemented yet")
