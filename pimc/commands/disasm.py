"""`pimc disasm PROGRAM.pimx [-o FILE]`: print a program's text form (``spec/isa.lark``)."""

from __future__ import annotations

import sys
from pathlib import Path

from runtime.asm import disassemble
from runtime.container import load_program
from runtime.errors import ProgramError


def main(program: str, output_path: str | None) -> None:
    text = disassemble(load_program(program))
    if output_path is None:
        sys.stdout.write(text)
        return
    try:
        Path(output_path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise ProgramError(f"{output_path}: cannot write the text form: {e.strerror}") from None
