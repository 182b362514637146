"""``convert-xbar-to-isa``: the mapped network (``xbar`` layers + quantized digital ``nn`` ops in
``func.func @main``) -> the ``isa`` program, in order (``spec/isa.md``).

Each SSA value gets one buffer (batch dimension ``?``), named after the op that produces it
(``pimc.name``). A matrix layer (``xbar.layer``) lowers to::

    .layer NAME replication=N                 (N: the layer's replication chosen by xbar-place)
    im2col    NAME.cols <- input              (convolutions only; a gemm reads its input directly)
    mvm       xbar i -> NAME.colres @ col0_i  (one per crossbar of the layer)
    shiftadd  NAME.acc <- NAME.colres, colmap, init=1
    requant   NAME <- NAME.acc, bias, mult, shift, zp, lo, hi, layout nchw|flat

and every digital op to one instruction whose integer constants come from ``pimc.quant.intmath``,
the same functions the integer reference (``pimc.reference.int_ref``) uses, so the two agree by
construction. Graph inputs (``nn.quantize`` of an argument) and outputs (``nn.dequantize`` before
the return) become ``.input`` / ``.output`` ports. The module body is replaced by the isa ops:
declarations (constants, crossbars, buffers), ports, then the instructions and a final ``halt``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import DenseIntOrFPElementsAttr, ModuleOp, StringAttr
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from pimc.dialects import isa, nn
from pimc.dialects.nn import QuantType, numpy_from_dense, shape_of
from pimc.errors import ModelError
from pimc.quant import intmath

_NAME_BAD = re.compile(r"[\x00-\x1f\x7f]")


def storage_dtype(qt: QuantType) -> str:
    """The program element type holding codes of ``qt``."""
    bits = qt.bits.data
    width = 8 if bits <= 8 else 16 if bits <= 16 else 32
    if width == 32:
        return "i32" if qt.signed.data else "i64"
    return f"{'i' if qt.signed.data else 'u'}{width}"


def _np_dtype(name: str) -> np.dtype:
    from runtime.model import DTYPES

    return DTYPES[name]


class Names:
    """Unique program names that keep the model's own names (``/9/Gemm``, ``conv1.cols``): the
    report and ``--stats`` then name layers alike. Control characters are replaced."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def fresh(self, base: str) -> str:
        name = _NAME_BAD.sub("_", base) or "v"
        candidate, i = name, 1
        while candidate in self.used:
            candidate = f"{name}_{i}"
            i += 1
        self.used.add(candidate)
        return candidate


def op_label(op: Operation, index: int) -> str:
    """The ONNX node name kept by the front end, else the op kind and its position."""
    attr = op.attributes.get("pimc.name")
    if isinstance(attr, StringAttr) and attr.data:
        return attr.data
    return f"{op.name.split('.')[-1]}{index}"


def _output_fields(t: QuantType) -> dict[str, int]:
    """The output zero point and code range every digital instruction clamps to."""
    return {"zp": t.zero_point.data, "lo": t.qmin, "hi": t.qmax}


def _qt(value: SSAValue, what: Operation) -> QuantType:
    t = nn.element_of(value)
    if not isinstance(t, QuantType):
        raise ModelError(
            f"convert-xbar-to-isa: {what.name} computes in float; quantize the network first "
            "(pimc compile --calibration CAL.npy, or the nn-quantize pass)"
        )
    return t


