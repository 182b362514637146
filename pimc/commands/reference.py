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
        from pimc.hw import load_config
        from pimc.quant import quantize_module
        from pimc.reference.int_ref import run_int

        cfg = load_config(config)
        # an imported QDQ model keeps its quantize/dequantize pairs: nn-quantize adopts them
        calib = load_inputs(quant["calibration"], module) if quant.get("calibration") else None
        # quantize_module raises the InputError that says how to give calibration data when a
        # float model comes without it
        quantize_module(
            module,
            calib,
            cfg,
            weight_bits=quant.get("weight_bits"),
            act_bits=quant.get("act_bits"),
            method=quant.get("calib_method") or "minmax",
            percentile=quant.get("percentile") or 99.99,
        )
        outputs = run_int(module, inputs)
    save_outputs(output_path, outputs)
