"""The integer reference: the quantized ``nn`` network evaluated exactly as ``spec/quantization.md``
defines it, on int64 NumPy arrays, independent of any crossbar mapping.

It is the golden model the simulator must match bit for bit on a lossless machine. Matrix products
run as binary32 BLAS products over chunks of K small enough that every partial sum stays below 2^24
(summed in binary64), or as binary64 products when ``K · max|x| · max|w| < 2^53``, else as int64
products: every partial sum is an integer the format represents exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Operation, SSAValue

from pimc.dialects import nn
from pimc.dialects.nn import QuantType, numpy_from_dense
from pimc.errors import ModelError
from pimc.quant import intmath
from pimc.quant.calibrate import arg_names, check_inputs, main_func, result_names

EXACT_F64 = 1 << 53
CHUNK_ELEMENTS = 1 << 23  # im2col rows are built in chunks of about this many elements


def _qt(value: SSAValue) -> QuantType:
    t = nn.element_of(value)
    if not isinstance(t, QuantType):
        raise ModelError(f"the integer reference needs a quantized value, got {value.type} (run nn-quantize first)")
    return t


def _params(value: SSAValue) -> tuple[float, int, int, int]:
    t = _qt(value)
    return t.scale.data, t.zero_point.data, t.qmin, t.qmax


def run_int_codes(module_q: ModuleOp, inputs: Mapping[str, np.ndarray]) -> dict[SSAValue | str, np.ndarray]:
    """Integer codes of every value of the quantized network (float arrays for the float boundary
    values), keyed by SSA value; the codes that reach each output's final ``nn.dequantize`` are
    also keyed by the output's name."""
    fn = main_func(module_q)
    inputs = check_inputs(fn, inputs)
    env: dict[SSAValue | str, np.ndarray] = {}
    for name, arg in zip(arg_names(fn), fn.body.block.args):
        env[arg] = np.asarray(inputs[name], dtype=np.float32)
    for op in fn.body.block.ops:
        if isinstance(op, func.ReturnOp):
            for name, v in zip(result_names(fn), op.operands):
                src = v.owner
                env[name] = env[src.input] if isinstance(src, nn.DequantizeOp) else env[v]
            continue
        env[op.results[0]] = _eval(op, env)
    return env


