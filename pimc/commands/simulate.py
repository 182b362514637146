"""`pimc simulate`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc simulate' is not implemented yet")
