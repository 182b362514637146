"""pimc's quantization written as a QDQ ONNX model, so that onnxruntime can check the integer
reference: every quantized value is a QuantizeLinear output (its codes), every op reads its
operands through DequantizeLinear and quantizes its result again.

Weights are int8/int16 initializers with a per-axis DequantizeLinear; biases are int32 (in units of
input scale x weight scale) with a per-axis DequantizeLinear; a fused ReLU/Clip stays a float op
before the output QuantizeLinear; an ``nn.lut`` becomes the float operator it was built from.
Activation widths other than 8 and 16 bits are stored in uint8/uint16 with a float Clip to the
codes' range before each QuantizeLinear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from xdsl.dialects import func
from xdsl.dialects.builtin import DenseIntOrFPElementsAttr, FloatAttr, ModuleOp
from xdsl.ir import Operation, SSAValue

from pimc.dialects import nn
from pimc.dialects.nn import QuantType, numpy_from_dense
from pimc.errors import ModelError
from pimc.quant.calibrate import arg_names, main_func, result_names
from pimc.transforms.nn_quantize import SOURCE_PROPS

OPSET = 21


class _Exporter:
    def __init__(self, fn: func.FuncOp):
        self.fn = fn
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: dict[SSAValue, str] = {}  # quantized value -> tensor of its codes
        self.dq_names: dict[SSAValue, str] = {}  # quantized value -> its DequantizeLinear output
        self.counter = 0
        # isolate: every op reads its quantized operands from graph inputs (fed with reference
        # codes) instead of from the upstream QuantizeLinear, so each op is checked on its own
        self.isolate = False
        self.fed: dict[SSAValue, str] = {}
        self.fed_inputs: list[onnx.ValueInfoProto] = []

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def init(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        array = np.asarray(array)
        if array.ndim:  # (ascontiguousarray would turn a scalar into shape [1])
            array = np.ascontiguousarray(array)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out + "_node", **attrs))
        return out

    # ----------------------------------------------------------------------- quant params

    @staticmethod
    def storage(qt: QuantType) -> type:
        if qt.signed.data:
            return np.int8 if qt.bits.data <= 8 else np.int16
        return np.uint8 if qt.bits.data <= 8 else np.uint16

    def qparams(self, qt: QuantType) -> tuple[str, str]:
        s = self.init("scale", np.array(qt.scale.data, dtype=np.float32))
        z = self.init("zp", np.array(qt.zero_point.data, dtype=self.storage(qt)))
        return s, z

    def dq(self, value: SSAValue) -> str:
        """The float tensor of a quantized value (one DequantizeLinear per value)."""
        if value not in self.dq_names:
            qt = nn.element_of(value)
            assert isinstance(qt, QuantType)
            s, z = self.qparams(qt)
            src = self.names[value]
            if self.isolate and not isinstance(value.owner, nn.ConstantOp):
                if value not in self.fed:
                    self.fed[value] = self.fresh("fed")
                    elem = helper.np_dtype_to_tensor_dtype(np.dtype(self.storage(qt)))
                    shape = ["N"] + [int(d) for d in nn.shape_of(value)[1:]]
                    self.fed_inputs.append(helper.make_tensor_value_info(self.fed[value], elem, shape))
                src = self.fed[value]
            self.dq_names[value] = self.node("DequantizeLinear", [src, s, z], "dq")
        return self.dq_names[value]

    def q(self, value: SSAValue, real: str, lo: int | None = None, hi: int | None = None) -> None:
        """Quantize the float tensor ``real`` into ``value``'s codes (clamped to [lo, hi])."""
        qt = nn.element_of(value)
        assert isinstance(qt, QuantType)
        lo = qt.qmin if lo is None else lo
        hi = qt.qmax if hi is None else hi
        info = np.iinfo(self.storage(qt))
        if lo > info.min or hi < info.max:
            s, zp = np.float32(qt.scale.data), qt.zero_point.data
            a = self.init("lo", np.array(s * np.float32(lo - zp), dtype=np.float32))
            b = self.init("hi", np.array(s * np.float32(hi - zp), dtype=np.float32))
            real = self.node("Clip", [real, a, b], "clamp")
        s, z = self.qparams(qt)
        self.names[value] = self.node("QuantizeLinear", [real, s, z], "q")

    # ----------------------------------------------------------------------------- ops

    def run(self) -> onnx.ModelProto:
        fn = self.fn
        block = fn.body.block
        in_names = arg_names(fn)
        inputs = []
        for name, arg in zip(in_names, block.args):
            shape = ["N"] + [int(d) for d in nn.shape_of(arg)[1:]]
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
            self.names[arg] = name
        outputs = []
        for op in block.ops:
            if isinstance(op, func.ReturnOp):
                for name, v in zip(result_names(fn), op.operands):
                    src = self.names.get(v)
                    if src is None:
                        raise ModelError(f"QDQ export: output {name} is not computed")
                    self.nodes.append(helper.make_node("Identity", [src], [name], name=f"{name}_out"))
                    elem = TensorProto.FLOAT if not isinstance(nn.element_of(v), QuantType) else helper.np_dtype_to_tensor_dtype(np.dtype(self.storage(nn.element_of(v))))
                    outputs.append(helper.make_tensor_value_info(name, elem, ["N"] + [int(d) for d in nn.shape_of(v)[1:]]))
                continue
            self.op(op)
        graph = helper.make_graph(self.nodes, "pimc_qdq", inputs + self.fed_inputs, outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pimc", producer_version="0.1"
        )
        model.ir_version = 10
        return model

    def op(self, op: Operation) -> None:
        out = op.results[0]
        if isinstance(op, nn.QuantizeOp):
            self.q(out, self.names[op.input])
            return
        if isinstance(op, nn.DequantizeOp):
            self.names[out] = self.dq(op.input)
            return
        if isinstance(op, nn.ConstantOp):
            qt = nn.element_of(out)
            if not isinstance(qt, QuantType):
                raise ModelError("QDQ export: a float nn.constant remains (run nn-quantize first)")
            codes = numpy_from_dense(op.value).astype(self.storage(qt))
            self.names[out] = self.init("const", codes)
            return
        if isinstance(op, nn.Conv2dOp):
            self.matrix(op, conv=True)
            return
        if isinstance(op, nn.GemmOp):
            self.matrix(op, conv=False)
            return
        if isinstance(op, nn.RequantizeOp):
            self.q(out, self.dq(op.input))
            return
        if isinstance(op, nn.LutOp):
            self.q(out, self.lut_source(op))
            return
        binary = {nn.AddOp: "Add", nn.SubOp: "Sub", nn.MulOp: "Mul", nn.DivOp: "Div"}
        if type(op) in binary:
            self.q(out, self.node(binary[type(op)], [self.dq(op.lhs), self.dq(op.rhs)], binary[type(op)].lower()))
            return
        if isinstance(op, nn.ConcatOp):
            y = self.node("Concat", [self.dq(v) for v in op.inputs], "concat", axis=op.axis.value.data)
            self.q(out, y)
            return
        x = self.dq(op.operands[0]) if op.operands else None
        if isinstance(op, nn.MaxPoolOp):
            y = self.node(
                "MaxPool", [x], "maxpool", kernel_shape=list(nn.ints(op.kernel)), strides=list(nn.ints(op.strides)),
                pads=_onnx_pads(nn.ints(op.pads)), dilations=list(nn.ints(op.dilations)),
            )
        elif isinstance(op, nn.AvgPoolOp):
            y = self.node(
                "AveragePool", [x], "avgpool", kernel_shape=list(nn.ints(op.kernel)), strides=list(nn.ints(op.strides)),
                pads=_onnx_pads(nn.ints(op.pads)), count_include_pad=op.count_include_pad.value.data,
            )
        elif isinstance(op, nn.GlobalAvgPoolOp):
            y = self.node("GlobalAveragePool", [x], "gap")
        elif isinstance(op, nn.SoftmaxOp):
            y = self.node("Softmax", [x], "softmax", axis=op.axis.value.data)
        elif isinstance(op, nn.LrnOp):
            y = self.node(
                "LRN", [x], "lrn", size=op.size.value.data, alpha=op.alpha.value.data,
                beta=op.beta.value.data, bias=op.bias.value.data,
            )
        elif isinstance(op, nn.ReshapeOp):
            shape = self.init("shape", np.array([0] + [int(d) for d in nn.shape_of(out)[1:]], dtype=np.int64))
            y = self.node("Reshape", [x, shape], "reshape")
        elif isinstance(op, nn.TransposeOp):
            y = self.node("Transpose", [x], "transpose", perm=list(nn.ints(op.perm)))
        elif isinstance(op, nn.PadOp):
            pads = self.init("pads", np.array(nn.ints(op.pads), dtype=np.int64))
            value = self.init("padv", np.array(op.value.value.data, dtype=np.float32))
            y = self.node("Pad", [x, pads, value], "pad", mode="constant")
        else:
            raise ModelError(f"QDQ export does not support {op.name}")
        self.q(out, y)

    def matrix(self, op: nn.Conv2dOp | nn.GemmOp, conv: bool) -> None:
        xt = nn.element_of(op.input)
        yt = nn.element_of(op.output)
        assert isinstance(xt, QuantType) and isinstance(yt, QuantType)
        w = numpy_from_dense(op.weight)
        sw = numpy_from_dense(op.weight_scale).astype(np.float32)
        axis = 0 if conv else 1
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
        # the IR holds the effective bias (bias - zp_x · Σw); ONNX wants the plain int32 bias
        bias_eff = numpy_from_dense(op.bias).astype(np.int64) if op.bias is not None else 0
        bias_q = bias_eff + xt.zero_point.data * w.astype(np.int64).sum(axis=reduce_axes)
        w_init = self.init("w", w)
        w_zp = self.init("w_zp", np.zeros(sw.shape, dtype=w.dtype))
        w_s = self.init("w_scale", sw)
        w_dq = self.node("DequantizeLinear", [w_init, w_s, w_zp], "w_dq", axis=axis)
        b_scale = (np.float32(xt.scale.data) * sw).astype(np.float32)
        if np.all(np.abs(bias_q) <= (1 << 31) - 1):
            b_init = self.init("b", np.asarray(bias_q, dtype=np.int32) * np.ones(sw.shape, dtype=np.int32))
            b_s = self.init("b_scale", b_scale)
            b_zp = self.init("b_zp", np.zeros(sw.shape, dtype=np.int32))
            b_dq = self.node("DequantizeLinear", [b_init, b_s, b_zp], "b_dq", axis=0)
        else:
            # a wide-format bias (quantization.md §4) has no int32 DequantizeLinear: its exact real
            # value bias_q · s_x · s_w, rounded once to float32
            real = np.asarray(bias_q, dtype=np.float64) * float(xt.scale.data) * sw.astype(np.float64)
            b_dq = self.init("b_real", real.astype(np.float32))
        x = self.dq(op.input)
        if conv:
            assert isinstance(op, nn.Conv2dOp)
            y = self.node(
                "Conv", [x, w_dq, b_dq], "conv", strides=list(nn.ints(op.strides)), pads=_onnx_pads(nn.ints(op.pads)),
                dilations=list(nn.ints(op.dilations)), group=op.group.value.data,
                kernel_shape=list(w.shape[2:]),
            )
        else:
            # Gemm (not MatMul + Add, whose per-axis bias onnxruntime's QDQ fusion rejects) on
            # the input flattened to [rows, K]
            rank = len(nn.shape_of(op.input))
            if rank != 2:
                flat = self.init("shape", np.array([-1, w.shape[0]], dtype=np.int64))
                x = self.node("Reshape", [x, flat], "flatten")
            y = self.node("Gemm", [x, w_dq, b_dq], "gemm")
            if rank != 2:
                back = self.init("shape", np.array([-1] + [int(d) for d in nn.shape_of(op.output)[1:]], dtype=np.int64))
                y = self.node("Reshape", [y, back], "unflatten")
        act = op.activation.data if op.activation is not None else "none"
        lo, hi = nn.ints(op.clamp)
        s, zp = np.float32(yt.scale.data), yt.zero_point.data
        if act == "relu":
            y = self.node("Relu", [y], "relu")
        elif act == "clip":
            a = self.init("clip_lo", np.array(s * np.float32(lo - zp), dtype=np.float32))
            b = self.init("clip_hi", np.array(s * np.float32(hi - zp), dtype=np.float32))
            y = self.node("Clip", [y, a, b], "clip")
        self.q(op.output, y, lo, hi)

    def lut_source(self, op: nn.LutOp) -> str:
        """The float operator the table was built from, on the dequantized input."""
        x = self.dq(op.input)
        src = op.source.data
        props_attr = op.attributes.get(SOURCE_PROPS)
        props = dict(props_attr.data) if props_attr is not None else {}

        def f(key: str) -> float:
            attr = props.get(key)
            if not isinstance(attr, FloatAttr):
                raise ModelError(f"QDQ export: nn.lut from {src} lacks its '{key}' ({SOURCE_PROPS})")
            return float(attr.value.data)

        if src == "nn.relu":
            return self.node("Relu", [x], "relu")
        if src == "nn.sigmoid":
            return self.node("Sigmoid", [x], "sigmoid")
        if src == "nn.hard_swish":
            return self.node("HardSwish", [x], "hardswish")
        if src == "nn.leaky_relu":
            return self.node("LeakyRelu", [x], "leakyrelu", alpha=f("alpha"))
        if src == "nn.hard_sigmoid":
            return self.node("HardSigmoid", [x], "hardsigmoid", alpha=f("alpha"), beta=f("beta"))
        if src == "nn.clip":
            a = self.init("clip_lo", np.array(f("min"), dtype=np.float32))
            b = self.init("clip_hi", np.array(f("max"), dtype=np.float32))
            return self.node("Clip", [x, a, b], "clip")
        if src == "nn.prelu":
            slope = props.get("slope")
            if not isinstance(slope, DenseIntOrFPElementsAttr):
                raise ModelError(f"QDQ export: nn.lut from nn.prelu lacks its slope ({SOURCE_PROPS})")
            s = numpy_from_dense(slope).astype(np.float32)
            rank = len(nn.shape_of(op.input))
            if s.size > 1:
                s = s.reshape((-1,) + (1,) * max(rank - 2, 0))
            return self.node("PRelu", [x, self.init("slope", s)], "prelu")
        raise ModelError(f"QDQ export: no ONNX operator for a table built from {src}")


