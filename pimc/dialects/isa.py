"""The ``isa`` dialect: one op per instruction or directive of a pimc program (``spec/isa.md``).

The module body is the program in order: directives (``isa.buffer``, ``isa.const``, ``isa.xbar``,
``isa.input``, ``isa.output``) and instructions, with ``isa.layer`` markers opening the report
layer that the following instructions count against. Ops carry no SSA values: they name buffers and
constants by symbol, exactly as the program does, so ``pimc.backend.emit`` is a one-to-one
translation and printing the module is the debugging view of the program.

Every op is declared from a field table (``FIELDS``: the instruction's field names in
``spec/isa.md`` order, each with a kind), which gives both the IRDL properties (for verification)
and the conversion to and from program field values (``fields()`` / ``build()``). A field with a
default (``DEFAULTS``: the directive fields format 1.1 added, ``isa.layer``'s ``replication`` and
``isa.xbar``'s ``copies``) is an optional property, absent (and not printed) when it has its default.
Constants are dense attributes built from bytes (``pimc.dialects.nn.dense_from_numpy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    SymbolRefAttr,
    f64,
    i64,
)
from xdsl.ir import Attribute, Dialect
from xdsl.irdl import IRDLOperation, irdl_op_definition, opt_prop_def, prop_def
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

from pimc.dialects.nn import dense_from_numpy, numpy_from_dense

# --------------------------------------------------------------------------------------------------
# Field kinds: how a program field value is held as an attribute
# --------------------------------------------------------------------------------------------------

#: kind -> attribute class held by the property
KINDS: dict[str, type[Attribute]] = {
    "buf": SymbolRefAttr,  # a buffer name
    "const": SymbolRefAttr,  # a constant name
    "src": SymbolRefAttr,  # a buffer or a constant name (operands of the elementwise units)
    "bufs": ArrayAttr,  # a list of buffer names
    "int": IntegerAttr,
    "f64": FloatAttr,
    "ints": DenseArrayBase,
    "str": StringAttr,
    "dense": DenseIntOrFPElementsAttr,
}


#: attributes are immutable, so equal field values share one (building and verifying an xDSL
#: attribute costs ~100 µs; a ResNet-50 program has ~10^5 fields but few distinct values)
_ATTR_CACHE: dict[tuple[str, Any], Attribute] = {}


def to_attr(kind: str, value: Any) -> Attribute:
    """A program field value as the attribute of its kind."""
    if kind == "dense":
        return value if isinstance(value, DenseIntOrFPElementsAttr) else dense_from_numpy(np.asarray(value))
    key = (kind, tuple(value) if isinstance(value, (list, tuple)) else value)
    if kind == "f64":
        key = (kind, float(value).hex())  # -0.0 and 0.0 stay apart
    attr = _ATTR_CACHE.get(key)
    if attr is None:
        attr = _ATTR_CACHE[key] = _make_attr(kind, value)
    return attr


def _make_attr(kind: str, value: Any) -> Attribute:
    if kind in ("buf", "const", "src"):
        return SymbolRefAttr(str(value))
    if kind == "bufs":
        return ArrayAttr([SymbolRefAttr(str(v)) for v in value])
    if kind == "int":
        return IntegerAttr(int(value), i64)
    if kind == "f64":
        return FloatAttr(float(value), f64)
    if kind == "ints":
        return DenseArrayBase.from_list(i64, [int(v) for v in value])
    if kind == "str":
        return StringAttr(str(value))
    raise ValueError(f"unknown field kind {kind!r}")


def from_attr(kind: str, attr: Attribute) -> Any:
    """The program field value held by an attribute of the given kind."""
    if kind in ("buf", "const", "src"):
        assert isinstance(attr, SymbolRefAttr)
        return attr.root_reference.data
    if kind == "bufs":
        assert isinstance(attr, ArrayAttr)
        return [a.root_reference.data for a in attr.data]  # type: ignore[union-attr]
    if kind == "int":
        assert isinstance(attr, IntegerAttr)
        return int(attr.value.data)
    if kind == "f64":
        assert isinstance(attr, FloatAttr)
        return float(attr.value.data)
    if kind == "ints":
        assert isinstance(attr, DenseArrayBase)
        return [int(v) for v in attr.get_values()]
    if kind == "str":
        assert isinstance(attr, StringAttr)
        return attr.data
    if kind == "dense":
        assert isinstance(attr, DenseIntOrFPElementsAttr)
        return numpy_from_dense(attr)
    raise ValueError(f"unknown field kind {kind!r}")


# --------------------------------------------------------------------------------------------------
# Base op
# --------------------------------------------------------------------------------------------------


class IsaOp(IRDLOperation):
    """An instruction or directive; its properties are the fields listed in ``FIELDS``.

    Printed ``isa.mvm {xbar = 0 : i64, src = @conv1.cols, ...}`` in ``FIELDS`` order.
    """

    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: the opcode (instructions) or directive name (without the dot) in the program
    OPCODE: ClassVar[str] = ""
    DIRECTIVE: ClassVar[bool] = False
    #: allowed values of the ``str`` fields
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: optional fields and their defaults (the property is absent when the value is the default)
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    @classmethod
    def build(cls, **values: Any) -> IsaOp:
        """An op from program field values (``kind`` conversions from ``FIELDS``)."""
        kinds = dict(cls.FIELDS)
        unknown = set(values) - set(kinds)
        if unknown:
            raise TypeError(f"{cls.name}: unknown fields {sorted(unknown)}")
        missing = [f for f in kinds if f not in values and f not in cls.DEFAULTS]
        if missing:
            raise TypeError(f"{cls.name}: missing fields {missing}")
        props = {
            f: to_attr(k, values[f])
            for f, k in cls.FIELDS
            if f in values and not (f in cls.DEFAULTS and values[f] == cls.DEFAULTS[f])
        }
        return cls.create(properties=props)

    def fields(self) -> dict[str, Any]:
        """The program field values of this op, in ``FIELDS`` order (defaults filled in)."""
        return {f: self.field(f) for f, _ in self.FIELDS}

    def field(self, name: str) -> Any:
        attr = self.properties.get(name)
        if attr is None and name in self.DEFAULTS:
            return self.DEFAULTS[name]
        return from_attr(dict(self.FIELDS)[name], attr)

    def print(self, printer: Printer) -> None:
        if not self.FIELDS:
            return
        printer.print_string(" ")
        printer.print_attr_dict({f: self.properties[f] for f, _ in self.FIELDS if f in self.properties})

    @classmethod
    def parse(cls, parser: Parser) -> IsaOp:
        props = parser.parse_optional_attr_dict()
        return cls.create(properties=dict(props))

    def verify_(self) -> None:
        for f, kind in self.FIELDS:
            attr = self.properties.get(f)
            if attr is None and f in self.DEFAULTS:
                continue
            if kind == "int" and attr.type != i64:  # type: ignore[attr-defined]
                raise VerifyException(f"{self.name}: field '{f}' must be an i64 integer")
            if kind == "ints" and attr.elt_type != i64:  # type: ignore[attr-defined]
                raise VerifyException(f"{self.name}: field '{f}' must be an array<i64>")
            if kind == "bufs" and not all(isinstance(a, SymbolRefAttr) for a in attr.data):  # type: ignore[attr-defined]
                raise VerifyException(f"{self.name}: field '{f}' must be a list of symbol names")
            if f in self.CHOICES and attr.data not in self.CHOICES[f]:  # type: ignore[attr-defined]
                raise VerifyException(
                    f"{self.name}: field '{f}' is {attr.data!r}; allowed: {', '.join(self.CHOICES[f])}"  # type: ignore[attr-defined]
                )


def _op(
    opname: str,
    fields: Sequence[tuple[str, str]],
    doc: str,
    *,
    directive: bool = False,
    choices: dict[str, tuple[str, ...]] | None = None,
    defaults: dict[str, Any] | None = None,
) -> type[IsaOp]:
    """Declares the op ``isa.<opname>`` with one property per field."""
    ns: dict[str, Any] = {
        "__doc__": doc,
        "__module__": __name__,
        "name": f"isa.{opname}",
        "OPCODE": opname,
        "DIRECTIVE": directive,
        "FIELDS": tuple(fields),
        "CHOICES": dict(choices or {}),
        "DEFAULTS": dict(defaults or {}),
        "__annotations__": {
            "OPCODE": ClassVar[str],
            "DIRECTIVE": ClassVar[bool],
            "FIELDS": ClassVar[tuple[tuple[str, str], ...]],
            "CHOICES": ClassVar[dict[str, tuple[str, ...]]],
            "DEFAULTS": ClassVar[dict[str, Any]],
        },
    }
    for f, kind in fields:
        define = opt_prop_def if f in (defaults or {}) else prop_def
        ns[f"{f}_prop"] = define(KINDS[kind], prop_name=f)
    cls_name = "".join(p.capitalize() for p in opname.split("_")) + ("Directive" if directive else "Op")
    return irdl_op_definition(type(cls_name, (IsaOp,), ns))


# --------------------------------------------------------------------------------------------------
# Directives (spec/isa.md §2)
# --------------------------------------------------------------------------------------------------

BufferDirective = _op(
    "buffer",
    [("sym_name", "str"), ("type", "str"), ("shape", "ints")],
    "`.buffer NAME`: an activation or accumulator buffer; shape[0] = -1 is the batch.",
    directive=True,
    choices={"type": ("u8", "u16", "i8", "i16", "i32", "i64")},
)
ConstDirective = _op(
    "const",
    [("sym_name", "str"), ("value", "dense")],
    "`.const NAME`: a compile-time array (crossbar image, bias, multipliers, table, column map).",
    directive=True,
)
XbarDirective = _op(
    "xbar",
    [
        ("id", "int"),
        ("image", "const"),
        ("rows", "int"),
        ("cols", "int"),
        ("row_table", "const"),
        ("adc_bits", "int"),
        ("adc_mode", "str"),
        ("chip", "int"),
        ("tile", "int"),
        ("ima", "int"),
        ("lossless", "int"),
        ("copies", "ints"),
    ],
    "`.xbar ID`: a crossbar, its cell image, row table, ADC setting and place; ``copies`` the places "
    "of its copies when its layer is replicated, flat ``[chip, tile, ima, chip, tile, ima, ...]``.",
    directive=True,
    choices={"adc_mode": ("saturate", "drop-lsb")},
    defaults={"copies": []},
)
InputDirective = _op(
    "input",
    [("port", "str"), ("buf", "buf"), ("scale", "f64"), ("zp", "int")],
    "`.input NAME`: a model input, quantized by the host into `buf`.",
    directive=True,
)
OutputDirective = _op(
    "output",
    [("port", "str"), ("buf", "buf"), ("scale", "f64"), ("zp", "int")],
    "`.output NAME`: a model output, read from `buf` and dequantized.",
    directive=True,
)
LayerDirective = _op(
    "layer",
    [("label", "str"), ("replication", "int")],
    "`.layer NAME replication=N`: the following instructions count against report layer NAME "
    "(``label``), whose crossbars exist N times (each copy serving 1/N of the iterations).",
    directive=True,
    defaults={"replication": 1},
)

# --------------------------------------------------------------------------------------------------
# Crossbar instructions (spec/isa.md §3)
# --------------------------------------------------------------------------------------------------

Im2colOp = _op(
    "im2col",
    [
        ("dst", "buf"),
        ("src", "buf"),
        ("kernel", "ints"),
        ("stride", "ints"),
        ("pad", "ints"),
        ("dilation", "ints"),
        ("pad_value", "int"),
    ],
    "Gathers the input vectors of a convolution: [B, C, H, W] -> [B*Ho*Wo, C*kh*kw].",
)
MvmOp = _op(
    "mvm",
    [
        ("xbar", "int"),
        ("src", "buf"),
        ("dst", "buf"),
        ("col0", "int"),
        ("bits", "int"),
        ("dac_bits", "int"),
        ("order", "str"),
    ],
    "One crossbar's bit-serial matrix-vector products over all iterations; columns at col0 of dst.",
    choices={"order": ("lsb", "msb")},
)
ShiftaddOp = _op(
    "shiftadd",
    [("dst", "buf"), ("src", "buf"), ("colmap", "const"), ("macs", "int"), ("init", "int")],
    "Combines a layer's column results into output accumulators through its column map.",
)
RequantOp = _op(
    "requant",
    [
        ("dst", "buf"),
        ("src", "buf"),
        ("bias", "const"),
        ("mult", "const"),
        ("shift", "const"),
        ("zp", "int"),
        ("lo", "int"),
        ("hi", "int"),
        ("layout", "str"),
        ("out_hw", "ints"),
    ],
    "Output stage of a matrix layer: bias, per-channel requantization, clamp, layout.",
    choices={"layout": ("nchw", "flat")},
)

# --------------------------------------------------------------------------------------------------
# Digital instructions (spec/isa.md §5)
# --------------------------------------------------------------------------------------------------

LutOp = _op("lut", [("dst", "buf"), ("src", "buf"), ("table", "const"), ("axis", "int")], "Table activation.")
AddOp = _op(
    "add",
    [
        ("dst", "buf"),
        ("a", "src"),
        ("b", "src"),
        ("ma", "int"),
        ("mb", "int"),
        ("shift", "int"),
        ("za", "int"),
        ("zb", "int"),
        ("zp", "int"),
        ("lo", "int"),
        ("hi", "int"),
    ],
    "Elementwise (broadcast) sum of two quantized operands, each rescaled (sub: mb < 0).",
)
MulOp = _op(
    "mul",
    [
        ("dst", "buf"),
        ("a", "src"),
        ("b", "src"),
        ("m", "int"),
        ("shift", "int"),
        ("za", "int"),
        ("zb", "int"),
        ("zp", "int"),
        ("lo", "int"),
        ("hi", "int"),
    ],
    "Elementwise (broadcast) product of two quantized operands.",
)
RescaleOp = _op(
    "rescale",
    [
        ("dst", "buf"),
        ("src", "buf"),
        ("m", "int"),
        ("shift", "int"),
        ("zin", "int"),
        ("zp", "int"),
        ("lo", "int"),
        ("hi", "int"),
    ],
    "Requantizes codes to other quantization parameters.",
)
MaxpoolOp = _op(
    "maxpool",
    [
        ("dst", "buf"),
        ("src", "buf"),
        ("kernel", "ints"),
        ("stride", "ints"),
        ("pad", "ints"),
        ("dilation", "ints"),
    ],
    "Max pooling on codes (monotone, so no rescaling).",
)
AvgpoolOp = _op(
    "avgpool",
    [
        ("dst", "buf"),
        ("src", "buf"),
        ("kernel", "ints"),
        ("stride", "ints"),
        ("pad", "ints"),
        ("count_include_pad", "int"),
        ("zin", "int"),
        ("m", "int"),
        ("shift", "int"),
        ("zp", "int"),
        ("lo", "int"),
        ("hi", "int"),
    ],
    "Average pooling with requantization (a global average pool is one window over the map).",
)
ConcatOp = _op("concat", [("dst", "buf"), ("srcs", "bufs"), ("axis", "int")], "Concatenation of buffers.")
ReshapeOp = _op("reshape", [("dst", "buf"), ("src", "buf")], "Same elements, new shape.")
TransposeOp = _op("transpose", [("dst", "buf"), ("src", "buf"), ("perm", "ints")], "Axis permutation.")
PadOp = _op("pad", [("dst", "buf"), ("src", "buf"), ("pads", "ints"), ("value", "int")], "Constant padding.")
SoftmaxOp = _op(
    "softmax",
    [
        ("dst", "buf"),
        ("src", "buf"),
        ("axis", "int"),
        ("in_scale", "f64"),
        ("in_zp", "int"),
        ("out_scale", "f64"),
        ("out_zp", "int"),
    ],
    "Float digital unit: softmax along axis.",
)
LrnOp = _op(
    "lrn",
    [
        ("dst", "buf"),
        ("src", "buf"),
        ("size", "int"),
        ("alpha", "f64"),
        ("beta", "f64"),
        ("bias", "f64"),
        ("in_scale", "f64"),
        ("in_zp", "int"),
        ("out_scale", "f64"),
        ("out_zp", "int"),
    ],
    "Float digital unit: local response normalization across channels.",
)
DivOp = _op(
    "div",
    [
        ("dst", "buf"),
        ("a", "src"),
        ("b", "src"),
        ("a_scale", "f64"),
        ("a_zp", "int"),
        ("b_scale", "f64"),
        ("b_zp", "int"),
        ("out_scale", "f64"),
        ("out_zp", "int"),
    ],
    "Float digital unit: elementwise (broadcast) division.",
)
HaltOp = _op("halt", [], "End of program.")

DIRECTIVES: tuple[type[IsaOp], ...] = (
    BufferDirective,
    ConstDirective,
    XbarDirective,
    InputDirective,
    OutputDirective,
    LayerDirective,
)
INSTRUCTIONS: tuple[type[IsaOp], ...] = (
    Im2colOp,
    MvmOp,
    ShiftaddOp,
    RequantOp,
    LutOp,
    AddOp,
    MulOp,
    RescaleOp,
    MaxpoolOp,
    AvgpoolOp,
    ConcatOp,
    ReshapeOp,
    TransposeOp,
    PadOp,
    SoftmaxOp,
    LrnOp,
    DivOp,
    HaltOp,
)
#: opcode -> op class
BY_OPCODE: dict[str, type[IsaOp]] = {c.OPCODE: c for c in INSTRUCTIONS}

ISA = Dialect("isa", [*DIRECTIVES, *INSTRUCTIONS], [])

__all__ = ["ISA", "IsaOp", "DIRECTIVES", "INSTRUCTIONS", "BY_OPCODE", *[c.__name__ for c in (*DIRECTIVES, *INSTRUCTIONS)]]
