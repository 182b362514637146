"""The nn dialect: every op, in float and in integer form, prints and parses back to an equal op,
and the verifiers reject ill-formed ops with a message that says what is wrong."""

from __future__ import annotations

import io

import numpy as np
import pytest
from xdsl.dialects.builtin import FloatAttr, FunctionType, IntegerAttr, ModuleOp, StringAttr, f64, i64
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from pimc.dialects import nn
from pimc.dialects.nn import QuantType, dense_from_numpy, i64_array, numpy_from_dense, tensor_type
from pimc.pipeline import make_context

R = np.random.default_rng(0)
F = nn.tensor_type
Q8 = QuantType(8, False, 0.0235294, 128)
Q8B = QuantType(8, False, 0.5, 3)


def _f(*shape):
    return tensor_type(shape)


def _q(*shape, q=Q8):
    return tensor_type(shape, q)


def _module(arg_types, build) -> ModuleOp:
    """func @main(args) { build(args) ; return last }"""
    fn = FuncOp("main", (arg_types, []))
    block = fn.body.block
    ops = build(list(block.args))
    for op in ops:
        block.add_op(op)
    last = ops[-1].results[0]
    block.add_op(ReturnOp(last))
    fn.function_type = FunctionType.from_lists(arg_types, [last.type])
    return ModuleOp([fn])


def _quant_layer_attrs(n: int, lo: int = 0, hi: int = 255, activation: str = "relu") -> dict:
    return {
        "weight_scale": dense_from_numpy(R.uniform(0.01, 0.1, n).astype(np.float32)),
        "requant_multiplier": dense_from_numpy(R.integers(1 << 30, 1 << 31, n).astype(np.int64)),
        "requant_shift": dense_from_numpy(R.integers(30, 40, n).astype(np.int64)),
        "clamp": i64_array([lo, hi]),
        "activation": StringAttr(activation),
    }


def _unary(cls, props=None, q=False):
    t = _q(-1, 4, 5, 5) if q else _f(-1, 4, 5, 5)
    return (t,), lambda a: [cls(a[0], t, props or {})]


CASES = {
    "conv2d float": (
        (_f(-1, 4, 8, 8),),
        lambda a: [nn.Conv2dOp(a[0], _f(-1, 6, 4, 4), R.standard_normal((6, 2, 3, 3)).astype(np.float32),
                               R.standard_normal(6).astype(np.float32), (2, 2), (1, 1, 1, 1), (1, 1), 2)],
    ),
    "conv2d int": (
        (_q(-1, 4, 8, 8),),
        lambda a: [nn.Conv2dOp(a[0], _q(-1, 6, 8, 8, q=Q8B), R.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8),
                               R.integers(-1000, 1000, 6).astype(np.int64), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                               _quant_layer_attrs(6, 3, 255))],
    ),
    "gemm float": ((_f(-1, 12),), lambda a: [nn.GemmOp(a[0], _f(-1, 5), R.standard_normal((12, 5)).astype(np.float32), None)]),
    "gemm int": (
        (_q(-1, 12),),
        lambda a: [nn.GemmOp(a[0], _q(-1, 5, q=Q8B), R.integers(-127, 128, (12, 5)).astype(np.int8),
                             np.zeros(5, np.int64), _quant_layer_attrs(5, 0, 255, "none"))],
    ),
    "relu": _unary(nn.ReluOp),
    "leaky_relu": _unary(nn.LeakyReluOp, {"alpha": FloatAttr(0.1, f64)}),
    "prelu": _unary(nn.PReluOp, {"slope": dense_from_numpy(R.standard_normal((4, 1, 1)).astype(np.float32))}),
    "clip": _unary(nn.ClipOp, {"min": FloatAttr(0.0, f64), "max": FloatAttr(6.0, f64)}),
    "sigmoid": _unary(nn.SigmoidOp),
    "hard_sigmoid": _unary(nn.HardSigmoidOp, {"alpha": FloatAttr(0.2, f64), "beta": FloatAttr(0.5, f64)}),
    "hard_swish": _unary(nn.HardSwishOp),
    "lut": _unary(
        nn.LutOp,
        {"table": dense_from_numpy(R.integers(0, 256, (1, 256)).astype(np.int64)), "source": StringAttr("nn.sigmoid")},
        q=True,
    ),
    "maxpool": _unary(nn.MaxPoolOp, {"kernel": i64_array([2, 2]), "strides": i64_array([1, 1]),
                                     "pads": i64_array([0, 0, 1, 1]), "dilations": i64_array([1, 1])}),
    "avgpool": _unary(nn.AvgPoolOp, {"kernel": i64_array([3, 3]), "strides": i64_array([1, 1]),
                                     "pads": i64_array([1, 1, 1, 1]), "count_include_pad": IntegerAttr(0, i64)}, q=True),
    "lrn": _unary(nn.LrnOp, {"size": IntegerAttr(3, i64), "alpha": FloatAttr(1e-4, f64),
                             "beta": FloatAttr(0.75, f64), "bias": FloatAttr(1.0, f64)}),
    "softmax": ((_f(-1, 10),), lambda a: [nn.SoftmaxOp(a[0], _f(-1, 10), {"axis": IntegerAttr(1, i64)})]),
    "global_avgpool": ((_f(-1, 4, 5, 5),), lambda a: [nn.GlobalAvgPoolOp(a[0], _f(-1, 4, 1, 1))]),
    "reshape": ((_q(-1, 4, 5, 5),), lambda a: [nn.ReshapeOp(a[0], _q(-1, 100))]),
    "transpose": ((_f(-1, 4, 5, 6),), lambda a: [nn.TransposeOp(a[0], _f(-1, 6, 4, 5), {"perm": i64_array([0, 3, 1, 2])})]),
    "pad": ((_f(-1, 4, 5, 5),), lambda a: [nn.PadOp(a[0], _f(-1, 4, 7, 7), {"pads": i64_array([0, 0, 1, 1, 0, 0, 1, 1]),
                                                                           "value": FloatAttr(0.0, f64)})]),
    "concat": ((_f(-1, 4, 5, 5), _f(-1, 2, 5, 5)), lambda a: [nn.ConcatOp(a, _f(-1, 6, 5, 5), 1)]),
    "add": ((_f(-1, 4, 5, 5), _f(-1, 4, 5, 5)), lambda a: [nn.AddOp(a[0], a[1], _f(-1, 4, 5, 5))]),
    "sub": ((_q(-1, 4, 5, 5), _q(-1, 4, 5, 5, q=Q8B)), lambda a: [nn.SubOp(a[0], a[1], _q(-1, 4, 5, 5))]),
    "mul with constant": (
        (_f(-1, 4, 5, 5),),
        lambda a: (lambda c: [c, nn.MulOp(a[0], c.output, _f(-1, 4, 5, 5))])(
            nn.ConstantOp(R.standard_normal((4, 1, 1)).astype(np.float32))),
    ),
    "div": ((_f(-1, 3), _f(-1, 3)), lambda a: [nn.DivOp(a[0], a[1], _f(-1, 3))]),
    "quantize": ((_f(-1, 3, 4, 4),), lambda a: [nn.QuantizeOp(a[0], _q(-1, 3, 4, 4))]),
    "dequantize": ((_q(-1, 3, 4, 4),), lambda a: [nn.DequantizeOp(a[0], _f(-1, 3, 4, 4))]),
    "requantize": ((_q(-1, 3, 4, 4),), lambda a: [nn.RequantizeOp(a[0], _q(-1, 3, 4, 4, q=Q8B))]),
}


