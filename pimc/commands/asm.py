"""`pimc asm`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc asm' is not implemented yet")