def _onnx_pads(pads: tuple[int, ...]) -> list[int]:
    """nn pads [top, left, bottom, right] -> ONNX [begin_h, begin_w, end_h, end_w] (the same order)."""
    return [int(p) for p in pads]


def _expose_codes(exporter: _Exporter, model: onnx.ModelProto, skip_constants: bool) -> dict[SSAValue, str]:
    """Append every quantized value's codes (not already a graph output; constants skipped when
    ``skip_constants``) to ``model``'s graph outputs; returns ``{value: output name}``."""
    outputs = {o.name for o in model.graph.output}
    exposed = {}
    for value, name in exporter.names.items():
        qt = nn.element_of(value) if hasattr(value.type, "element_type") else None
        if not isinstance(qt, QuantType) or name in outputs:
            continue
        if skip_constants and isinstance(value.owner, nn.ConstantOp):
            continue
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(_Exporter.storage(qt)))
        shape = ["N"] + [int(d) for d in nn.shape_of(value)[1:]]
        model.graph.output.append(helper.make_tensor_value_info(name, elem, shape))
        outputs.add(name)
        exposed[value] = name
    return exposed


def export_qdq_isolated(module_q: ModuleOp) -> tuple[onnx.ModelProto, dict[SSAValue, str], dict[SSAValue, str]]:
    """A QDQ model in which every op is evaluated on its own: each quantized operand is a graph
    input (to be fed with the integer reference's codes) and each op's output codes are a graph
    output. Returns ``(model, {value: output name}, {value: input name})``. With it onnxruntime
    checks every operator's integer semantics on identical inputs, free of the propagation of
    earlier 1-LSB differences through deep networks."""
    exporter = _Exporter(main_func(module_q))
    exporter.isolate = True
    model = exporter.run()
    exposed = _expose_codes(exporter, model, skip_constants=True)
    onnx.checker.check_model(model)
    return model, exposed, dict(exporter.fed)


def export_qdq(
    module_q: ModuleOp, float_model_path: str | Path | None = None, expose_codes: bool = False
) -> onnx.ModelProto | tuple[onnx.ModelProto, dict[SSAValue, str]]:
    """The quantized module as a QDQ ONNX model (opset 21, dynamic batch ``N``).

    ``float_model_path`` (optional) is only recorded in the model's doc string. With
    ``expose_codes`` every quantized value's codes are extra graph outputs (to find the first
    value where two implementations differ) and the result is ``(model, {value: output name})``.
    """
    exporter = _Exporter(main_func(module_q))
    model = exporter.run()
    if expose_codes:
        exposed = _expose_codes(exporter, model, skip_constants=False)
        onnx.checker.check_model(model)
        return model, exposed
    if float_model_path is not None:
        model.doc_string = f"pimc quantization of {Path(float_model_path).name}"
    onnx.checker.check_model(model)
    return model


__all__ = ["export_qdq", "export_qdq_isolated"]
