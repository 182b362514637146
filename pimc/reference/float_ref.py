"""The float reference: interprets the float ``nn`` IR with NumPy (float32).

It is the first rung of the verification ladder (DESIGN.md §6): it must agree with onnxruntime on
the original model, so that every later stage can be compared against it. One dispatch per op,
whole-array kernels from ``pimc.reference.ops``. ``observe(op, array)`` sees every op result,
which is how calibration collects activation ranges.

Activation Q->DQ pairs of imported QDQ models run as real fake-quantization: ``nn.quantize``
yields integer codes (int64 arrays), ``nn.dequantize`` turns them back into float32.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Operation

from pimc.dialects import nn
from pimc.dialects.nn import QuantType, element_of, ints, numpy_from_dense, shape_of
from pimc.errors import InputError
from pimc.reference import ops as K

Observer = Callable[[Operation, np.ndarray], None]


def main_func(module: ModuleOp) -> func.FuncOp:
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == "main":
            return op
    raise ValueError("module has no func.func @main")


def io_names(fn: func.FuncOp) -> tuple[list[str], list[str]]:
    """ONNX input and output names recorded on @main (``pimc.name`` in arg_attrs/res_attrs)."""

    def names(attrs, n: int, prefix: str) -> list[str]:
        if attrs is None:
            return [f"{prefix}{k}" for k in range(n)]
        out = []
        for k, d in enumerate(attrs.data):
            v = d.data.get("pimc.name")
            out.append(v.data if isinstance(v, StringAttr) else f"{prefix}{k}")
        return out

    n_in = len(fn.body.blocks[0].args)
    n_out = len(fn.function_type.outputs.data)
    return names(fn.arg_attrs, n_in, "arg"), names(fn.res_attrs, n_out, "res")


def _f(attr) -> float:
    return float(attr.value.data)


def _i(attr) -> int:
    return int(attr.value.data)


def _dense(attr) -> np.ndarray:
    a = numpy_from_dense(attr)
    return a.astype(np.float32) if a.dtype != np.float32 else a


def _eval(op: Operation, args: list[np.ndarray]) -> np.ndarray:
    """One op of the float nn dialect on NumPy arrays."""
    name = op.name
    x = args[0] if args else None
    if isinstance(op, nn.Conv2dOp):
        bias = _dense(op.bias) if op.bias is not None else None
        return K.conv2d(x, _dense(op.weight), bias, ints(op.strides), ints(op.pads), ints(op.dilations), _i(op.group))
    if isinstance(op, nn.GemmOp):
        return K.gemm(x, _dense(op.weight), _dense(op.bias) if op.bias is not None else None)
    if name == "nn.relu":
        return np.maximum(x, np.float32(0))
    if isinstance(op, nn.LeakyReluOp):
        return K.leaky_relu(x, _f(op.alpha))
    if isinstance(op, nn.PReluOp):
        return K.prelu(x, _dense(op.slope))
    if isinstance(op, nn.ClipOp):
        return np.clip(x, np.float32(_f(op.min)), np.float32(_f(op.max)))
    if name == "nn.sigmoid":
        return K.sigmoid(x)
    if isinstance(op, nn.HardSigmoidOp):
        return K.hard_sigmoid(x, _f(op.alpha), _f(op.beta))
    if name == "nn.hard_swish":
        return K.hard_swish(x)
    if name == "nn.add":
        return args[0] + args[1]
    if name == "nn.sub":
        return args[0] - args[1]
    if name == "nn.mul":
        return args[0] * args[1]
    if name == "nn.div":
        return args[0] / args[1]
    if isinstance(op, nn.ConstantOp):
        return _dense(op.value)
    if isinstance(op, nn.MaxPoolOp):
        return K.maxpool(x, ints(op.kernel), ints(op.strides), ints(op.pads), ints(op.dilations))
    if isinstance(op, nn.AvgPoolOp):
        return K.avgpool(x, ints(op.kernel), ints(op.strides), ints(op.pads), bool(_i(op.count_include_pad)))
    if name == "nn.global_avgpool":
        return K.global_avgpool(x)
    if isinstance(op, nn.LrnOp):
        return K.lrn(x, _i(op.size), _f(op.alpha), _f(op.beta), _f(op.bias))
    if isinstance(op, nn.SoftmaxOp):
        return K.softmax(x, _i(op.axis))
    if isinstance(op, nn.ConcatOp):
        return np.concatenate(args, axis=_i(op.axis))
    if name == "nn.reshape":
        return x.reshape((x.shape[0],) + shape_of(op.results[0])[1:])
    if isinstance(op, nn.TransposeOp):
        return np.ascontiguousarray(x.transpose(ints(op.perm)))
    if isinstance(op, nn.PadOp):
        return K.pad(x, ints(op.pads), _f(op.value))
    if name == "nn.quantize":
        qt = element_of(op.results[0])
        assert isinstance(qt, QuantType)
        return K.quantize(x, qt.scale.data, qt.zero_point.data, qt.qmin, qt.qmax)
    if name == "nn.dequantize":
        qt = element_of(op.operands[0])
        assert isinstance(qt, QuantType)
        return K.dequantize(x, qt.scale.data, qt.zero_point.data)
    raise NotImplementedError(f"float reference: no kernel for {name}")


def run_float(module: ModuleOp, inputs: dict[str, np.ndarray], observe: Observer | None = None) -> dict[str, np.ndarray]:
    """Run ``@main`` of a float nn module; inputs and outputs are keyed by their ONNX names."""
    fn = main_func(module)
    in_names, out_names = io_names(fn)
    block = fn.body.blocks[0]
    missing = [n for n in in_names if n not in inputs]
    if missing:
        raise InputError(f"missing input(s) {', '.join(repr(m) for m in missing)}; the model's inputs are {in_names}")
    env: dict = {}
    for name, arg in zip(in_names, block.args):
        env[arg] = np.ascontiguousarray(inputs[name], dtype=np.float32)
    results: list[np.ndarray] = []
    for op in block.ops:
        if isinstance(op, func.ReturnOp):
            results = [env[v] for v in op.operands]
            break
        if op.dialect_name() != "nn":
            raise NotImplementedError(f"float reference: unexpected op {op.name}")
        value = _eval(op, [env[v] for v in op.operands])
        if value.dtype == np.float64:
            value = value.astype(np.float32)
        env[op.results[0]] = value
        if observe is not None:
            observe(op, value)
    outputs = {}
    for name, value, res in zip(out_names, results, fn.function_type.outputs.data):
        et = res.element_type
        if isinstance(et, QuantType):  # integer-typed model output: its codes in the storage dtype
            dtype = {(8, 0): np.uint8, (8, 1): np.int8, (16, 0): np.uint16, (16, 1): np.int16}[(et.bits.data, et.signed.data)]
            value = value.astype(dtype)
        outputs[name] = value
    return outputs
