"""`pimc arch-report`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc arch-report' is not implemented yet")
