"""`pimc reference`: run the float nn IR (or, with --int, the quantized network in exact integer
arithmetic) on user inputs and write the model's outputs.

The float path is the first rung of the verification ladder; the integer path is the golden model
the simulator must match bit for bit. Both read inputs through ``pimc.frontend.inputs`` so a
wrong file is rejected with the same message everywhere.
"""

from __future__ import annotations

from typing import Any

from pimc.errors import InputError


def main(
    model: str,
    input_path: str,
    output_path: str,
    integer: bool,
    config: str,
    input_shapes: tuple[str, ...],
    quant: dict[str, Any],
) -> None:
    from pimc.frontend.inputs import load_inputs, save_outputs
    from pimc.frontend.onnx_import import import_onnx, parse_input_shapes

    module = import_onnx(model, parse_input_shapes(input_shapes))
    inputs = load_inputs(input_path, module)
    if not integer:
        if quant.get("calibration"):
            raise InputError("--calibration is only used with --int (the float reference needs no calibration data)")
        from pimc.reference.float_ref import run_float

        outputs = run_float(module, inputs)
    else:
        from pimc import driver
        from pimc.hw import attach_config
        from pimc.reference.int_ref import run_int

        q = driver.QuantOptions.from_cli(quant)
        cfg = driver.resolve_config(config, q)
        attach_config(module, cfg)
        # a float model without calibration data gets the error that says how to give it; an
        # imported QDQ model keeps its quantize/dequantize pairs and needs none
        driver.quantize(module, cfg, q)
        outputs = run_int(module, inputs)
    save_outputs(output_path, outputs)
