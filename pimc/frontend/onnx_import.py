"""ONNX -> float ``nn`` IR.

``import_onnx`` loads and checks a model, runs ONNX shape inference, folds every constant
subgraph, folds BatchNormalization into the preceding Conv/Gemm, drops Dropout and Identity, and
lowers what is left to one ``nn`` op per layer inside ``func.func @main``.

The leading dimension of every runtime tensor is the batch and is never fixed: the IR types it
``?`` whatever the ONNX file declares. ``Shape`` of a runtime tensor folds with a *batch token*
in place of the batch (the declared batch when all inputs declare the same static one, else an
unlikely sentinel), and a Reshape keeps the batch axis when its first target entry is 0, -1 or
that token; anything that would mix the batch with other axes is rejected with a clear message.

Already-quantized models (QDQ and QOperator) import as float ops on real values: an activation
QuantizeLinear becomes ``nn.quantize`` -> ``nn.dequantize`` (so the float reference reproduces
the fake quantization exactly and ``nn-quantize`` can adopt the recorded scale and zero point),
and quantized weights are dequantized to float constants.

Every unsupported node is collected and reported in ONE ``ModelError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    BytesAttr,
    DenseIntOrFPElementsAttr,
    TensorType,
    f32,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    f64,
    i64,
)
from xdsl.ir import Block, Operation, Region, SSAValue

from pimc.dialects import nn
from pimc.dialects.nn import QuantType, i64_array, tensor_type
from pimc.errors import InputError, ModelError
from pimc.frontend.folding import ConstantEvaluator, FoldError, attrs_of

#: Sentinel standing for a dynamic batch inside folded shape arithmetic.
BATCH_SENTINEL = 1_048_583

SUPPORTED_OPS = (
    "Conv", "Gemm", "MatMul", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid",
    "HardSwish", "Add", "Sub", "Mul", "Div", "Sum", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "LRN", "Concat", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "Pad", "Softmax", "BatchNormalization", "Dropout", "Identity", "Cast", "QuantizeLinear",
    "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
    "Constant", "ConstantOfShape", "Shape", "Gather",
)  # fmt: skip

#: onnxruntime contrib ops (domain com.microsoft) written by its QOperator-format quantizer.
CONTRIB_OPS = ("QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid",
               "QLinearLeakyRelu")  # fmt: skip

#: Ops imported on [N, C, 1, L] when their input is 1-D: (data input index, weight input index).
_LIFT_1D = {
    "Conv": (0, 1), "QLinearConv": (0, 3), "ConvInteger": (0, 1), "MaxPool": (0, None), "AveragePool": (0, None),
    "GlobalAveragePool": (0, None), "GlobalMaxPool": (0, None),
}  # fmt: skip

_INT_TYPES = {
    TensorProto.UINT8: (8, False),
    TensorProto.INT8: (8, True),
    TensorProto.UINT16: (16, False),
    TensorProto.INT16: (16, True),
    TensorProto.INT32: (32, True),
}
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


class Unsupported(Exception):
    """One node cannot be imported; the message names the attribute and what is supported."""


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization of an integer-typed ONNX tensor: real = scale * (code - zp)."""

    scale: float
    zero_point: int
    bits: int
    signed: bool

    def qtype(self) -> QuantType:
        return QuantType(self.bits, self.signed, self.scale, self.zero_point)


@dataclass
class Val:
    """A runtime ONNX tensor: its float SSA value (real numbers), shape (batch -1), and the
    quantization of the ONNX tensor when it holds integer codes."""

    ssa: SSAValue
    shape: tuple[int, ...]
    q: QParams | None = None


def import_onnx(path: str | Path, input_shapes: dict[str, list[int]] | None = None) -> ModuleOp:
    """Import the ONNX model at ``path`` as a module holding ``func.func @main`` of float nn ops."""
    path = Path(path)
    model = load_model(path)
    return _Importer(path, model, input_shapes or {}).run()


