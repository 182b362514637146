"""``nn-quantize``: float ``nn`` with calibrated ranges -> integer ``nn`` (``spec/quantization.md``).

A pure IR -> IR pass: everything it needs is in the IR (weights, and the ``pimc.range`` attributes
written by ``pimc.quant.calibrate.annotate_ranges``), so it runs the same from ``pimc compile`` and
from ``pimc opt`` on textual IR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import DictionaryAttr, Float32Type, Float64Type, ModuleOp, StringAttr, TensorType
from xdsl.ir import Attribute, BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass

from pimc.dialects import nn
from pimc.dialects.nn import QuantType, dense_from_numpy, i64_array, numpy_from_dense, shape_of, tensor_type
from pimc.errors import ConfigError, InputError, ModelError
from pimc.quant import intmath
from pimc.quant.calibrate import RANGE_ATTR, get_range, main_func

DEFAULT_BITS = 8
SOURCE_PROPS = "pimc.source_props"

# elementwise activations that become an nn.lut
LUT_OPS = (nn.ReluOp, nn.ClipOp, nn.LeakyReluOp, nn.PReluOp, nn.SigmoidOp, nn.HardSigmoidOp, nn.HardSwishOp)
# ops whose output has the input's quantization parameters
SAME_PARAM_OPS = (nn.MaxPoolOp, nn.ReshapeOp, nn.TransposeOp, nn.PadOp)
# ops computed by the float digital units (isa §5.4)
FLOAT_UNIT_OPS = (nn.SoftmaxOp, nn.LrnOp)
# ops whose output parameters are free (chosen from their own calibrated range)
OWN_PARAM_OPS = (
    nn.Conv2dOp, nn.GemmOp, nn.AddOp, nn.SubOp, nn.MulOp, nn.DivOp, nn.AvgPoolOp, nn.GlobalAvgPoolOp, nn.ConcatOp,
) + LUT_OPS + FLOAT_UNIT_OPS


def layer_name(op: Operation) -> str:
    """A name for messages: the ONNX node name when the front end kept one."""
    for key in ("pimc.name", "name"):
        attr = op.attributes.get(key)
        if isinstance(attr, StringAttr):
            return f"{op.name} '{attr.data}'"
    return op.name


def _is_float(value: SSAValue) -> bool:
    return isinstance(value.type, TensorType) and isinstance(value.type.element_type, (Float32Type, Float64Type))


def bits_from_config(module: ModuleOp) -> tuple[int | None, int | None]:
    """(weight_bits, act_bits) of the module's ``pimc.hw`` configuration, if it has one."""
    if "pimc.hw" not in module.attributes:
        return None, None
    from pimc.hw import config_of

    return _bits_of_cfg(config_of(module))


def _bits_of_cfg(cfg: dict | None) -> tuple[int | None, int | None]:
    if not cfg:
        return None, None
    for section in ("quant", "quantization", "numbers", "precision"):
        sub = cfg.get(section)
        if isinstance(sub, dict) and ("weight_bits" in sub or "act_bits" in sub):
            return sub.get("weight_bits"), sub.get("act_bits", sub.get("activation_bits"))
    return cfg.get("weight_bits"), cfg.get("act_bits", cfg.get("activation_bits"))


@dataclass(frozen=True)
class NnQuantizePass(ModulePass):
    """Quantize the float ``nn`` network (weights per channel, activations per tensor)."""

    name = "nn-quantize"

    weight_bits: int | None = None
    act_bits: int | None = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        cfg_w, cfg_a = bits_from_config(op)
        wbits = self.weight_bits or cfg_w or DEFAULT_BITS
        abits = self.act_bits or cfg_a or DEFAULT_BITS
        quantize_ir(op, int(wbits), int(abits))


def quantize_ir(module: ModuleOp, weight_bits: int = DEFAULT_BITS, act_bits: int = DEFAULT_BITS) -> ModuleOp:
    """Rewrite ``module`` in place into integer ``nn``; returns it."""
    for what, bits in (("weight", weight_bits), ("activation", act_bits)):
        if not 4 <= bits <= 16:
            raise ConfigError(f"{what} bits must be in 4..16, got {bits}")
    fn = main_func(module)
    _Quantizer(fn, weight_bits, act_bits).run()
    module.verify()
    return module


