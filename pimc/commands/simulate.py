"""`pimc simulate`: compile an ONNX model (as `pimc compile` does) and run it on the simulator."""

from __future__ import annotations

from typing import Any

from runtime.errors import UserError


def compile_program(model: str, pipeline: str | None, plugins, config: str, input_shapes, quant: dict[str, Any]):
    """ONNX -> Program in memory, through the same steps and helpers as ``pimc compile``."""
    return compile_with_module(model, pipeline, plugins, config, input_shapes, quant)[0]


def compile_with_module(model: str, pipeline: str | None, plugins, config: str | dict, input_shapes, quant: dict[str, Any]):
    """(Program, the quantized nn module it was compiled from): tests compare the simulator with
    the integer reference of exactly that module. ``config`` may be a resolved config dict."""
    from pimc import pipeline as pl
    from pimc.backend.emit import emit_program
    from pimc.commands.compile import quantize, resolve_config
    from pimc.frontend.onnx_import import import_onnx, parse_input_shapes
    from pimc.hw import attach_config

    if isinstance(config, dict):
        from runtime.hwconfig import validate

        cfg = validate(config, "the given configuration")
    else:
        cfg = resolve_config(config, quant)
    text = pipeline if pipeline is not None else pl.default_pipeline(cfg)
    passes = pl.available_passes(plugins)
    pl.parse(text, passes)  # a bad pipeline fails before the import
    before, after = pl.split_at_codegen(text, passes)
    if not after:
        raise UserError(f"the pipeline must end with '{pl.CODEGEN_PASS}' to produce a program (got {text!r})")
    module = import_onnx(model, parse_input_shapes(input_shapes) or None)
    attach_config(module, cfg)
    quantize(module, cfg, quant)
    module_q = module.clone()
    ctx = pl.make_context()
    pl.run_pipeline(module, pl.parse(before, passes), ctx=ctx)
    pl.run_pipeline(module, pl.parse(after, passes), ctx=ctx)
    return emit_program(module, cfg), module_q


def main(model, input_path, pipeline, plugins, output_path, report_path, batch_size, no_fast_path, config, input_shapes, quant) -> None:
    from pimc.commands.run import execute, finish, program_inputs

    program = compile_program(model, pipeline, plugins, config, input_shapes, quant)
    inputs = program_inputs(input_path, program)
    outputs, report = execute(program, inputs, batch_size, no_fast_path, input_path)
    finish(outputs, report, output_path, report_path)