class Lowering:
    """Builds the isa ops of one ``func.func @main``."""

    def __init__(self, fn: func.FuncOp):
        self.fn = fn
        self.names = Names()
        self.layer_names = Names()
        self.buffer_names: set[str] = set()
        self.decls: list[isa.IsaOp] = []  # consts and crossbars
        self.buffers: list[isa.IsaOp] = []
        self.ports: list[isa.IsaOp] = []
        self.body: list[isa.IsaOp] = []
        self.buf: dict[SSAValue, str] = {}  # value -> buffer (or constant) name
        self.xbar_count = 0
        self.tables: dict[bytes, str] = {}  # row-table bytes -> constant name

    # ----------------------------------------------------------------------------- helpers

    def emit(self, cls: type[isa.IsaOp], **fields: Any) -> None:
        self.body.append(cls.build(**fields))

    def layer(self, name: str, replication: int = 1) -> None:
        self.emit(isa.LayerDirective, label=name, replication=replication)

    def const(self, base: str, array: np.ndarray | DenseIntOrFPElementsAttr) -> str:
        """Declares a constant; a dense attribute of the right type is shared, not copied."""
        name = self.names.fresh(base)
        value = array if isinstance(array, DenseIntOrFPElementsAttr) else np.ascontiguousarray(array)
        self.decls.append(isa.ConstDirective.build(sym_name=name, value=value))
        return name

    def row_table(self, table: np.ndarray, base: str) -> str:
        """A row-table constant, shared by every crossbar with the same table (crossbars of one
        row block, and the many layers whose tables are a plain range): ``rows.A_B`` for
        ``A, A+1, ..., B``."""
        key = table.tobytes()
        if key not in self.tables:
            n = table.size
            if n and table[0] >= 0 and np.array_equal(table, np.arange(table[0], table[0] + n, dtype=np.int32)):
                base = f"rows.{int(table[0])}_{int(table[-1])}"
            self.tables[key] = self.const(base, table)
        return self.tables[key]

    def buffer(self, base: str, dtype: str, shape: tuple[int, ...] | list[int]) -> str:
        name = self.names.fresh(base)
        shape = [-1, *[int(d) for d in list(shape)[1:]]]
        self.buffers.append(isa.BufferDirective.build(sym_name=name, type=dtype, shape=shape))
        self.buffer_names.add(name)
        return name

    def value_buffer(self, value: SSAValue, base: str) -> str:
        """The buffer holding ``value``'s codes (declared on first use)."""
        if value not in self.buf:
            qt = _qt(value, value.owner)  # type: ignore[arg-type]
            self.buf[value] = self.buffer(base, storage_dtype(qt), shape_of(value))
        return self.buf[value]

    def operand(self, value: SSAValue, user: Operation) -> str:
        """The name of a buffer (or constant, for ``nn.constant`` operands) holding ``value``."""
        if value in self.buf:
            return self.buf[value]
        owner = value.owner
        if isinstance(owner, nn.ConstantOp):
            qt = _qt(value, owner)
            codes = numpy_from_dense(owner.value).astype(_np_dtype(storage_dtype(qt)))
            self.buf[value] = self.const(f"{op_label(user, 0)}.k", codes)
            return self.buf[value]
        raise ModelError(f"convert-xbar-to-isa: {user.name} reads a value no earlier op produced ({owner})")

    # ------------------------------------------------------------------------------- run

    def run(self) -> list[isa.IsaOp]:
        from pimc.quant.calibrate import arg_names, result_names

        block = self.fn.body.block
        in_names = dict(zip(block.args, arg_names(self.fn)))
        for index, op in enumerate(block.ops):
            if isinstance(op, func.ReturnOp):
                for name, v in zip(result_names(self.fn), op.operands):
                    self.output(name, v)
                continue
            if isinstance(op, nn.ConstantOp):
                continue  # declared where it is read
            if isinstance(op, nn.QuantizeOp):
                if op.input not in in_names:
                    raise ModelError(
                        "convert-xbar-to-isa: nn.quantize inside the network (a float segment between "
                        "quantized layers) is not supported; quantize the whole network"
                    )
                self.input(in_names[op.input], op)
                continue
            if isinstance(op, nn.DequantizeOp):
                if not all(isinstance(u.operation, func.ReturnOp) for u in op.output.uses):
                    raise ModelError(
                        "convert-xbar-to-isa: nn.dequantize inside the network (a float segment between "
                        "quantized layers) is not supported"
                    )
                continue
            label = op_label(op, index)
            for r in op.results:
                _qt(r, op)  # a float value: the network is not quantized
            lower = self._lowering_of(op)
            replication = (op.int_prop("replication") or 1) if op.name == "xbar.layer" else 1
            self.layer(self.layer_names.fresh(label), replication)
            lower(op, label)
        self.emit(isa.HaltOp)
        return [*self.decls, *self.buffers, *self.ports, *self.body]

    def _lowering_of(self, op: Operation):
        for cls, method in _DIGITAL:
            if isinstance(op, cls):
                return getattr(self, method)
        if op.name == "xbar.layer":
            return self.matrix_layer
        if isinstance(op, (nn.Conv2dOp, nn.GemmOp)):
            raise ModelError(
                f"convert-xbar-to-isa: {op_label(op, 0)} ({op.name}) is not mapped to crossbars; run "
                "convert-nn-to-xbar, xbar-bit-slice, xbar-tile and xbar-place first"
            )
        raise ModelError(f"convert-xbar-to-isa: no lowering for {op.name} ({op_label(op, 0)})")

    # ------------------------------------------------------------------------------ ports

    def input(self, name: str, op: nn.QuantizeOp) -> None:
        qt = _qt(op.output, op)
        buf = self.value_buffer(op.output, name)
        self.ports.append(
            isa.InputDirective.build(port=name, buf=buf, scale=qt.scale.data, zp=qt.zero_point.data)
        )

    def output(self, name: str, value: SSAValue) -> None:
        if isinstance(value.owner, nn.DequantizeOp):
            value = value.owner.input
        qt = _qt(value, value.owner)  # type: ignore[arg-type]
        buf = self.operand(value, value.owner)  # type: ignore[arg-type]
        if buf not in self.buffer_names:
            raise ModelError(f"convert-xbar-to-isa: output {name!r} is not computed by the network")
        self.ports.append(
            isa.OutputDirective.build(port=name, buf=buf, scale=qt.scale.data, zp=qt.zero_point.data)
        )

    # ------------------------------------------------------------------------ digital ops

    def lut(self, op: nn.LutOp, label: str) -> None:
        table = numpy_from_dense(op.table).astype(np.int64)
        src = self.operand(op.input, op)
        dst = self.value_buffer(op.output, label)
        self.emit(isa.LutOp, dst=dst, src=src, table=self.const(f"{label}.table", table), axis=1)

    def _binary(self, op: nn.BinaryOp, label: str) -> tuple[dict, QuantType, QuantType, QuantType]:
        """The fields add and mul share: destination, operands, their zero points, output range."""
        ta, tb, ty = _qt(op.lhs, op), _qt(op.rhs, op), _qt(op.output, op)
        fields = {
            "a": self.operand(op.lhs, op),
            "b": self.operand(op.rhs, op),
            "za": ta.zero_point.data,
            "zb": tb.zero_point.data,
            **_output_fields(ty),
        }
        fields["dst"] = self.value_buffer(op.output, label)
        return fields, ta, tb, ty

    def add(self, op: nn.AddOp | nn.SubOp, label: str) -> None:
        fields, ta, tb, ty = self._binary(op, label)
        ma, mb, shift = intmath.add_params(ta.scale.data, tb.scale.data, ty.scale.data, isinstance(op, nn.SubOp))
        self.emit(isa.AddOp, ma=ma, mb=mb, shift=shift, **fields)

    def mul(self, op: nn.MulOp, label: str) -> None:
        fields, ta, tb, ty = self._binary(op, label)
        m, shift = intmath.mul_params(ta.scale.data, tb.scale.data, ty.scale.data)
        self.emit(isa.MulOp, m=m, shift=shift, **fields)

    def rescale(self, op: nn.RequantizeOp, label: str) -> None:
        ti, to = _qt(op.input, op), _qt(op.output, op)
        m, shift = intmath.rescale_params(ti.scale.data, to.scale.data)
        src = self.operand(op.input, op)
        dst = self.value_buffer(op.output, label)
        self.emit(
            isa.RescaleOp,
            dst=dst,
            src=src,
            m=m,
            shift=shift,
            zin=ti.zero_point.data,
            **_output_fields(to),
        )

    def maxpool(self, op: nn.MaxPoolOp, label: str) -> None:
        src = self.operand(op.input, op)
        dst = self.value_buffer(op.output, label)
        self.emit(
            isa.MaxpoolOp,
            dst=dst,
            src=src,
            kernel=nn.ints(op.kernel),
            stride=nn.ints(op.strides),
            pad=nn.ints(op.pads),
            dilation=nn.ints(op.dilations),
        )

    def avgpool(self, op: nn.AvgPoolOp | nn.GlobalAvgPoolOp, label: str) -> None:
        ti, to = _qt(op.input, op), _qt(op.output, op)
        in_shape = shape_of(op.input)
        if isinstance(op, nn.GlobalAvgPoolOp):
            if len(in_shape) != 4:
                raise ModelError(f"convert-xbar-to-isa: global average pool of a {len(in_shape)}-D tensor (needs NCHW)")
            kernel, stride, pad, include = [in_shape[2], in_shape[3]], [1, 1], [0, 0, 0, 0], 1
        else:
            kernel, stride, pad = list(nn.ints(op.kernel)), list(nn.ints(op.strides)), list(nn.ints(op.pads))
            include = op.count_include_pad.value.data
        max_count = kernel[0] * kernel[1]
        try:
            m, shift = intmath.avgpool_params(ti.scale.data, to.scale.data, max_count, ti.bits.data)
        except ValueError as err:
            raise ModelError(f"{label}: {err}") from None
        src = self.operand(op.input, op)
        dst = self.value_buffer(op.output, label)
        self.emit(
            isa.AvgpoolOp,
            dst=dst,
            src=src,
            kernel=kernel,
            stride=stride,
            pad=pad,
            count_include_pad=int(include),
            zin=ti.zero_point.data,
            m=m,
            shift=shift,
            **_output_fields(to),
        )

    def concat(self, op: nn.ConcatOp, label: str) -> None:
        ty = _qt(op.output, op)
        for v in op.inputs:
            if _qt(v, op) != ty:
                raise ModelError(f"{label}: concat inputs must share the output's quantization (nn.requantize them)")
        srcs = [self.operand(v, op) for v in op.inputs]
        if any(s not in self.buffer_names for s in srcs):
            raise ModelError(f"{label}: concatenating a constant tensor is not supported")
        axis = op.axis.value.data % len(shape_of(op.output))
        self.emit(isa.ConcatOp, dst=self.value_buffer(op.output, label), srcs=srcs, axis=axis)

    def reshape(self, op: nn.ReshapeOp, label: str) -> None:
        src = self.operand(op.input, op)
        self.emit(isa.ReshapeOp, dst=self.value_buffer(op.output, label), src=src)

    def transpose(self, op: nn.TransposeOp, label: str) -> None:
        src = self.operand(op.input, op)
        self.emit(isa.TransposeOp, dst=self.value_buffer(op.output, label), src=src, perm=nn.ints(op.perm))

    def pad(self, op: nn.PadOp, label: str) -> None:
        t = _qt(op.input, op)
        code = int(intmath.quantize_float(op.value.value.data, t.scale.data, t.zero_point.data, t.qmin, t.qmax))
        src = self.operand(op.input, op)
        self.emit(isa.PadOp, dst=self.value_buffer(op.output, label), src=src, pads=nn.ints(op.pads), value=code)

    def _float_unary(self, op: nn.SoftmaxOp | nn.LrnOp, label: str) -> dict:
        """The fields softmax and lrn share: source, destination, input and output scale and zero point."""
        ti, to = _qt(op.input, op), _qt(op.output, op)
        src = self.operand(op.input, op)
        return {
            "dst": self.value_buffer(op.output, label),
            "src": src,
            "in_scale": ti.scale.data,
            "in_zp": ti.zero_point.data,
            "out_scale": to.scale.data,
            "out_zp": to.zero_point.data,
        }

    def softmax(self, op: nn.SoftmaxOp, label: str) -> None:
        fields = self._float_unary(op, label)
        self.emit(isa.SoftmaxOp, axis=op.axis.value.data % len(shape_of(op.input)), **fields)

    def lrn(self, op: nn.LrnOp, label: str) -> None:
        fields = self._float_unary(op, label)
        self.emit(
            isa.LrnOp,
            size=op.size.value.data,
            alpha=op.alpha.value.data,
            beta=op.beta.value.data,
            bias=op.bias.value.data,
            **fields,
        )

    def div(self, op: nn.DivOp, label: str) -> None:
        ta, tb, ty = _qt(op.lhs, op), _qt(op.rhs, op), _qt(op.output, op)
        a, b = self.operand(op.lhs, op), self.operand(op.rhs, op)
        self.emit(
            isa.DivOp,
            dst=self.value_buffer(op.output, label),
            a=a,
            b=b,
            a_scale=ta.scale.data,
            a_zp=ta.zero_point.data,
            b_scale=tb.scale.data,
            b_zp=tb.zero_point.data,
            out_scale=ty.scale.data,
            out_zp=ty.zero_point.data,
        )

    # ----------------------------------------------------------------------- matrix layers

    def matrix_layer(self, op: Operation, label: str) -> None:
        """im2col (conv), one mvm per crossbar, shiftadd over the layer's column map, requant."""
        from pimc.dialects import xbar

        assert isinstance(op, xbar.LayerOp)
        xbars = op.crossbars()
        if not xbars or op.columns is None or op.dac_bits is None:
            raise ModelError(
                f"convert-xbar-to-isa: layer {label} is not mapped to crossbars yet; run xbar-bit-slice "
                "and xbar-tile (and xbar-place) before convert-xbar-to-isa"
            )
        in_t = _qt(op.input, op)
        k, n = op.k, op.n
        src = self.operand(op.input, op)
        if op.kind.data == "conv":
            cols = self.buffer(f"{label}.cols", storage_dtype(in_t), [-1, k])
            self.emit(
                isa.Im2colOp,
                dst=cols,
                src=src,
                kernel=nn.ints(op.kernel),
                stride=nn.ints(op.strides),
                pad=nn.ints(op.pads),
                dilation=nn.ints(op.dilations),
                pad_value=op.int_prop("zp_in"),
            )
            mvm_src = cols
        else:
            mvm_src = src
        columns = int(op.columns)
        colres = self.buffer(f"{label}.colres", "i64", [-1, columns])
        colmap = np.empty((columns, 5), dtype=np.int64)
        colmap[:] = (xbar.OUT_NONE, 0, 1, 0, 0)  # columns no crossbar covers: unused
        bits, dac_bits, order = in_t.bits.data, op.int_prop("dac_bits"), op.order.data  # type: ignore[union-attr]
        for j, x in enumerate(xbars):
            rows, width = x.shape
            col0 = int(x.col0.value.data)
            colmap[col0 : col0 + width] = x.colmap_array()
            xid = self.xbar_count
            self.xbar_count += 1
            image = self.const(f"{label}.xb{j}.image", x.image)  # ui8 [rows, cols], as the program wants
            table = self.row_table(x.row_table_array().astype(np.int32), f"{label}.xb{j}.rows")
            self.decls.append(
                isa.XbarDirective.build(
                    id=xid,
                    image=image,
                    rows=rows,
                    cols=width,
                    row_table=table,
                    adc_bits=int(x.adc_bits.value.data),
                    adc_mode=x.adc_mode.data,
                    chip=_opt_int(x.chip),
                    tile=_opt_int(x.tile),
                    ima=_opt_int(x.ima),
                    lossless=int(x.lossless.value.data),
                    copies=[] if x.copies is None else [int(v) for v in x.copies.get_values()],
                )
            )
            self.emit(isa.MvmOp, xbar=xid, src=mvm_src, dst=colres, col0=col0, bits=bits, dac_bits=dac_bits, order=order)
        acc = self.buffer(f"{label}.acc", "i64", [-1, n])
        groups = int(op.groups.value.data)
        self.emit(
            isa.ShiftaddOp,
            dst=acc,
            src=colres,
            colmap=self.const(f"{label}.colmap", colmap),
            macs=k * n // groups,
            init=1,
        )
        out_shape = shape_of(op.output)
        lo, hi = nn.ints(op.clamp)
        self.emit(
            isa.RequantOp,
            dst=self.value_buffer(op.output, label),
            src=acc,
            bias=self.const(f"{label}.bias", op.bias),  # i64 [N] (the xbar.layer verifier checks it)
            mult=self.const(f"{label}.mult", op.requant_multiplier),
            shift=self.const(f"{label}.shift", op.requant_shift),
            zp=op.int_prop("zp_out"),
            lo=lo,
            hi=hi,
            layout="nchw" if op.kind.data == "conv" else "flat",
            out_hw=list(out_shape[2:]) if op.kind.data == "conv" else [],
        )


