"""`pimc eval`: top-1 accuracy of the simulator and of the float model on labelled data.

The float model is the original ONNX file: ``--model``, or by default the ``.onnx`` file beside
the program with the same stem (``pimc compile model.onnx`` writes ``model.pimx`` there). It runs
on onnxruntime when that is installed, else on pimc's float reference of the same ONNX graph.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pimc.errors import InputError


def _labels(path: str, n: int) -> np.ndarray:
    from pimc.frontend.inputs import read_arrays

    y = read_arrays(path)
    if not isinstance(y, np.ndarray):
        raise InputError(f"{path}: labels must be a .npy array of class indices")
    y = np.squeeze(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise InputError(f"{path}: labels must be a 1-d integer array of class indices, got {y.dtype} {list(y.shape)}")
    if y.shape[0] != n:
        raise InputError(f"{path}: {y.shape[0]} labels for {n} images")
    return y.astype(np.int64)


def _top1(out: np.ndarray) -> np.ndarray:
    return np.asarray(out).reshape(out.shape[0], -1).argmax(axis=1)


def float_predictions(model_path: str, inputs: dict[str, np.ndarray], output_name: str) -> tuple[np.ndarray, str]:
    """Top-1 predictions of the float ONNX model, and which engine computed them."""
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        try:
            sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise InputError(f"{model_path}: onnxruntime cannot load the model ({err})") from None
        names = [o.name for o in sess.get_outputs()]
        out = sess.run([output_name if output_name in names else names[0]], feeds)[0]
        return _top1(out), "onnxruntime"
    from pimc.frontend.onnx_import import import_onnx
    from pimc.reference.float_ref import run_float

    outs = run_float(import_onnx(model_path), feeds)
    out = outs.get(output_name, next(iter(outs.values())))
    return _top1(out), "pimc float reference"


def main(program: str, data_path: str, labels_path: str, model_path, batch_size: int, report_path) -> None:
    from rich.console import Console
    from rich.table import Table

    from pimc.commands.run import execute, program_inputs
    from runtime.container import load_program

    prog = load_program(program)
    if model_path is None:
        guess = Path(program).with_suffix(".onnx")
        if not guess.is_file():
            raise InputError(f"no float model given and {guess} does not exist; name the ONNX model the program was compiled from with --model")
        model_path = str(guess)
    elif not Path(model_path).is_file():
        raise InputError(f"{model_path}: no such model file")
    inputs = program_inputs(data_path, prog)
    n = next(iter(inputs.values())).shape[0]
    labels = _labels(labels_path, n)
    outputs, report = execute(prog, inputs, batch_size, False, data_path)
    out_name = prog.outputs[0].name
    sim = _top1(outputs[out_name])
    flt, engine = float_predictions(model_path, inputs, out_name)
    result = {
        "images": int(n),
        "simulator_top1": float((sim == labels).mean()),
        "float_top1": float((flt == labels).mean()),
        "agreement": float((sim == flt).mean()),
        "float_engine": engine,
        "model": str(model_path),
        "program": str(program),
    }
    result["difference_pct_points"] = 100 * (result["simulator_top1"] - result["float_top1"])
    table = Table(title=f"top-1 accuracy on {n} images ({Path(data_path).name})")
    table.add_column("model")
    table.add_column("top-1", justify="right")
    table.add_column("correct", justify="right")
    table.add_row("simulator (pimc program)", f"{100 * result['simulator_top1']:.2f} %", f"{int((sim == labels).sum())}/{n}")
    table.add_row(f"float ({engine})", f"{100 * result['float_top1']:.2f} %", f"{int((flt == labels).sum())}/{n}")
    table.add_section()
    table.add_row("agreement (same top-1)", f"{100 * result['agreement']:.2f} %", f"{int((sim == flt).sum())}/{n}")
    Console(file=sys.stdout).print(table)
    if report_path:
        Path(report_path).write_text(json.dumps({"accuracy": result, "simulation": report}, indent=2) + "\n", encoding="utf-8")
