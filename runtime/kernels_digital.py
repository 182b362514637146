"""NumPy implementations of the digital instructions (``spec/isa.md`` §5, ``quantization.md`` §5–6).

All integer units are exact int64 whole-array code; the float units (softmax, lrn, div) compute in
IEEE binary64 and quantize with round half to even. Output ranges of the float units are the
destination buffer type's range.
"""

from __future__ import annotations

import functools

import numpy as np

from runtime import jit as JIT
from runtime.errors import ProgramError
from runtime.intmath import clamp, div_rne_clamp, mul_rne_shift, mul_rne_shift_clamp, rne_float


@functools.lru_cache(maxsize=None)
def type_range(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def lut(src: np.ndarray, table: np.ndarray, axis: int, qmin: int) -> np.ndarray:
    """dst[i] = table[c, src[i] − qmin], c the index of i on ``axis`` (0 for a one-row table)."""
    if table.ndim != 2:
        raise ProgramError(f"lut: table must be [channels, entries], got shape {list(table.shape)}")
    idx = src.astype(np.int64) - qmin
    if idx.size and (idx.min() < 0 or idx.max() >= table.shape[1]):
        raise ProgramError(f"lut: codes span [{int(idx.min()) + qmin}, {int(idx.max()) + qmin}], the table has {table.shape[1]} entries from {qmin}")
    tab = table.astype(np.int64)
    if tab.shape[0] == 1:
        return tab[0][idx]
    if not -src.ndim <= axis < src.ndim:
        raise ProgramError(f"lut: axis {axis} outside a {src.ndim}-d source")
    ax = axis % src.ndim
    if src.shape[ax] != tab.shape[0]:
        raise ProgramError(f"lut: table has {tab.shape[0]} rows but axis {axis} of the source has {src.shape[ax]} entries")
    shape = [1] * src.ndim
    shape[ax] = -1
    chan = np.arange(tab.shape[0]).reshape(shape)
    return tab[np.broadcast_to(chan, src.shape), idx]


def add(a, b, ma, mb, shift, za, zb, zp, lo, hi, out_dtype=None) -> np.ndarray:
    """clamp(rne((ma·(a−za) + mb·(b−zb)) / 2^shift) + zp, lo, hi), broadcasting; int64, or
    ``out_dtype`` (whose range must hold [lo, hi]) where the result is computed in one pass."""
    a, b = np.asarray(a), np.asarray(b)
    if 0 <= shift <= 62 and a.dtype.kind in "iu" and b.dtype.kind in "iu" and a.dtype.itemsize <= 4 and b.dtype.itemsize <= 4:
        # float64, exactly: every operand and product, and ma·(a−za) + mb·(b−zb), are integers
        # below 2^53 (bounded from the operand types, not the data); scaling by 2^-shift is
        # exact and rint rounds half to even, as rne
        (alo, ahi), (blo, bhi) = type_range(a.dtype), type_range(b.dtype)
        bound = abs(int(ma)) * max(abs(alo - za), abs(ahi - za)) + abs(int(mb)) * max(abs(blo - zb), abs(bhi - zb))
        if bound < (1 << 53) and abs(int(zp)) < (1 << 52) and abs(int(lo)) < (1 << 53) and abs(int(hi)) < (1 << 53):
            if (out_dtype is not None and a.shape == b.shape and a.flags.c_contiguous and b.flags.c_contiguous
                    and max(abs(int(lo) - int(zp)), abs(int(hi) - int(zp))) <= (1 << 51)):
                out = np.empty(a.shape, dtype=out_dtype)  # (one compiled pass: a residual add)
                JIT.add_exact(a.reshape(-1), b.reshape(-1), float(za), float(zb), float(ma), float(mb),
                              float(np.ldexp(1.0, -int(shift))), int(zp), int(lo), int(hi), out.reshape(-1))
                return out
            y = a.astype(np.float64)
            y -= za
            y *= float(ma)
            t = b.astype(np.float64)
            t -= zb
            t *= float(mb)
            y = y + t  # broadcasting
            y *= np.ldexp(1.0, -int(shift))
            np.rint(y, out=y)
            y += zp
            np.clip(y, lo, hi, out=y)
            return y.astype(np.int64)
    ta = np.asarray(a, dtype=np.int64) - za
    tb = np.asarray(b, dtype=np.int64) - zb
    num = mul_rne_shift(ta, ma, 0) + mul_rne_shift(tb, mb, 0)
    return mul_rne_shift_clamp(num, 1, shift, zp, lo, hi)


def mul(a, b, m, shift, za, zb, zp, lo, hi) -> np.ndarray:
    """clamp(rne(m·(a−za)·(b−zb) / 2^shift) + zp, lo, hi), broadcasting."""
    prod = (np.asarray(a, dtype=np.int64) - za) * (np.asarray(b, dtype=np.int64) - zb)
    return mul_rne_shift_clamp(prod, m, shift, zp, lo, hi)


def rescale(src, m, shift, zin, zp, lo, hi) -> np.ndarray:
    """clamp(rne(m·(src−zin) / 2^shift) + zp, lo, hi)."""
    return mul_rne_shift_clamp(np.asarray(src, dtype=np.int64) - zin, m, shift, zp, lo, hi)


def _windows(x: np.ndarray, kernel, stride, dilation, out_hw) -> np.ndarray:
    """[B, C, Ho, Wo, kh, kw] strided view of an already padded [B, C, Hp, Wp] array."""
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    Ho, Wo = out_hw
    sB, sC, sH, sW = x.strides
    return np.lib.stride_tricks.as_strided(
        x,
        shape=(x.shape[0], x.shape[1], Ho, Wo, kh, kw),
        strides=(sB, sC, sH * sh, sW * sw, sH * dh, sW * dw),
        writeable=False,
    )


def pool_geometry(src, kernel, stride, pad, dilation, out_shape):
    """Checks the pooling fields; returns the padding that also covers a ceil-mode last window."""
    if src.ndim != 4:
        raise ProgramError(f"pooling: source must be [B, C, H, W], got shape {list(src.shape)}")
    kh, kw = (int(k) for k in kernel)
    sh, sw = (int(s) for s in stride)
    dh, dw = (int(d) for d in dilation)
    pt, pl, pb, pr = (int(p) for p in pad)
    Ho, Wo = int(out_shape[2]), int(out_shape[3])
    H, W = src.shape[2], src.shape[3]
    # extra bottom/right padding so that a ceil-mode output's last window is in range
    need_h = (Ho - 1) * sh + dh * (kh - 1) + 1
    need_w = (Wo - 1) * sw + dw * (kw - 1) + 1
    eb = max(0, need_h - (H + pt + pb))
    er = max(0, need_w - (W + pl + pr))
    return (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb + eb, pr + er), (Ho, Wo)


def _taps(x: np.ndarray, kernel, stride, dilation, out_hw):
    """The kh·kw strided slices [B, C, Ho, Wo] of a padded input, one per window position (a loop
    over the kernel, not over output positions)."""
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    for u in range(kh):
        for v in range(kw):
            yield x[:, :, u * dh : u * dh + sh * (Ho - 1) + 1 : sh, v * dw : v * dw + sw * (Wo - 1) + 1 : sw]


def maxpool(src: np.ndarray, geometry: tuple) -> np.ndarray:
    """Max over each window of ``geometry`` (``pool_geometry``'s, checked for sources of src's
    shape); padding never wins (it is the type's minimum)."""
    k, s, d, (pt, pl, pb, pr), ohw = geometry
    lo, _ = type_range(src.dtype)
    x = np.pad(src, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=lo) if pt or pl or pb or pr else src
    taps = _taps(x, k, s, d, ohw)
    out = np.array(next(taps))
    for t in taps:
        np.maximum(out, t, out=out)
    return out


def avgpool(src, kernel, stride, pad, count_include_pad, zin, m, shift, zp, lo, hi, out_shape) -> np.ndarray:
    """clamp(rne_div(m·Σ(x−zin), count·2^shift) + zp, lo, hi); padding adds x − zin = 0."""
    k, s, d, (pt, pl, pb, pr), ohw = pool_geometry(src, kernel, stride, pad, [1, 1], out_shape)
    H, W = src.shape[2], src.shape[3]
    whole = tuple(k) == (H, W) and tuple(ohw) == (1, 1) and not (pt or pl or pb or pr)
    if whole:  # a global pool: one sum per map (~10x faster than the taps on 1280 maps of 7 x 7)
        if src.dtype.itemsize <= 2 and src.dtype.kind in "iu":  # a float product, exact: 2-3x faster than sum
            ftype = np.float32 if H * W << (8 * src.dtype.itemsize) < (1 << 24) else np.float64  # (|sums| < 2^24, 2^53)
            total = (src.reshape(-1, H * W).astype(ftype) @ np.ones(H * W, dtype=ftype)).astype(np.int64)
            total = total.reshape(src.shape[0], src.shape[1], 1, 1) - np.int64(zin * H * W)
        else:
            total = src.sum(axis=(2, 3), dtype=np.int64, keepdims=True) - np.int64(zin * H * W)
    else:
        x = np.pad(src.astype(np.int64) - zin, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=0)
        total = np.zeros((x.shape[0], x.shape[1], *ohw), dtype=np.int64)
        for t in _taps(x, k, s, d, ohw):
            total += t
    if count_include_pad or whole:
        count = np.int64(k[0] * k[1])  # quantization.md §5.4: the window size (a global pool's is all inside)
    else:
        inside = np.zeros((1, 1, H + pt + pb, W + pl + pr), dtype=np.int64)
        inside[:, :, pt : pt + H, pl : pl + W] = 1
        count = np.maximum(_windows(inside, k, s, d, ohw).sum(axis=(4, 5)), 1)
    if shift < 0 or shift > 62:
        raise ProgramError("avgpool: shift must lie in [0, 62]")
    return div_rne_clamp(total, m, count, shift, zp, lo, hi)


def pad(src: np.ndarray, pads, value: int) -> np.ndarray:
    n = src.ndim
    if len(pads) != 2 * n:
        raise ProgramError(f"pad: {len(pads)} pads for a {n}-d source (need {2 * n})")
    if min(pads) < 0:
        raise ProgramError("pad: negative pads are not supported")
    return np.pad(src, [(int(pads[i]), int(pads[i + n])) for i in range(n)], constant_values=value)


def _quantize(y: np.ndarray, scale: float, zp: int, dtype: np.dtype) -> np.ndarray:
    lo, hi = type_range(dtype)
    v = np.asarray(y, dtype=np.float64) / float(scale)
    v = np.where(np.isnan(v), 0.0, v)
    v = np.clip(v, -(2.0**62), 2.0**62)
    return clamp(rne_float(v).astype(np.int64) + zp, lo, hi)


def _deq(q, scale: float, zp: int) -> np.ndarray:
    return float(scale) * (np.asarray(q, dtype=np.int64) - zp).astype(np.float64)


def softmax(src, axis, in_scale, in_zp, out_scale, out_zp, dtype) -> np.ndarray:
    x = _deq(src, in_scale, in_zp)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return _quantize(e / e.sum(axis=axis, keepdims=True), out_scale, out_zp, dtype)


def lrn(src, size, alpha, beta, bias, in_scale, in_zp, out_scale, out_zp, dtype) -> np.ndarray:
    """ONNX LRN across channels (axis 1): x / (bias + alpha/size · Σ x²)^beta over the window."""
    x = _deq(src, in_scale, in_zp)
    C = x.shape[1]
    lo_pad = (size - 1) // 2
    hi_pad = size - 1 - lo_pad
    sq = np.pad(x * x, [(0, 0), (lo_pad, hi_pad)] + [(0, 0)] * (x.ndim - 2))
    window = np.zeros_like(x)
    for off in range(size):  # added in increasing channel index, as quantization.md §6 says
        window += sq[:, off : off + C]
    y = x / (bias + alpha / size * window) ** beta
    return _quantize(y, out_scale, out_zp, dtype)


def div(a, b, a_scale, a_zp, b_scale, b_zp, out_scale, out_zp, dtype) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        y = _deq(a, a_scale, a_zp) / _deq(b, b_scale, b_zp)
    return _quantize(y, out_scale, out_zp, dtype)
