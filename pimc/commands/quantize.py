"""`pimc quantize`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc quantize' is not implemented yet")
