"""`pimc disasm`."""

from runtime.errors import UserError


def main(*args, **kwargs) -> None:
    raise UserError("'pimc disasm' is not implemented yet")
