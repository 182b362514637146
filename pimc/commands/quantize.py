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

    from pimc import driver
    from pimc.quant.qdq_export import export_qdq

    out = Path(output_path)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"{output_path}: the QDQ model is an ONNX file; give an output path ending in .onnx")
    q = driver.QuantOptions.from_cli(quant)
    cfg = driver.resolve_config(config, q)
    module = driver.load_model(model, cfg, input_shapes)
    driver.quantize(module, cfg, q)
    qdq = export_qdq(module, model)
    try:
        onnx.save(qdq, out)
    except OSError as err:
        raise InputError(f"{output_path}: cannot write the QDQ model: {err.strerror or err}") from None
    print(f"wrote {out} ({len(qdq.graph.node)} nodes, opset {qdq.opset_import[0].version})")