def load_model(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file; unreadable, truncated or non-ONNX files are a ModelError."""
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelError(f"{path}: cannot read the model file ({err.strerror})") from None
    if not data:
        raise ModelError(f"{path}: the file is empty, not an ONNX model")
    try:
        model = onnx.load_from_string(data)
    except Exception as err:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not an ONNX model or the file is truncated ({type(err).__name__}: {err})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{path}: not an ONNX model (no graph nodes or outputs were decoded)")
    try:
        onnx.checker.check_model(skeleton(model))
    except Exception as err:
        raise ModelError(f"{path}: the ONNX checker rejects the model: {_first_line(err)}") from None
    opset = {o.domain or "": o.version for o in model.opset_import}.get("", 0)
    if opset < 9:
        raise ModelError(f"{path}: opset {opset} of the default domain is too old; pimc supports opset 9 and newer")
    return model


def skeleton(model: onnx.ModelProto, max_elements: int = 4096) -> onnx.ModelProto:
    """The model with large initializers turned into typed graph inputs (no data).

    The checker and shape inference serialize the whole model; without the weight bytes they take
    milliseconds instead of seconds on VGG-sized models, and small initializers (shape constants)
    stay for data propagation.
    """
    out = onnx.ModelProto()
    graph = model.graph
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g = out.graph
    g.name = graph.name
    g.node.extend(graph.node)
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    graph_inputs = {i.name for i in graph.input}
    for init in graph.initializer:
        if int(np.prod(init.dims)) <= max_elements:
            out.graph.initializer.append(init)
        elif init.name not in graph_inputs:
            out.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return out


def dense_f32(array: np.ndarray) -> DenseIntOrFPElementsAttr:
    """A dense f32 attribute straight from a (possibly transposed) array: ``tobytes`` writes C
    order in one pass, so a VGG-sized transposed weight is copied once, not twice."""
    data = np.asarray(array).astype("<f4", copy=False).tobytes(order="C")
    return DenseIntOrFPElementsAttr(TensorType(f32, array.shape), BytesAttr(data))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, list[int]]:
    """``NAME=1x3x32x32`` strings (the CLI's --input-shape) -> {name: [dims]}."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            values = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            values = []
        if not sep or not name or not values or any(v < 1 for v in values):
            raise InputError(f"--input-shape {spec!r}: expected NAME=DxDx... with positive integers, e.g. x=1x3x32x32")
        shapes[name] = values
    return shapes


def _node_label(node: onnx.NodeProto) -> str:
    return f"node '{node.name or node.output[0]}' ({node.op_type})"


class _Importer:
    def __init__(self, path: Path, model: onnx.ModelProto, input_shapes: dict[str, list[int]]):
        self.path = path
        self.model = model
        self.graph = model.graph
        self.opset = {o.domain or "": o.version for o in model.opset_import}.get("", 9)
        self.input_shapes = input_shapes
        self.evaluator = ConstantEvaluator(model)
        self.consts: dict[str, np.ndarray] = {}
        self.env: dict[str, Val] = {}
        self.block: Block | None = None
        self.problems: list[str] = []
        self.poisoned: set[str] = set()
        self.consumers: dict[str, int] = {}
        self.graph_outputs = {o.name for o in self.graph.output}
        self.producer: dict[str, Operation] = {}
        self.batch_token = BATCH_SENTINEL
        self.inference_error: str | None = None

    # ------------------------------------------------------------------------------------- driver

    def run(self) -> ModuleOp:
        for init in self.graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers[name] = self.consumers.get(name, 0) + 1
        for out in self.graph.output:
            self.consumers[out.name] = self.consumers.get(out.name, 0) + 1
        live = self._live_nodes()
        self.remaining = {}
        for node in live:
            for name in node.input:
                if name:
                    self.remaining[name] = self.remaining.get(name, 0) + 1

        arg_shapes, arg_q, arg_names = self._input_signature()
        self._shape_inference(arg_names, arg_shapes)
        self.block = Block(arg_types=[tensor_type(s) for s in arg_shapes])
        for name, arg, shape, q in zip(arg_names, self.block.args, arg_shapes, arg_q):
            self.env[name] = Val(arg, tuple(shape), q)

        for node in live:
            self._node(node)

        results: list[SSAValue] = []
        for out in self.graph.output:
            if out.name in self.poisoned:
                continue
            if out.name in self.consts:
                self.problems.append(
                    f"graph output '{out.name}' is a constant (it does not depend on any input); "
                    "supported: outputs computed from the inputs"
                )
                continue
            if out.name not in self.env:
                self.problems.append(f"graph output '{out.name}' is not produced by any node")
                continue
            val = self.env[out.name]
            if val.q is not None:  # an integer-typed output: return its codes
                q = self._emit(nn.QuantizeOp(val.ssa, tensor_type(val.shape, val.q.qtype())), out.name)
                results.append(q.results[0])
            else:
                results.append(val.ssa)
        if self.problems:
            raise ModelError(self._problem_report())

        self.block.add_op(func.ReturnOp(*results))
        name_dict = lambda n: DictionaryAttr({"pimc.name": StringAttr(n)})  # noqa: E731
        fn = func.FuncOp(
            "main",
            ([a.type for a in self.block.args], [r.type for r in results]),
            Region(self.block),
            arg_attrs=ArrayAttr([name_dict(n) for n in arg_names]),
            res_attrs=ArrayAttr([name_dict(o.name) for o in self.graph.output]),
        )
        module = ModuleOp([fn])
        module.attributes["pimc.source"] = StringAttr(str(self.path))
        try:
            module.verify()
        except Exception as err:  # a verifier complaint here is an importer bug or an odd model
            raise ModelError(f"{self.path}: the imported IR does not verify: {_first_line(err)}") from None
        return module

    def _problem_report(self) -> str:
        n = len(self.problems)
        lines = [f"{self.path}: {n} unsupported node{'s' if n > 1 else ''}:"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append(
            f"supported operators: {', '.join(SUPPORTED_OPS)}; com.microsoft: {', '.join(CONTRIB_OPS)} (see spec/operators.md)"
        )
        if self.inference_error:
            lines.append(f"(ONNX shape inference also reports: {self.inference_error})")
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------- inputs

    def _input_signature(self):
        init_names = set(self.consts)
        known_names = {i.name for i in self.graph.input if i.name not in init_names}
        unknown = sorted(set(self.input_shapes) - known_names)
        if unknown:
            raise InputError(
                f"{self.path}: --input-shape names {', '.join(repr(u) for u in unknown)}, but the model's inputs are "
                f"{', '.join(repr(n) for n in sorted(known_names))}"
            )
        names, shapes, qs, batches = [], [], [], set()
        for inp in self.graph.input:
            if inp.name in init_names:
                continue
            tt = inp.type.tensor_type
            if not inp.type.HasField("tensor_type") or not tt.HasField("shape"):
                raise ModelError(f"{self.path}: input '{inp.name}' has no tensor type with a shape; give --input-shape {inp.name}=...")
            elem = tt.elem_type
            q = None
            if elem in _INT_TYPES and elem != TensorProto.INT32:
                bits, signed = _INT_TYPES[elem]
                q = QParams(1.0, 0, bits, signed)
            elif elem not in _FLOAT_TYPES:
                raise ModelError(
                    f"{self.path}: input '{inp.name}' has element type {TensorProto.DataType.Name(elem)}; "
                    "supported: float, double, float16, uint8/int8/uint16/int16 (quantized models)"
                )
            dims = list(tt.shape.dim)
            if not dims:
                raise ModelError(f"{self.path}: input '{inp.name}' is a scalar; pimc needs a leading batch dimension")
            given = self.input_shapes.get(inp.name)
            if given is not None and len(given) != len(dims):
                raise InputError(
                    f"{self.path}: --input-shape for '{inp.name}' has rank {len(given)}, the model's input has rank "
                    f"{len(dims)} ({_dims_text(dims)})"
                )
            shape = [-1]
            for k, d in enumerate(dims[1:], start=1):
                if d.HasField("dim_value") and d.dim_value > 0:
                    if given is not None and given[k] != d.dim_value:
                        raise InputError(
                            f"{self.path}: --input-shape {inp.name}={'x'.join(map(str, given))} disagrees with the "
                            f"model's static dimension {k} = {d.dim_value} ({_dims_text(dims)})"
                        )
                    shape.append(int(d.dim_value))
                elif given is not None:
                    shape.append(int(given[k]))
                else:
                    label = d.dim_param or "unknown"
                    raise InputError(
                        f"{self.path}: input '{inp.name}' has a dynamic dimension {k} ('{label}') in shape "
                        f"{_dims_text(dims)}; give it with --input-shape {inp.name}=" + "x".join(
                            str(x.dim_value) if x.HasField("dim_value") and x.dim_value > 0 else ("1" if j == 0 else "D")
                            for j, x in enumerate(dims)
                        )
                    )
            b = dims[0]
            batches.add(int(b.dim_value) if b.HasField("dim_value") and b.dim_value > 0 else None)
            names.append(inp.name)
            shapes.append(shape)
            qs.append(q)
        if not names:
            raise ModelError(f"{self.path}: the model has no runtime inputs")
        if len(batches) == 1 and None not in batches:
            self.batch_token = batches.pop()
        return shapes, qs, names

    def _shape_inference(self, names: list[str], shapes: list[list[int]]) -> None:
        """ONNX's own shape inference (strict), as a second opinion.

        Its complaint is kept, not raised: the importer computes every shape itself (checked
        against onnxruntime) and rejects inconsistent nodes by name, while ONNX's inference has
        known disagreements with onnxruntime (e.g. AveragePool-17 in ceil mode counts a last
        window that starts in the padding), so a model onnxruntime runs must not be refused for
        it. The message is appended to the error report if the import fails.
        """
        model = skeleton(self.model)
        by_name = dict(zip(names, shapes))
        for inp in model.graph.input:
            if inp.name in by_name:
                dims = inp.type.tensor_type.shape.dim
                for k, d in enumerate(by_name[inp.name]):
                    if k > 0:
                        dims[k].dim_value = d
        unknown_ops = [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]
        try:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=not unknown_ops, data_prop=True)
        except Exception as err:
            self.inference_error = _first_line(err)

    # ------------------------------------------------------------------------------------ nodes

    def _node(self, node: onnx.NodeProto) -> None:
        if any(i in self.poisoned for i in node.input if i):
            # downstream of an unsupported node: shapes are unknown, but an unknown operator is
            # still worth reporting now rather than after the user fixes the first one
            if self._handler(node) is None:
                self.problems.append(f"{_node_label(node)}: {self._unknown_op(node)}")
            self.poisoned.update(o for o in node.output if o)
            return
        ins = [i for i in node.input]
        all_const = all((not i) or i in self.consts for i in ins)
        try:
            if node.op_type == "Constant" or (all_const and node.op_type not in ("Dropout",) and ins):
                self._fold(node)
                return
            if node.op_type == "Shape" and node.input[0] in self.env:
                self._fold_shape(node)
                return
            handler = self._handler(node)
            if handler is None:
                raise Unsupported(self._unknown_op(node))
            missing = [i for i in ins if i and i not in self.env and i not in self.consts]
            if missing:
                raise Unsupported(f"input '{missing[0]}' is not produced by any earlier node")
            a = attrs_of(node)
            if node.op_type in _LIFT_1D and self._is_1d(node):
                self._via_2d(node, a, handler)
            else:
                handler(node, a)
        except Unsupported as err:
            self.problems.append(f"{_node_label(node)}: {err}")
            self.poisoned.update(o for o in node.output if o)
        finally:
            self._release(node)

    def _release(self, node: onnx.NodeProto) -> None:
        """Drop constants whose last consumer has been imported (weights now live in the IR),
        which keeps the peak memory of VGG-sized models near one copy of the weights."""
        for name in node.input:
            if name and name in self.remaining:
                self.remaining[name] -= 1
                if self.remaining[name] <= 0 and name not in self.graph_outputs:
                    self.consts.pop(name, None)

    def _handler(self, node: onnx.NodeProto):
        if node.domain in ("", "ai.onnx") or (node.domain == "com.microsoft" and node.op_type in CONTRIB_OPS):
            return getattr(self, f"_op_{node.op_type}", None)
        return None

    @staticmethod
    def _unknown_op(node: onnx.NodeProto) -> str:
        dom = f" of domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
        return f"operator {node.op_type}{dom} is not supported"

    def _is_1d(self, node: onnx.NodeProto) -> bool:
        x = self.env.get(node.input[_LIFT_1D[node.op_type][0]])
        return x is not None and len(x.shape) == 3

    def _via_2d(self, node: onnx.NodeProto, a: dict, handler) -> None:
        """A 1-D conv/pool ([N, C, L]) as its 2-D form on [N, C, 1, L], reshaped back."""
        data_k, weight_k = _LIFT_1D[node.op_type]
        name = self._name(node)
        x = self.env[node.input[data_k]]
        inputs = list(node.input)
        x2 = self._emit(nn.ReshapeOp(x.ssa, tensor_type((-1, x.shape[1], 1, x.shape[2]))), f"{name}/to2d")
        tmp_in = f"\0{name}/x2d"
        self.env[tmp_in] = Val(x2.results[0], (-1, x.shape[1], 1, x.shape[2]), x.q)
        inputs[data_k] = tmp_in
        if weight_k is not None and weight_k < len(inputs) and inputs[weight_k] in self.consts:
            w = np.asarray(self.consts[inputs[weight_k]])
            if w.ndim != 3:
                raise Unsupported(f"weight of shape {list(w.shape)} for a 1-D input; supported: [Cout, Cin/group, k]")
            tmp_w = f"\0{name}/w2d"
            self.consts[tmp_w] = w[:, :, None, :]
            inputs[weight_k] = tmp_w
        a2 = dict(a)
        for key, one in (("kernel_shape", 1), ("strides", 1), ("dilations", 1)):
            if key in a:
                a2[key] = [one] + list(a[key])
        if "pads" in a:
            p = list(a["pads"])
            if len(p) != 2:
                raise Unsupported(f"attribute pads={p}; supported: 2 values for 1-D")
            a2["pads"] = [0, p[0], 0, p[1]]
        tmp_out = f"\0{name}/y2d"
        view = _NodeView(node, inputs)
        view.output = [tmp_out] + list(node.output[1:])
        view.name = name
        handler(view, a2)
        y = self.env[tmp_out]
        shape = (-1, y.shape[1], y.shape[3])
        r = self._emit(nn.ReshapeOp(y.ssa, tensor_type(shape)), f"{name}/to1d")
        self._set(node, r, shape, y.q)

    def _live_nodes(self) -> list[onnx.NodeProto]:
        """Nodes that contribute to a graph output (dead nodes are neither imported nor reported)."""
        needed = set(self.graph_outputs)
        live = []
        for node in reversed(self.graph.node):
            if any(o in needed for o in node.output if o):
                live.append(node)
                needed.update(i for i in node.input if i)
        return live[::-1]

    def _fold(self, node: onnx.NodeProto) -> None:
        args = [self.consts[i] if i else None for i in node.input]
        try:
            outs = self.evaluator.evaluate(node, args)
        except FoldError as err:
            raise Unsupported(f"cannot fold this constant node: {err}") from None
        for name, value in zip(node.output, outs):
            if name:
                self.consts[name] = np.asarray(value)

    def _fold_shape(self, node: onnx.NodeProto) -> None:
        shape = [self.batch_token] + list(self.env[node.input[0]].shape[1:])
        a = attrs_of(node)
        start, end = a.get("start", 0), a.get("end", None)
        self.consts[node.output[0]] = np.array(shape[start:end], dtype=np.int64)

    # ---------------------------------------------------------------------------------- helpers

    def _emit(self, op: Operation, name: str) -> Operation:
        op.attributes["pimc.name"] = StringAttr(name)
        assert self.block is not None
        self.block.add_op(op)
        return op

    def _set(self, node: onnx.NodeProto, op: Operation, shape, q: QParams | None = None, index: int = 0) -> None:
        self.env[node.output[index]] = Val(op.results[0], tuple(shape), q)
        self.producer[node.output[index]] = op

    def _val(self, node: onnx.NodeProto, k: int) -> Val:
        name = node.input[k]
        if name in self.consts:
            raise Unsupported(f"input {k} ('{name}') is a constant; supported: a runtime tensor computed from the model inputs")
        return self.env[name]

    def _const(self, node: onnx.NodeProto, k: int, what: str) -> np.ndarray | None:
        if k >= len(node.input) or not node.input[k]:
            return None
        name = node.input[k]
        if name not in self.consts:
            raise Unsupported(f"{what} (input {k}, '{name}') is computed at run time; supported: a constant {what}")
        return self.consts[name]

    def _name(self, node: onnx.NodeProto) -> str:
        return node.name or node.output[0]

    def _unary(self, node: onnx.NodeProto, cls, props: dict | None = None, keep_q: bool = False) -> None:
        x = self._val(node, 0)
        op = self._emit(cls(x.ssa, tensor_type(x.shape), props or {}), self._name(node))
        self._set(node, op, x.shape, x.q if keep_q else None)

    def _float_attr(self, value: float) -> FloatAttr:
        return FloatAttr(float(value), f64)

    # ------------------------------------------------------------------------ elementwise, misc

    def _op_Identity(self, node, a):
        self._alias(node)

    def _op_Dropout(self, node, a):
        if len(node.output) > 1 and node.output[1] and self.consumers.get(node.output[1]):
            raise Unsupported("the mask output is used; supported: Dropout whose mask output is unused")
        if self.opset >= 12 and len(node.input) > 2 and node.input[2]:
            tm = self._const(node, 2, "training_mode")
            if tm is not None and bool(tm):
                raise Unsupported("training_mode=1; supported: inference (training_mode=0)")
        self._alias(node)

    def _alias(self, node):
        self.env[node.output[0]] = self._val(node, 0)

    def _op_Cast(self, node, a):
        x = self._val(node, 0)
        to = a.get("to")
        if to in _FLOAT_TYPES:
            self.env[node.output[0]] = Val(x.ssa, x.shape, None)  # integer codes/accumulators -> float
            if x.q is not None and (x.q.scale != 1.0 or x.q.zero_point != 0):
                raise Unsupported("Cast of quantized codes to float; supported: DequantizeLinear for quantized tensors")
            return
        raise Unsupported(f"attribute to={TensorProto.DataType.Name(to)} on a runtime tensor; supported: casts to float")

    def _op_Relu(self, node, a):
        self._unary(node, nn.ReluOp)

    def _op_Sigmoid(self, node, a):
        self._unary(node, nn.SigmoidOp)

    def _op_LeakyRelu(self, node, a):
        self._unary(node, nn.LeakyReluOp, {"alpha": self._float_attr(a.get("alpha", 0.01))})

    def _op_HardSigmoid(self, node, a):
        self._unary(
            node, nn.HardSigmoidOp, {"alpha": self._float_attr(a.get("alpha", 0.2)), "beta": self._float_attr(a.get("beta", 0.5))}
        )

    def _op_HardSwish(self, node, a):
        self._unary(node, nn.HardSwishOp)

    def _op_PRelu(self, node, a):
        x = self._val(node, 0)
        slope = self._const(node, 1, "slope")
        slope = np.asarray(slope, dtype=np.float32)
        rank = len(x.shape)
        if slope.ndim > rank or (slope.ndim == rank and slope.shape[0] != 1):
            raise Unsupported(f"slope shape {list(slope.shape)} broadcasts over the batch; supported: per-channel or scalar slope")
        full = slope.reshape((1,) * (rank - slope.ndim) + slope.shape)[0] if slope.ndim else slope.reshape((1,) * (rank - 1))
        # normalize to [C, 1, ..., 1] (per channel, axis 1) or [1, ..., 1] (scalar)
        if full.size == 1:
            norm = full.reshape((1,) * (rank - 1))
        elif rank >= 2 and full.shape[0] == x.shape[1] and all(d == 1 for d in full.shape[1:]):
            norm = full
        elif rank >= 2 and full.size == x.shape[1] and full.shape[0] == 1 and rank == 2:
            norm = full.reshape(x.shape[1])
        else:
            raise Unsupported(
                f"slope shape {list(slope.shape)} for input {_shape_text(x.shape)}; supported: a scalar or a per-channel (axis 1) slope"
            )
        self._unary(node, nn.PReluOp, {"slope": nn.dense_from_numpy(np.ascontiguousarray(norm, dtype=np.float32))})

    def _op_Clip(self, node, a):
        if self.opset < 11:
            lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
        else:
            lo_c, hi_c = self._const(node, 1, "min"), self._const(node, 2, "max")
            lo = -math.inf if lo_c is None else float(np.asarray(lo_c).reshape(-1)[0])
            hi = math.inf if hi_c is None else float(np.asarray(hi_c).reshape(-1)[0])
        self._unary(node, nn.ClipOp, {"min": self._float_attr(lo), "max": self._float_attr(hi)})

    def _binary_operand(self, node: onnx.NodeProto, k: int, out_rank: int) -> tuple[SSAValue, tuple[int, ...]]:
        name = node.input[k]
        if name in self.env:
            return self.env[name].ssa, self.env[name].shape
        c = np.asarray(self.consts[name])
        if c.dtype != np.float32:
            c = c.astype(np.float32)
        if c.ndim > out_rank or (c.ndim == out_rank and c.shape[0] != 1):
            raise Unsupported(
                f"constant operand of shape {list(c.shape)} broadcasts over the batch axis; supported: constants "
                "that broadcast over the non-batch axes only"
            )
        if c.ndim == out_rank:
            c = c[0]
        op = self._emit(nn.ConstantOp(np.ascontiguousarray(c)), f"{self._name(node)}/{name}")
        return op.results[0], tuple(c.shape)

    def _binary(self, node: onnx.NodeProto, cls, lhs: str, rhs: str) -> tuple[Operation, tuple[int, ...]]:
        runtime = [self.env[n] for n in (lhs, rhs) if n in self.env]
        rank = max(len(v.shape) for v in runtime)
        if len(runtime) == 2 and len(runtime[0].shape) != len(runtime[1].shape):
            raise Unsupported(
                f"runtime operands of different ranks {_shape_text(runtime[0].shape)} and {_shape_text(runtime[1].shape)}; "
                "supported: equal ranks (the batch axes must line up)"
            )
        sub = _NodeView(node, [lhs, rhs])
        lv, ls = self._binary_operand(sub, 0, rank)
        rv, rs = self._binary_operand(sub, 1, rank)
        try:
            tail = np.broadcast_shapes(_per_sample(ls, rank), _per_sample(rs, rank))
        except ValueError:
            raise Unsupported(f"operand shapes {_shape_text(ls)} and {_shape_text(rs)} do not broadcast") from None
        if len(tail) != rank - 1:
            raise Unsupported("the result would not keep the batch axis first")
        shape = (-1,) + tuple(tail)
        op = self._emit(cls(lv, rv, tensor_type(shape)), self._name(node))
        return op, shape

    def _elementwise(self, node, cls):
        if len(node.input) != 2:
            raise Unsupported(f"{len(node.input)} inputs; supported: 2")
        if self._fold_affine(node, cls):
            return
        op, shape = self._binary(node, cls, node.input[0], node.input[1])
        self._set(node, op, shape)

    def _fold_affine(self, node, cls) -> bool:
        """Fold a per-output-channel constant Mul/Div/Add/Sub into the Conv/Gemm producing its
        other operand (when that is its only use), as for BatchNormalization: one crossbar layer
        instead of a layer plus a digital op and an extra quantization point."""
        lhs, rhs = node.input[0], node.input[1]
        if lhs in self.consts and rhs in self.env and cls in (nn.AddOp, nn.MulOp, nn.SubOp):
            src, k, const_first = rhs, self.consts[lhs], True
        elif lhs in self.env and rhs in self.consts:
            src, k, const_first = lhs, self.consts[rhs], False
        else:
            return False
        prod = self.producer.get(src)
        if not isinstance(prod, (nn.Conv2dOp, nn.GemmOp)) or self.env[src].q is not None:
            return False
        if self.consumers.get(src, 0) != 1 or src in self.graph_outputs or prod.results[0] is not self.env[src].ssa:
            return False
        shape = self.env[src].shape
        k = np.asarray(k, dtype=np.float64)
        if k.ndim > len(shape) or (k.ndim == len(shape) and k.shape[0] != 1):
            return False
        channels = prod.weight.get_shape()[0] if isinstance(prod, nn.Conv2dOp) else prod.weight.get_shape()[1]
        axis = 1 if isinstance(prod, nn.Conv2dOp) else len(shape) - 1
        full = k.reshape((1,) * (len(shape) - k.ndim) + k.shape)
        if any(d != 1 for i, d in enumerate(full.shape) if i != axis) or full.shape[axis] not in (1, channels):
            return False
        kc = np.broadcast_to(full.reshape(-1), (channels,))
        if cls is nn.DivOp and not np.all(kc != 0):
            return False
        w = nn.numpy_from_dense(prod.weight).astype(np.float64)
        b = nn.numpy_from_dense(prod.bias).astype(np.float64) if prod.bias is not None else np.zeros(channels)
        wshape = (-1, 1, 1, 1) if isinstance(prod, nn.Conv2dOp) else (1, -1)
        if cls is nn.MulOp:
            w, b = w * kc.reshape(wshape), b * kc
        elif cls is nn.DivOp:
            w, b = w / kc.reshape(wshape), b / kc
        elif cls is nn.AddOp:
            b = b + kc
        elif const_first:  # k - x
            w, b = -w, kc - b
        else:  # x - k
            b = b - kc
        prod.properties["weight"] = dense_f32(w.astype(np.float32))
        prod.properties["bias"] = nn.dense_from_numpy(b.astype(np.float32))
        before = prod.attributes.get("pimc.folded")
        name = self._name(node)
        prod.attributes["pimc.folded"] = StringAttr(f"{before.data},{name}" if isinstance(before, StringAttr) else name)
        self.env[node.output[0]] = self.env[src]
        self.producer[node.output[0]] = prod
        return True

    def _op_Add(self, node, a):
        self._elementwise(node, nn.AddOp)

    def _op_Sub(self, node, a):
        self._elementwise(node, nn.SubOp)

    def _op_Mul(self, node, a):
        self._elementwise(node, nn.MulOp)

    def _op_Div(self, node, a):
        self._elementwise(node, nn.DivOp)

    def _op_Sum(self, node, a):
        names = [n for n in node.input if n]
        if len(names) == 1:
            self._alias(node)
            return
        acc = names[0]
        for k, other in enumerate(names[1:]):
            op, shape = self._binary(node, nn.AddOp, acc, other)
            if k < len(names) - 2:
                op.attributes["pimc.name"] = StringAttr(f"{self._name(node)}/{k}")
                acc = f"\0sum{id(op)}"
                self.env[acc] = Val(op.results[0], shape)
        self._set(node, op, shape)

    # ------------------------------------------------------------------------------ conv, gemm

    def _op_Conv(self, node, a):
        x = self._val(node, 0)
        w = self._const(node, 1, "weight")
        b = self._const(node, 2, "bias")
        self._conv(node, a, x, np.asarray(w, dtype=np.float32), None if b is None else np.asarray(b, dtype=np.float32))

    def _conv(self, node, a, x: Val, w: np.ndarray, b: np.ndarray | None, q_out: QParams | None = None):
        if len(x.shape) != 4 or w.ndim != 4:
            raise Unsupported(
                f"input {_shape_text(x.shape)} with weight {list(w.shape)}; supported: 2-D convolution (NCHW input, 4-D weight)"
            )
        group = int(a.get("group", 1))
        cin = x.shape[1]
        if group < 1 or cin % group or w.shape[0] % group or cin // group != w.shape[1]:
            raise Unsupported(f"attribute group={group} with input channels {cin} and weight {list(w.shape)} disagree")
        kernel = tuple(int(k) for k in a.get("kernel_shape", w.shape[2:]))
        if kernel != tuple(w.shape[2:]):
            raise Unsupported(f"attribute kernel_shape={list(kernel)} differs from the weight's {list(w.shape[2:])}")
        strides = tuple(a.get("strides", (1, 1)))
        dil = tuple(a.get("dilations", (1, 1)))
        pads = _resolve_pads(a, x.shape[2:], kernel, strides, dil)
        oh = _out_size(x.shape[2], pads[0], pads[2], kernel[0], strides[0], dil[0], False, what="height")
        ow = _out_size(x.shape[3], pads[1], pads[3], kernel[1], strides[1], dil[1], False, what="width")
        shape = (-1, w.shape[0], oh, ow)
        op = nn.Conv2dOp(x.ssa, tensor_type(shape), dense_f32(w), b, strides, pads, dil, group)
        self._emit(op, self._name(node))
        self._set_layer(node, op, shape, q_out)

    def _set_layer(self, node, op: Operation, shape, q_out: QParams | None):
        if q_out is None:
            self._set(node, op, shape)
            return
        qop = self._emit(nn.QuantizeOp(op.results[0], tensor_type(shape, q_out.qtype())), f"{self._name(node)}/quantize")
        dq = self._emit(nn.DequantizeOp(qop.results[0], tensor_type(shape)), f"{self._name(node)}/dequantize")
        self._set(node, dq, shape, q_out)
        self.producer[node.output[0]] = dq

    def _op_Gemm(self, node, a):
        x = self._val(node, 0)
        if a.get("transA", 0):
            raise Unsupported("attribute transA=1; supported: transA=0 (the first operand is the batch of activations)")
        if len(x.shape) != 2:
            raise Unsupported(f"input A of shape {_shape_text(x.shape)}; supported: 2-D A")
        w = self._const(node, 1, "weight B")
        w = np.asarray(w, dtype=np.float32)
        if a.get("transB", 0):
            w = w.T
        if a.get("alpha", 1.0) != 1.0:
            w = w * np.float32(a["alpha"])
        n = w.shape[1]
        c = self._const(node, 2, "bias C")
        bias = None
        if c is not None:
            c = np.asarray(c, dtype=np.float32) * np.float32(a.get("beta", 1.0))
            if c.ndim == 2 and c.shape[0] == 1:
                c = c[0]
            if c.ndim > 1:
                raise Unsupported(f"bias C of shape {list(c.shape)} depends on the batch row; supported: C of shape [N], [1, N] or scalar")
            bias = np.ascontiguousarray(np.broadcast_to(c, (n,)), dtype=np.float32)
        self._gemm(node, x, w, bias)

    def _gemm(self, node, x: Val, w: np.ndarray, bias: np.ndarray | None, q_out: QParams | None = None):
        if x.shape[-1] != w.shape[0]:
            raise Unsupported(f"input {_shape_text(x.shape)} and weight {list(w.shape)} disagree on K")
        shape = x.shape[:-1] + (w.shape[1],)
        op = nn.GemmOp(x.ssa, tensor_type(shape), dense_f32(w), bias)
        self._emit(op, self._name(node))
        self._set_layer(node, op, shape, q_out)

    def _op_MatMul(self, node, a):
        if node.input[0] in self.consts:
            raise Unsupported("the first operand is a constant and the second a runtime tensor; supported: runtime @ constant")
        if node.input[1] in self.env:
            raise Unsupported("MatMul of two runtime tensors; supported: a constant second operand (it becomes crossbar weights)")
        x = self._val(node, 0)
        w = np.asarray(self._const(node, 1, "second operand"), dtype=np.float32)
        if w.ndim != 2 or len(x.shape) < 2:
            raise Unsupported(f"operands {_shape_text(x.shape)} @ {list(w.shape)}; supported: [N, ..., K] @ constant [K, M]")
        self._gemm(node, x, w, None)

    def _op_BatchNormalization(self, node, a):
        if a.get("training_mode", 0):
            raise Unsupported("attribute training_mode=1; supported: inference mode")
        if len([o for o in node.output if o]) > 1:
            raise Unsupported("running statistics outputs are used; supported: inference (one output)")
        x = self._val(node, 0)
        scale, bias, mean, var = (np.asarray(self._const(node, k, w), dtype=np.float64) for k, w in
                                  ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))  # fmt: skip
        eps = float(a.get("epsilon", 1e-5))
        mul = scale / np.sqrt(var + eps)
        add = bias - mean * mul
        src = node.input[0]
        prod = self.producer.get(src)
        sole = self.consumers.get(src, 0) == 1 and src not in self.graph_outputs
        # a Gemm's channels are its last axis: it folds only when that is BN's axis 1 (2-D output)
        foldable = isinstance(prod, nn.Conv2dOp) or (isinstance(prod, nn.GemmOp) and len(x.shape) == 2)
        if sole and foldable and self.env[src].q is None and prod.results[0] is x.ssa:
            w = nn.numpy_from_dense(prod.weight).astype(np.float64)
            old_b = nn.numpy_from_dense(prod.bias).astype(np.float64) if prod.bias is not None else 0.0
            if isinstance(prod, nn.Conv2dOp):
                w = w * mul[:, None, None, None]
            else:
                w = w * mul[None, :]
            b = old_b * mul + add
            prod.properties["weight"] = nn.dense_from_numpy(w.astype(np.float32))
            prod.properties["bias"] = nn.dense_from_numpy(b.astype(np.float32))
            prod.attributes["pimc.folded"] = StringAttr(self._name(node))
            self.env[node.output[0]] = self.env[src]
            self.producer[node.output[0]] = prod
            return
        c = x.shape[1]
        if len(x.shape) == 4:
            w = mul.astype(np.float32).reshape(c, 1, 1, 1)
            op = nn.Conv2dOp(x.ssa, tensor_type(x.shape), w, add.astype(np.float32), group=c)
            self._emit(op, self._name(node))
            self._set(node, op, x.shape)
            return
        tail = (1,) * (len(x.shape) - 2)
        m = self._emit(nn.ConstantOp(mul.astype(np.float32).reshape((c,) + tail)), f"{self._name(node)}/scale")
        mo = self._emit(nn.MulOp(x.ssa, m.results[0], tensor_type(x.shape)), f"{self._name(node)}/mul")
        ad = self._emit(nn.ConstantOp(add.astype(np.float32).reshape((c,) + tail)), f"{self._name(node)}/shift")
        ao = self._emit(nn.AddOp(mo.results[0], ad.results[0], tensor_type(x.shape)), self._name(node))
        self._set(node, ao, x.shape)

    # ---------------------------------------------------------------------------------- pooling

    def _pool_common(self, node, a, x: Val):
        if len(x.shape) != 4:
            raise Unsupported(f"input {_shape_text(x.shape)}; supported: 2-D pooling on NCHW")
        kernel = tuple(int(k) for k in a["kernel_shape"])
        strides = tuple(int(s) for s in a.get("strides", (1, 1)))
        dil = tuple(int(d) for d in a.get("dilations", (1, 1)))
        pads = list(_resolve_pads(a, x.shape[2:], kernel, strides, dil))
        ceil = bool(a.get("ceil_mode", 0))
        out = []
        for ax in range(2):
            o = _out_size(x.shape[2 + ax], pads[ax], pads[ax + 2], kernel[ax], strides[ax], dil[ax], ceil,
                          what=("height", "width")[ax])  # fmt: skip
            out.append(o)
        extra = [max(0, (out[ax] - 1) * strides[ax] + dil[ax] * (kernel[ax] - 1) + 1 - (x.shape[2 + ax] + pads[ax] + pads[ax + 2]))
                 for ax in range(2)]  # fmt: skip
        return kernel, strides, dil, pads, extra, (-1, x.shape[1], out[0], out[1])

    def _op_MaxPool(self, node, a):
        x = self._val(node, 0)
        if len(node.output) > 1 and node.output[1] and self.consumers.get(node.output[1]):
            raise Unsupported("the Indices output is used; supported: MaxPool with one output")
        if a.get("storage_order", 0):
            raise Unsupported("attribute storage_order=1; supported: 0")
        kernel, strides, dil, pads, extra, shape = self._pool_common(node, a, x)
        pads = [pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1]]
        props = {"kernel": i64_array(kernel), "strides": i64_array(strides), "pads": i64_array(pads), "dilations": i64_array(dil)}
        op = self._emit(nn.MaxPoolOp(x.ssa, tensor_type(shape), props), self._name(node))
        self._set(node, op, shape, x.q)

    def _op_AveragePool(self, node, a):
        x = self._val(node, 0)
        if any(d != 1 for d in a.get("dilations", (1, 1))):
            raise Unsupported(f"attribute dilations={list(a['dilations'])}; supported: 1")
        kernel, strides, dil, pads, extra, shape = self._pool_common(node, a, x)
        include = int(a.get("count_include_pad", 0))
        src = x.ssa
        if include and any(pads):
            # explicit pads count in the divisor but ceil_mode's extra cells do not (onnxruntime):
            # zero-pad explicitly, then pool counting only in-bounds cells.
            pshape = (-1, x.shape[1], x.shape[2] + pads[0] + pads[2], x.shape[3] + pads[1] + pads[3])
            pad = nn.PadOp(src, tensor_type(pshape), {
                "pads": i64_array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]), "value": self._float_attr(0.0)})  # fmt: skip
            src = self._emit(pad, f"{self._name(node)}/pad").results[0]
            pads, include = [0, 0, 0, 0], 0
        elif include and any(extra):
            include = 0  # no explicit pads: only ceil_mode's extra cells, which never count
        pads = [pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1]]
        props = {
            "kernel": i64_array(kernel), "strides": i64_array(strides), "pads": i64_array(pads),
            "count_include_pad": IntegerAttr(include, i64),
        }  # fmt: skip
        op = self._emit(nn.AvgPoolOp(src, tensor_type(shape), props), self._name(node))
        self._set(node, op, shape)

    def _op_GlobalAveragePool(self, node, a):
        x = self._val(node, 0)
        if len(x.shape) != 4:
            raise Unsupported(f"input {_shape_text(x.shape)}; supported: NCHW")
        shape = (-1, x.shape[1], 1, 1)
        op = self._emit(nn.GlobalAvgPoolOp(x.ssa, tensor_type(shape)), self._name(node))
        self._set(node, op, shape)

    def _op_GlobalMaxPool(self, node, a):
        x = self._val(node, 0)
        if len(x.shape) != 4:
            raise Unsupported(f"input {_shape_text(x.shape)}; supported: NCHW")
        shape = (-1, x.shape[1], 1, 1)
        props = {"kernel": i64_array(x.shape[2:]), "strides": i64_array((1, 1)), "pads": i64_array((0, 0, 0, 0)),
                 "dilations": i64_array((1, 1))}  # fmt: skip
        op = self._emit(nn.MaxPoolOp(x.ssa, tensor_type(shape), props), self._name(node))
        self._set(node, op, shape, x.q)

    def _op_LRN(self, node, a):
        x = self._val(node, 0)
        if len(x.shape) != 4:
            raise Unsupported(f"input {_shape_text(x.shape)}; supported: NCHW")
        props = {
            "size": IntegerAttr(int(a["size"]), i64),
            "alpha": self._float_attr(a.get("alpha", 1e-4)),
            "beta": self._float_attr(a.get("beta", 0.75)),
            "bias": self._float_attr(a.get("bias", 1.0)),
        }
        self._unary(node, nn.LrnOp, props)

    def _op_Softmax(self, node, a):
        x = self._val(node, 0)
        rank = len(x.shape)
        axis = int(a.get("axis", 1 if self.opset < 13 else -1))
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise Unsupported("attribute axis=0 normalizes across the batch; supported: axis >= 1")
        name = self._name(node)
        if self.opset >= 13 or axis == rank - 1:
            op = self._emit(nn.SoftmaxOp(x.ssa, tensor_type(x.shape), {"axis": IntegerAttr(axis, i64)}), name)
            self._set(node, op, x.shape)
            return
        # opset < 13: softmax over the flattened axes axis..rank-1
        flat = x.shape[:axis] + (int(np.prod(x.shape[axis:])),)
        r1 = self._emit(nn.ReshapeOp(x.ssa, tensor_type(flat)), f"{name}/flatten")
        sm = self._emit(nn.SoftmaxOp(r1.results[0], tensor_type(flat), {"axis": IntegerAttr(axis, i64)}), name)
        r2 = self._emit(nn.ReshapeOp(sm.results[0], tensor_type(x.shape)), f"{name}/unflatten")
        self._set(node, r2, x.shape)

    # ----------------------------------------------------------------------------- data movement

    def _reshape_to(self, node, x: Val, shape: tuple[int, ...], suffix: str = "") -> None:
        if tuple(shape) == tuple(x.shape):
            self.env[node.output[0]] = x
            return
        op = self._emit(nn.ReshapeOp(x.ssa, tensor_type(shape)), self._name(node) + suffix)
        self._set(node, op, shape, x.q)

    def _op_Reshape(self, node, a):
        x = self._val(node, 0)
        if self.opset < 5:
            target = list(a["shape"])
        else:
            target = [int(d) for d in self._const(node, 1, "shape")]
        if a.get("allowzero", 0) and 0 in target:
            raise Unsupported("attribute allowzero=1 with a 0 in the shape; supported: allowzero=0")
        self._reshape_to(node, x, self._batch_reshape(x.shape, target))

    def _batch_reshape(self, in_shape: tuple[int, ...], target: list[int]) -> tuple[int, ...]:
        per = int(np.prod(in_shape[1:]))
        if not target:
            raise Unsupported("reshape to a scalar drops the batch axis")
        head, rest = target[0], list(target[1:])
        rest = [in_shape[i + 1] if d == 0 else d for i, d in enumerate(rest)]
        keeps = head in (0, self.batch_token) or (head == -1 and -1 not in rest)
        if head == -1 and -1 not in rest and int(np.prod(rest)) != per:
            keeps = False
        if not keeps:
            raise Unsupported(
                f"target shape {target} for input {_shape_text(in_shape)} does not keep the batch axis; supported: a "
                f"first entry of 0, -1 or the batch ({self.batch_token}) and a per-sample size of {per}"
            )
        if rest.count(-1) > 1:
            raise Unsupported(f"target shape {target} has more than one -1")
        if -1 in rest:
            known = int(np.prod([d for d in rest if d != -1]))
            if known == 0 or per % known:
                raise Unsupported(f"target shape {target} cannot hold {per} elements per sample")
            rest[rest.index(-1)] = per // known
        if int(np.prod(rest)) != per or any(d < 1 for d in rest):
            raise Unsupported(f"target shape {target} has {int(np.prod(rest))} elements per sample, the input {per}")
        return (-1,) + tuple(rest)

    def _op_Flatten(self, node, a):
        x = self._val(node, 0)
        rank = len(x.shape)
        axis = int(a.get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if axis == 0 or int(np.prod(x.shape[1:axis])) != 1:
            raise Unsupported(f"attribute axis={a.get('axis', 1)} on {_shape_text(x.shape)} merges the batch with other axes; supported: axis=1")
        self._reshape_to(node, x, (-1, int(np.prod(x.shape[axis:]))))

    def _op_Squeeze(self, node, a):
        x = self._val(node, 0)
        axes = a.get("axes") if self.opset < 13 else self._const(node, 1, "axes")
        rank = len(x.shape)
        if axes is None:
            axes = [k for k, d in enumerate(x.shape) if d == 1 and k > 0]
        axes = sorted(int(k) % rank for k in axes)
        if 0 in axes or any(x.shape[k] != 1 for k in axes):
            raise Unsupported(f"axes {list(axes)} of {_shape_text(x.shape)}; supported: non-batch axes of size 1")
        self._reshape_to(node, x, tuple(d for k, d in enumerate(x.shape) if k not in axes))

    def _op_Unsqueeze(self, node, a):
        x = self._val(node, 0)
        axes = a.get("axes") if self.opset < 13 else self._const(node, 1, "axes")
        out_rank = len(x.shape) + len(axes)
        axes = sorted(int(k) % out_rank for k in axes)
        if 0 in axes:
            raise Unsupported("axis 0 would move the batch; supported: unsqueeze of non-batch axes")
        shape = list(x.shape)
        for k in axes:
            shape.insert(k, 1)
        self._reshape_to(node, x, tuple(shape))

    def _op_Transpose(self, node, a):
        x = self._val(node, 0)
        rank = len(x.shape)
        perm = [int(p) for p in a.get("perm", list(range(rank))[::-1])]
        if perm[0] != 0:
            raise Unsupported(f"attribute perm={perm} moves the batch axis; supported: perm[0] = 0")
        shape = tuple(x.shape[p] for p in perm)
        op = self._emit(nn.TransposeOp(x.ssa, tensor_type(shape), {"perm": i64_array(perm)}), self._name(node))
        self._set(node, op, shape, x.q)

    def _op_Concat(self, node, a):
        vals = []
        for k, name in enumerate(node.input):
            if name in self.consts:
                raise Unsupported(f"input {k} ('{name}') is a constant; supported: runtime tensors only")
            vals.append(self.env[name])
        rank = len(vals[0].shape)
        axis = int(a["axis"])
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise Unsupported("attribute axis=0 concatenates along the batch; supported: axis >= 1")
        qs = {v.q for v in vals}
        if len(qs) > 1:
            raise Unsupported("quantized inputs with different scales or zero points; supported: equal parameters")
        shape = list(vals[0].shape)
        shape[axis] = sum(v.shape[axis] for v in vals)
        op = self._emit(nn.ConcatOp([v.ssa for v in vals], tensor_type(shape), axis), self._name(node))
        self._set(node, op, shape, vals[0].q)

    def _op_Pad(self, node, a):
        x = self._val(node, 0)
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise Unsupported(f"attribute mode='{mode}'; supported: 'constant'")
        rank = len(x.shape)
        if self.opset < 11:
            pads = list(a.get("pads", a.get("paddings", [])))
            value = float(a.get("value", 0.0))
        else:
            pads = [int(p) for p in self._const(node, 1, "pads")]
            cv = self._const(node, 2, "constant_value")
            value = 0.0 if cv is None else float(np.asarray(cv).reshape(-1)[0])
            axes = self._const(node, 3, "axes")
            if axes is not None:
                full = [0] * (2 * rank)
                axes = [int(k) % rank for k in axes]
                for j, k in enumerate(axes):
                    full[k], full[k + rank] = pads[j], pads[j + len(axes)]
                pads = full
        if len(pads) != 2 * rank:
            raise Unsupported(f"{len(pads)} pads for a rank-{rank} input; supported: 2 x rank")
        if pads[0] or pads[rank]:
            raise Unsupported(f"pads={pads} pad the batch axis; supported: zero pads on axis 0")
        if any(p < 0 for p in pads):
            raise Unsupported(f"negative pads {pads}; supported: pads >= 0")
        if x.q is not None and value != 0.0:
            raise Unsupported("padding quantized codes; supported: float tensors")
        shape = tuple(-1 if k == 0 else x.shape[k] + pads[k] + pads[k + rank] for k in range(rank))
        props = {"pads": i64_array(pads), "value": self._float_attr(value)}
        op = self._emit(nn.PadOp(x.ssa, tensor_type(shape), props), self._name(node))
        self._set(node, op, shape)

    # ----------------------------------------------------------------------------- quantization

    def _qparams(self, node, k_scale: int, k_zp: int, elem_hint: int | None = None) -> QParams:
        scale = self._const(node, k_scale, "scale")
        zp = self._const(node, k_zp, "zero point")
        scale = np.asarray(scale)
        if scale.size != 1 or (zp is not None and np.asarray(zp).size != 1):
            raise Unsupported("per-axis quantization of an activation; supported: per-tensor scale and zero point")
        if zp is None:
            dtype = np.dtype(np.uint8)
            zpv = 0
        else:
            zp = np.asarray(zp)
            dtype, zpv = zp.dtype, int(zp.reshape(-1)[0])
        if dtype not in (np.uint8, np.int8, np.uint16, np.int16):
            raise Unsupported(f"zero-point type {dtype}; supported: uint8, int8, uint16, int16")
        s = float(scale.reshape(-1)[0])
        if not s > 0:
            raise Unsupported(f"scale {s}; supported: a positive scale")
        return QParams(s, zpv, dtype.itemsize * 8, dtype.kind == "i")

    def _op_QuantizeLinear(self, node, a):
        x = self._val(node, 0)
        if x.q is not None:
            raise Unsupported("QuantizeLinear of an integer tensor")
        q = self._qparams(node, 1, 2)
        name = self._name(node)
        qop = self._emit(nn.QuantizeOp(x.ssa, tensor_type(x.shape, q.qtype())), name)
        dq = self._emit(nn.DequantizeOp(qop.results[0], tensor_type(x.shape)), f"{name}/dequantize")
        self._set(node, dq, x.shape, q)

    def _op_DequantizeLinear(self, node, a):
        x = self._val(node, 0)
        q = self._qparams(node, 1, 2)
        if x.q is None:
            raise Unsupported("DequantizeLinear of a float tensor")
        if (q.scale, q.zero_point) == (x.q.scale, x.q.zero_point):
            self.env[node.output[0]] = Val(x.ssa, x.shape, None)
            return
        # other parameters than the tensor's own (e.g. a raw uint8 model input, whose codes are
        # its values): real' = s' (code - z') with code = real / s + z, an affine map
        gain = q.scale / x.q.scale
        shift = q.scale * (x.q.zero_point - q.zero_point)
        name, cur = self._name(node), x.ssa
        if gain != 1.0:
            k = self._emit(nn.ConstantOp(np.array(gain, np.float32)), f"{name}/scale")
            cur = self._emit(nn.MulOp(cur, k.results[0], tensor_type(x.shape)), f"{name}/mul").results[0]
        if shift != 0.0:
            k = self._emit(nn.ConstantOp(np.array(shift, np.float32)), f"{name}/shift")
            cur = self._emit(nn.AddOp(cur, k.results[0], tensor_type(x.shape)), f"{name}/add").results[0]
        if cur is x.ssa:
            self.env[node.output[0]] = Val(x.ssa, x.shape, None)
        else:
            self.env[node.output[0]] = Val(cur, x.shape, None)
            self.producer[node.output[0]] = cur.owner

    def _check_in_q(self, node, x: Val, k_scale: int, k_zp: int) -> None:
        q = self._qparams(node, k_scale, k_zp)
        if x.q is None or (q.scale, q.zero_point) != (x.q.scale, x.q.zero_point):
            raise Unsupported("the input's scale/zero point differ from those it was quantized with")

    @staticmethod
    def _dequant_weight(w, scale, zp, axis: int) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        zp = np.zeros(1) if zp is None else np.asarray(zp, dtype=np.float64)
        shape = [1] * w.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        zshape = [1] * w.ndim
        if zp.size > 1:
            zshape[axis] = zp.size
        return (w - zp.reshape(zshape)) * scale.reshape(shape)

    def _op_QLinearConv(self, node, a):
        x = self._val(node, 0)
        self._check_in_q(node, x, 1, 2)
        w, ws, wz = (self._const(node, k, n) for k, n in ((3, "weight"), (4, "weight scale"), (5, "weight zero point")))
        q_out = self._qparams(node, 6, 7)
        wf = self._dequant_weight(w, ws, wz, 0)
        b = self._const(node, 8, "bias")
        bias = None
        if b is not None:
            bias = (np.asarray(b, np.float64) * x.q.scale * np.asarray(ws, np.float64).reshape(-1)).astype(np.float32)
        self._conv(node, a, Val(x.ssa, x.shape), wf.astype(np.float32), bias, q_out)

    def _op_QLinearMatMul(self, node, a):
        x = self._val(node, 0)
        self._check_in_q(node, x, 1, 2)
        w, ws, wz = (self._const(node, k, n) for k, n in ((3, "weight"), (4, "weight scale"), (5, "weight zero point")))
        if np.asarray(w).ndim != 2:
            raise Unsupported(f"weight of shape {list(np.asarray(w).shape)}; supported: 2-D constant weight")
        q_out = self._qparams(node, 6, 7)
        wf = self._dequant_weight(w, ws, wz, 1)
        self._gemm(node, Val(x.ssa, x.shape), wf.astype(np.float32), None, q_out)

    def _integer_input(self, node, x: Val, k_zp: int) -> None:
        zp = self._const(node, k_zp, "input zero point")
        zpv = 0 if zp is None else int(np.asarray(zp).reshape(-1)[0])
        if x.q is None or x.q.zero_point != zpv:
            raise Unsupported("the input zero point differs from the tensor's own; supported: equal zero points")

    def _op_ConvInteger(self, node, a):
        x = self._val(node, 0)
        self._integer_input(node, x, 2)
        w = self._const(node, 1, "weight")
        wz = self._const(node, 3, "weight zero point")
        # (code - zp) = real / scale, so the integer accumulator is conv(real, (w - wz) / scale)
        wf = self._dequant_weight(w, 1.0 / x.q.scale, wz, 0)
        self._conv(node, a, Val(x.ssa, x.shape), wf.astype(np.float32), None)

    def _op_MatMulInteger(self, node, a):
        x = self._val(node, 0)
        self._integer_input(node, x, 2)
        w = self._const(node, 1, "second operand")
        if np.asarray(w).ndim != 2:
            raise Unsupported("second operand must be a 2-D constant")
        wz = self._const(node, 3, "weight zero point")
        wf = self._dequant_weight(w, 1.0 / x.q.scale, wz, 1)
        self._gemm(node, Val(x.ssa, x.shape), wf.astype(np.float32), None)


def _contrib_handlers():
    """QOperator ops of onnxruntime's contrib domain: real-valued float op + quantize/dequantize."""

    def _q_operand(self, node, k: int) -> tuple[str, np.ndarray | None]:
        """Input k of a QLinear op as a runtime tensor name (checked against its scale/zp at
        k+1, k+2), or a dequantized constant."""
        name = node.input[k]
        if name in self.consts:
            return name, self._dequant_weight(self.consts[name], self._const(node, k + 1, "scale"), self._const(node, k + 2, "zero point"), 0)
        self._check_in_q(node, self.env[name], k + 1, k + 2)
        return name, None

    def _binary_q(self, node, cls):
        names = []
        for k in (0, 3):
            name, const = _q_operand(self, node, k)
            if const is not None:
                name = f"\0const{k}:{node.output[0]}"
                self.consts[name] = const.astype(np.float32)
            names.append(name)
        q_out = self._qparams(node, 6, 7)
        op, shape = self._binary(node, cls, names[0], names[1])
        self._set_layer(node, op, shape, q_out)

    def _op_QLinearAdd(self, node, a):
        _binary_q(self, node, nn.AddOp)

    def _op_QLinearMul(self, node, a):
        _binary_q(self, node, nn.MulOp)

    def _op_QGemm(self, node, a):
        x = self._val(node, 0)
        self._check_in_q(node, x, 1, 2)
        if a.get("transA", 0):
            raise Unsupported("attribute transA=1; supported: transA=0")
        w = self._dequant_weight(self._const(node, 3, "weight B"), self._const(node, 4, "weight scale"),
                                 self._const(node, 5, "weight zero point"), 0 if a.get("transB", 0) else 1)  # fmt: skip
        if a.get("transB", 0):
            w = w.T
        alpha = float(a.get("alpha", 1.0))
        c = self._const(node, 6, "bias C")
        bias = None
        if c is not None:
            ws = np.asarray(self._const(node, 4, "weight scale"), np.float64).reshape(-1)
            c = np.asarray(c, np.float64).reshape(-1) * x.q.scale * ws
            bias = np.broadcast_to(c, (w.shape[1],)).astype(np.float32)
        q_out = self._qparams(node, 7, 8) if len(node.input) > 7 and node.input[7] else None
        self._gemm(node, Val(x.ssa, x.shape), (w * alpha).astype(np.float32), bias, q_out)

    def _op_QLinearGlobalAveragePool(self, node, a):
        if a.get("channels_last", 0):
            raise Unsupported("attribute channels_last=1; supported: 0 (NCHW)")
        x = self._val(node, 0)
        self._check_in_q(node, x, 1, 2)
        if len(x.shape) != 4:
            raise Unsupported(f"input {_shape_text(x.shape)}; supported: NCHW")
        shape = (-1, x.shape[1], 1, 1)
        op = self._emit(nn.GlobalAvgPoolOp(x.ssa, tensor_type(shape)), self._name(node))
        self._set_layer(node, op, shape, self._qparams(node, 3, 4))

    def _unary_q(self, node, cls, props):
        x = self._val(node, 0)
        self._check_in_q(node, x, 1, 2)
        op = self._emit(cls(x.ssa, tensor_type(x.shape), props), self._name(node))
        self._set_layer(node, op, x.shape, self._qparams(node, 3, 4))

    def _op_QLinearSigmoid(self, node, a):
        _unary_q(self, node, nn.SigmoidOp, {})

    def _op_QLinearLeakyRelu(self, node, a):
        _unary_q(self, node, nn.LeakyReluOp, {"alpha": self._float_attr(a.get("alpha", 0.01))})

    def _op_QLinearConcat(self, node, a):
        q_out = self._qparams(node, 0, 1)
        vals = []
        for k in range(2, len(node.input), 3):
            x = self._val(node, k)
            self._check_in_q(node, x, k + 1, k + 2)
            vals.append(x)
        rank = len(vals[0].shape)
        axis = int(a["axis"]) % rank
        if axis == 0:
            raise Unsupported("attribute axis=0 concatenates along the batch; supported: axis >= 1")
        shape = list(vals[0].shape)
        shape[axis] = sum(v.shape[axis] for v in vals)
        op = self._emit(nn.ConcatOp([v.ssa for v in vals], tensor_type(shape), axis), self._name(node))
        self._set_layer(node, op, shape, q_out)

    for fn in (_op_QLinearAdd, _op_QLinearMul, _op_QGemm, _op_QLinearGlobalAveragePool, _op_QLinearSigmoid,
               _op_QLinearLeakyRelu, _op_QLinearConcat):  # fmt: skip
        setattr(_Importer, fn.__name__, fn)


_contrib_handlers()


class _NodeView:
    """A node seen with a different input list (Sum's pairwise adds, 1-D ops lifted to 2-D)."""

    def __init__(self, node: onnx.NodeProto, inputs: list[str]):
        self.input = inputs
        self.name = node.name
        self.output = node.output
        self.op_type = node.op_type


def _per_sample(shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """A runtime shape without its batch, or a constant's shape right-aligned to rank-1 axes."""
    if len(shape) == rank and shape and shape[0] == -1:
        return tuple(shape[1:])
    return tuple(shape)


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


def _resolve_pads(a: dict, spatial, kernel, strides, dil) -> tuple[int, int, int, int]:
    """[top, left, bottom, right] from pads or auto_pad (SAME_UPPER puts the odd cell at the end)."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        pads = tuple(int(p) for p in a.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4:
            raise Unsupported(f"attribute pads={list(pads)}; supported: 4 values for 2-D")
        if any(p < 0 for p in pads):
            raise Unsupported(f"attribute pads={list(pads)}; supported: pads >= 0")
        return pads  # type: ignore[return-value]
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dil):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return (begin[0], begin[1], end[0], end[1])
    raise Unsupported(f"attribute auto_pad='{auto}'; supported: NOTSET, SAME_UPPER, SAME_LOWER, VALID")


def _out_size(size: int, p0: int, p1: int, k: int, s: int, d: int, ceil: bool, what: str) -> int:
    """Output extent (onnxruntime's rule: in ceil mode the last window must start inside the input
    or its leading pad)."""
    span = size + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        raise Unsupported(f"the kernel ({k}, dilation {d}) is larger than the padded input {what} {size + p0 + p1}")
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p0:
        out -= 1
    return out