class _Quantizer:
    def __init__(self, fn: func.FuncOp, wbits: int, abits: int):
        self.fn = fn
        self.block = fn.body.block
        self.wbits = wbits
        self.abits = abits
        self.qmax = (1 << abits) - 1
        self.map: dict[SSAValue, SSAValue] = {}
        self.fused: set[Operation] = set()
        # producers whose output goes only into a concat quantize straight to the concat's
        # parameters (no nn.requantize, no double rounding)
        self.forced: dict[Operation, QuantType] = {}
        self.anchor: Operation | None = None
        self.arg_forced: dict[SSAValue, QuantType] = {}
        self.qdq_src: dict[SSAValue, tuple[SSAValue, QuantType]] = {}

    # ----------------------------------------------------------------------------- helpers

    def insert(self, op: Operation) -> Operation:
        assert self.anchor is not None
        self.block.insert_op_before(op, self.anchor)
        return op

    def qtype(self, lo: float, hi: float) -> QuantType:
        scale, zp = intmath.act_params(lo, hi, self.abits)
        return QuantType(self.abits, False, scale, zp)

    def qtype_of(self, op: Operation) -> QuantType:
        if op in self.forced:
            return self.forced[op]
        rng = get_range(op.attributes)
        if rng is None:
            raise InputError(
                f"{layer_name(op)} has no calibrated range ({RANGE_ATTR}): calibrate the float model "
                "first (pimc: --calibration FILE.npy or .npz; Python: pimc.quant.calibrate.annotate_ranges)"
            )
        return self.qtype(*rng)

    @staticmethod
    def qtensor(shape: tuple[int, ...], qt: Attribute) -> TensorType:
        return tensor_type(shape, qt)

    def operand(self, value: SSAValue, user: Operation) -> SSAValue:
        """The quantized counterpart of a float operand (constants are quantized on demand)."""
        if value in self.map:
            return self.map[value]
        owner = value.owner
        if isinstance(owner, nn.ConstantOp) and _is_float(value):
            return self.constant(numpy_from_dense(owner.value).astype(np.float64))
        if not _is_float(value):
            return value
        raise ModelError(f"{layer_name(user)}: operand is produced by {value.owner} which nn-quantize cannot quantize")

    def constant(self, values: np.ndarray) -> SSAValue:
        """A quantized ``nn.constant`` (per-tensor, the activation format) holding ``values``."""
        if not np.all(np.isfinite(values)):
            raise ModelError("a constant operand holds inf or NaN and cannot be quantized")
        qt = self.qtype(float(values.min(initial=0.0)), float(values.max(initial=0.0)))
        codes = intmath.quantize_float(values, qt.scale.data, qt.zero_point.data, 0, self.qmax)
        dtype = np.uint8 if self.abits <= 8 else np.uint16
        op = nn.ConstantOp(codes.astype(dtype), self.qtensor(values.shape, qt))
        self.insert(op)
        return op.output

    # -------------------------------------------------------------------------------- run

    def plan(self) -> list[Operation]:
        """Fix parameters before rewriting: QDQ pairs of an imported quantized model, then the
        producers of concats. Returns the ops in order."""
        ops = list(self.block.ops)
        self.arg_forced: dict[SSAValue, QuantType] = {}
        self.qdq_src: dict[SSAValue, tuple[SSAValue, QuantType]] = {}
        for op in ops:
            if isinstance(op, nn.QuantizeOp) and _is_float(op.input):
                qt = _unsigned(nn.element_of(op.output))
                src = op.input
                for use in list(op.output.uses):
                    user = use.operation
                    if not isinstance(user, nn.DequantizeOp):
                        raise ModelError(
                            f"{layer_name(op)} feeds {user.name}; in a float network nn-quantize only "
                            "understands quantize -> dequantize pairs (QDQ)"
                        )
                    self.qdq_src[user.output] = (src, qt)
                if isinstance(src, BlockArgument):
                    self.arg_forced.setdefault(src, qt)
                elif isinstance(src.owner, OWN_PARAM_OPS) and src.owner not in self.forced:
                    self.forced[src.owner] = qt
        for op in ops:
            if isinstance(op, nn.ConcatOp) and (op in self.forced or get_range(op.attributes) is not None):
                qt = self.qtype_of(op)
                for v in op.inputs:
                    producer = v.owner
                    if (
                        isinstance(producer, OWN_PARAM_OPS)
                        and len(list(v.uses)) == 1
                        and _is_float(v)
                        and producer not in self.forced
                    ):
                        self.forced[producer] = qt
        return ops

    def missing_ranges(self) -> list[str]:
        """Values whose quantization needs a calibrated range that the IR does not hold."""
        fn, block = self.fn, self.block
        missing = []
        for i, arg in enumerate(block.args):
            attrs = fn.arg_attrs.data[i].data if fn.arg_attrs is not None and i < len(fn.arg_attrs.data) else {}
            if _is_float(arg) and arg not in self.arg_forced and get_range(attrs) is None:
                missing.append(f"input {i} of @main")
        for op in block.ops:
            if not isinstance(op, OWN_PARAM_OPS) or op in self.forced or get_range(op.attributes) is not None:
                continue
            if not _is_float(op.results[0]) or isinstance(op, nn.DequantizeOp):
                continue
            if isinstance(op, (nn.Conv2dOp, nn.GemmOp)):
                uses = list(op.output.uses)
                if len(uses) == 1 and isinstance(uses[0].operation, (nn.ReluOp, nn.ClipOp)):
                    continue  # fused: the activation's parameters are used
            missing.append(layer_name(op))
        return missing

    def run(self) -> None:
        fn, block = self.fn, self.block
        ops = list(block.ops)
        compute = [
            o for o in ops
            if o.results and _is_float(o.results[0]) and not isinstance(o, (nn.DequantizeOp, nn.ConstantOp))
        ]
        if not compute:
            return  # nothing computes in float: already quantized
        integer = [
            o for o in ops
            if not isinstance(o, (nn.QuantizeOp, nn.ConstantOp))
            and any(isinstance(r.type, TensorType) and isinstance(r.type.element_type, QuantType) for r in o.results)
        ]
        if integer:
            raise ModelError(
                f"the module mixes integer ops ({integer[0].name}) with float layers; nn-quantize needs "
                "a float network (possibly with quantize/dequantize pairs)"
            )
        ops = self.plan()

        # graph inputs: nn.quantize after each float argument
        self.anchor = ops[0]
        for i, arg in enumerate(block.args):
            if not _is_float(arg):
                continue
            attrs = fn.arg_attrs.data[i].data if fn.arg_attrs is not None and i < len(fn.arg_attrs.data) else {}
            rng = get_range(attrs)
            if arg in self.arg_forced:
                qt = self.arg_forced[arg]
            elif rng is None:
                raise InputError(
                    f"input {i} of @main has no calibrated range: calibrate the float model first "
                    "(--calibration FILE.npy or .npz)"
                )
            else:
                qt = self.qtype(*rng)
            q = self.insert(nn.QuantizeOp(arg, self.qtensor(shape_of(arg), qt)))
            self.map[arg] = q.results[0]

        for op in ops:
            self.anchor = op
            if isinstance(op, func.ReturnOp):
                new_operands = []
                for v in op.operands:
                    if _is_float(v):
                        q = self.operand(v, op)
                        deq = self.insert(nn.DequantizeOp(q, v.type))
                        new_operands.append(deq.results[0])
                    else:
                        new_operands.append(v)
                op.operands = new_operands
                continue
            if op in self.fused or isinstance(op, nn.ConstantOp):
                continue
            if isinstance(op, nn.DequantizeOp):
                if op.output not in self.qdq_src:
                    raise ModelError(f"{layer_name(op)}: a dequantize that is not part of a quantize -> dequantize pair")
                src, qt = self.qdq_src[op.output]
                q = self.operand(src, op)
                if nn.element_of(q) != qt:
                    q = self.insert(nn.RequantizeOp(q, self.qtensor(shape_of(q), qt))).results[0]
                self.map[op.output] = q
                continue
            if not op.results or not _is_float(op.results[0]):
                continue
            new = self.quantize_op(op)
            self.map[op.results[0]] = new

        # the old float ops are now unused: erase them (users first)
        for op in reversed(ops):
            if isinstance(op, func.ReturnOp) or op.parent is None:
                continue
            if op.results and _is_float(op.results[0]) or isinstance(op, (nn.ConstantOp, nn.QuantizeOp)):
                if all(not r.uses for r in op.results):
                    op.detach()
                    op.erase()

    # ---------------------------------------------------------------------------- per op

    def quantize_op(self, op: Operation) -> SSAValue:
        if isinstance(op, (nn.Conv2dOp, nn.GemmOp)):
            return self.matrix_layer(op)
        if isinstance(op, LUT_OPS):
            return self.lut(op)
        if isinstance(op, (nn.AddOp, nn.SubOp, nn.MulOp)):
            lhs, rhs = self.operand(op.lhs, op), self.operand(op.rhs, op)
            new = type(op)(lhs, rhs, self.qtensor(shape_of(op.output), self.qtype_of(op)))
            return self._add(new, op)
        if isinstance(op, nn.DivOp):
            return self.div(op)
        if isinstance(op, SAME_PARAM_OPS + (nn.AvgPoolOp, nn.GlobalAvgPoolOp) + FLOAT_UNIT_OPS):
            x = self.operand(op.input, op)
            qt = nn.element_of(x) if isinstance(op, SAME_PARAM_OPS) else self.qtype_of(op)
            new = type(op).create(
                operands=[x],
                result_types=[self.qtensor(shape_of(op.output), qt)],
                properties=dict(op.properties),
            )
            return self._add(new, op)
        if isinstance(op, nn.ConcatOp):
            qt = self.qtype_of(op)
            inputs = []
            for v in op.inputs:
                q = self.operand(v, op)
                if nn.element_of(q) != qt:
                    q = self.insert(nn.RequantizeOp(q, self.qtensor(shape_of(q), qt))).results[0]
                inputs.append(q)
            new = nn.ConcatOp(inputs, self.qtensor(shape_of(op.output), qt), op.axis.value.data)
            return self._add(new, op)
        raise ModelError(f"nn-quantize does not support {layer_name(op)}")

    def _add(self, new: Operation, old: Operation) -> SSAValue:
        for key in ("pimc.name",):
            if key in old.attributes:
                new.attributes[key] = old.attributes[key]
        self.insert(new)
        return new.results[0]

    # ----------------------------------------------------------------------- matrix layers

    def matrix_layer(self, op: nn.Conv2dOp | nn.GemmOp) -> SSAValue:
        name = layer_name(op)
        x = self.operand(op.input, op)
        xt = nn.element_of(x)
        assert isinstance(xt, QuantType)
        s_x, zp_x = xt.scale.data, xt.zero_point.data
        xmax = xt.qmax

        # a ReLU / Clip that is the layer's only user is fused into the output clamp
        act, act_op = "none", None
        uses = list(op.output.uses)
        if len(uses) == 1 and isinstance(uses[0].operation, (nn.ReluOp, nn.ClipOp)):
            act_op = uses[0].operation
            act = "relu" if isinstance(act_op, nn.ReluOp) else "clip"
        out_op = act_op if act_op is not None else op
        yt = self.qtype_of(out_op)
        s_y, zp_y = yt.scale.data, yt.zero_point.data

        is_conv = isinstance(op, nn.Conv2dOp)
        w = numpy_from_dense(op.weight).astype(np.float64)
        axis = 0 if is_conv else 1
        wq, sw = intmath.weight_params(w, axis, self.wbits)
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
        n_out = w.shape[axis]

        sx_sw = float(s_x) * sw.astype(np.float64)
        if op.bias is not None:
            b = numpy_from_dense(op.bias).astype(np.float64)
            if not np.all(np.isfinite(b)):
                raise ModelError(f"{name}: the bias holds inf or NaN")
            bias_q = intmath.rne(b / sx_sw)
        else:
            bias_q = np.zeros(n_out, dtype=np.int64)
        # int32 (the ONNX / TFLite convention) when both formats are at most 8 bits; wider formats
        # make s_x·s_w so small that int32 cannot hold ordinary biases, so they get 48 bits
        bias_bits = 32 if self.wbits <= 8 and xt.bits.data <= 8 else 48
        limit = (1 << (bias_bits - 1)) - 1
        bad = np.flatnonzero(np.abs(bias_q) > limit)
        if bad.size:
            n = int(bad[0])
            raise ModelError(
                f"{name}: bias[{n}] = {float(numpy_from_dense(op.bias)[n])!r} is {int(bias_q[n])} in units of "
                f"input scale x weight scale ({s_x:g} x {float(sw[n]):g}), which overflows int{bias_bits}; the "
                "input range or the weights of this channel are degenerate (calibrate with more representative data)"
            )
        wsum = wq.sum(axis=reduce_axes)
        bias_eff = bias_q - zp_x * wsum
        worst = np.abs(wq).sum(axis=reduce_axes) * max(zp_x, xmax - zp_x) + np.abs(bias_q)
        try:
            mbits = intmath.layer_multiplier_bits(int(worst.max()))
            mult, shift = intmath.quantize_multiplier(sx_sw / float(s_y), bits=mbits)
        except ValueError as err:
            raise ModelError(f"{name}: cannot requantize: {err}; use fewer weight or activation bits") from None

        lo, hi = 0, yt.qmax
        if act == "relu":
            lo = int(intmath.quantize_float(0.0, s_y, zp_y, 0, yt.qmax))
        elif act == "clip":
            assert isinstance(act_op, nn.ClipOp)
            lo = int(intmath.quantize_float(act_op.min.value.data, s_y, zp_y, 0, yt.qmax))
            hi = int(intmath.quantize_float(act_op.max.value.data, s_y, zp_y, 0, yt.qmax))
        wdtype = np.int8 if self.wbits <= 8 else np.int16
        extra = {
            "weight_scale": dense_from_numpy(sw.astype(np.float32)),
            "requant_multiplier": dense_from_numpy(mult.astype(np.int64)),
            "requant_shift": dense_from_numpy(shift.astype(np.int64)),
            "clamp": i64_array([lo, hi]),
            "activation": StringAttr(act),
        }
        out_type = self.qtensor(shape_of(out_op.results[0]), yt)
        bias_attr = dense_from_numpy(bias_eff.astype(np.int64))
        if is_conv:
            assert isinstance(op, nn.Conv2dOp)
            new = nn.Conv2dOp(
                x,
                out_type,
                wq.astype(wdtype),
                bias_attr,
                nn.ints(op.strides),
                nn.ints(op.pads),
                nn.ints(op.dilations),
                op.group.value.data,
                extra=extra,
            )
        else:
            new = nn.GemmOp(x, out_type, wq.astype(wdtype), bias_attr, extra=extra)
        result = self._add(new, op)
        if act_op is not None:
            self.fused.add(act_op)
            self.map[act_op.results[0]] = result
        return result

    # ------------------------------------------------------------------------------ LUTs

    def lut(self, op: Operation) -> SSAValue:
        x = self.operand(op.input, op)  # type: ignore[attr-defined]
        xt = nn.element_of(x)
        assert isinstance(xt, QuantType)
        yt = self.qtype_of(op)
        table = lut_table(op, xt, yt, shape_of(x))
        new = nn.LutOp(
            x,
            self.qtensor(shape_of(op.results[0]), yt),
            properties={"table": dense_from_numpy(table), "source": StringAttr(op.name)},
        )
        # the source op's parameters (alpha, slope, ...) ride along so that the QDQ export can
        # emit the float operator the table was built from
        new.attributes[SOURCE_PROPS] = DictionaryAttr(dict(op.properties))
        return self._add(new, op)

    # ------------------------------------------------------------------------------- div

    def div(self, op: nn.DivOp) -> SSAValue:
        out = self.qtensor(shape_of(op.output), self.qtype_of(op))
        owner = op.rhs.owner
        if isinstance(owner, nn.ConstantOp) and op.rhs not in self.map:
            c = numpy_from_dense(owner.value).astype(np.float64)
            if np.any(c == 0):
                raise ModelError(f"{layer_name(op)}: division by a constant that contains 0")
            lhs = self.operand(op.lhs, op)
            return self._add(nn.MulOp(lhs, self.constant(1.0 / c), out), op)
        return self._add(nn.DivOp(self.operand(op.lhs, op), self.operand(op.rhs, op), out), op)


