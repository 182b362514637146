"""`pimc reference`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc reference' is not implemented yet")
