"""Helpers that build small ONNX graphs with onnx.helper and compare pimc with onnxruntime.

Reusable by every test area: ``graph_model`` makes a one-graph model (dynamic batch ``N`` by
default), ``save`` writes it, ``ort_run`` runs onnxruntime on it, ``float_vs_ort`` imports it with
pimc and returns the max error relative to max |output| against onnxruntime.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
LIGHT_MODELS = [
    "light_resnet50",
    "light_vgg19",
    "light_squeezenet",
    "light_densenet121",
    "light_inception_v1",
    "light_inception_v2",
    "light_shufflenet",
    "light_bvlc_alexnet",
    "light_zfnet512",
]

_NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64,
}


def value_info(name: str, shape, elem=TensorProto.FLOAT, dynamic_batch: bool = True) -> onnx.ValueInfoProto:
    dims = list(shape) if shape is not None else None
    if dims is not None and dynamic_batch and dims:
        dims = ["N"] + dims[1:]
    return helper.make_tensor_value_info(name, elem, dims)


def graph_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, tuple],
    outputs: dict[str, tuple | None] | list[str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    input_types: dict[str, int] | None = None,
    output_types: dict[str, int] | None = None,
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """A model of ``nodes``; inputs {name: shape}, outputs {name: shape or None (inferred)}."""
    input_types = input_types or {}
    output_types = output_types or {}
    if isinstance(outputs, list):
        outputs = {o: None for o in outputs}
    g_inputs = [value_info(n, s, input_types.get(n, TensorProto.FLOAT), dynamic_batch) for n, s in inputs.items()]
    g_outputs = [helper.make_tensor_value_info(n, output_types.get(n, TensorProto.FLOAT), s) for n, s in outputs.items()]
    inits = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "g", g_inputs, g_outputs, initializer=inits)
    ir = 8 if opset <= 18 else 10
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir)
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)  # fills the outputs' shapes
    for out, inf in zip(model.graph.output, inferred.graph.output):
        if not out.type.tensor_type.HasField("shape"):
            out.CopyFrom(inf)
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, directory: Path, name: str = "model.onnx") -> Path:
    path = Path(directory) / name
    onnx.save(model, path)
    return path


def ort_run(model: onnx.ModelProto | Path | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Max |got - want| relative to max |want| (absolute when want is all zeros)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want))) if want.size else 1.0
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def float_vs_ort(path: Path, feeds: dict[str, np.ndarray], input_shapes=None) -> tuple[float, dict, list]:
    """Import ``path`` with pimc, run the float reference and onnxruntime; (max rel err, pimc, ort)."""
    from pimc.frontend.onnx_import import import_onnx
    from pimc.reference.float_ref import run_float

    module = import_onnx(path, input_shapes)
    ours = run_float(module, feeds)
    theirs = ort_run(path, feeds)
    err = max(rel_err(o, t) for o, t in zip(ours.values(), theirs))
    return err, ours, theirs


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The same architecture with random weights in place of the light models' constant fills.

    Every ConstantOfShape (how the light models store weights) becomes a random initializer of its
    shape: He-normal for Conv/Gemm weights, positive values near 1 for BatchNormalization
    scale/variance and Mul factors, small normals for biases and means. Constant weights make every
    logit equal, which would hide errors.
    """
    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    use: dict[str, tuple[str, int]] = {}
    for node in m.graph.node:
        for k, name in enumerate(node.input):
            use.setdefault(name, (node.op_type, k))
    # follow Unsqueeze/Reshape chains to find the real consumer of a weight
    for node in m.graph.node:
        if node.op_type in ("Unsqueeze", "Reshape") and node.output[0] in use:
            use[node.input[0]] = use[node.output[0]]
    keep, new_inits = [], []
    for node in m.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        op, k = use.get(node.output[0], ("", -1))
        if op in ("Conv", "Gemm", "MatMul") and k == 1:
            fan_in = int(np.prod(shape[1:])) if op == "Conv" else int(min(shape))
            if op == "Gemm":
                fan_in = shape[-1] if len(shape) == 2 else fan_in
            value = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        elif (op == "BatchNormalization" and k in (1, 4)) or op == "Mul":
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.standard_normal(shape) * 0.1
        new_inits.append(numpy_helper.from_array(value.astype(np.float32), name=node.output[0]))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.initializer.extend(new_inits)
    m.ir_version = max(m.ir_version, 4)  # IR >= 4: initializers need not be graph inputs
    return m


def light_path(name: str) -> Path:
    return LIGHT_DIR / f"{name}.onnx"


def dtype_code(dtype) -> int:
    return _NP_TO_ONNX[np.dtype(dtype)]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The model with intermediate tensors ``names`` added as graph outputs (shapes inferred)."""
    from pimc.frontend.onnx_import import skeleton

    inferred = onnx.shape_inference.infer_shapes(skeleton(model))
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        m.graph.output.append(infos[name])
    return m


def logits_name(model: onnx.ModelProto) -> str | None:
    """The input of the final Softmax (the logits), if the model ends in one."""
    for node in reversed(model.graph.node):
        if node.op_type == "Softmax" and node.output[0] in {o.name for o in model.graph.output}:
            return node.input[0]
    return None


def runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "mnist_cnn"


def quantize_example_with_onnxruntime(directory: Path, fmt: str = "QDQ") -> Path:
    """The MNIST example quantized by onnxruntime's own static quantizer (``fmt`` QDQ or
    QOperator; per-channel int8 weights, uint8 activations, 16 calibration images)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    cal = np.load(EXAMPLE_DIR / "calib.npy")[:16].astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": cal[i : i + 1]} for i in range(len(cal))])

        def get_next(self):
            return next(self.it, None)

    out = Path(directory) / f"mnist_{fmt}.onnx"
    quantize_static(EXAMPLE_DIR / "model.onnx", out, Reader(), quant_format=getattr(QuantFormat, fmt),
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return out