def _unsigned(qt: Attribute) -> QuantType:
    """The unsigned form of an activation type: a signed code q is the unsigned code q + 2^(b-1)
    with the zero point moved by the same amount (the same real values)."""
    assert isinstance(qt, QuantType)
    if not qt.signed.data:
        return qt
    off = 1 << (qt.bits.data - 1)
    return QuantType(qt.bits.data, False, qt.scale.data, qt.zero_point.data + off)


def activation_fn(op: Operation, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The float activation of ``op`` in binary64; x is [C or 1, L] (C channels on axis 1)."""
    if isinstance(op, nn.ReluOp):
        return np.maximum(x, 0.0)
    if isinstance(op, nn.ClipOp):
        return np.clip(x, op.min.value.data, op.max.value.data)
    if isinstance(op, nn.LeakyReluOp):
        return np.where(x >= 0, x, op.alpha.value.data * x)
    if isinstance(op, nn.PReluOp):
        slope = numpy_from_dense(op.slope).astype(np.float64).reshape(-1, 1)
        return np.where(x >= 0, x, slope * x)
    if isinstance(op, nn.SigmoidOp):
        return 1.0 / (1.0 + np.exp(-x))
    if isinstance(op, nn.HardSigmoidOp):
        return np.clip(op.alpha.value.data * x + op.beta.value.data, 0.0, 1.0)
    if isinstance(op, nn.HardSwishOp):
        return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    raise ModelError(f"no table for {layer_name(op)}")


def lut_table(op: Operation, xt: QuantType, yt: QuantType, in_shape: tuple[int, ...]) -> np.ndarray:
    """``table[c, q - qmin] = clamp(rne(f(s_x·(q - zp_x)) / s_y) + zp_y)`` (float64), int64."""
    codes = np.arange(xt.qmin, xt.qmax + 1, dtype=np.int64)
    x = intmath.dequantize(codes, xt.scale.data, xt.zero_point.data)[None, :]
    if isinstance(op, nn.PReluOp):
        slope = numpy_from_dense(op.slope)
        channels = in_shape[1] if len(in_shape) > 1 else 1
        sq = np.squeeze(slope)
        if slope.size not in (1, channels) or (slope.size > 1 and sq.ndim != 1):
            raise ModelError(
                f"{layer_name(op)}: slope of shape {slope.shape} is neither per-tensor nor per-channel (axis 1)"
            )
        if slope.size > 1:
            # the slope must lie on axis 1 of the input once broadcast
            full = np.broadcast_shapes(tuple(max(d, 1) for d in in_shape), slope.shape)
            ax = [i for i, d in enumerate((1,) * (len(full) - slope.ndim) + slope.shape) if d > 1]
            if ax != [1]:
                raise ModelError(f"{layer_name(op)}: slope of shape {slope.shape} is not per-channel on axis 1")
    y = activation_fn(op, x, in_shape)
    return intmath.quantize_float(y, yt.scale.data, yt.zero_point.data, yt.qmin, yt.qmax).astype(np.int64)


def missing_ranges(module: ModuleOp) -> list[str]:
    """What still needs a calibrated range before ``nn-quantize`` can run (empty: nothing)."""
    q = _Quantizer(main_func(module), DEFAULT_BITS, DEFAULT_BITS)
    q.plan()
    return q.missing_ranges()


__all__ = ["NnQuantizePass", "quantize_ir", "lut_table", "layer_name", "missing_ranges"]
