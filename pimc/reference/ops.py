"""Whole-array NumPy kernels of the ``nn`` operators, shared by the float and integer references.

Layouts are NCHW with the batch first. Convolution is im2col (a strided view, copied once) followed
by one batched matmul per layer; pooling uses the same windows view. No Python loop runs per pixel,
channel or window. The kernels are dtype-agnostic where that makes sense (the integer reference
passes int64 codes to ``im2col``/``conv2d``), so both references share the same index arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided


def pad_nchw(x: np.ndarray, pads: Sequence[int], value: float | int = 0) -> np.ndarray:
    """Pad H and W of an NCHW array; pads = [top, left, bottom, right]."""
    t, l, b, r = (int(p) for p in pads)
    if not (t or l or b or r):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), mode="constant", constant_values=value)


def windows(x: np.ndarray, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> np.ndarray:
    """A read-only strided view [N, C, OH, OW, kh, kw] of the (already padded) input's windows."""
    n, c, h, w = x.shape
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    s = x.strides
    return as_strided(
        x,
        shape=(n, c, oh, ow, kh, kw),
        strides=(s[0], s[1], s[2] * sh, s[3] * sw, s[2] * dh, s[3] * dw),
        writeable=False,
    )


def im2col(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    groups: int = 1,
    pad_value: float | int = 0,
) -> tuple[np.ndarray, int, int]:
    """Columns [N, G, OH*OW, Cg*kh*kw] (row order c, kh, kw as in the ONNX weight) and (OH, OW)."""
    xp = pad_nchw(x, pads, pad_value)
    win = windows(xp, kernel, strides, dilations)  # N, C, OH, OW, kh, kw
    n, c, oh, ow, kh, kw = win.shape
    cg = c // groups
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
    return cols.reshape(n, groups, oh * ow, cg * kh * kw), oh, ow


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    groups: int,
    pad_value: float | int = 0,
) -> np.ndarray:
    """NCHW convolution as one matmul per layer (per group): weight [Cout, Cin/g, kh, kw].

    The columns are laid out [G, K, N*P] (K = Cg*kh*kw, P = OH*OW) so that each group is a single
    2-D BLAS call W[Cout/g, K] @ cols[K, N*P] over the whole batch (NumPy's broadcasting matmul
    is several times slower); a 1x1 stride-1 unpadded conv needs no window gathering.
    """
    cout, cg, kh, kw = weight.shape
    n = x.shape[0]
    wmat = weight.reshape(groups, cout // groups, cg * kh * kw)
    if (kh, kw) == (1, 1) and tuple(strides) == (1, 1) and not any(pads):
        oh, ow = x.shape[2], x.shape[3]
        cols = x.reshape(n, groups, cg, oh * ow).transpose(1, 2, 0, 3)
    else:
        win = windows(pad_nchw(x, pads, pad_value), (kh, kw), strides, dilations)  # N, C, OH, OW, kh, kw
        oh, ow = win.shape[2], win.shape[3]
        cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 2, 5, 6, 0, 3, 4)
    cols = cols.reshape(groups, cg * kh * kw, n * oh * ow)
    if groups == 1:
        out = (wmat[0] @ cols[0]).reshape(cout, n, oh, ow)
    else:
        out = np.matmul(wmat, cols).reshape(cout, n, oh, ow)  # G, Cout/g, N*P
    out = out.transpose(1, 0, 2, 3)
    if bias is not None:
        out = out + bias.reshape(1, cout, 1, 1)
    return np.ascontiguousarray(out)


def gemm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x @ weight (+ bias) over the last axis; weight is [K, N]."""
    out = np.matmul(x, weight)
    return out if bias is None else out + bias


def maxpool(x: np.ndarray, kernel, strides, pads, dilations) -> np.ndarray:
    """Max over windows; padding never wins (it is the dtype's lowest value)."""
    low = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    win = windows(pad_nchw(x, pads, low), kernel, strides, dilations)
    return win.max(axis=(4, 5))


def avgpool_sum_count(x: np.ndarray, kernel, strides, pads, count_include_pad: bool) -> tuple[np.ndarray, np.ndarray]:
    """Window sums [N, C, OH, OW] and divisors [OH, OW] (in-bounds cells, or the full window)."""
    win = windows(pad_nchw(x, pads, 0), kernel, strides, (1, 1))
    sums = win.sum(axis=(4, 5))
    if count_include_pad:
        count = np.full(sums.shape[2:], kernel[0] * kernel[1], dtype=np.int64)
    else:
        ones = np.ones((1, 1) + x.shape[2:], dtype=np.int64)
        count = windows(pad_nchw(ones, pads, 0), kernel, strides, (1, 1)).sum(axis=(4, 5))[0, 0]
    return sums, count


def avgpool(x: np.ndarray, kernel, strides, pads, count_include_pad: bool) -> np.ndarray:
    sums, count = avgpool_sum_count(x, kernel, strides, pads, count_include_pad)
    return (sums / count.astype(x.dtype)).astype(x.dtype)


def global_avgpool(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(x.dtype)


def lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX LRN across channels: window [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    sq = np.square(x.astype(np.float64))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(sq, ((0, 0), (lo, hi), (0, 0), (0, 0)))
    csum = np.concatenate([np.zeros_like(padded[:, :1]), np.cumsum(padded, axis=1)], axis=1)
    c = x.shape[1]
    square_sum = csum[:, size : size + c] - csum[:, :c]
    return (x / np.power(bias + alpha / size * square_sum, beta)).astype(x.dtype)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # numerically safe for large |x| in float32
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(x.dtype)


def hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(alpha * x + beta, 0.0, 1.0).astype(x.dtype)


def hard_swish(x: np.ndarray) -> np.ndarray:
    return (x * np.clip(x / 6.0 + 0.5, 0.0, 1.0)).astype(x.dtype)


def leaky_relu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x >= 0, x, x * np.asarray(alpha, dtype=x.dtype))


def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """slope broadcasts against one sample ([C, 1, ..., 1] or all ones)."""
    return np.where(x >= 0, x, x * slope)


def pad(x: np.ndarray, pads: Sequence[int], value: float) -> np.ndarray:
    """Constant pad over all axes: pads = [begin..., end...]."""
    r = x.ndim
    return np.pad(x, [(int(pads[k]), int(pads[k + r])) for k in range(r)], mode="constant", constant_values=value)


def quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """Codes = clamp(round_half_even(x / scale) + zp): ONNX QuantizeLinear's rounding."""
    return np.clip(np.rint(x / np.float32(scale)) + zero_point, qmin, qmax).astype(np.int64)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q - zero_point).astype(np.float32) * np.float32(scale)).astype(np.float32)
