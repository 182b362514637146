"""`pimc config-show`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc config-show' is not implemented yet")
