"""`pimc simulate`: compile an ONNX model (as `pimc compile` does) and run it on the simulator."""

from __future__ import annotations


def main(model, input_path, pipeline, plugins, output_path, report_path, batch_size, no_fast_path, config, input_shapes, quant) -> None:
    from pimc import driver
    from pimc.commands.run import execute, finish, program_inputs

    program = driver.compile_model(
        model, config, driver.QuantOptions.from_cli(quant), pipeline, plugins, input_shapes
    ).program
    inputs = program_inputs(input_path, program)
    outputs, report = execute(program, inputs, batch_size, no_fast_path, input_path)
    finish(outputs, report, output_path, report_path)
