"""`pimc asm TEXT.s -o PROGRAM.pimx`: assemble a program's text form into a program file."""

from __future__ import annotations

from pathlib import Path

from runtime.asm import assemble
from runtime.container import write_program
from runtime.errors import ProgramError


def main(text: str, output_path: str) -> None:
    path = Path(text)
    try:
        source = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except FileNotFoundError:
        raise ProgramError(f"{path}: no such text file") from None
    except IsADirectoryError:
        raise ProgramError(f"{path}: is a directory, expected a program text file") from None
    except UnicodeDecodeError as e:
        raise ProgramError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ProgramError(f"{path}: cannot read: {e.strerror}") from None
    data = write_program(assemble(source, str(path)))
    try:
        Path(output_path).write_bytes(data)
    except OSError as e:
        raise ProgramError(f"{output_path}: cannot write the program: {e.strerror}") from None