def _round_trip(module: ModuleOp) -> ModuleOp:
    text = io.StringIO()
    Printer(stream=text).print_op(module)
    parsed = Parser(make_context(), text.getvalue()).parse_module()
    parsed.verify()
    return parsed


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_op_prints_and_parses_back_equal(case):
    arg_types, build = CASES[case]
    module = _module(list(arg_types), build)
    module.verify()
    again = _round_trip(module)
    assert again.is_structurally_equivalent(module), case


def test_the_cases_cover_every_op_of_the_dialect():
    built = set()
    for arg_types, build in CASES.values():
        built |= {op.name for op in _module(list(arg_types), build).walk()}
    assert {op.name for op in nn.NN.operations} <= built


@pytest.mark.parametrize("scale", [0.1, 1e-7, 2.5e-12, 3.0e5, 1e20, 0.0235294117647058])
def test_quant_type_scale_round_trips_exactly(scale):
    t = _q(-1, 3, q=QuantType(8, False, scale, 7))
    module = _module([t], lambda a: [nn.DequantizeOp(a[0], _f(-1, 3))])
    again = _round_trip(module)
    arg = again.body.block.ops.first.body.block.args[0]
    assert arg.type.element_type.scale.data == scale


def test_dense_attributes_hold_the_bytes_exactly():
    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.float32, np.float64):
        a = (R.standard_normal((3, 4)) * 100).astype(dtype)
        assert np.array_equal(numpy_from_dense(dense_from_numpy(a)), a)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda a: [nn.Conv2dOp(a[0], _f(-1, 6, 8, 8), np.ones((6, 3, 3, 3), np.float32), None)], "disagree"),
        (lambda a: [nn.Conv2dOp(a[0], _f(-1, 6, 8, 8), np.ones((6, 4, 3, 3), np.float32), None, pads=(1, 1))], "pads"),
        (lambda a: [nn.Conv2dOp(a[0], _f(-1, 6, 8, 8), np.ones((6, 4, 3, 3), np.float32), np.ones(5, np.float32))], "bias"),
        (lambda a: [nn.Conv2dOp(a[0], _f(-1, 6, 8, 8), np.ones((6, 4, 3, 3), np.float32), None,
                                extra={"clamp": i64_array([0, 255])})], "float layer"),
        (lambda a: [nn.TransposeOp(a[0], _f(8, -1, 4, 8), {"perm": i64_array([2, 0, 1, 3])})], "axis 0"),
        (lambda a: [nn.ConcatOp([a[0], a[0]], _f(-1, 4, 8, 8), 0)], "batch axis"),
    ],
)
def test_verifier_rejects_ill_formed_ops(build, message):
    module = _module([_f(-1, 4, 8, 8)], build)
    with pytest.raises(VerifyException, match=message):
        module.verify()


def test_quantized_layer_needs_all_its_attributes():
    module = _module(
        [_q(-1, 12)],
        lambda a: [nn.GemmOp(a[0], _q(-1, 5), np.ones((12, 5), np.int8), None, {"clamp": i64_array([0, 255])})],
    )
    with pytest.raises(VerifyException, match="needs weight_scale"):
        module.verify()


@pytest.mark.parametrize(
    "params, message",
    [((8, False, 0.1, 300), "zero point 300"), ((8, True, 0.1, -129), "zero point -129"),
     ((8, False, 0.0, 0), "scale must be positive"), ((40, False, 0.1, 0), "bits must be")],
)
def test_quant_type_rejects_bad_parameters(params, message):
    with pytest.raises(VerifyException, match=message):
        QuantType(*params)


_ = F
