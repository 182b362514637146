"""`pimc opt`: run passes on textual IR, as ``xdsl-opt`` does, with pimc's dialects and passes.

Uses the same pieces as xDSL's opt driver (``xdsl.parser.Parser`` on a context with the dialects
registered, ``xdsl.passes.PassPipeline`` built from the pipeline text, ``xdsl.printer.Printer``),
with pimc's registry so unknown passes and bad options give clear errors, and with the hardware
configuration taken from the IR's ``pimc.hw`` attribute or ``-c``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runtime.errors import UserError


def parse_ir(text: str, source: str):
    """A module from textual IR; a syntax or verification error names the file, line and column."""
    from xdsl.parser import Parser
    from xdsl.utils.exceptions import ParseError, VerifyException

    from pimc.pipeline import make_context

    ctx = make_context()
    try:
        module = Parser(ctx, text, source).parse_module()
    except ParseError as err:
        raise UserError(f"cannot parse {source}: {err}") from None
    try:
        module.verify()
    except VerifyException as err:
        raise UserError(f"{source} does not verify: {err}") from None
    return ctx, module


def main(
    ir_file: str,
    pipeline: str,
    output_path: str | None,
    print_ir_after_all: bool,
    plugins: tuple[str, ...],
    config: str | None,
) -> None:
    from pimc import pipeline as pl
    from pimc.driver import write_ir

    passes = pl.parse(pipeline, pl.available_passes(plugins))
    path = Path(ir_file)
    if ir_file == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        if not path.is_file():
            raise UserError(f"IR file {ir_file} does not exist")
        text, source = path.read_text(encoding="utf-8"), str(path)
    ctx, module = parse_ir(text, source)
    cfg = None
    if config is not None:
        from pimc.hw import load_config

        cfg = load_config(config)
    pl.run_pipeline(module, passes, cfg, print_ir_after_all=print_ir_after_all, ctx=ctx)
    write_ir(module, output_path)