def _opt_int(attr) -> int:
    return 0 if attr is None else int(attr.value.data)


#: digital nn op -> Lowering method
_DIGITAL: tuple[tuple[type[Operation], str], ...] = (
    (nn.LutOp, "lut"),
    (nn.AddOp, "add"),
    (nn.SubOp, "add"),
    (nn.MulOp, "mul"),
    (nn.RequantizeOp, "rescale"),
    (nn.MaxPoolOp, "maxpool"),
    (nn.AvgPoolOp, "avgpool"),
    (nn.GlobalAvgPoolOp, "avgpool"),
    (nn.ConcatOp, "concat"),
    (nn.ReshapeOp, "reshape"),
    (nn.TransposeOp, "transpose"),
    (nn.PadOp, "pad"),
    (nn.SoftmaxOp, "softmax"),
    (nn.LrnOp, "lrn"),
    (nn.DivOp, "div"),
)


#: module attribute: the crossbar geometry the mapping actually used (JSON), which pass options
#: may have changed from the configuration (``xbar-bit-slice{cell-bits=1}``, ``xbar-tile{rows=64}``)
GEOMETRY_ATTR = "pimc.crossbar"


def mapped_geometry(fn: func.FuncOp) -> dict[str, int]:
    """``crossbar.cell_bits / dac_bits / rows / cols`` of the machine the layers were mapped to
    (the largest over layers, so every crossbar of the program fits it)."""
    from pimc.dialects import xbar

    layers = [op for op in fn.body.block.ops if isinstance(op, xbar.LayerOp) and op.xbar_rows is not None]
    if not layers:
        return {}
    return {
        "cell_bits": max(op.int_prop("cell_bits") or 0 for op in layers),
        "dac_bits": max(op.int_prop("dac_bits") or 0 for op in layers),
        "rows": max(op.int_prop("xbar_rows") or 0 for op in layers),
        "cols": max(op.int_prop("xbar_cols") or 0 for op in layers),
    }


def convert_module(module: ModuleOp) -> ModuleOp:
    """Replaces ``func.func @main`` in ``module`` by the isa program (in place); returns it."""
    from pimc.quant.calibrate import main_func

    fn = main_func(module)
    geometry = mapped_geometry(fn)
    if geometry:
        module.attributes[GEOMETRY_ATTR] = StringAttr(json.dumps(geometry, sort_keys=True))
    ops = Lowering(fn).run()
    fn.detach()
    fn.erase()
    module.body.block.add_ops(ops)
    return module


@dataclass(frozen=True)
class ConvertXbarToIsaPass(ModulePass):
    """Lower the mapped network to the program's instructions (``spec/isa.md``)."""

    name = "convert-xbar-to-isa"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        convert_module(op)


__all__ = ["ConvertXbarToIsaPass", "convert_module", "storage_dtype", "Lowering"]
