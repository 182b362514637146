"""`pimc quantize`: calibrate and quantize an ONNX model, write pimc's quantization as a QDQ model.

The QDQ model lets onnxruntime (or any ONNX tool) check pimc's quantization independently of pimc:
the integer reference must agree with it (spec/quantization.md §8).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pimc.errors import InputError


def main(model: str, output_path: str, config: str, input_shapes: tuple[str, ...], quant: dict[str, Any]) -> None:
    import onnx

    from pimc.commands.compile import quantize, resolve_config
    from pimc.frontend.onnx_import import import_onnx, parse_input_shapes
    from pimc.quant.qdq_export import export_qdq

    out = Path(output_path)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"{output_path}: the QDQ model is an ONNX file; give an output path ending in .onnx")
    module = import_onnx(model, parse_input_shapes(input_shapes))
    cfg = resolve_config(config, quant)
    quantize(module, cfg, quant)
    qdq = export_qdq(module, model)
    try:
        onnx.save(qdq, out)
    except OSError as err:
        raise InputError(f"{output_path}: cannot write the QDQ model: {err.strerror or err}") from None
    print(f"wrote {out} ({len(qdq.graph.node)} nodes, opset {qdq.opset_import[0].version})")
