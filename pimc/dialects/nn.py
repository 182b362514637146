"""The ``nn`` dialect: tensors and CNN operators, float first and integer after ``nn-quantize``.

One op per ONNX-level operator, coarse (one op a layer). Values are ``tensor`` SSA values whose
leading dimension is the batch, always dynamic (``?``): the batch is never fixed at compile time.

Float form: element type ``f32``; weights are dense ``f32`` attributes.
Integer form: activations have element type ``!nn.q<u8, scale, zero_point>`` (``QuantType``), so the
quantization parameters travel with every value, as MLIR's ``quant`` dialect does; weights are
dense ``iN`` attributes (signed, per-output-channel symmetric) with a per-channel ``weight_scale``;
biases are dense ``i64`` *effective* biases (``bias_q - zp_in * sum_k w``, in units of input scale x
weight scale; ``spec/quantization.md`` §4). The integer meaning of each op is
defined in ``spec/quantization.md`` and implemented by ``pimc.reference.int_ref``.

Weights are dense attributes built straight from bytes (see ``dense_from_numpy``), never from
Python lists, so that importing a ResNet-50 takes milliseconds per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from xdsl.dialects.builtin import (
    I64,
    ArrayAttr,
    BytesAttr,
    DYNAMIC_INDEX,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    FloatAttr,
    FloatData,
    IntAttr,
    IntegerAttr,
    IntegerType,
    Signedness,
    StringAttr,
    TensorType,
    f32,
    f64,
    i64,
)
from xdsl.ir import Attribute, Dialect, ParametrizedAttribute, SSAValue, TypeAttribute
from xdsl.irdl import (
    IRDLOperation,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    param_def,
    prop_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

# --------------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------------


@irdl_attr_definition
class QuantType(ParametrizedAttribute, TypeAttribute):
    """A quantized scalar: ``real = scale * (q - zero_point)``, ``q`` stored in ``bits`` bits.

    Printed ``!nn.q<u8, 0.0235294, 128>`` (``u`` unsigned, ``i`` signed storage).
    """

    name = "nn.q"

    bits: IntAttr = param_def()
    signed: IntAttr = param_def()
    scale: FloatData = param_def()
    zero_point: IntAttr = param_def()

    def __init__(self, bits: int, signed: bool, scale: float, zero_point: int):
        super().__init__(IntAttr(bits), IntAttr(int(signed)), FloatData(float(scale)), IntAttr(zero_point))

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits.data - 1)) if self.signed.data else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits.data - 1)) - 1 if self.signed.data else (1 << self.bits.data) - 1

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_string(f"{'i' if self.signed.data else 'u'}{self.bits.data}, ")
            printer.print_string(_float_literal(self.scale.data))
            printer.print_string(f", {self.zero_point.data}")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> tuple[IntAttr, IntAttr, FloatData, IntAttr]:
        with parser.in_angle_brackets():
            storage = parser.parse_identifier(" storage type like u8 or i8")
            if len(storage) < 2 or storage[0] not in "ui" or not storage[1:].isdigit():
                parser.raise_error(f"expected a storage type like u8 or i8, got {storage!r}")
            parser.parse_punctuation(",")
            scale = parser.parse_float()
            parser.parse_punctuation(",")
            zp = parser.parse_integer()
        return IntAttr(int(storage[1:])), IntAttr(int(storage[0] == "i")), FloatData(scale), IntAttr(zp)

    def verify(self) -> None:
        if not 2 <= self.bits.data <= 32:
            raise VerifyException(f"!nn.q: bits must be 2..32, got {self.bits.data}")
        if not self.scale.data > 0:
            raise VerifyException(f"!nn.q: scale must be positive, got {self.scale.data}")
        if not self.qmin <= self.zero_point.data <= self.qmax:
            raise VerifyException(
                f"!nn.q: zero point {self.zero_point.data} outside [{self.qmin}, {self.qmax}]"
            )


def _float_literal(value: float) -> str:
    """The shortest text that reads back as exactly ``value`` and that the MLIR lexer takes as a
    float (it needs a '.': Python's ``1e-07`` becomes ``1.0e-07``)."""
    text = repr(float(value))
    if "." not in text and "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


# --------------------------------------------------------------------------------------------------
# Helpers shared by the front end, the passes and the references
# --------------------------------------------------------------------------------------------------

_NP_TO_XDSL = {
    np.dtype(np.float32): f32,
    np.dtype(np.float64): f64,
    np.dtype(np.int8): IntegerType(8),
    np.dtype(np.int16): IntegerType(16),
    np.dtype(np.int32): IntegerType(32),
    np.dtype(np.int64): IntegerType(64),
    np.dtype(np.uint8): IntegerType(8, Signedness.UNSIGNED),
    np.dtype(np.uint16): IntegerType(16, Signedness.UNSIGNED),
}


def dense_from_numpy(array: np.ndarray) -> DenseIntOrFPElementsAttr:
    """A dense attribute holding ``array`` (built from its bytes: no per-element Python work)."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _NP_TO_XDSL:
        raise TypeError(f"no dense attribute for dtype {array.dtype}")
    element = _NP_TO_XDSL[array.dtype]
    shape = array.shape if array.ndim else ()
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return DenseIntOrFPElementsAttr(TensorType(element, shape), BytesAttr(data))


def numpy_from_dense(attr: DenseIntOrFPElementsAttr) -> np.ndarray:
    """The array held by a dense attribute (a read-only view of its bytes)."""
    element = attr.get_element_type()
    for dtype, xdsl_type in _NP_TO_XDSL.items():
        if xdsl_type == element:
            return np.frombuffer(attr.data.data, dtype=dtype.newbyteorder("<")).reshape(attr.get_shape())
    if isinstance(element, IntegerType):  # signless of another width, e.g. i4: widen
        raise TypeError(f"unsupported dense element type {element}")
    raise TypeError(f"unsupported dense element type {element}")


def i64_array(values: Sequence[int]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, [int(v) for v in values])


def ints(attr: DenseArrayBase) -> tuple[int, ...]:
    return tuple(int(v) for v in attr.get_values())


def f64_attr(value: float) -> FloatAttr:
    return FloatAttr(float(value), f64)


def tensor_type(shape: Sequence[int], element: Attribute = f32) -> TensorType:
    """A tensor type; a ``-1`` (or ``None``) dimension is dynamic (printed ``?``)."""
    return TensorType(element, [DYNAMIC_INDEX if d is None or d < 0 else int(d) for d in shape])


def element_of(value: SSAValue) -> Attribute:
    assert isinstance(value.type, TensorType)
    return value.type.element_type


def is_quantized(value: SSAValue) -> bool:
    return isinstance(element_of(value), QuantType)


def shape_of(value: SSAValue) -> tuple[int, ...]:
    """The value's shape with dynamic dimensions (the batch) as -1."""
    assert isinstance(value.type, TensorType)
    return tuple(-1 if d == DYNAMIC_INDEX else d for d in value.type.get_shape())


# --------------------------------------------------------------------------------------------------
# Operator bases
# --------------------------------------------------------------------------------------------------

TensorT = TensorType


class UnaryOp(IRDLOperation):
    """An op with one tensor operand and one tensor result."""

    input = operand_def(TensorType)
    output = result_def(TensorType)
    traits = traits_def(Pure())

    def __init__(self, input: SSAValue, result_type: Attribute, properties: dict[str, Attribute] | None = None):
        super().__init__(operands=[input], result_types=[result_type], properties=properties or {})


class BinaryOp(IRDLOperation):
    """Elementwise op with numpy-style broadcasting over its two operands."""

    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    output = result_def(TensorType)
    traits = traits_def(Pure())

    def __init__(self, lhs: SSAValue, rhs: SSAValue, result_type: Attribute):
        super().__init__(operands=[lhs, rhs], result_types=[result_type])

    def verify_(self) -> None:
        try:
            np.broadcast_shapes(
                tuple(max(d, 1) for d in shape_of(self.lhs)), tuple(max(d, 1) for d in shape_of(self.rhs))
            )
        except ValueError:
            raise VerifyException(
                f"{self.name}: operand shapes {shape_of(self.lhs)} and {shape_of(self.rhs)} do not broadcast"
            ) from None


def _check_len(op: IRDLOperation, attr_name: str, values: Sequence[int], n: int) -> None:
    if len(values) != n:
        raise VerifyException(f"{op.name}: '{attr_name}' needs {n} values, got {len(values)}")


# --------------------------------------------------------------------------------------------------
# Matrix layers (become crossbars)
# --------------------------------------------------------------------------------------------------


class _QuantizedLayerMixin:
    """Integer-form attributes shared by conv2d and gemm (absent in float form).

    weight_scale  dense f32 [N]: per-output-channel weight scale.
    bias  dense i64 [N]: the effective bias bias_q - zp_in * sum_k w[k, n].
    requant_multiplier, requant_shift  dense i64 [N]:
        y = clamp(rne((acc + bias) * M / 2^shift) + zp_out, lo, hi)  (quantization.md §4).
    clamp  i64 [2]: [lo, hi] of the output codes (a fused ReLU/Clip narrows it).
    activation  "none" | "relu" | "clip": the activation fused at quantization, kept for passes
    (early termination needs to know an output is followed by ReLU).
    """


@irdl_op_definition
class Conv2dOp(IRDLOperation, _QuantizedLayerMixin):
    """2-D convolution, NCHW, weight [Cout, Cin/groups, kh, kw].

    pads = [top, left, bottom, right]; auto_pad is resolved by the front end.
    """

    name = "nn.conv2d"

    input = operand_def(TensorType)
    output = result_def(TensorType)
    weight = prop_def(DenseIntOrFPElementsAttr)
    bias = opt_prop_def(DenseIntOrFPElementsAttr)
    strides = prop_def(DenseArrayBase)
    pads = prop_def(DenseArrayBase)
    dilations = prop_def(DenseArrayBase)
    group = prop_def(IntegerAttr)
    weight_scale = opt_prop_def(DenseIntOrFPElementsAttr)
    requant_multiplier = opt_prop_def(DenseIntOrFPElementsAttr)
    requant_shift = opt_prop_def(DenseIntOrFPElementsAttr)
    clamp = opt_prop_def(DenseArrayBase)
    activation = opt_prop_def(StringAttr)
    traits = traits_def(Pure())

    def __init__(
        self,
        input: SSAValue,
        result_type: Attribute,
        weight: np.ndarray | DenseIntOrFPElementsAttr,
        bias: np.ndarray | DenseIntOrFPElementsAttr | None,
        strides: Sequence[int] = (1, 1),
        pads: Sequence[int] = (0, 0, 0, 0),
        dilations: Sequence[int] = (1, 1),
        group: int = 1,
        extra: dict[str, Attribute] | None = None,
    ):
        props: dict[str, Attribute] = {
            "weight": weight if isinstance(weight, DenseIntOrFPElementsAttr) else dense_from_numpy(weight),
            "strides": i64_array(strides),
            "pads": i64_array(pads),
            "dilations": i64_array(dilations),
            "group": IntegerAttr(group, i64),
        }
        if bias is not None:
            props["bias"] = bias if isinstance(bias, DenseIntOrFPElementsAttr) else dense_from_numpy(bias)
        props.update(extra or {})
        super().__init__(operands=[input], result_types=[result_type], properties=props)

    def verify_(self) -> None:
        _check_len(self, "strides", ints(self.strides), 2)
        _check_len(self, "pads", ints(self.pads), 4)
        _check_len(self, "dilations", ints(self.dilations), 2)
        wshape = self.weight.get_shape()
        if len(wshape) != 4:
            raise VerifyException(f"nn.conv2d: weight must be 4-D [Cout, Cin/g, kh, kw], got {wshape}")
        g = self.group.value.data
        in_shape = shape_of(self.input)
        if len(in_shape) != 4:
            raise VerifyException(f"nn.conv2d: input must be 4-D NCHW, got {in_shape}")
        if g < 1 or in_shape[1] % g or wshape[0] % g or in_shape[1] // g != wshape[1]:
            raise VerifyException(
                f"nn.conv2d: input channels {in_shape[1]}, group {g} and weight {wshape} disagree"
            )
        if any(s < 1 for s in ints(self.strides)) or any(d < 1 for d in ints(self.dilations)):
            raise VerifyException("nn.conv2d: strides and dilations must be >= 1")
        if any(p < 0 for p in ints(self.pads)):
            raise VerifyException("nn.conv2d: pads must be >= 0")
        if self.bias is not None and self.bias.get_shape() != (wshape[0],):
            raise VerifyException(f"nn.conv2d: bias must be [{wshape[0]}], got {self.bias.get_shape()}")
        _verify_quantized_layer(self, wshape[0])


@irdl_op_definition
class GemmOp(IRDLOperation, _QuantizedLayerMixin):
    """y = x @ weight + bias over the last axis of x; weight is [K, N] (already transposed)."""

    name = "nn.gemm"

    input = operand_def(TensorType)
    output = result_def(TensorType)
    weight = prop_def(DenseIntOrFPElementsAttr)
    bias = opt_prop_def(DenseIntOrFPElementsAttr)
    weight_scale = opt_prop_def(DenseIntOrFPElementsAttr)
    requant_multiplier = opt_prop_def(DenseIntOrFPElementsAttr)
    requant_shift = opt_prop_def(DenseIntOrFPElementsAttr)
    clamp = opt_prop_def(DenseArrayBase)
    activation = opt_prop_def(StringAttr)
    traits = traits_def(Pure())

    def __init__(
        self,
        input: SSAValue,
        result_type: Attribute,
        weight: np.ndarray | DenseIntOrFPElementsAttr,
        bias: np.ndarray | DenseIntOrFPElementsAttr | None,
        extra: dict[str, Attribute] | None = None,
    ):
        props: dict[str, Attribute] = {
            "weight": weight if isinstance(weight, DenseIntOrFPElementsAttr) else dense_from_numpy(weight)
        }
        if bias is not None:
            props["bias"] = bias if isinstance(bias, DenseIntOrFPElementsAttr) else dense_from_numpy(bias)
        props.update(extra or {})
        super().__init__(operands=[input], result_types=[result_type], properties=props)

    def verify_(self) -> None:
        wshape = self.weight.get_shape()
        if len(wshape) != 2:
            raise VerifyException(f"nn.gemm: weight must be 2-D [K, N], got {wshape}")
        in_shape = shape_of(self.input)
        if in_shape[-1] != wshape[0]:
            raise VerifyException(f"nn.gemm: input's last dimension {in_shape[-1]} != K = {wshape[0]}")
        if self.bias is not None and self.bias.get_shape() != (wshape[1],):
            raise VerifyException(f"nn.gemm: bias must be [{wshape[1]}], got {self.bias.get_shape()}")
        _verify_quantized_layer(self, wshape[1])


def _verify_quantized_layer(op: Conv2dOp | GemmOp, n_out: int) -> None:
    quantized = [
        a is not None for a in (op.weight_scale, op.requant_multiplier, op.requant_shift, op.clamp)
    ]
    in_q, out_q = is_quantized(op.input), is_quantized(op.output)
    if in_q != out_q:
        raise VerifyException(f"{op.name}: input and output must both be float or both quantized")
    if not in_q:
        if any(quantized):
            raise VerifyException(f"{op.name}: a float layer carries no quantization attributes")
        return
    if not all(quantized):
        raise VerifyException(
            f"{op.name}: a quantized layer needs weight_scale, requant_multiplier, requant_shift and clamp"
        )
    if not isinstance(op.weight.get_element_type(), IntegerType):
        raise VerifyException(f"{op.name}: a quantized layer needs an integer weight")
    for attr_name in ("weight_scale", "requant_multiplier", "requant_shift"):
        shape = getattr(op, attr_name).get_shape()
        if shape != (n_out,):
            raise VerifyException(f"{op.name}: '{attr_name}' must have shape [{n_out}], got {shape}")
    _check_len(op, "clamp", ints(op.clamp), 2)


# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------


@irdl_op_definition
class ReluOp(UnaryOp):
    name = "nn.relu"


@irdl_op_definition
class LeakyReluOp(UnaryOp):
    name = "nn.leaky_relu"
    alpha = prop_def(FloatAttr)


@irdl_op_definition
class PReluOp(UnaryOp):
    """Per-channel (axis 1) or broadcast slope."""

    name = "nn.prelu"
    slope = prop_def(DenseIntOrFPElementsAttr)


@irdl_op_definition
class ClipOp(UnaryOp):
    name = "nn.clip"
    min = prop_def(FloatAttr)
    max = prop_def(FloatAttr)


@irdl_op_definition
class SigmoidOp(UnaryOp):
    name = "nn.sigmoid"


@irdl_op_definition
class HardSigmoidOp(UnaryOp):
    name = "nn.hard_sigmoid"
    alpha = prop_def(FloatAttr)
    beta = prop_def(FloatAttr)


@irdl_op_definition
class HardSwishOp(UnaryOp):
    name = "nn.hard_swish"


@irdl_op_definition
class LutOp(UnaryOp):
    """Integer form of any elementwise activation: ``y = table[c, x - qmin]``.

    table is dense i64 [C, 2^bits] (C = channels on axis 1 for per-channel tables such as PReLU,
    or 1 for a per-tensor table); built by ``nn-quantize`` from the float activation.
    """

    name = "nn.lut"
    table = prop_def(DenseIntOrFPElementsAttr)
    source = prop_def(StringAttr)  # the float op it was built from, e.g. "nn.sigmoid"

    def verify_(self) -> None:
        if not (is_quantized(self.input) and is_quantized(self.output)):
            raise VerifyException("nn.lut: input and output must be quantized")
        in_t = element_of(self.input)
        assert isinstance(in_t, QuantType)
        shape = self.table.get_shape()
        if len(shape) != 2 or shape[1] != (1 << in_t.bits.data):
            raise VerifyException(f"nn.lut: table must be [C, {1 << in_t.bits.data}], got {shape}")


# --------------------------------------------------------------------------------------------------
# Elementwise arithmetic
# --------------------------------------------------------------------------------------------------


@irdl_op_definition
class AddOp(BinaryOp):
    name = "nn.add"


@irdl_op_definition
class SubOp(BinaryOp):
    name = "nn.sub"


@irdl_op_definition
class MulOp(BinaryOp):
    name = "nn.mul"


@irdl_op_definition
class DivOp(BinaryOp):
    name = "nn.div"


@irdl_op_definition
class ConstantOp(IRDLOperation):
    """A constant tensor operand for the elementwise ops (float, or quantized codes)."""

    name = "nn.constant"
    value = prop_def(DenseIntOrFPElementsAttr)
    output = result_def(TensorType)
    traits = traits_def(Pure())

    def __init__(self, value: np.ndarray | DenseIntOrFPElementsAttr, result_type: Attribute | None = None):
        attr = value if isinstance(value, DenseIntOrFPElementsAttr) else dense_from_numpy(value)
        if result_type is None:
            result_type = TensorType(attr.get_element_type(), attr.get_shape())
        super().__init__(result_types=[result_type], properties={"value": attr})

    def verify_(self) -> None:
        if tuple(shape_of(self.output)) != tuple(self.value.get_shape()):
            raise VerifyException(
                f"nn.constant: value shape {self.value.get_shape()} != result shape {shape_of(self.output)}"
            )


# --------------------------------------------------------------------------------------------------
# Pooling and normalization
# --------------------------------------------------------------------------------------------------


@irdl_op_definition
class MaxPoolOp(UnaryOp):
    """pads = [top, left, bottom, right]; ceil_mode is resolved into extra bottom/right padding."""

    name = "nn.maxpool"
    kernel = prop_def(DenseArrayBase)
    strides = prop_def(DenseArrayBase)
    pads = prop_def(DenseArrayBase)
    dilations = prop_def(DenseArrayBase)


@irdl_op_definition
class AvgPoolOp(UnaryOp):
    """count_include_pad = 1 divides by the full window; 0 by the in-bounds elements only."""

    name = "nn.avgpool"
    kernel = prop_def(DenseArrayBase)
    strides = prop_def(DenseArrayBase)
    pads = prop_def(DenseArrayBase)
    count_include_pad = prop_def(IntegerAttr)


@irdl_op_definition
class GlobalAvgPoolOp(UnaryOp):
    name = "nn.global_avgpool"


@irdl_op_definition
class LrnOp(UnaryOp):
    name = "nn.lrn"
    size = prop_def(IntegerAttr)
    alpha = prop_def(FloatAttr)
    beta = prop_def(FloatAttr)
    bias = prop_def(FloatAttr)


@irdl_op_definition
class SoftmaxOp(UnaryOp):
    name = "nn.softmax"
    axis = prop_def(IntegerAttr)


# --------------------------------------------------------------------------------------------------
# Data movement
# --------------------------------------------------------------------------------------------------


@irdl_op_definition
class ConcatOp(IRDLOperation):
    name = "nn.concat"
    inputs = var_operand_def(TensorType)
    output = result_def(TensorType)
    axis = prop_def(IntegerAttr)
    traits = traits_def(Pure())

    def __init__(self, inputs: Sequence[SSAValue], result_type: Attribute, axis: int):
        super().__init__(operands=[list(inputs)], result_types=[result_type], properties={"axis": IntegerAttr(axis, i64)})

    def verify_(self) -> None:
        if self.axis.value.data == 0:
            raise VerifyException("nn.concat: cannot concatenate along the batch axis")


@irdl_op_definition
class ReshapeOp(UnaryOp):
    """Reshape that keeps the batch axis: the result type gives the new shape (batch ``?``)."""

    name = "nn.reshape"


@irdl_op_definition
class TransposeOp(UnaryOp):
    """perm[0] must be 0: the batch axis stays first."""

    name = "nn.transpose"
    perm = prop_def(DenseArrayBase)

    def verify_(self) -> None:
        perm = ints(self.perm)
        if sorted(perm) != list(range(len(perm))) or perm[0] != 0:
            raise VerifyException(f"nn.transpose: perm {perm} must be a permutation keeping axis 0 first")


@irdl_op_definition
class PadOp(UnaryOp):
    """Constant padding of the non-batch axes: pads = [begin..., end...] over all axes."""

    name = "nn.pad"
    pads = prop_def(DenseArrayBase)
    value = prop_def(FloatAttr)


# --------------------------------------------------------------------------------------------------
# Quantization boundaries
# --------------------------------------------------------------------------------------------------


@irdl_op_definition
class QuantizeOp(UnaryOp):
    """float -> quantized codes with the result's ``!nn.q`` parameters (round half to even, clamp)."""

    name = "nn.quantize"


@irdl_op_definition
class DequantizeOp(UnaryOp):
    """quantized codes -> float: scale * (q - zero_point)."""

    name = "nn.dequantize"


@irdl_op_definition
class RequantizeOp(UnaryOp):
    """quantized -> quantized with other parameters (for concat inputs, residual adds, ...)."""

    name = "nn.requantize"


NN = Dialect(
    "nn",
    [
        Conv2dOp,
        GemmOp,
        ReluOp,
        LeakyReluOp,
        PReluOp,
        ClipOp,
        SigmoidOp,
        HardSigmoidOp,
        HardSwishOp,
        LutOp,
        AddOp,
        SubOp,
        MulOp,
        DivOp,
        ConstantOp,
        MaxPoolOp,
        AvgPoolOp,
        GlobalAvgPoolOp,
        LrnOp,
        SoftmaxOp,
        ConcatOp,
        ReshapeOp,
        TransposeOp,
        PadOp,
        QuantizeOp,
        DequantizeOp,
        RequantizeOp,
    ],
    [QuantType],
)

__all__ = ["NN", "QuantType", "dense_from_numpy", "numpy_from_dense", "i64_array", "ints", "tensor_type"]
_ = (ArrayAttr, I64)  # re-exported names used by passes