def run_int(module_q: ModuleOp, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The quantized network's outputs, dequantized to float32, by output name."""
    fn = main_func(module_q)
    env = run_int_codes(module_q, inputs)
    ret = fn.body.block.last_op
    assert isinstance(ret, func.ReturnOp)
    out = {}
    for name, v in zip(result_names(fn), ret.operands):
        a = env[v]
        if isinstance(nn.element_of(v), QuantType):
            s, zp, _, _ = _params(v)
            a = intmath.dequantize(a, s, zp)
        out[name] = np.asarray(a, dtype=np.float32)
    return out


# -------------------------------------------------------------------------------- evaluation


def _eval(op: Operation, env: dict) -> np.ndarray:
    if isinstance(op, nn.QuantizeOp):
        s, zp, lo, hi = _params(op.output)
        return intmath.quantize_input(env[op.input], s, zp, lo, hi)
    if isinstance(op, nn.DequantizeOp):
        s, zp, _, _ = _params(op.input)
        return intmath.dequantize(env[op.input], s, zp).astype(np.float32)
    if isinstance(op, nn.ConstantOp):
        return numpy_from_dense(op.value).astype(np.int64)
    if isinstance(op, nn.Conv2dOp):
        return conv2d(op, env[op.input])
    if isinstance(op, nn.GemmOp):
        return gemm(op, env[op.input])
    if isinstance(op, nn.LutOp):
        return lut(op, env[op.input])
    if isinstance(op, (nn.AddOp, nn.SubOp)):
        return add(op, env[op.lhs], env[op.rhs])
    if isinstance(op, nn.MulOp):
        return mul(op, env[op.lhs], env[op.rhs])
    if isinstance(op, nn.DivOp):
        return float_unit(op, [env[op.lhs], env[op.rhs]])
    if isinstance(op, (nn.SoftmaxOp, nn.LrnOp)):
        return float_unit(op, [env[op.input]])
    if isinstance(op, nn.MaxPoolOp):
        return maxpool(op, env[op.input])
    if isinstance(op, (nn.AvgPoolOp, nn.GlobalAvgPoolOp)):
        return avgpool(op, env[op.input])
    if isinstance(op, nn.RequantizeOp):
        return requantize(op, env[op.input])
    if isinstance(op, nn.ConcatOp):
        for v in op.inputs:
            if nn.element_of(v) != nn.element_of(op.output):
                raise ModelError("nn.concat: an input's quantization differs from the output's (missing nn.requantize)")
        return np.concatenate([env[v] for v in op.inputs], axis=op.axis.value.data)
    if isinstance(op, nn.ReshapeOp):
        x = env[op.input]
        shape = nn.shape_of(op.output)
        return x.reshape((x.shape[0],) + tuple(shape[1:]))
    if isinstance(op, nn.TransposeOp):
        return np.transpose(env[op.input], nn.ints(op.perm))
    if isinstance(op, nn.PadOp):
        return pad(op, env[op.input])
    raise ModelError(f"the integer reference does not support {op.name}")


def _check_types(op: Operation) -> None:
    for v in list(op.operands) + list(op.results):
        _qt(v)


# ------------------------------------------------------------------------------ matrix layers


def _layer_constants(op: nn.Conv2dOp | nn.GemmOp):
    _check_types(op)
    w = numpy_from_dense(op.weight).astype(np.int64)
    bias = numpy_from_dense(op.bias).astype(np.int64) if op.bias is not None else None
    mult = numpy_from_dense(op.requant_multiplier).astype(np.int64)
    shift = numpy_from_dense(op.requant_shift).astype(np.int64)
    lo, hi = nn.ints(op.clamp)
    n = mult.shape[0]
    if bias is None:
        bias = np.zeros(n, dtype=np.int64)
    return w, bias, mult, shift, lo, hi


EXACT_F32 = 1 << 24


def _exact_dtype(K: int, xmax: int, wmax: int) -> tuple[type, int]:
    """The fastest dtype whose products are exact integers, and the K-chunk size for it.

    binary32 BLAS is exact while every partial sum stays below 2^24: chunks of kc rows with
    kc·xmax·wmax < 2^24 (summed in binary64); else binary64 for the whole K if K·xmax·wmax < 2^53;
    else int64 (numpy's integer matmul, slow but exact).
    """
    unit = max(xmax, 1) * max(wmax, 1)
    kc = (EXACT_F32 - 1) // unit
    if kc >= 64:
        return np.float32, kc
    if K * unit < EXACT_F64:
        return np.float64, K
    return np.int64, K


def _exact_matmul(a: np.ndarray, b: np.ndarray, kc: int) -> np.ndarray:
    """Exact integer ``a @ b`` (int64) for operands of the dtype chosen by ``_exact_dtype``."""
    if a.dtype == np.int64:
        return np.matmul(a, b)
    K = a.shape[-1]
    if a.dtype == np.float64 or K <= kc:
        return np.matmul(a, b).astype(np.int64)
    n = -(-K // kc)
    step = -(-K // n)  # even chunks of at most kc rows
    total = np.zeros(a.shape[:-1] + b.shape[-1:], dtype=np.float64)  # < 2^53: exact
    for k0 in range(0, K, step):
        total += np.matmul(a[..., k0 : k0 + step], b[..., k0 : k0 + step, :])
    return total.astype(np.int64)


def conv_acc(x: np.ndarray, w: np.ndarray, strides, pads, dilations, group: int, pad_value: int, xmax: int) -> np.ndarray:
    """``acc[b, n, i, j] = Σ_k x_pad · w`` (int64) with the input padded by ``pad_value`` codes."""
    B, C, H, W = x.shape
    cout, cg, kh, kw = w.shape
    sh, sw_ = strides
    pt, pl, pb, pr = pads
    dh, dw = dilations
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    Ho = (H + pt + pb - eh) // sh + 1
    Wo = (W + pl + pr - ew) // sw_ + 1
    if Ho < 1 or Wo < 1:
        raise ModelError(f"nn.conv2d: the kernel does not fit the padded input {list(x.shape)}")
    K = cg * kh * kw
    og = cout // group
    dtype, kc = _exact_dtype(K, xmax, int(np.abs(w).max(initial=0)))
    xp = np.pad(x.astype(dtype), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    wg = w.reshape(group, og, K).transpose(0, 2, 1).astype(dtype)  # [G, K, og]
    acc = np.empty((B, group, og, Ho, Wo), dtype=np.int64)
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))[:, :, : (Ho - 1) * sh + 1 : sh, : (Wo - 1) * sw_ + 1 : sw_, ::dh, ::dw]
    # win: [B, C, Ho, Wo, kh, kw]
    rows = max(1, min(Ho, CHUNK_ELEMENTS // max(1, B * Wo * C * kh * kw)))
    for i0 in range(0, Ho, rows):  # chunks of output rows bound the im2col memory
        i1 = min(Ho, i0 + rows)
        part = win[:, :, i0:i1].reshape(B, group, cg, i1 - i0, Wo, kh, kw)
        cols = part.transpose(1, 0, 3, 4, 2, 5, 6).reshape(group, B * (i1 - i0) * Wo, K)
        res = _exact_matmul(cols, wg, kc)  # [G, P, og]
        acc[:, :, :, i0:i1, :] = res.reshape(group, B, i1 - i0, Wo, og).transpose(1, 0, 4, 2, 3)
    return acc.reshape(B, cout, Ho, Wo)


def conv2d(op: nn.Conv2dOp, x: np.ndarray) -> np.ndarray:
    w, bias, mult, shift, lo, hi = _layer_constants(op)
    _, zp_x, _, xmax = _params(op.input)
    _, zp_y, _, _ = _params(op.output)
    acc = conv_acc(x, w, nn.ints(op.strides), nn.ints(op.pads), nn.ints(op.dilations), op.group.value.data, zp_x, xmax)
    shape = (1, -1, 1, 1)
    v = (acc + bias.reshape(shape)) * mult.reshape(shape)
    return np.clip(intmath.rne_shift(v, shift.reshape(shape)) + zp_y, lo, hi)


def gemm(op: nn.GemmOp, x: np.ndarray) -> np.ndarray:
    w, bias, mult, shift, lo, hi = _layer_constants(op)
    _, _, _, xmax = _params(op.input)
    _, zp_y, _, _ = _params(op.output)
    dtype, kc = _exact_dtype(w.shape[0], xmax, int(np.abs(w).max(initial=0)))
    acc = _exact_matmul(x.astype(dtype), w.astype(dtype), kc)
    return intmath.requantize(acc, bias, mult, shift, zp_y, lo, hi)


# -------------------------------------------------------------------------------- digital ops


def lut(op: nn.LutOp, x: np.ndarray) -> np.ndarray:
    _check_types(op)
    table = numpy_from_dense(op.table).astype(np.int64)
    qmin = _qt(op.input).qmin
    idx = x - qmin
    if table.shape[0] == 1:
        return table[0][idx]
    if x.ndim < 2 or x.shape[1] != table.shape[0]:
        raise ModelError(f"nn.lut: a table of {table.shape[0]} channels needs an input with as many on axis 1")
    ch = np.arange(x.shape[1]).reshape((1, -1) + (1,) * (x.ndim - 2))
    return table[ch, idx]


def add(op: nn.AddOp | nn.SubOp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _check_types(op)
    sa, za, _, _ = _params(op.lhs)
    sb, zb, _, _ = _params(op.rhs)
    sy, zy, lo, hi = _params(op.output)
    ma, mb, shift = intmath.add_params(sa, sb, sy, subtract=isinstance(op, nn.SubOp))
    v = ma * (a - za) + mb * (b - zb)
    return np.clip(intmath.rne_shift(v, shift) + zy, lo, hi)


def mul(op: nn.MulOp, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _check_types(op)
    sa, za, _, _ = _params(op.lhs)
    sb, zb, _, _ = _params(op.rhs)
    sy, zy, lo, hi = _params(op.output)
    m, shift = intmath.mul_params(sa, sb, sy)
    v = ((a - za) * (b - zb)) * m
    return np.clip(intmath.rne_shift(v, shift) + zy, lo, hi)


def requantize(op: nn.RequantizeOp, x: np.ndarray) -> np.ndarray:
    _check_types(op)
    si, zi, _, _ = _params(op.input)
    so, zo, lo, hi = _params(op.output)
    m, shift = intmath.rescale_params(si, so)
    return np.clip(intmath.rne_shift(m * (x - zi), shift) + zo, lo, hi)


def _pool_windows(x: np.ndarray, kernel, strides, pads, dilations, pad_value: int) -> np.ndarray:
    """[B, C, Ho, Wo, kh, kw] windows of x padded with ``pad_value``."""
    kh, kw = kernel
    sh, sw_ = strides
    pt, pl, pb, pr = pads
    dh, dw = dilations
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))
    return win[:, :, ::sh, ::sw_, ::dh, ::dw]


def maxpool(op: nn.MaxPoolOp, x: np.ndarray) -> np.ndarray:
    _check_types(op)
    qmin = _qt(op.input).qmin
    win = _pool_windows(x, nn.ints(op.kernel), nn.ints(op.strides), nn.ints(op.pads), nn.ints(op.dilations), qmin - 1)
    out = win.max(axis=(-2, -1))
    return out[:, :, : nn.shape_of(op.output)[2], : nn.shape_of(op.output)[3]]


def avgpool(op: nn.AvgPoolOp | nn.GlobalAvgPoolOp, x: np.ndarray) -> np.ndarray:
    _check_types(op)
    si, zi, _, _ = _params(op.input)
    so, zo, lo, hi = _params(op.output)
    bits = _qt(op.input).bits.data
    xs = x - zi  # padding contributes 0 = (zin - zin)
    if isinstance(op, nn.GlobalAvgPoolOp):
        count = int(np.prod(x.shape[2:]))
        total = xs.reshape(x.shape[0], x.shape[1], -1).sum(axis=-1)
        total = total.reshape(x.shape[:2] + (1,) * (x.ndim - 2))
        counts = np.int64(count)
        max_count = count
    else:
        kernel, strides, pads = nn.ints(op.kernel), nn.ints(op.strides), nn.ints(op.pads)
        Ho, Wo = nn.shape_of(op.output)[2:]
        total = _pool_windows(xs, kernel, strides, pads, (1, 1), 0).sum(axis=(-2, -1))[:, :, :Ho, :Wo]
        max_count = kernel[0] * kernel[1]
        if op.count_include_pad.value.data:
            counts = np.int64(max_count)
        else:
            ones = np.ones((1, 1) + x.shape[2:], dtype=np.int64)
            counts = _pool_windows(ones, kernel, strides, pads, (1, 1), 0).sum(axis=(-2, -1))[:, :, :Ho, :Wo]
    m, shift = intmath.avgpool_params(si, so, max_count, bits)
    y = intmath.rne_div(m * total, counts << np.int64(shift))
    return np.clip(y + zo, lo, hi)


def pad(op: nn.PadOp, x: np.ndarray) -> np.ndarray:
    _check_types(op)
    s, zp, lo, hi = _params(op.input)
    code = int(intmath.quantize_float(op.value.value.data, s, zp, lo, hi))
    p = nn.ints(op.pads)
    n = x.ndim
    return np.pad(x, [(p[i], p[i + n]) for i in range(n)], constant_values=code)


def float_unit(op: Operation, args: list[np.ndarray]) -> np.ndarray:
    """softmax, lrn, div: dequantize, compute in binary64 (quantization.md §6), quantize."""
    _check_types(op)
    xs = [intmath.dequantize(a, *_params(v)[:2]) for a, v in zip(args, op.operands)]
    so, zo, lo, hi = _params(op.results[0])
    y = float_unit_fn(op, xs)
    return intmath.quantize_float(y, so, zo, lo, hi)


def float_unit_fn(op: Operation, xs: list[np.ndarray]) -> np.ndarray:
    if isinstance(op, nn.SoftmaxOp):
        x = xs[0]
        axis = op.axis.value.data
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    if isinstance(op, nn.LrnOp):
        x = xs[0]
        size = op.size.value.data
        alpha, beta, bias = op.alpha.value.data, op.beta.value.data, op.bias.value.data
        C = x.shape[1]
        sq = x * x
        lo_off, hi_off = (size - 1) // 2, size - 1 - (size - 1) // 2
        # square_sum[c] = Σ_{i = c - lo_off}^{c + hi_off} x[i]^2 over channels in range, added in
        # increasing i (the order quantization.md §6 fixes)
        square_sum = np.zeros_like(sq)
        for off in range(-lo_off, hi_off + 1):
            a, b = max(0, -off), min(C, C - off)
            if a < b:
                square_sum[:, a:b] += sq[:, a + off : b + off]
        return x / (bias + alpha / size * square_sum) ** beta
    if isinstance(op, nn.DivOp):
        with np.errstate(divide="ignore", invalid="ignore"):
            return xs[0] / xs[1]
    raise ModelError(f"no float unit for {op.name}")


__all__ = ["run_int", "run_int_codes", "conv_acc", "float_unit_fn"]
